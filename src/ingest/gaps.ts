/**
 * Sequence gaps as this instance sees them, for the gap metrics. The database's `gaps()` query is
 * the authoritative answer (the API serves it); this tracker makes the live numbers cheap: per
 * device the highest sequence number stored and the ranges skipped below it since this instance
 * started (a device's first message here opens no gap). With several instances sharing a device's
 * stream through the MQTT shared subscription, each sees part of it, so these are per-instance
 * numbers; the sum over instances of `opened` counts each real gap at least once.
 *
 * Bounded: at most `maxDevices` devices (least recently active dropped, with their missing count)
 * and `maxRanges` open ranges per device (the oldest are dropped, and stop counting as missing).
 *
 * @example
 *   const { opened, filled } = gaps.observe('bed-7', 42);
 *   if (opened > 0) metrics.gapsOpened.inc();
 */

interface DeviceGaps {
  highest: number;
  /** Disjoint missing ranges [from, to], ascending. */
  ranges: [number, number][];
}

export class GapTracker {
  readonly #devices = new Map<string, DeviceGaps>();
  readonly #maxDevices: number;
  readonly #maxRanges: number;
  #missing = 0;

  constructor(o: { maxDevices?: number; maxRanges?: number } = {}) {
    this.#maxDevices = o.maxDevices ?? 100_000;
    this.#maxRanges = o.maxRanges ?? 64;
  }

  /** Missing sequence numbers over every tracked device. */
  get missing(): number {
    return this.#missing;
  }

  missingFor(deviceId: string): readonly (readonly [number, number])[] {
    return this.#devices.get(deviceId)?.ranges ?? [];
  }

  /** A newly stored (not duplicate) sequence number. */
  observe(deviceId: string, seq: number): { opened: number; filled: boolean } {
    const d = this.#devices.get(deviceId);
    if (d === undefined) {
      if (this.#devices.size >= this.#maxDevices) {
        const [oldId, old] = this.#devices.entries().next().value as [string, DeviceGaps];
        this.#devices.delete(oldId);
        this.#missing -= count(old.ranges);
      }
      this.#devices.set(deviceId, { highest: seq, ranges: [] });
      return { opened: 0, filled: false };
    }
    this.#devices.delete(deviceId);
    this.#devices.set(deviceId, d); // most recently active last
    if (seq > d.highest) {
      const opened = seq - d.highest - 1;
      if (opened > 0) {
        d.ranges.push([d.highest + 1, seq - 1]);
        this.#missing += opened;
        while (d.ranges.length > this.#maxRanges) {
          const dropped = d.ranges.shift() as [number, number];
          this.#missing -= dropped[1] - dropped[0] + 1;
        }
      }
      d.highest = seq;
      return { opened, filled: false };
    }
    const i = d.ranges.findIndex(([a, b]) => seq >= a && seq <= b);
    if (i < 0) return { opened: 0, filled: false };
    const [a, b] = d.ranges[i] as [number, number];
    const parts: [number, number][] = [];
    if (a <= seq - 1) parts.push([a, seq - 1]);
    if (seq + 1 <= b) parts.push([seq + 1, b]);
    d.ranges.splice(i, 1, ...parts);
    this.#missing -= 1;
    return { opened: 0, filled: true };
  }
}

function count(ranges: readonly [number, number][]): number {
  return ranges.reduce((n, [a, b]) => n + b - a + 1, 0);
}
