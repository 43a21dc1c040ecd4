/**
 * PostgreSQL storage (`pg`): the production path. Several ingest instances may share one database;
 * exactly-once rests on the (device_id, seq) primary key, not on any in-process state. Each write
 * the ingest path makes per message is one statement (data-modifying CTEs), so one round trip and
 * one implicit transaction.
 *
 * @example
 *   const storage = new PostgresStorage({ connection: process.env.VITALSEAL_PG_URL });
 *   await storage.init();
 */
import pg from 'pg';
import { checkRecord } from '../../keystore/hierarchy/json-file-records.ts';
import type { RekeyState, WrappedKeyRecord, WrappedKeyRecordStore } from '../../keystore/hierarchy/types.ts';
import { asBuffer } from '../../util/bytes.ts';
import { KeyStoreError, StorageError } from '../../util/errors.ts';
import {
  apiTokenFromRow, closedError, deviceExistsError, deviceFromRow, enrolTokenFromRow, existsError, messageFromRow, num, rekeyFromRow, wrappedKeyFromRow,
  type ApiTokenRow, type DeviceRow, type EnrolTokenRow, type MessageRow, type RekeyRow, type WrappedKeyRow,
} from './rows.ts';
import { DATA_TABLES, gapQuery, schemaStatements, SCHEMA_VERSION, TOUCH_DEVICE_SQL } from './schema.ts';
import { latestActivity } from './types.ts';
import type {
  StoreRequest, ApiTokenRecord, ConsumeResult, DeviceActivity, DeviceRecord, DeviceRegistration, DeviceStatus, EnrolTokenRecord, IngestStorage,
  MessageCursor, SequenceGap, StoredMessage,
} from './types.ts';

export interface PostgresStorageOptions {
  /** libpq-style connection string or pg pool config; it comes from a secret file or the environment, never a log. */
  readonly connection: string | pg.PoolConfig;
  readonly maxConnections?: number;
}

const TOUCH_PARAMS: Record<string, string> = {
  device: '$1::text', seen: '$9::bigint', transport: '$10::text', suite: '$11::text', epoch: '$12::text', epochStart: '$13::bigint',
};
const STORE_SQL = `WITH ins AS (
    INSERT INTO messages (device_id, seq, received_at, first_time, last_time, key_version, nonce, ciphertext)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (device_id, seq) DO NOTHING RETURNING 1
  ), touch AS (${TOUCH_DEVICE_SQL((n) => TOUCH_PARAMS[n] as string, 'GREATEST')} AND $14::boolean RETURNING 1)
  SELECT (SELECT COUNT(*) FROM ins) AS stored`;
/** Rows per batch statement at most (8 parameters each; a power of two); the group commit writes 128 at most. */
const MAX_STATEMENT_ROWS = 256;
const batchSql = new Map<number, string>();

/**
 * A batch of up to `slots` messages in one statement. The rows are a multi-row VALUES with one
 * parameter per column, so the ciphertexts travel as binary parameters (a bytea[] parameter would
 * be sent as hex text and parsed back). The statement is prepared once per connection and slot
 * count; slot counts are powers of two (`slotsFor`) and unused slots are NULL rows that the
 * statement skips, so a connection plans at most nine such statements, not one per batch size.
 * Each device's latest activity comes as arrays (no bytes in it) and is applied once.
 */
