/**
 * Receiver-side cache of sealing-epoch content keys. A device reuses one ephemeral X25519 key and
 * content key for an epoch, so the receiver does one ECDH + HKDF per epoch instead of per message.
 * Bounded: least recently used entries go first, and their keys are zeroised on eviction (and
 * their keyed opening contexts freed).
 *
 * Recency is kept by Map insertion order. Moving an entry to the end on every hit costs more than
 * the rest of the lookup, so a hit moves its entry only once it has drifted into the older half:
 * the eviction order stays least-recently-used to within half the capacity, and a device streaming
 * within one epoch costs one hash lookup per message.
 */
import { aeadOpenContext, type AeadOpenContext } from '../crypto/keyed.ts';
import type { CryptoProvider } from '../crypto/provider.ts';
import type { AeadId } from '../crypto/suites.ts';
import { zeroize } from '../util/bytes.ts';

interface Entry {
  key: Uint8Array;
  stamp: number;
  /** A keyed opening context under `key`, made on the epoch's first message (see `opener`). */
  opener?: AeadOpenContext | undefined;
}

/** Wipes an entry's key and frees its context. */
function release(e: Entry | undefined): void {
  if (e === undefined) return;
  zeroize(e.key);
  e.opener?.destroy();
  e.opener = undefined;
}

export class EpochKeyCache {
  readonly #max: number;
  readonly #entries = new Map<string, Entry>();
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
      if (old.key !== key) release(old);
      else old.opener?.destroy();
    } else if (this.#entries.size >= this.#max) {
      const [oldestId, oldest] = this.#entries.entries().next().value as [string, Entry];
      this.#entries.delete(oldestId);
      release(oldest);
    }
    this.#entries.set(id, { key, stamp: ++this.#tick });
  }

  /**
   * A keyed opening context (src/crypto/keyed.ts) under the cached key for `id`, made on first use
   * and freed with the entry: the messages of one epoch share one cipher set-up. Undefined when
   * `id` is not cached. The caller must not destroy it.
   */
  opener(id: string, provider: CryptoProvider, aead: AeadId, nonceLength: number): AeadOpenContext | undefined {
    const e = this.#entries.get(id);
    if (e === undefined) return undefined;
    if (e.opener === undefined || e.opener.aead !== aead || e.opener.nonceLength !== nonceLength) {
      e.opener?.destroy();
      e.opener = aeadOpenContext(provider, aead, e.key, { nonceLength });
    }
    return e.opener;
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
    release(this.#entries.get(id));
    this.#entries.delete(id);
  }

  clear(): void {
    for (const e of this.#entries.values()) release(e);
    this.#entries.clear();
  }
}
