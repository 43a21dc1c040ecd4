/**
 * Wrapped-key records in one JSON file: the device agent's `WrappedKeyRecordStore`.
 *
 *   { "format": "vitalseal-wrapped-keys", "v": 1,
 *     "records": [{ "keyId": "queue-meta", "version": 2, "kekName": "queue-kek", "wrapped": "<base64>", "createdAt": 1700000000000 }],
 *     "rekey":   [{ "keyId": "queue-meta", "targetVersion": 2, "startedAt": ..., "updatedAt": ..., "rewritten": 10, "resumed": 0 }] }
 *
 * Every change rewrites the file atomically (mode 0600); a crash leaves the old or the new file. The
 * blobs are wrapped (useless without the KEK), but the file still says which keys exist, so it is
 * kept private. One process owns the file; the parser is strict and refuses unknown fields.
 *
 * @example
 *   const records = await openJsonFileRecordStore('/var/lib/vitalseal/wrapped-keys.json');
 */
import { KeyStoreError } from '../../util/errors.ts';
import { KEY_NAME_PATTERN } from '../types.ts';
import { readPrivateFile, writePrivateFileAtomic } from '../private-file.ts';
import type { RekeyState, WrappedKeyRecord, WrappedKeyRecordStore } from './types.ts';

const FORMAT = 'vitalseal-wrapped-keys';
const MAX_FILE_BYTES = 16 * 1024 * 1024;
const MAX_WRAPPED_BYTES = 8192;

function byKey(a: { keyId: string; version?: number }, b: { keyId: string; version?: number }): number {
  if (a.keyId !== b.keyId) return a.keyId < b.keyId ? -1 : 1;
  return (a.version ?? 0) - (b.version ?? 0);
}

function copyRecord(r: WrappedKeyRecord): WrappedKeyRecord {
  return { keyId: r.keyId, version: r.version, kekName: r.kekName, wrapped: Uint8Array.from(r.wrapped), createdAt: r.createdAt };
}

/** Checks a record's fields; used on input and when parsing the file. */
export function checkRecord(r: WrappedKeyRecord, where: string): WrappedKeyRecord {
  const bad = (what: string) => new KeyStoreError('invalid-record', `${where}: ${what}`);
  if (typeof r.keyId !== 'string' || !KEY_NAME_PATTERN.test(r.keyId)) throw bad('keyId is not a valid key name');
  if (!Number.isSafeInteger(r.version) || r.version < 1) throw bad('version must be an integer >= 1');
  if (typeof r.kekName !== 'string' || !KEY_NAME_PATTERN.test(r.kekName)) throw bad('kekName is not a valid key name');
  if (!(r.wrapped instanceof Uint8Array) || r.wrapped.length === 0 || r.wrapped.length > MAX_WRAPPED_BYTES) throw bad('wrapped must be 1-8192 bytes');
  if (!Number.isSafeInteger(r.createdAt) || r.createdAt < 0) throw bad('createdAt must be a non-negative integer');
  return r;
}

function checkRekey(s: RekeyState, where: string): RekeyState {
  const bad = (what: string) => new KeyStoreError('invalid-record', `${where}: ${what}`);
  if (typeof s.keyId !== 'string' || !KEY_NAME_PATTERN.test(s.keyId)) throw bad('keyId is not a valid key name');
  for (const k of ['targetVersion', 'startedAt', 'updatedAt', 'rewritten', 'resumed'] as const) {
    if (!Number.isSafeInteger(s[k]) || s[k] < 0) throw bad(`${k} must be a non-negative integer`);
  }
  return s;
}

function exactFields(o: unknown, fields: readonly string[], where: string): Record<string, unknown> {
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new KeyStoreError('records-corrupt', `${where}: expected an object`);
  const keys = Object.keys(o);
  if (keys.length !== fields.length || !fields.every((f) => keys.includes(f))) {
    throw new KeyStoreError('records-corrupt', `${where}: expected exactly the fields ${fields.join(', ')}`);
  }
  return o as Record<string, unknown>;
}

function decodeBase64(s: unknown, where: string): Uint8Array {
  if (typeof s !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) throw new KeyStoreError('records-corrupt', `${where}: not base64`);
  return new Uint8Array(Buffer.from(s, 'base64'));
}

function parseFile(text: string, path: string): { records: WrappedKeyRecord[]; rekey: RekeyState[] } {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new KeyStoreError('records-corrupt', `wrapped-key records ${path}: not JSON (truncated or damaged)`);
  }
  const top = exactFields(doc, ['format', 'v', 'records', 'rekey'], path);
  if (top['format'] !== FORMAT || top['v'] !== 1) throw new KeyStoreError('records-corrupt', `${path}: not a ${FORMAT} v1 file`);
  if (!Array.isArray(top['records']) || !Array.isArray(top['rekey'])) throw new KeyStoreError('records-corrupt', `${path}: records and rekey must be arrays`);
  const records = top['records'].map((r: unknown, i: number) => {
    const where = `${path}: records[${i}]`;
    const o = exactFields(r, ['keyId', 'version', 'kekName', 'wrapped', 'createdAt'], where);
    const rec = { keyId: o['keyId'], version: o['version'], kekName: o['kekName'], wrapped: decodeBase64(o['wrapped'], where), createdAt: o['createdAt'] } as WrappedKeyRecord;
    try {
      return checkRecord(rec, where);
    } catch (e) {
      throw new KeyStoreError('records-corrupt', (e as Error).message);
    }
  });
  const rekey = top['rekey'].map((r: unknown, i: number) => {
    const where = `${path}: rekey[${i}]`;
    const o = exactFields(r, ['keyId', 'targetVersion', 'startedAt', 'updatedAt', 'rewritten', 'resumed'], where) as unknown as RekeyState;
    try {
      return checkRekey(o, where);
    } catch (e) {
      throw new KeyStoreError('records-corrupt', (e as Error).message);
    }
  });
  const seen = new Set<string>();
  for (const r of records) {
    const k = `${r.keyId}\u0000${r.version}`;
    if (seen.has(k)) throw new KeyStoreError('records-corrupt', `${path}: ${r.keyId} version ${r.version} appears twice`);
    seen.add(k);
  }
  return { records, rekey };
}

