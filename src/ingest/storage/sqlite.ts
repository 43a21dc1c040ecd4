/**
 * SQLite storage (better-sqlite3, WAL): the embedded default. better-sqlite3 is synchronous; each
 * call is short and indexed, so it runs inline rather than on a worker. `synchronous = FULL`: a
 * commit is on disk before the ingest service acknowledges the device.
 *
 * @example
 *   const storage = new SqliteStorage({ path: '/var/lib/vitalseal/ingest.db' });
 *   await storage.init();
 */
import Database from 'better-sqlite3';
import { checkRecord } from '../../keystore/hierarchy/json-file-records.ts';
import type { RekeyState, WrappedKeyRecord, WrappedKeyRecordStore } from '../../keystore/hierarchy/types.ts';
import { asBuffer } from '../../util/bytes.ts';
import { KeyStoreError, StorageError } from '../../util/errors.ts';
import {
  apiTokenFromRow, closedError, deviceExistsError, deviceFromRow, enrolTokenFromRow, existsError, messageFromRow, num, rekeyFromRow, wrappedKeyFromRow,
  type ApiTokenRow, type DeviceRow, type EnrolTokenRow, type MessageRow, type RekeyRow, type WrappedKeyRow,
} from './rows.ts';
import { startWalCheckpointer, type WalCheckpointer } from './sqlite-checkpointer.ts';
import { startMessageWriter, type MessageWriter, type TouchParams } from './sqlite-writer.ts';
import { DATA_TABLES, gapQuery, schemaStatements, SCHEMA_VERSION, TOUCH_DEVICE_SQL } from './schema.ts';
import { latestActivity } from './types.ts';
import type {
  StoreRequest, ApiTokenRecord, ConsumeResult, DeviceActivity, DeviceRecord, DeviceRegistration, DeviceStatus, EnrolTokenRecord, IngestStorage,
  MessageCursor, SequenceGap, StoredMessage,
} from './types.ts';

export interface SqliteStorageOptions {
  /** File path, or ':memory:' for tests that need no durability. */
  readonly path: string;
  /**
   * WAL checkpoints on a worker thread (sqlite-checkpointer.ts) instead of inside the message path's
   * commits; the service turns it on. Ignored for ':memory:'.
   */
  readonly checkpointInBackground?: boolean;
  /**
   * The message path's batches (`storeMessages`) committed by a worker thread on its own connection
   * (sqlite-writer.ts), so their inserts and fsyncs do not stop the event loop; the service turns it
   * on. Ignored for ':memory:'.
   */
  readonly writeMessagesInBackground?: boolean;
}

/**
 * Page cache and checkpoint sizes for a fleet's interleaved streams (also used by the benchmark's
 * plaintext baseline, so both write under the same settings). Every device appends at its own place
 * in the messages table's three indexes, so a batch from many devices dirties a few thousand hot
 * pages: the default 2 MiB cache misses them, and the default checkpoint every 1000 WAL pages
 * copies them back into the database file (and fsyncs it) every few batches, inside a commit.
 * A 32 MiB cache keeps the hot pages, and a checkpoint every 10 000 pages (about 40 MiB of WAL)
 * copies each of them once for many commits. Durability is unchanged: every commit is still
 * fsynced to the WAL before it returns (`synchronous = FULL`).
 */
export const SQLITE_THROUGHPUT_PRAGMAS: readonly string[] = ['cache_size = -32768', 'wal_autocheckpoint = 10000'];

const INSERT_MESSAGE_SQL = `INSERT INTO messages (device_id, seq, received_at, first_time, last_time, key_version, nonce, ciphertext)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING`;
const TOUCH_SQL = TOUCH_DEVICE_SQL((n) => `@${n}`, 'MAX');

/** TOUCH_SQL's parameters for a device's latest activity. */
function touchParams(device: string, a: DeviceActivity): TouchParams {
  return { seen: a.seenAt, transport: a.transport, suite: a.suite, epoch: a.sealingEpoch ?? null, epochStart: a.epochStartedAt ?? null, device };
}

const BUMP_REGISTRY = "UPDATE meta SET value = value + 1 WHERE name = 'registry-version'";

