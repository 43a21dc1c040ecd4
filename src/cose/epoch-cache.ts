/**
 * Receiver-side cache of sealing-epoch content keys. A device reuses one ephemeral X25519 key and
 * content key for an epoch, so the receiver does one ECDH + HKDF per epoch instead of per message.
 * Bounded: least recently used entries go first, and their keys are zeroised on eviction.
 */
import { zeroize } from '../util/bytes.ts';

export class EpochKeyCache {
  readonly #max: number;
  readonly #entries = new Map<string, Uint8Array>();
  #hits = 0;
  #misses = 0;

  constructor(maxEntries = 10_000) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new RangeError('EpochKeyCache: maxEntries must be a positive integer');
    this.#max = maxEntries;
  }

  get size(): number {
    return this.#entries.size;
  }

  get stats(): { hits: number; misses: number } {
    return { hits: this.#hits, misses: this.#misses };
  }

  /** The cached key for `id`, or the one `derive` makes (then cached). Callers must not zeroise the result. */
  getOrDerive(id: string, derive: () => Uint8Array): Uint8Array {
    const hit = this.#entries.get(id);
    if (hit !== undefined) {
      this.#hits++;
      this.#entries.delete(id);
      this.#entries.set(id, hit); // most recently used last
      return hit;
    }
    this.#misses++;
    const key = derive();
    if (this.#entries.size >= this.#max) {
      const [oldestId, oldestKey] = this.#entries.entries().next().value as [string, Uint8Array];
      this.#entries.delete(oldestId);
      zeroize(oldestKey);
    }
    this.#entries.set(id, key);
    return key;
  }

  /** Forgets one epoch (its key failed to open a message, or it was retired). */
  forget(id: string): void {
    zeroize(this.#entries.get(id));
    this.#entries.delete(id);
  }

  clear(): void {
    for (const k of this.#entries.values()) zeroize(k);
    this.#entries.clear();
  }
}
