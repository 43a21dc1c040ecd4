/**
 * The envelope pattern's records. A data key (DEK) is generated in host memory, wrapped by a KEK
 * that a KeyStore holds, and the wrapped blob is stored beside the data as a record named by key id
 * and version. Data carries (key id, version) so the right DEK version opens it.
 *
 * The records live behind `WrappedKeyRecordStore`: a JSON file on the device (json-file-records.ts),
 * the ingest database's tables in the ingest service (src/ingest/storage). Every implementation runs test/keystore/hierarchy/record-store-contract.ts.
 */

export interface WrappedKeyRecord {
  /** Names the data key (a KEY_NAME_PATTERN name, e.g. `queue-meta` or `device-4711`). */
  readonly keyId: string;
  /** 1, 2, 3, ...: the highest version is the one new data is written under. */
  readonly version: number;
  /** The KEK (in the key store) this blob is wrapped under. */
  readonly kekName: string;
  /** `KeyStore.wrapKey` output: opaque, authenticated. */
  readonly wrapped: Uint8Array;
  /** When this version was made (ms since the epoch, from the injected clock). */
  readonly createdAt: number;
}

/**
 * A re-key pass in progress: data under versions below `targetVersion` is being rewritten under
 * `targetVersion`. Persisted after each batch, so a pass cut short (crash, shutdown) resumes, and
 * old versions are destroyed only once nothing needs them.
 */
export interface RekeyState {
  readonly keyId: string;
  readonly targetVersion: number;
  readonly startedAt: number;
  readonly updatedAt: number;
  /** Items rewritten so far, over every run of this pass (counted when a batch completes or a run stops). */
  readonly rewritten: number;
  /** How many times the pass was resumed after an interruption. */
  readonly resumed: number;
}

/** Storage of wrapped-key records and re-key bookkeeping. Implementations make each call atomic. */
export interface WrappedKeyRecordStore {
  /** Records, sorted by key id then version; only `keyId`'s when given. */
  list(keyId?: string): Promise<WrappedKeyRecord[]>;
  get(keyId: string, version: number): Promise<WrappedKeyRecord | undefined>;
  /** Adds a record; `KeyStoreError('exists')` if (keyId, version) is taken. */
  insert(record: WrappedKeyRecord): Promise<void>;
  /** Replaces existing records all together or not at all; `KeyStoreError('not-found')` if one is absent. */
  replace(records: readonly WrappedKeyRecord[]): Promise<void>;
  /** Removes those of `versions` that exist (idempotent, so a finished pass can be finished again). */
  remove(keyId: string, versions: readonly number[]): Promise<void>;
  getRekey(keyId: string): Promise<RekeyState | undefined>;
  putRekey(state: RekeyState): Promise<void>;
  clearRekey(keyId: string): Promise<void>;
  close(): Promise<void>;
}
