/**
 * A seeded, deterministic bad network: each datagram may be dropped, duplicated, delayed (and so
 * reordered) or corrupted, with the probabilities given. The same seed gives the same run.
 */
import { Prng } from '../../../src/agent/sensors/prng.ts';
import type { Link } from './pair.ts';

export interface LossProfile {
  readonly drop: number;
  readonly duplicate: number;
  readonly corrupt: number;
  /** Base one-way delay and the extra random delay that reorders datagrams (ms). */
  readonly delayMs: number;
  readonly jitterMs: number;
}

export interface LinkCounters {
  sent: number;
  dropped: number;
  duplicated: number;
  corrupted: number;
}

export function lossyLink(seed: number, p: LossProfile): Link & { readonly counters: LinkCounters } {
  const rng = new Prng(seed);
  const counters: LinkCounters = { sent: 0, dropped: 0, duplicated: 0, corrupted: 0 };
  return {
    counters,
    transfer(datagram, now) {
      counters.sent++;
      if (rng.next() < p.drop) {
        counters.dropped++;
        return [];
      }
      const copies = rng.next() < p.duplicate ? 2 : 1;
      if (copies === 2) counters.duplicated++;
      const out: { data: Uint8Array; at: number }[] = [];
      for (let i = 0; i < copies; i++) {
        let data = datagram;
        if (rng.next() < p.corrupt) {
          counters.corrupted++;
          data = Uint8Array.from(datagram);
          const at = Math.floor(rng.next() * data.length);
          data[at] = (data[at] as number) ^ (1 + Math.floor(rng.next() * 255));
        }
        out.push({ data, at: now + p.delayMs + Math.floor(rng.next() * p.jitterMs) });
      }
      return out;
    },
  };
}
