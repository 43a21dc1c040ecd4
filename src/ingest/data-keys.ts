/**
 * Per-device data keys (DEKs) for encryption at rest, through the key hierarchy: each device has a
 * key id (`dataKeyId`), version 1 is made on the device's first message, `rotate` makes the next
 * version, and a re-key pass (rekey.ts) moves old rows onto it.
 *
 * Unwrapping costs a key-store call (a TPM command, a token round trip), so unwrapped keys are kept
 * in a bounded cache for `ttlMs`. The TTL also bounds how long an instance keeps writing under a
 * version another instance has rotated away from: a re-key pass waits `2 × ttlMs` after a rotation
 * before it starts (rekey.ts), so no writer still holds the old version when the pass ends and
 * destroys it. Evicted keys are zeroised on the next macrotask, after any caller that was handed
 * the key (and uses it synchronously, as every caller here does) is done with it.
 *
 * @example
 *   const keys = new DeviceDataKeys({ hierarchy, clock });
 *   const dek = await keys.current('bed-7');             // creates v1 on first use
 *   const row = sealAtRest(provider, dek, 'bed-7', seq, pack);
 */
import { createHash } from 'node:crypto';
import type { DataKey } from '../keystore/hierarchy/data-key.ts';
import type { KeyHierarchy } from '../keystore/hierarchy/envelope.ts';
import { KEY_NAME_PATTERN } from '../keystore/types.ts';
import type { Clock } from '../util/clock.ts';
import { KeyStoreError } from '../util/errors.ts';

/** The key hierarchy's key id for a device's DEK: `dek.<device id>`, or `dek_<hash>` when that is too long for a key name. */
export function dataKeyId(deviceId: string): string {
  const direct = `dek.${deviceId}`;
  if (KEY_NAME_PATTERN.test(direct)) return direct;
  // '_' never follows 'dek' in the direct form, so the two forms cannot collide.
  return `dek_${createHash('sha256').update(deviceId).digest('hex').slice(0, 40)}`;
}

export interface DeviceDataKeysOptions {
  readonly hierarchy: KeyHierarchy;
  readonly clock: Clock;
  /** Unwrapped keys kept at most (default 4096). */
  readonly maxCached?: number;
  /** How long an unwrapped key is reused (default 10 minutes). */
  readonly ttlMs?: number;
}

interface Entry {
  readonly key: DataKey;
  readonly expiresAt: number;
}

export class DeviceDataKeys {
  readonly #h: KeyHierarchy;
  readonly #clock: Clock;
  readonly #max: number;
  readonly ttlMs: number;
  readonly #cache = new Map<string, Entry>();
  readonly #loading = new Map<string, Promise<DataKey>>();
  #doomed: DataKey[] = [];
  #sweep: NodeJS.Immediate | undefined;
  #unwraps = 0;

  constructor(o: DeviceDataKeysOptions) {
    this.#h = o.hierarchy;
    this.#clock = o.clock;
    this.#max = o.maxCached ?? 4096;
    this.ttlMs = o.ttlMs ?? 600_000;
    if (!Number.isSafeInteger(this.#max) || this.#max < 1) throw new RangeError('maxCached: a positive integer');
    if (!(this.ttlMs > 0)) throw new RangeError('ttlMs: positive');
  }

  get hierarchy(): KeyHierarchy {
    return this.#h;
  }

  /** Key-store unwraps so far (cache misses). */
  get unwraps(): number {
    return this.#unwraps;
  }

  get cached(): number {
    return this.#cache.size;
  }

  /** The version new rows of `deviceId` are written under; made (v1) if the device has none. */
  current(deviceId: string): Promise<DataKey> {
    return this.#get(`${dataKeyId(deviceId)}#current`, async () => {
      const keyId = dataKeyId(deviceId);
      try {
        return await this.#h.acquire(keyId, 'current');
      } catch (e) {
        if (!(e instanceof KeyStoreError && e.code === 'not-found')) throw e;
      }
      try {
        await this.#h.createKey(keyId);
      } catch (e) {
        // Another instance made it first: use theirs.
        if (!(e instanceof KeyStoreError && e.code === 'exists')) throw e;
      }
      return this.#h.acquire(keyId, 'current');
    });
  }

  /**
   * The current version if it is unwrapped and fresh, without waiting: the message path's fast way
   * (`current` for the rest). Undefined on a miss or an expired entry.
   */
  cachedCurrent(deviceId: string): DataKey | undefined {
    const hit = this.#cache.get(`${dataKeyId(deviceId)}#current`);
    return hit !== undefined && hit.expiresAt > this.#clock.now() ? hit.key : undefined;
  }

  /** A given version, for reading rows written under it. */
  version(deviceId: string, version: number): Promise<DataKey> {
    const keyId = dataKeyId(deviceId);
    return this.#get(`${keyId}#v${version}`, () => this.#h.acquire(keyId, version));
  }

  /** Drops a device's cached keys (after a rotation or a re-key pass). */
  forget(deviceId: string): void {
    const prefix = `${dataKeyId(deviceId)}#`;
    for (const [k, e] of this.#cache) {
      if (k.startsWith(prefix)) {
        this.#cache.delete(k);
        this.#destroyLater(e.key);
      }
    }
  }

  clear(): void {
    for (const e of this.#cache.values()) e.key.destroy();
    this.#cache.clear();
    for (const k of this.#doomed) k.destroy();
    this.#doomed = [];
    if (this.#sweep !== undefined) clearImmediate(this.#sweep);
    this.#sweep = undefined;
  }

  async #get(id: string, load: () => Promise<DataKey>): Promise<DataKey> {
    const now = this.#clock.now();
    const hit = this.#cache.get(id);
    if (hit !== undefined) {
      if (hit.expiresAt > now) return hit.key;
      this.#cache.delete(id);
      this.#destroyLater(hit.key);
    }
    // Concurrent misses share one unwrap.
    let pending = this.#loading.get(id);
    if (pending === undefined) {
      pending = (async () => {
        try {
          const key = await load();
          this.#unwraps++;
          if (this.#cache.size >= this.#max) {
            const [oldestId, oldest] = this.#cache.entries().next().value as [string, Entry];
            this.#cache.delete(oldestId);
            this.#destroyLater(oldest.key);
          }
          this.#cache.set(id, { key, expiresAt: this.#clock.now() + this.ttlMs });
          return key;
        } finally {
          this.#loading.delete(id);
        }
      })();
      this.#loading.set(id, pending);
    }
    return pending;
  }

  #destroyLater(key: DataKey): void {
    this.#doomed.push(key);
    this.#sweep ??= setImmediate(() => {
      this.#sweep = undefined;
      const doomed = this.#doomed;
      this.#doomed = [];
      for (const k of doomed) k.destroy();
    });
  }
}