function storeBatchSql(slots: number): string {
  const cached = batchSql.get(slots);
  if (cached !== undefined) return cached;
  const a = 8 * slots;
  const values = Array.from({ length: slots }, (_, i) => {
    const p = 8 * i;
    return `($${p + 1}::text, $${p + 2}::bigint, $${p + 3}::bigint, $${p + 4}::bigint, $${p + 5}::bigint, $${p + 6}::int, $${p + 7}::bytea, $${p + 8}::bytea)`;
  }).join(', ');
  const sql = `WITH ins AS (
    INSERT INTO messages (device_id, seq, received_at, first_time, last_time, key_version, nonce, ciphertext)
    SELECT * FROM (VALUES ${values}) AS v(device_id, seq, received_at, first_time, last_time, key_version, nonce, ciphertext)
    WHERE v.device_id IS NOT NULL
    ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq
  ), act AS (
    SELECT * FROM unnest($${a + 1}::text[], $${a + 2}::bigint[], $${a + 3}::text[], $${a + 4}::text[], $${a + 5}::text[], $${a + 6}::bigint[]) AS a(device_id, seen, transport, suite, epoch, epoch_start)
  ), touch AS (
    UPDATE devices d SET
      transport = CASE WHEN COALESCE(d.last_seen_at, 0) <= a.seen THEN a.transport ELSE d.transport END,
      suite = CASE WHEN COALESCE(d.last_seen_at, 0) <= a.seen THEN a.suite ELSE d.suite END,
      sealing_epoch = CASE WHEN COALESCE(d.last_seen_at, 0) <= a.seen AND a.epoch IS NOT NULL THEN a.epoch ELSE d.sealing_epoch END,
      epoch_started_at = CASE WHEN COALESCE(d.last_seen_at, 0) <= a.seen AND a.epoch IS NOT NULL THEN a.epoch_start ELSE d.epoch_started_at END,
      last_seen_at = GREATEST(COALESCE(d.last_seen_at, 0), a.seen)
    FROM act a WHERE d.device_id = a.device_id RETURNING 1
  ) SELECT device_id, seq FROM ins`;
  batchSql.set(slots, sql);
  return sql;
}

/** The power of two at or above `rows` (rows ≤ MAX_STATEMENT_ROWS). */
function slotsFor(rows: number): number {
  let n = 1;
  while (n < rows) n *= 2;
  return n;
}

const BUMP = "bump AS (UPDATE meta SET value = value + 1 WHERE name = 'registry-version' AND EXISTS (SELECT 1 FROM up) RETURNING 1)";

function isUniqueViolation(e: unknown): boolean {
  return (e as { code?: unknown }).code === '23505';
}

/** One wrapped-key record; `KeyStoreError('exists')` when (key id, version) is taken. */
async function insertKeyRecord(query: (sql: string, params: unknown[]) => Promise<unknown>, r: WrappedKeyRecord): Promise<void> {
  try {
    await query('INSERT INTO wrapped_keys (key_id, version, kek_name, wrapped, created_at) VALUES ($1, $2, $3, $4, $5)',
      [r.keyId, r.version, r.kekName, Buffer.from(r.wrapped), r.createdAt]);
  } catch (e) {
    if (isUniqueViolation(e)) throw existsError(r.keyId, r.version);
    throw e;
  }
}

export class PostgresStorage implements IngestStorage {
  readonly kind = 'postgres' as const;
  readonly #pool: pg.Pool;
  #closed = false;

  constructor(opts: PostgresStorageOptions) {
    const base: pg.PoolConfig = typeof opts.connection === 'string' ? { connectionString: opts.connection } : opts.connection;
    this.#pool = new pg.Pool({ ...base, max: opts.maxConnections ?? 10 });
    // An idle client's error (server restart) must not crash the process; the next query reconnects.
    this.#pool.on('error', () => undefined);
  }

