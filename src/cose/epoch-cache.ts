/**
 * Receiver-side cache of sealing-epoch content keys. A device reuses one ephemeral X25519 key and
 * content key for an epoch, so the receiver does one ECDH + HKDF per epoch instead of per message.
 * Bounded: least recently used entries go first, and their keys are zeroised on eviction.
 *
 * Recency is kept by Map insertion order. Moving an entry to the end on every hit costs more than
 * the rest of the lookup, so a hit moves its entry only once it has drifted into the older half:
 * the eviction order stays least-recently-used to within half the capacity, and a device streaming
 * within one epoch costs one hash lookup per message.
 */
import { zeroize } from '../util/bytes.ts';

export class EpochKeyCache {
  readonly #max: number;
  readonly #entries = new Map<string, { key: Uint8Array; stamp: number }>();
  /** Counts insertions and moves: an entry's stamp says how far back in the order it sits. */
  #tick = 0;
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

  /** The cached key for `id`, or undefined. Callers must not zeroise the result. */
  get(id: string): Uint8Array | undefined {
    const hit = this.#entries.get(id);
    if (hit === undefined) {
      this.#misses++;
      return undefined;
    }
    this.#hits++;
    if (this.#tick - hit.stamp > this.#max / 2) {
      this.#entries.delete(id);
      hit.stamp = ++this.#tick;
      this.#entries.set(id, hit); // most recently used last
    }
    return hit.key;
  }

  /** Caches `key` for `id` (the cache owns it from now on), evicting the least recently used if full. */
  set(id: string, key: Uint8Array): void {
    const old = this.#entries.get(id);
    if (old !== undefined) {
      this.#entries.delete(id);
      if (old.key !== key) zeroize(old.key);
    } else if (this.#entries.size >= this.#max) {
      const [oldestId, oldest] = this.#entries.entries().next().value as [string, { key: Uint8Array }];
      this.#entries.delete(oldestId);
      zeroize(oldest.key);
    }
    this.#entries.set(id, { key, stamp: ++this.#tick });
  }

  /** The cached key for `id`, or the one `derive` makes (then cached). Callers must not zeroise the result. */
  getOrDerive(id: string, derive: () => Uint8Array): Uint8Array {
    const hit = this.get(id);
    if (hit !== undefined) return hit;
    const key = derive();
    this.set(id, key);
    return key;
  }

  /** Forgets one epoch (its key failed to open a message, or it was retired). */
  forget(id: string): void {
    zeroize(this.#entries.get(id)?.key);
    this.#entries.delete(id);
  }

  clear(): void {
    for (const e of this.#entries.values()) zeroize(e.key);
    this.#entries.clear();
  }
}
