/**
 * Sealing-epoch policy on the receiving side. A device seals an epoch of messages under one
 * ephemeral X25519 key (src/cose/sealing-session.ts) and then starts a new one; the ingest names
 * an epoch by that public key. This tracker remembers, for a bounded number of recent epochs, which
 * device used it, when this service first saw it and how many messages it carried, and judges each
 * new message:
 *
 * - `shared`: the epoch was first used by another device. An ephemeral private key is never meant
 *   to leave the device that made it, so two devices on one epoch means a cloned or compromised
 *   sealer: refused.
 * - `stale`: the device has kept an epoch longer (`maxAgeMs`) or for more messages (`maxMessages`)
 *   than the fleet's policy allows. The data is authentic, so it is stored, and an alert is raised.
 *
 * Memory: at most `maxEntries` epochs (least recently used go first); a forgotten epoch seen again
 * starts afresh, which can only delay a `stale` verdict, never cause a false `shared` one.
 *
 * @example
 *   const verdict = epochs.check(epochHex, 'bed-7', now);   // 'ok' | 'shared' | 'stale'
 *   if (verdict !== 'shared') epochs.record(epochHex, 'bed-7', now);
 */

export interface EpochPolicy {
  /** Default 24 h: a device's default epoch is one hour; a backlog sent late is still one epoch. */
  readonly maxAgeMs?: number;
  /** Default 100 000 (the device default is 1000 per epoch). */
  readonly maxMessages?: number;
  /** Epochs remembered (default 100 000). */
  readonly maxEntries?: number;
}

interface EpochEntry {
  readonly deviceId: string;
  readonly firstSeenAt: number;
  messages: number;
}

export type EpochVerdict = 'ok' | 'shared' | 'stale';

export class EpochTracker {
  readonly #maxAge: number;
  readonly #maxMessages: number;
  readonly #maxEntries: number;
  readonly #entries = new Map<string, EpochEntry>();

  constructor(p: EpochPolicy = {}) {
    this.#maxAge = p.maxAgeMs ?? 86_400_000;
    this.#maxMessages = p.maxMessages ?? 100_000;
    this.#maxEntries = p.maxEntries ?? 100_000;
    for (const [k, v] of [['maxAgeMs', this.#maxAge], ['maxMessages', this.#maxMessages], ['maxEntries', this.#maxEntries]] as const) {
      if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`epoch policy ${k}: a positive integer`);
    }
  }

  get size(): number {
    return this.#entries.size;
  }

  check(epoch: string, deviceId: string, now: number): EpochVerdict {
    const e = this.#entries.get(epoch);
    if (e === undefined) return 'ok';
    if (e.deviceId !== deviceId) return 'shared';
    if (e.messages + 1 > this.#maxMessages || now - e.firstSeenAt > this.#maxAge) return 'stale';
    return 'ok';
  }

  /** When this service first saw `epoch`, if it remembers it. */
  startOf(epoch: string): number | undefined {
    return this.#entries.get(epoch)?.firstSeenAt;
  }

  /**
   * Counts an accepted message; returns when this service first saw the epoch. `knownStart` is the
   * registry's record of the device's current epoch start (it survives a restart).
   */
  record(epoch: string, deviceId: string, now: number, knownStart?: number): number {
    let e = this.#entries.get(epoch);
    if (e === undefined) {
      if (this.#entries.size >= this.#maxEntries) {
        const oldest = this.#entries.keys().next().value as string;
        this.#entries.delete(oldest);
      }
      e = { deviceId, firstSeenAt: knownStart ?? now, messages: 0 };
    } else {
      this.#entries.delete(epoch); // most recently used last
    }
    e.messages++;
    this.#entries.set(epoch, e);
    return e.firstSeenAt;
  }
}
