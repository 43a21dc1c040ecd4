/**
 * The key hierarchy (DESIGN.md "Keys"): a KEK in a KeyStore (TPM sealed object, token key, or the
 * software store's KEK) wraps data keys (DEKs) that are generated in host memory and do the AEAD
 * work. The wrapped DEKs are records (types.ts) stored beside the data, by key id and version.
 *
 * Rotation of a DEK: `rotate(keyId)` makes version n+1, which new data uses at once; data under older
 * versions stays readable. A re-key pass (`rekey`) rewrites that data under the newest version,
 * batch by batch, recording its progress, so a pass cut short resumes where it stopped; once no data
 * needs an old version, that version's record is destroyed (the data it protected, if any copy
 * survived elsewhere, is then unreadable: crypto-shredding).
 *
 * Rotation of the KEK: `rotateKek(newKekName)` unwraps each DEK record and wraps it again under the
 * new KEK. The data is not touched; the DEKs themselves do not change. Records carry their KEK's
 * name, so a KEK rotation cut short resumes by running it again.
 *
 * @example
 *   const h = new KeyHierarchy({ store, kekName: 'queue-kek', records, clock });
 *   await h.createKey('queue-meta');
 *   const sealed = await h.use('queue-meta', 'current', (k) => encrypt(k, item));   // k zeroised after
 *   await h.rotate('queue-meta');                      // new writes use v2
 *   await h.rekey('queue-meta', queueRekeyTarget);      // rewrites v1 data, then destroys v1
 *   await h.rotateKek('queue-kek-2');                   // re-wraps every DEK, data untouched
 */
import type { CryptoProvider } from '../../crypto/provider.ts';
import { getProvider } from '../../crypto/registry.ts';
import { systemClock, type Clock } from '../../util/clock.ts';
import { ApiMisuse, KeyStoreError } from '../../util/errors.ts';
import { checkKeyName } from '../names.ts';
import type { KeyEvent, KeyEventSink, KeyStore } from '../types.ts';
import { DataKey } from './data-key.ts';
import type { RekeyState, WrappedKeyRecord, WrappedKeyRecordStore } from './types.ts';

export interface KeyHierarchyOptions {
  readonly store: KeyStore;
  /** The KEK new DEK versions are wrapped under (made by the store on first use). */
  readonly kekName: string;
  readonly records: WrappedKeyRecordStore;
  readonly clock?: Clock;
  /** DEK create / rotate / destroy and KEK rotation events (never key material). */
  readonly events?: KeyEventSink;
  /** DEK length in bytes (default 32: AES-256, ChaCha20). */
  readonly dekLength?: number;
  /** Host-memory DEK generation (default node:crypto's CSPRNG). */
  readonly provider?: CryptoProvider;
}

/** One item of data under an old DEK version, as the data's owner names it. */
export interface StaleItem {
  readonly id: string;
  readonly version: number;
}

/** What a re-key pass needs from the owner of the data (the queue, the ingest database). */
export interface RekeyTarget {
  /**
   * Up to `limit` items encrypted under `keyId` with a version below `belowVersion`. Once an item is
   * rewritten it must no longer be listed.
   */
  stale(keyId: string, belowVersion: number, limit: number): Promise<readonly StaleItem[]>;
  /** Decrypts `item` with `from`, encrypts it with `to` and stores it durably. Must be idempotent. */
  rewrite(item: StaleItem, from: DataKey, to: DataKey): Promise<void>;
}

export interface RekeyOptions {
  /** Items per batch; progress is recorded after each (default 100). */
  readonly batchSize?: number;
  /** Stops the pass between items (graceful shutdown); progress is kept for the next run. */
  readonly signal?: AbortSignal;
}

export interface RekeyReport {
  readonly keyId: string;
  readonly targetVersion: number;
  /** Items rewritten by this run. */
  readonly rewritten: number;
  /** Items rewritten over every run of this pass. */
  readonly totalRewritten: number;
  /** True when this run continued a pass an earlier run had started. */
  readonly resumed: boolean;
  /** Versions destroyed at the end of the pass. */
  readonly destroyedVersions: readonly number[];
}

const KEK_REWRAP_BATCH = 64;

export class KeyHierarchy {
  readonly #store: KeyStore;
  readonly #records: WrappedKeyRecordStore;
  readonly #clock: Clock;
  readonly #events: KeyEventSink | undefined;
  readonly #dekLength: number;
  readonly #provider: CryptoProvider;
  #kekName: string;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(opts: KeyHierarchyOptions) {
    this.#store = opts.store;
    this.#records = opts.records;
    this.#kekName = checkKeyName(opts.kekName);
    this.#clock = opts.clock ?? systemClock;
    this.#events = opts.events;
    this.#dekLength = opts.dekLength ?? 32;
    if (!Number.isSafeInteger(this.#dekLength) || this.#dekLength < 16 || this.#dekLength > 64) throw new RangeError('dekLength: 16-64 bytes');
    this.#provider = opts.provider ?? getProvider();
  }

  /** The KEK new versions are wrapped under. */
  get kekName(): string {
    return this.#kekName;
  }

  /** Creates version 1 of `keyId`; `KeyStoreError('exists')` if the key id has records. */
  async createKey(keyId: string): Promise<number> {
    checkKeyName(keyId);
    return this.#exclusive(() => this.#observe('create', keyId, async () => {
      if ((await this.#records.list(keyId)).length > 0) throw new KeyStoreError('exists', `data key ${keyId} already exists`);
      await this.#newVersion(keyId, 1);
      return 1;
    }));
  }