  #q<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    if (this.#closed) return Promise.reject(new StorageError('storage-closed', 'the ingest database is closed'));
    return this.#pool.query<R>(sql, params);
  }

  /**
   * A statement of the message path as a named prepared statement: each pooled connection parses
   * and plans it once per name, not once per message or batch (batches use a few fixed slot counts,
   * storeBatchSql).
   */
  #prepared<R extends pg.QueryResultRow>(query: pg.QueryConfig): Promise<pg.QueryResult<R>> {
    if (this.#closed) return Promise.reject(new StorageError('storage-closed', 'the ingest database is closed'));
    return this.#pool.query<R>(query);
  }

  async #transaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    if (this.#closed) throw new StorageError('storage-closed', 'the ingest database is closed');
    const client = await this.#pool.connect();
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      client.release();
    }
  }

  async init(): Promise<void> {
    const client = await this.#pool.connect();
    try {
      // Serialise schema creation across instances starting together.
      await client.query('SELECT pg_advisory_lock(7251)');
      try {
        for (const s of schemaStatements('postgres')) await client.query(s);
      } finally {
        await client.query('SELECT pg_advisory_unlock(7251)');
      }
      const r = await client.query<{ value: string }>("SELECT value FROM meta WHERE name = 'schema-version'");
      const v = num(r.rows[0]?.value ?? 0);
      if (v > SCHEMA_VERSION) throw new StorageError('schema-newer', `the ingest database has schema version ${v}; this build knows ${SCHEMA_VERSION}`);
    } finally {
      client.release();
    }
  }

  async upsertDevice(d: DeviceRegistration): Promise<void> {
    await this.#q(`WITH up AS (INSERT INTO devices (device_id, credential, credential_sha256, status, enrolled_at, status_changed_at, cert_serial, cert_not_after)
      VALUES ($1, $2, $3, $4, $5, $5, $6, $7) ON CONFLICT (device_id) DO UPDATE SET credential = excluded.credential,
      credential_sha256 = excluded.credential_sha256, status = excluded.status, enrolled_at = excluded.enrolled_at,
      status_changed_at = CASE WHEN devices.status = excluded.status THEN devices.status_changed_at ELSE excluded.status_changed_at END,
      cert_serial = excluded.cert_serial, cert_not_after = excluded.cert_not_after RETURNING 1), ${BUMP} SELECT 1`,
    [d.deviceId, d.credential, d.credentialSha256, d.status, d.enrolledAt, d.certSerial ?? null, d.certNotAfter ?? null]);
  }

  async registerDeviceWithKey(d: DeviceRegistration, key: WrappedKeyRecord): Promise<void> {
    const r = checkRecord(key, 'insert');
    await this.#transaction(async (c) => {
      const dev = await c.query(`INSERT INTO devices (device_id, credential, credential_sha256, status, enrolled_at, status_changed_at, cert_serial, cert_not_after)
        VALUES ($1, $2, $3, $4, $5, $5, $6, $7) ON CONFLICT (device_id) DO NOTHING RETURNING 1`,
      [d.deviceId, d.credential, d.credentialSha256, d.status, d.enrolledAt, d.certSerial ?? null, d.certNotAfter ?? null]);
      if (dev.rowCount !== 1) throw deviceExistsError(d.deviceId);
      await insertKeyRecord((sql, params) => c.query(sql, params), r);
      await c.query("UPDATE meta SET value = value + 1 WHERE name = 'registry-version'");
    });
  }

  async getDevice(deviceId: string): Promise<DeviceRecord | undefined> {
    const r = await this.#q<DeviceRow>('SELECT * FROM devices WHERE device_id = $1', [deviceId]);
    const row = r.rows[0];
    return row === undefined ? undefined : deviceFromRow(row);
  }

  async listDevices(): Promise<DeviceRecord[]> {
    return (await this.#q<DeviceRow>('SELECT * FROM devices ORDER BY device_id')).rows.map(deviceFromRow);
  }

  async setDeviceStatus(deviceId: string, status: DeviceStatus, at: number): Promise<boolean> {
    const r = await this.#q<{ n: string }>(`WITH up AS (UPDATE devices SET status = $1, status_changed_at = $2 WHERE device_id = $3 RETURNING 1),
      ${BUMP} SELECT COUNT(*) AS n FROM up`, [status, at, deviceId]);
    return num(r.rows[0]?.n ?? 0) === 1;
  }

  async registryVersion(): Promise<number> {
    const r = await this.#q<{ value: string }>("SELECT value FROM meta WHERE name = 'registry-version'");
    return num(r.rows[0]?.value ?? 0);
  }

  async importDevices(devices: readonly DeviceRecord[]): Promise<void> {
    await this.#transaction(async (c) => {
      for (const d of devices) await c.query(`INSERT INTO devices (device_id, credential, credential_sha256, status, enrolled_at, status_changed_at, cert_serial, cert_not_after, last_seen_at, transport, suite, sealing_epoch, epoch_started_at, rejections, last_rejection_at, last_rejection_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`, [d.deviceId, d.credential, d.credentialSha256, d.status, d.enrolledAt, d.statusChangedAt ?? null, d.certSerial ?? null, d.certNotAfter ?? null, d.lastSeenAt ?? null, d.transport ?? null, d.suite ?? null, d.sealingEpoch ?? null, d.epochStartedAt ?? null, d.rejections, d.lastRejectionAt ?? null, d.lastRejectionReason ?? null]);
      await c.query("UPDATE meta SET value = value + 1 WHERE name = 'registry-version'");
    });
  }

  async addRejections(deviceId: string, count: number, at: number, reason: string): Promise<void> {
    await this.#q(`UPDATE devices SET rejections = rejections + $1, last_rejection_at = GREATEST(COALESCE(last_rejection_at, 0), $2),
      last_rejection_reason = $3 WHERE device_id = $4`, [count, at, reason, deviceId]);
  }

  async storeMessage(m: StoredMessage, a?: DeviceActivity): Promise<'stored' | 'duplicate'> {
    const r = await this.#prepared<{ stored: string }>({ name: 'vitalseal-store-message', text: STORE_SQL, values: [
      m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, Buffer.from(m.nonce), Buffer.from(m.ciphertext),
      a?.seenAt ?? 0, a?.transport ?? null, a?.suite ?? null, a?.sealingEpoch ?? null, a?.epochStartedAt ?? null, a !== undefined,
    ] });
    return num(r.rows[0]?.stored ?? 0) === 1 ? 'stored' : 'duplicate';
  }

  async storeMessages(batch: readonly StoreRequest[]): Promise<('stored' | 'duplicate')[]> {
    if (batch.length === 0) return [];
    // Repeats within the batch are settled here: the first is sent, later ones are duplicates.
    const first = new Map<string, number>();
    const send: number[] = [];
    batch.forEach((r, i) => {
      const k = `${r.message.deviceId}\u0000${r.message.seq}`;
      if (!first.has(k)) {
        first.set(k, i);
        send.push(i);
      }
    });
    const rows = send.map((i) => (batch[i] as StoreRequest).message);
    const acts = [...latestActivity(batch)];
    const statement = (part: readonly StoredMessage[], withActivity: boolean): pg.QueryConfig => {
      const a = withActivity ? acts : [];
      const slots = slotsFor(part.length);
      const values: unknown[] = [];
      for (const m of part) values.push(m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, asBuffer(m.nonce), asBuffer(m.ciphertext));
      for (let i = part.length; i < slots; i++) values.push(null, null, null, null, null, null, null, null);
      values.push(a.map(([d]) => d), a.map(([, x]) => x.seenAt), a.map(([, x]) => x.transport), a.map(([, x]) => x.suite),
        a.map(([, x]) => x.sealingEpoch ?? null), a.map(([, x]) => x.epochStartedAt ?? null));
      return { name: `vitalseal-store-messages-${slots}`, text: storeBatchSql(slots), values };
    };
    type Inserted = { device_id: string; seq: string };
    let inserted: Inserted[];
    if (rows.length <= MAX_STATEMENT_ROWS) {
      inserted = (await this.#prepared<Inserted>(statement(rows, true))).rows;
    } else {
      // Larger than the group commit makes them: several statements, still one transaction.
      inserted = await this.#transaction(async (c) => {
        const out: Inserted[] = [];
        for (let i = 0; i < rows.length; i += MAX_STATEMENT_ROWS) {
          out.push(...(await c.query<Inserted>(statement(rows.slice(i, i + MAX_STATEMENT_ROWS), i === 0))).rows);
        }
        return out;
      });
    }
    const stored = new Set(inserted.map((x) => `${x.device_id}\u0000${num(x.seq)}`));
    return batch.map((req, i) => {
      const k = `${req.message.deviceId}\u0000${req.message.seq}`;
      return first.get(k) === i && stored.has(k) ? 'stored' : 'duplicate';
    });
  }

  async readMessages(deviceId: string, from: number, to: number, limit = 10_000): Promise<StoredMessage[]> {
    const r = await this.#q<MessageRow>(`SELECT * FROM messages WHERE device_id = $1 AND last_time >= $2 AND first_time <= $3
      ORDER BY seq LIMIT $4`, [deviceId, from, to, limit]);
    return r.rows.map(messageFromRow);
  }

  async gaps(deviceId: string): Promise<SequenceGap[]> {
    const r = await this.#q<{ gap_from: string; gap_to: string }>(gapQuery('$1'), [deviceId]);
    return r.rows.map((x) => ({ from: num(x.gap_from), to: num(x.gap_to) }));
  }

  async highestSeq(deviceId: string): Promise<number> {
    const r = await this.#q<{ m: string | null }>('SELECT MAX(seq) AS m FROM messages WHERE device_id = $1', [deviceId]);
    return num(r.rows[0]?.m ?? 0);
  }

  async countMessages(deviceId?: string): Promise<number> {
    const r = deviceId === undefined
      ? await this.#q<{ n: string }>('SELECT COUNT(*) AS n FROM messages')
      : await this.#q<{ n: string }>('SELECT COUNT(*) AS n FROM messages WHERE device_id = $1', [deviceId]);
    return num(r.rows[0]?.n ?? 0);
  }

  async messagesBelowKeyVersion(deviceId: string, version: number, limit: number, afterSeq = -1): Promise<StoredMessage[]> {
    const r = await this.#q<MessageRow>('SELECT * FROM messages WHERE device_id = $1 AND seq > $2 AND key_version < $3 ORDER BY seq LIMIT $4',
      [deviceId, afterSeq, version, limit]);
    return r.rows.map(messageFromRow);
  }

  async rewriteMessage(deviceId: string, seq: number, fromVersion: number, toVersion: number, nonce: Uint8Array, ciphertext: Uint8Array): Promise<boolean> {
    const r = await this.#q('UPDATE messages SET key_version = $1, nonce = $2, ciphertext = $3 WHERE device_id = $4 AND seq = $5 AND key_version = $6',
      [toVersion, Buffer.from(nonce), Buffer.from(ciphertext), deviceId, seq, fromVersion]);
    return r.rowCount === 1;
  }

  async listMessages(after: MessageCursor | undefined, limit: number): Promise<StoredMessage[]> {
    // COLLATE "C": the same byte order SQLite uses, so both backends page (and back up) identically.
    const r = after === undefined
      ? await this.#q<MessageRow>('SELECT * FROM messages ORDER BY device_id COLLATE "C", seq LIMIT $1', [limit])
      : await this.#q<MessageRow>(`SELECT * FROM messages WHERE device_id COLLATE "C" > $1 OR (device_id = $1 AND seq > $2)
        ORDER BY device_id COLLATE "C", seq LIMIT $3`, [after.deviceId, after.seq, limit]);
    return r.rows.map(messageFromRow);
  }

  async importMessages(messages: readonly StoredMessage[]): Promise<void> {
    await this.#transaction(async (c) => {
      for (const m of messages) {
        await c.query(`INSERT INTO messages (device_id, seq, received_at, first_time, last_time, key_version, nonce, ciphertext)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, Buffer.from(m.nonce), Buffer.from(m.ciphertext)]);
      }
    });
  }

  keyRecords(): WrappedKeyRecordStore {
    return new PostgresKeyRecords((sql, params) => this.#q(sql, params), (fn) => this.#transaction(fn));
  }

  async putEnrolToken(t: EnrolTokenRecord): Promise<void> {
    await this.#q('INSERT INTO enrol_tokens (token_sha256, device_id, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5)',
      [t.tokenSha256, t.deviceId, t.createdAt, t.expiresAt, t.usedAt ?? null]);
  }

  async consumeEnrolToken(tokenSha256: string, now: number): Promise<ConsumeResult> {
    const won = await this.#q<EnrolTokenRow>('UPDATE enrol_tokens SET used_at = $2 WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > $2 RETURNING *',
      [tokenSha256, now]);
    const row = won.rows[0];
    if (row !== undefined) return { status: 'ok', token: enrolTokenFromRow(row) };
    const r = await this.#q<EnrolTokenRow>('SELECT * FROM enrol_tokens WHERE token_sha256 = $1', [tokenSha256]);
    const existing = r.rows[0];
    if (existing === undefined) return { status: 'unknown' };
    return { status: existing.used_at !== null ? 'used' : 'expired' };
  }

  async putApiToken(t: ApiTokenRecord): Promise<void> {
    await this.#q('INSERT INTO api_tokens (token_sha256, name, role, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)',
      [t.tokenSha256, t.name, t.role, t.createdAt, t.expiresAt ?? null, t.revokedAt ?? null]);
  }

  async getApiToken(tokenSha256: string): Promise<ApiTokenRecord | undefined> {
    const row = (await this.#q<ApiTokenRow>('SELECT * FROM api_tokens WHERE token_sha256 = $1', [tokenSha256])).rows[0];
    return row === undefined ? undefined : apiTokenFromRow(row);
  }

  async listApiTokens(): Promise<ApiTokenRecord[]> {
    return (await this.#q<ApiTokenRow>('SELECT * FROM api_tokens ORDER BY name COLLATE "C", created_at')).rows.map(apiTokenFromRow);
  }

  async revokeApiToken(name: string, at: number): Promise<number> {
    return (await this.#q('UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL', [at, name])).rowCount ?? 0;
  }

  async tryLease(name: string, owner: string, now: number, ttlMs: number): Promise<boolean> {
    const r = await this.#q(`INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET
      owner = excluded.owner, expires_at = excluded.expires_at WHERE leases.owner = excluded.owner OR leases.expires_at < $4`,
    [name, owner, now + ttlMs, now]);
    return r.rowCount === 1;
  }

  async releaseLease(name: string, owner: string): Promise<void> {
    await this.#q('DELETE FROM leases WHERE name = $1 AND owner = $2', [name, owner]);
  }

  async isEmpty(): Promise<boolean> {
    const tables = [...DATA_TABLES, 'enrol_tokens', 'rekey_state'];
    const r = await this.#q<{ any: boolean }>(`SELECT ${tables.map((t) => `EXISTS (SELECT 1 FROM ${t})`).join(' OR ')} AS any`);
    return r.rows[0]?.any === false;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#pool.end();
  }
}

type Query = <R extends pg.QueryResultRow>(sql: string, params?: unknown[]) => Promise<pg.QueryResult<R>>;

/** The key hierarchy's records in the ingest database (PostgreSQL). */
class PostgresKeyRecords implements WrappedKeyRecordStore {
  readonly #query: Query;
  readonly #transaction: <T>(fn: (c: pg.PoolClient) => Promise<T>) => Promise<T>;
  #closed = false;

  constructor(query: Query, transaction: <T>(fn: (c: pg.PoolClient) => Promise<T>) => Promise<T>) {
    this.#query = query;
    this.#transaction = transaction;
  }

  #q<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    if (this.#closed) return Promise.reject(closedError());
    return this.#query<R>(sql, params);
  }

  async list(keyId?: string): Promise<WrappedKeyRecord[]> {
    const r = keyId === undefined
      ? await this.#q<WrappedKeyRow>('SELECT * FROM wrapped_keys ORDER BY key_id COLLATE "C", version')
      : await this.#q<WrappedKeyRow>('SELECT * FROM wrapped_keys WHERE key_id = $1 ORDER BY version', [keyId]);
    return r.rows.map(wrappedKeyFromRow);
  }

  async get(keyId: string, version: number): Promise<WrappedKeyRecord | undefined> {
    const row = (await this.#q<WrappedKeyRow>('SELECT * FROM wrapped_keys WHERE key_id = $1 AND version = $2', [keyId, version])).rows[0];
    return row === undefined ? undefined : wrappedKeyFromRow(row);
  }

  async insert(record: WrappedKeyRecord): Promise<void> {
    await insertKeyRecord((sql, params) => this.#q(sql, params), checkRecord(record, 'insert'));
  }

  async replace(records: readonly WrappedKeyRecord[]): Promise<void> {
    const recs = records.map((r) => checkRecord(r, 'replace'));
    if (this.#closed) throw closedError();
    await this.#transaction(async (c) => {
      for (const r of recs) {
        const u = await c.query('UPDATE wrapped_keys SET kek_name = $1, wrapped = $2, created_at = $3 WHERE key_id = $4 AND version = $5',
          [r.kekName, Buffer.from(r.wrapped), r.createdAt, r.keyId, r.version]);
        if (u.rowCount !== 1) throw new KeyStoreError('not-found', `${r.keyId} version ${r.version} has no record to replace`);
      }
    });
  }

  async remove(keyId: string, versions: readonly number[]): Promise<void> {
    await this.#q('DELETE FROM wrapped_keys WHERE key_id = $1 AND version = ANY($2::int[])', [keyId, [...versions]]);
  }

  async getRekey(keyId: string): Promise<RekeyState | undefined> {
    const row = (await this.#q<RekeyRow>('SELECT * FROM rekey_state WHERE key_id = $1', [keyId])).rows[0];
    return row === undefined ? undefined : rekeyFromRow(row);
  }

  async putRekey(s: RekeyState): Promise<void> {
    await this.#q(`INSERT INTO rekey_state (key_id, target_version, started_at, updated_at, rewritten, resumed) VALUES ($1, $2, $3, $4, $5, $6)
      ON CONFLICT (key_id) DO UPDATE SET target_version = excluded.target_version, started_at = excluded.started_at,
      updated_at = excluded.updated_at, rewritten = excluded.rewritten, resumed = excluded.resumed`,
    [s.keyId, s.targetVersion, s.startedAt, s.updatedAt, s.rewritten, s.resumed]);
  }

  async clearRekey(keyId: string): Promise<void> {
    await this.#q('DELETE FROM rekey_state WHERE key_id = $1', [keyId]);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