export class JsonFileRecordStore implements WrappedKeyRecordStore {
  readonly #path: string;
  #records: WrappedKeyRecord[];
  #rekey: RekeyState[];
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(path: string, records: WrappedKeyRecord[], rekey: RekeyState[]) {
    this.#path = path;
    this.#records = records.sort(byKey);
    this.#rekey = rekey.sort(byKey);
  }

  /** @internal Use openJsonFileRecordStore. */
  static _create(path: string, records: WrappedKeyRecord[], rekey: RekeyState[]): JsonFileRecordStore {
    return new JsonFileRecordStore(path, records, rekey);
  }

  async list(keyId?: string): Promise<WrappedKeyRecord[]> {
    return this.#read(() => this.#records.filter((r) => keyId === undefined || r.keyId === keyId).map(copyRecord));
  }

  async get(keyId: string, version: number): Promise<WrappedKeyRecord | undefined> {
    return this.#read(() => {
      const r = this.#records.find((x) => x.keyId === keyId && x.version === version);
      return r === undefined ? undefined : copyRecord(r);
    });
  }

  async insert(record: WrappedKeyRecord): Promise<void> {
    const rec = copyRecord(checkRecord(record, 'insert'));
    await this.#write(() => {
      if (this.#records.some((x) => x.keyId === rec.keyId && x.version === rec.version)) {
        throw new KeyStoreError('exists', `${rec.keyId} version ${rec.version} already has a record`);
      }
      return { records: [...this.#records, rec].sort(byKey), rekey: this.#rekey };
    });
  }

  async replace(records: readonly WrappedKeyRecord[]): Promise<void> {
    const recs = records.map((r) => copyRecord(checkRecord(r, 'replace')));
    await this.#write(() => {
      const next = [...this.#records];
      for (const r of recs) {
        const i = next.findIndex((x) => x.keyId === r.keyId && x.version === r.version);
        if (i < 0) throw new KeyStoreError('not-found', `${r.keyId} version ${r.version} has no record to replace`);
        next[i] = r;
      }
      return { records: next, rekey: this.#rekey };
    });
  }

  async remove(keyId: string, versions: readonly number[]): Promise<void> {
    await this.#write(() => ({
      records: this.#records.filter((x) => !(x.keyId === keyId && versions.includes(x.version))),
      rekey: this.#rekey,
    }));
  }

  async getRekey(keyId: string): Promise<RekeyState | undefined> {
    return this.#read(() => {
      const s = this.#rekey.find((x) => x.keyId === keyId);
      return s === undefined ? undefined : { ...s };
    });
  }

  async putRekey(state: RekeyState): Promise<void> {
    const s = { ...checkRekey(state, 'putRekey') };
    await this.#write(() => ({ records: this.#records, rekey: [...this.#rekey.filter((x) => x.keyId !== s.keyId), s].sort(byKey) }));
  }

  async clearRekey(keyId: string): Promise<void> {
    await this.#write(() => ({ records: this.#records, rekey: this.#rekey.filter((x) => x.keyId !== keyId) }));
  }

  async close(): Promise<void> {
    await this.#queue.catch(() => undefined);
    this.#closed = true;
  }

  #read<T>(fn: () => T): Promise<T> {
    const task = this.#queue.then(() => {
      if (this.#closed) throw new KeyStoreError('closed', 'the record store is closed');
      return fn();
    });
    this.#queue = task.catch(() => undefined);
    return task;
  }

  /** Computes the next state, writes it, and only then makes it current. */
  #write(next: () => { records: WrappedKeyRecord[]; rekey: RekeyState[] }): Promise<void> {
    const task = this.#queue.then(async () => {
      if (this.#closed) throw new KeyStoreError('closed', 'the record store is closed');
      const state = next();
      const doc = {
        format: FORMAT,
        v: 1,
        records: state.records.map((r) => ({ keyId: r.keyId, version: r.version, kekName: r.kekName, wrapped: Buffer.from(r.wrapped).toString('base64'), createdAt: r.createdAt })),
        rekey: state.rekey.map((s) => ({ keyId: s.keyId, targetVersion: s.targetVersion, startedAt: s.startedAt, updatedAt: s.updatedAt, rewritten: s.rewritten, resumed: s.resumed })),
      };
      await writePrivateFileAtomic(this.#path, new TextEncoder().encode(`${JSON.stringify(doc, null, 1)}\n`));
      this.#records = state.records;
      this.#rekey = state.rekey;
    });
    this.#queue = task.catch(() => undefined);
    return task;
  }
}

/** Opens (or starts empty, written on the first change) the records file at `path`. */
export async function openJsonFileRecordStore(path: string): Promise<JsonFileRecordStore> {
  let text: string | undefined;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(await readPrivateFile(path, { maxBytes: MAX_FILE_BYTES, what: 'wrapped-key records file' }));
  } catch (e) {
    if (e instanceof KeyStoreError && e.code === 'file-not-found') return JsonFileRecordStore._create(path, [], []);
    if (e instanceof TypeError) throw new KeyStoreError('records-corrupt', `wrapped-key records ${path}: not UTF-8`);
    throw e;
  }
  const { records, rekey } = parseFile(text, path);
  return JsonFileRecordStore._create(path, records, rekey);
}