  /** Makes version n+1 the current version; older versions stay readable until a re-key pass ends. */
  async rotate(keyId: string): Promise<number> {
    checkKeyName(keyId);
    return this.#exclusive(() => this.#observe('rotate', keyId, async () => {
      const version = (await this.#current(keyId)) + 1;
      await this.#newVersion(keyId, version);
      return version;
    }));
  }

  /** The version new data is written under; `KeyStoreError('not-found')` for an unknown key id. */
  async currentVersion(keyId: string): Promise<number> {
    checkKeyName(keyId);
    return this.#current(keyId);
  }

  /** Every version still held (readable), ascending. */
  async versions(keyId: string): Promise<number[]> {
    checkKeyName(keyId);
    return (await this.#records.list(keyId)).map((r) => r.version);
  }

  /**
   * Unwraps a version (default the current one) into host memory. The caller destroys the DataKey
   * when done. `KeyStoreError('version-destroyed')` for a version a finished re-key pass destroyed.
   */
  async acquire(keyId: string, version: number | 'current' = 'current'): Promise<DataKey> {
    checkKeyName(keyId);
    const v = version === 'current' ? await this.#current(keyId) : version;
    const record = await this.#records.get(keyId, v);
    if (record === undefined) {
      const held = await this.#records.list(keyId);
      if (held.length === 0) throw new KeyStoreError('not-found', `no data key ${keyId}`);
      throw new KeyStoreError('version-destroyed', `data key ${keyId} has no version ${v} (held: ${held.map((r) => r.version).join(', ')}); data under it cannot be read`);
    }
    const bytes = await this.#store.unwrapKey(record.kekName, record.wrapped);
    return new DataKey(keyId, v, bytes);
  }

  /** Runs `fn` with the key, and zeroises the key afterwards whatever happens. */
  async use<T>(keyId: string, version: number | 'current', fn: (key: DataKey) => T | Promise<T>): Promise<T> {
    const key = await this.acquire(keyId, version);
    try {
      return await fn(key);
    } finally {
      key.destroy();
    }
  }

  /** A pass in progress for `keyId`, if any. */
  async rekeyStatus(keyId: string): Promise<RekeyState | undefined> {
    checkKeyName(keyId);
    return this.#records.getRekey(keyId);
  }

  /**
   * Rewrites every item under an older version of `keyId` under the current version, then destroys
   * the older versions. Resumes a pass an earlier run left unfinished. When interrupted (an error
   * from the target, or `signal`), the progress so far is recorded and the error rethrown; the old
   * versions stay until a later run completes the pass.
   */
  async rekey(keyId: string, target: RekeyTarget, opts: RekeyOptions = {}): Promise<RekeyReport> {
    checkKeyName(keyId);
    const batchSize = opts.batchSize ?? 100;
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new RangeError('batchSize: a positive integer');
    return this.#exclusive(async () => {
      const current = await this.#current(keyId);
      const now = this.#clock.now();
      const previous = await this.#records.getRekey(keyId);
      // A pass resumed after a rotation targets the newest version: items already moved to the older
      // target are simply stale again and move once more.
      let state: RekeyState = previous === undefined
        ? { keyId, targetVersion: current, startedAt: now, updatedAt: now, rewritten: 0, resumed: 0 }
        : { ...previous, targetVersion: current, updatedAt: now, resumed: previous.resumed + 1 };
      await this.#records.putRekey(state);

      const to = await this.acquire(keyId, current);
      const from = new Map<number, DataKey>();
      const seen = new Set<string>();
      let rewritten = 0;
      let unrecorded = 0;
      const record = async () => {
        if (unrecorded === 0) return;
        state = { ...state, rewritten: state.rewritten + unrecorded, updatedAt: this.#clock.now() };
        unrecorded = 0;
        await this.#records.putRekey(state);
      };
      try {
        for (;;) {
          const batch = await target.stale(keyId, current, batchSize);
          if (batch.length === 0) break;
          for (const item of batch) {
            if (opts.signal?.aborted) throw new KeyStoreError('rekey-interrupted', `re-key of ${keyId} stopped; ${state.rewritten + unrecorded} items done, the rest resume on the next run`);
            if (!Number.isSafeInteger(item.version) || item.version >= current || item.version < 1) {
              throw new ApiMisuse('rekey-target', `re-key target listed item ${item.id} at version ${item.version}, not below ${current}`);
            }
            // An item listed again after its rewrite would loop forever: the target is not moving it.
            if (seen.has(item.id)) throw new KeyStoreError('rekey-stalled', `item ${item.id} is still listed under version ${item.version} after being rewritten`);
            seen.add(item.id);
            let key = from.get(item.version);
            if (key === undefined) {
              key = await this.acquire(keyId, item.version);
              from.set(item.version, key);
            }
            await target.rewrite(item, key, to);
            rewritten++;
            unrecorded++;
          }
          await record();
        }
      } catch (e) {
        await record().catch(() => undefined);
        this.#emit('rotate', keyId, e);
        throw e;
      } finally {
        to.destroy();
        for (const k of from.values()) k.destroy();
      }

      // Nothing needs the old versions any more: destroy them, then close the pass. Both steps are
      // idempotent, so a crash between them is finished by the next run.
      const old = (await this.#records.list(keyId)).map((r) => r.version).filter((v) => v < current);
      await this.#records.remove(keyId, old);
      if (old.length > 0) this.#emit('delete', keyId);
      await this.#records.clearRekey(keyId);
      this.#emit('rotate', keyId);
      return { keyId, targetVersion: current, rewritten, totalRewritten: state.rewritten, resumed: previous !== undefined, destroyedVersions: old };
    });
  }

  /**
   * Re-wraps every DEK record under `newKekName` (made by the store on first use); the data and the
   * DEKs are unchanged. Records already under the new KEK are skipped, so running it again after an
   * interruption finishes the job. Records are replaced `batchSize` at a time (default 64), each
   * batch atomically. Afterwards new versions use the new KEK.
   */
  async rotateKek(newKekName: string, opts: { readonly batchSize?: number } = {}): Promise<{ readonly rewrapped: number }> {
    checkKeyName(newKekName);
    const batchSize = opts.batchSize ?? KEK_REWRAP_BATCH;
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new RangeError('batchSize: a positive integer');
    return this.#exclusive(() => this.#observe('rotate', newKekName, async () => {
      const pending = (await this.#records.list()).filter((r) => r.kekName !== newKekName);
      let rewrapped = 0;
      for (let i = 0; i < pending.length; i += batchSize) {
        const batch: WrappedKeyRecord[] = [];
        for (const r of pending.slice(i, i + batchSize)) {
          const dek = await this.#store.unwrapKey(r.kekName, r.wrapped);
          try {
            batch.push({ ...r, kekName: newKekName, wrapped: await this.#store.wrapKey(newKekName, dek) });
          } finally {
            dek.fill(0);
          }
        }
        await this.#records.replace(batch);
        rewrapped += batch.length;
      }
      this.#kekName = newKekName;
      return { rewrapped };
    }));
  }

  /**
   * Deletes an old KEK from the store once no record uses it; `KeyStoreError('in-use')` otherwise.
   */
  async retireKek(kekName: string): Promise<void> {
    checkKeyName(kekName);
    await this.#exclusive(async () => {
      if (kekName === this.#kekName) throw new KeyStoreError('in-use', `KEK ${kekName} is the current KEK`);
      const users = (await this.#records.list()).filter((r) => r.kekName === kekName);
      if (users.length > 0) throw new KeyStoreError('in-use', `KEK ${kekName} still wraps ${users.length} data key version(s); run rotateKek first`);
      await this.#store.delete(kekName);
    });
  }

  /** Destroys every version of `keyId`: the data under it becomes unreadable (crypto-shredding). */
  async destroyKey(keyId: string): Promise<void> {
    checkKeyName(keyId);
    await this.#exclusive(() => this.#observe('delete', keyId, async () => {
      const versions = await this.versions(keyId);
      if (versions.length === 0) throw new KeyStoreError('not-found', `no data key ${keyId}`);
      await this.#records.remove(keyId, versions);
      await this.#records.clearRekey(keyId);
    }));
  }

  // ---- internals ----

  async #current(keyId: string): Promise<number> {
    const records = await this.#records.list(keyId);
    const last = records[records.length - 1];
    if (last === undefined) throw new KeyStoreError('not-found', `no data key ${keyId}`);
    return last.version;
  }

  /** Generates a DEK in host memory, wraps it, stores the record, zeroises the DEK. */
  async #newVersion(keyId: string, version: number): Promise<void> {
    const dek = this.#provider.randomBytes(this.#dekLength);
    try {
      const wrapped = await this.#store.wrapKey(this.#kekName, dek);
      await this.#records.insert({ keyId, version, kekName: this.#kekName, wrapped, createdAt: this.#clock.now() });
    } finally {
      dek.fill(0);
    }
  }

  #emit(operation: KeyEvent['operation'], keyName: string, error?: unknown): void {
    if (this.#events === undefined) return;
    const store = this.#store.describe().kind;
    const code = (error as { code?: unknown } | undefined)?.code;
    this.#events.record(error === undefined
      ? { operation, keyName, store, result: 'ok' }
      : { operation, keyName, store, result: 'error', code: typeof code === 'string' && /^[a-z0-9-]{1,48}$/.test(code) ? code : 'internal' });
  }

  async #observe<T>(operation: KeyEvent['operation'], keyName: string, fn: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await fn();
    } catch (e) {
      this.#emit(operation, keyName, e);
      throw e;
    }
    this.#emit(operation, keyName);
    return result;
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const task = this.#queue.then(fn);
    this.#queue = task.catch(() => undefined);
    return task;
  }
}