function isUniqueViolation(e: unknown): boolean {
  return (e as { code?: unknown }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || (e as { code?: unknown }).code === 'SQLITE_CONSTRAINT_UNIQUE';
}

/** One wrapped-key record; `KeyStoreError('exists')` when (key id, version) is taken. */
function insertKeyRecord(statement: (sql: string) => Database.Statement, r: WrappedKeyRecord): void {
  try {
    statement('INSERT INTO wrapped_keys (key_id, version, kek_name, wrapped, created_at) VALUES (?, ?, ?, ?, ?)')
      .run(r.keyId, r.version, r.kekName, Buffer.from(r.wrapped), r.createdAt);
  } catch (e) {
    if (isUniqueViolation(e)) throw existsError(r.keyId, r.version);
    throw e;
  }
}

export class SqliteStorage implements IngestStorage {
  readonly kind = 'sqlite' as const;
  readonly #db: Database.Database;
  readonly #statements = new Map<string, Database.Statement>();
  readonly #checkpointer: WalCheckpointer | undefined;
  readonly #writer: MessageWriter | undefined;
  #closed = false;

  constructor(opts: SqliteStorageOptions) {
    try {
      this.#db = new Database(opts.path);
    } catch (e) {
      throw new StorageError('storage-open', `cannot open SQLite database ${opts.path}: ${(e as Error).message}`, { cause: e });
    }
    this.#db.pragma('journal_mode = WAL');
    this.#db.pragma('synchronous = FULL');
    for (const p of SQLITE_THROUGHPUT_PRAGMAS) this.#db.pragma(p);
    this.#db.pragma('foreign_keys = ON');
    // Another connection (the operator's CLI) may hold the write lock briefly.
    this.#db.pragma('busy_timeout = 5000');
    this.#checkpointer = opts.checkpointInBackground === true && opts.path !== ':memory:' ? startWalCheckpointer(opts.path) : undefined;
    this.#writer = opts.writeMessagesInBackground === true && opts.path !== ':memory:'
      ? startMessageWriter(opts.path, { insertSql: INSERT_MESSAGE_SQL, touchSql: TOUCH_SQL, pragmas: [...SQLITE_THROUGHPUT_PRAGMAS, 'foreign_keys = ON', 'busy_timeout = 5000'] })
      : undefined;
  }

  /** Batches the writer thread has committed (0 without one). */
  get backgroundBatches(): number {
    return this.#writer?.batches ?? 0;
  }

  /** Checkpoints the background worker has run (0 without one). */
  get backgroundCheckpoints(): number {
    return this.#checkpointer?.runs ?? 0;
  }

  #checkOpen(): void {
    if (this.#closed) throw new StorageError('storage-closed', 'the ingest database is closed');
  }

  #s(sql: string): Database.Statement {
    this.#checkOpen();
    let s = this.#statements.get(sql);
    if (s === undefined) {
      s = this.#db.prepare(sql);
      this.#statements.set(sql, s);
    }
    return s;
  }

  async init(): Promise<void> {
    this.#db.transaction(() => {
      for (const s of schemaStatements('sqlite')) this.#db.exec(s);
    }).immediate();
    const v = (this.#s("SELECT value FROM meta WHERE name = 'schema-version'").get() as { value: number }).value;
    if (v > SCHEMA_VERSION) throw new StorageError('schema-newer', `the ingest database has schema version ${v}; this build knows ${SCHEMA_VERSION}`);
  }

  async upsertDevice(d: DeviceRegistration): Promise<void> {
    this.#db.transaction(() => {
      this.#s(`INSERT INTO devices (device_id, credential, credential_sha256, status, enrolled_at, status_changed_at, cert_serial, cert_not_after)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET credential = excluded.credential,
        credential_sha256 = excluded.credential_sha256, status = excluded.status, enrolled_at = excluded.enrolled_at,
        status_changed_at = CASE WHEN devices.status = excluded.status THEN devices.status_changed_at ELSE excluded.status_changed_at END,
        cert_serial = excluded.cert_serial, cert_not_after = excluded.cert_not_after`)
        .run(d.deviceId, d.credential, d.credentialSha256, d.status, d.enrolledAt, d.enrolledAt, d.certSerial ?? null, d.certNotAfter ?? null);
      this.#s(BUMP_REGISTRY).run();
    }).immediate();
  }

  async registerDeviceWithKey(d: DeviceRegistration, key: WrappedKeyRecord): Promise<void> {
    const r = checkRecord(key, 'insert');
    this.#db.transaction(() => {
      if (this.#s('SELECT 1 FROM devices WHERE device_id = ?').get(d.deviceId) !== undefined) throw deviceExistsError(d.deviceId);
      insertKeyRecord((sql) => this.#s(sql), r);
      this.#s(`INSERT INTO devices (device_id, credential, credential_sha256, status, enrolled_at, status_changed_at, cert_serial, cert_not_after)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(d.deviceId, d.credential, d.credentialSha256, d.status, d.enrolledAt, d.enrolledAt, d.certSerial ?? null, d.certNotAfter ?? null);
      this.#s(BUMP_REGISTRY).run();
    }).immediate();
  }

  async getDevice(deviceId: string): Promise<DeviceRecord | undefined> {
    const row = this.#s('SELECT * FROM devices WHERE device_id = ?').get(deviceId) as DeviceRow | undefined;
    return row === undefined ? undefined : deviceFromRow(row);
  }

  async listDevices(): Promise<DeviceRecord[]> {
    return (this.#s('SELECT * FROM devices ORDER BY device_id').all() as DeviceRow[]).map(deviceFromRow);
  }

  async setDeviceStatus(deviceId: string, status: DeviceStatus, at: number): Promise<boolean> {
    return this.#db.transaction(() => {
      const changed = this.#s('UPDATE devices SET status = ?, status_changed_at = ? WHERE device_id = ?').run(status, at, deviceId).changes === 1;
      if (changed) this.#s(BUMP_REGISTRY).run();
      return changed;
    }).immediate();
  }

  async registryVersion(): Promise<number> {
    return num((this.#s("SELECT value FROM meta WHERE name = 'registry-version'").get() as { value: number }).value);
  }

  async importDevices(devices: readonly DeviceRecord[]): Promise<void> {
    const insert = this.#s(`INSERT INTO devices (device_id, credential, credential_sha256, status, enrolled_at, status_changed_at, cert_serial, cert_not_after, last_seen_at, transport, suite, sealing_epoch, epoch_started_at, rejections, last_rejection_at, last_rejection_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    this.#db.transaction(() => {
      for (const d of devices) insert.run(d.deviceId, d.credential, d.credentialSha256, d.status, d.enrolledAt, d.statusChangedAt ?? null, d.certSerial ?? null, d.certNotAfter ?? null, d.lastSeenAt ?? null, d.transport ?? null, d.suite ?? null, d.sealingEpoch ?? null, d.epochStartedAt ?? null, d.rejections, d.lastRejectionAt ?? null, d.lastRejectionReason ?? null);
      this.#s(BUMP_REGISTRY).run();
    }).immediate();
  }

  async addRejections(deviceId: string, count: number, at: number, reason: string): Promise<void> {
    this.#s(`UPDATE devices SET rejections = rejections + ?, last_rejection_at = MAX(COALESCE(last_rejection_at, 0), ?),
      last_rejection_reason = ? WHERE device_id = ?`).run(count, at, reason, deviceId);
  }

  async storeMessage(m: StoredMessage, activity?: DeviceActivity): Promise<'stored' | 'duplicate'> {
    return this.#db.transaction(() => {
      const r = this.#s(INSERT_MESSAGE_SQL).run(m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, Buffer.from(m.nonce), Buffer.from(m.ciphertext));
      if (activity !== undefined) this.#s(TOUCH_SQL).run(touchParams(m.deviceId, activity));
      return r.changes === 1 ? 'stored' as const : 'duplicate' as const;
    }).immediate();
  }

  async storeMessages(batch: readonly StoreRequest[]): Promise<('stored' | 'duplicate')[]> {
    this.#checkOpen();
    const touches = [...latestActivity(batch)].map(([device, a]) => touchParams(device, a));
    if (this.#writer?.alive === true) {
      return this.#writer.store(batch.map(({ message: m }) => [m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, m.nonce, m.ciphertext] as const), touches);
    }
    const insert = this.#s(INSERT_MESSAGE_SQL);
    const touch = this.#s(TOUCH_SQL);
    return this.#db.transaction(() => {
      const results = batch.map(({ message: m }) => (insert.run(m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, asBuffer(m.nonce), asBuffer(m.ciphertext)).changes === 1 ? 'stored' as const : 'duplicate' as const));
      for (const t of touches) touch.run(t);
      return results;
    }).immediate();
  }

  async readMessages(deviceId: string, from: number, to: number, limit = 10_000): Promise<StoredMessage[]> {
    const rows = this.#s(`SELECT * FROM messages WHERE device_id = ? AND last_time >= ? AND first_time <= ?
      ORDER BY seq LIMIT ?`).all(deviceId, from, to, limit) as MessageRow[];
    return rows.map(messageFromRow);
  }

  async gaps(deviceId: string): Promise<SequenceGap[]> {
    const rows = this.#s(gapQuery('?')).all(deviceId) as { gap_from: number; gap_to: number }[];
    return rows.map((r) => ({ from: r.gap_from, to: r.gap_to }));
  }

  async highestSeq(deviceId: string): Promise<number> {
    const r = this.#s('SELECT MAX(seq) AS m FROM messages WHERE device_id = ?').get(deviceId) as { m: number | null };
    return r.m ?? 0;
  }

  async countMessages(deviceId?: string): Promise<number> {
    const r = deviceId === undefined
      ? (this.#s('SELECT COUNT(*) AS n FROM messages').get() as { n: number })
      : (this.#s('SELECT COUNT(*) AS n FROM messages WHERE device_id = ?').get(deviceId) as { n: number });
    return r.n;
  }

  async messagesBelowKeyVersion(deviceId: string, version: number, limit: number, afterSeq = -1): Promise<StoredMessage[]> {
    return (this.#s('SELECT * FROM messages WHERE device_id = ? AND seq > ? AND key_version < ? ORDER BY seq LIMIT ?')
      .all(deviceId, afterSeq, version, limit) as MessageRow[]).map(messageFromRow);
  }

  async rewriteMessage(deviceId: string, seq: number, fromVersion: number, toVersion: number, nonce: Uint8Array, ciphertext: Uint8Array): Promise<boolean> {
    return this.#s('UPDATE messages SET key_version = ?, nonce = ?, ciphertext = ? WHERE device_id = ? AND seq = ? AND key_version = ?')
      .run(toVersion, Buffer.from(nonce), Buffer.from(ciphertext), deviceId, seq, fromVersion).changes === 1;
  }

  async listMessages(after: MessageCursor | undefined, limit: number): Promise<StoredMessage[]> {
    const rows = after === undefined
      ? this.#s('SELECT * FROM messages ORDER BY device_id, seq LIMIT ?').all(limit)
      : this.#s('SELECT * FROM messages WHERE device_id > ? OR (device_id = ? AND seq > ?) ORDER BY device_id, seq LIMIT ?')
        .all(after.deviceId, after.deviceId, after.seq, limit);
    return (rows as MessageRow[]).map(messageFromRow);
  }

  async importMessages(messages: readonly StoredMessage[]): Promise<void> {
    const insert = this.#s(`INSERT INTO messages (device_id, seq, received_at, first_time, last_time, key_version, nonce, ciphertext)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?)`);
    this.#db.transaction(() => {
      for (const m of messages) {
        insert.run(m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, Buffer.from(m.nonce), Buffer.from(m.ciphertext));
      }
    }).immediate();
  }

  keyRecords(): WrappedKeyRecordStore {
    return new SqliteKeyRecords(this.#db, (sql) => this.#s(sql));
  }

  async putEnrolToken(t: EnrolTokenRecord): Promise<void> {
    this.#s('INSERT INTO enrol_tokens (token_sha256, device_id, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?)')
      .run(t.tokenSha256, t.deviceId, t.createdAt, t.expiresAt, t.usedAt ?? null);
  }

  async consumeEnrolToken(tokenSha256: string, now: number): Promise<ConsumeResult> {
    return this.#db.transaction((): ConsumeResult => {
      const won = this.#s('UPDATE enrol_tokens SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL AND expires_at > ?').run(now, tokenSha256, now).changes === 1;
      const row = this.#s('SELECT * FROM enrol_tokens WHERE token_sha256 = ?').get(tokenSha256) as EnrolTokenRow | undefined;
      if (row === undefined) return { status: 'unknown' };
      if (won) return { status: 'ok', token: enrolTokenFromRow(row) };
      return { status: row.used_at !== null ? 'used' : 'expired' };
    }).immediate();
  }

  async putApiToken(t: ApiTokenRecord): Promise<void> {
    this.#s('INSERT INTO api_tokens (token_sha256, name, role, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(t.tokenSha256, t.name, t.role, t.createdAt, t.expiresAt ?? null, t.revokedAt ?? null);
  }

  async getApiToken(tokenSha256: string): Promise<ApiTokenRecord | undefined> {
    const row = this.#s('SELECT * FROM api_tokens WHERE token_sha256 = ?').get(tokenSha256) as ApiTokenRow | undefined;
    return row === undefined ? undefined : apiTokenFromRow(row);
  }

  async listApiTokens(): Promise<ApiTokenRecord[]> {
    return (this.#s('SELECT * FROM api_tokens ORDER BY name, created_at').all() as ApiTokenRow[]).map(apiTokenFromRow);
  }

  async revokeApiToken(name: string, at: number): Promise<number> {
    return this.#s('UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL').run(at, name).changes;
  }

  async tryLease(name: string, owner: string, now: number, ttlMs: number): Promise<boolean> {
    return this.#s(`INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET
      owner = excluded.owner, expires_at = excluded.expires_at WHERE leases.owner = excluded.owner OR leases.expires_at < ?`)
      .run(name, owner, now + ttlMs, now).changes === 1;
  }

  async releaseLease(name: string, owner: string): Promise<void> {
    this.#s('DELETE FROM leases WHERE name = ? AND owner = ?').run(name, owner);
  }

  async isEmpty(): Promise<boolean> {
    for (const t of [...DATA_TABLES, 'enrol_tokens', 'rekey_state']) {
      if ((this.#s(`SELECT EXISTS (SELECT 1 FROM ${t}) AS e`).get() as { e: number }).e !== 0) return false;
    }
    return true;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Batches already handed to the writer are committed (and answered) before anything closes.
    await this.#writer?.close();
    await this.#checkpointer?.stop();
    this.#statements.clear();
    this.#db.close();
  }
}

/** The key hierarchy's records in the ingest database (SQLite). */
class SqliteKeyRecords implements WrappedKeyRecordStore {
  readonly #db: Database.Database;
  readonly #stmt: (sql: string) => Database.Statement;
  #closed = false;

  constructor(db: Database.Database, stmt: (sql: string) => Database.Statement) {
    this.#db = db;
    this.#stmt = stmt;
  }

  #s(sql: string): Database.Statement {
    if (this.#closed) throw closedError();
    return this.#stmt(sql);
  }

  async list(keyId?: string): Promise<WrappedKeyRecord[]> {
    const rows = keyId === undefined
      ? this.#s('SELECT * FROM wrapped_keys ORDER BY key_id, version').all()
      : this.#s('SELECT * FROM wrapped_keys WHERE key_id = ? ORDER BY version').all(keyId);
    return (rows as WrappedKeyRow[]).map(wrappedKeyFromRow);
  }

  async get(keyId: string, version: number): Promise<WrappedKeyRecord | undefined> {
    const row = this.#s('SELECT * FROM wrapped_keys WHERE key_id = ? AND version = ?').get(keyId, version) as WrappedKeyRow | undefined;
    return row === undefined ? undefined : wrappedKeyFromRow(row);
  }

  async insert(record: WrappedKeyRecord): Promise<void> {
    insertKeyRecord((sql) => this.#s(sql), checkRecord(record, 'insert'));
  }

  async replace(records: readonly WrappedKeyRecord[]): Promise<void> {
    const recs = records.map((r) => checkRecord(r, 'replace'));
    const update = this.#s('UPDATE wrapped_keys SET kek_name = ?, wrapped = ?, created_at = ? WHERE key_id = ? AND version = ?');
    this.#db.transaction(() => {
      for (const r of recs) {
        if (update.run(r.kekName, Buffer.from(r.wrapped), r.createdAt, r.keyId, r.version).changes !== 1) {
          throw new KeyStoreError('not-found', `${r.keyId} version ${r.version} has no record to replace`);
        }
      }
    }).immediate();
  }

  async remove(keyId: string, versions: readonly number[]): Promise<void> {
    const del = this.#s('DELETE FROM wrapped_keys WHERE key_id = ? AND version = ?');
    this.#db.transaction(() => {
      for (const v of versions) del.run(keyId, v);
    }).immediate();
  }

  async getRekey(keyId: string): Promise<RekeyState | undefined> {
    const row = this.#s('SELECT * FROM rekey_state WHERE key_id = ?').get(keyId) as RekeyRow | undefined;
    return row === undefined ? undefined : rekeyFromRow(row);
  }

  async putRekey(s: RekeyState): Promise<void> {
    this.#s(`INSERT INTO rekey_state (key_id, target_version, started_at, updated_at, rewritten, resumed) VALUES (?, ?, ?, ?, ?, ?)
      ON CONFLICT (key_id) DO UPDATE SET target_version = excluded.target_version, started_at = excluded.started_at,
      updated_at = excluded.updated_at, rewritten = excluded.rewritten, resumed = excluded.resumed`)
      .run(s.keyId, s.targetVersion, s.startedAt, s.updatedAt, s.rewritten, s.resumed);
  }

  async clearRekey(keyId: string): Promise<void> {
    this.#s('DELETE FROM rekey_state WHERE key_id = ?').run(keyId);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
