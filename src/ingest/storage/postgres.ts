/**
 * PostgreSQL storage (`pg`): the production path. Several ingest instances may share one database;
 * exactly-once rests on the (device_id, seq) primary key, not on any in-process state.
 */
import pg from 'pg';
import { gapQuery, schemaStatements } from './schema.ts';
import type { DataKeyRecord, DeviceRecord, DeviceStatus, IngestStorage, SequenceGap, StoredMessage } from './types.ts';

export interface PostgresStorageOptions {
  /** libpq-style connection string or pg pool config; credentials come from the environment or a file, never logs. */
  readonly connection: string | pg.PoolConfig;
  readonly maxConnections?: number;
}

interface DeviceRow { device_id: string; spki_sha256: string; status: DeviceStatus; enrolled_at: string; last_seen_at: string | null; sealing_epoch: string | null }
interface MessageRow { device_id: string; seq: string; received_at: string; first_time: string; last_time: string; key_version: number; nonce: Buffer; ciphertext: Buffer }
interface KeyRow { device_id: string; version: number; wrapped: Buffer; kek_name: string; created_at: string; state: DataKeyRecord['state'] }

export class PostgresStorage implements IngestStorage {
  readonly kind = 'postgres' as const;
  readonly #pool: pg.Pool;

  constructor(opts: PostgresStorageOptions) {
    const base: pg.PoolConfig = typeof opts.connection === 'string' ? { connectionString: opts.connection } : opts.connection;
    this.#pool = new pg.Pool({ ...base, max: opts.maxConnections ?? 10 });
    // An idle client's error (server restart) must not crash the process; the next query reconnects.
    this.#pool.on('error', () => undefined);
  }

  async init(): Promise<void> {
    const client = await this.#pool.connect();
    try {
      // Serialise schema creation across instances starting together.
      await client.query('SELECT pg_advisory_lock(7251)');
      for (const s of schemaStatements('postgres')) await client.query(s);
      await client.query('SELECT pg_advisory_unlock(7251)');
    } finally {
      client.release();
    }
  }

  async upsertDevice(d: DeviceRecord): Promise<void> {
    await this.#pool.query(`INSERT INTO devices (device_id, spki_sha256, status, enrolled_at, last_seen_at, sealing_epoch)
      VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id) DO UPDATE SET spki_sha256 = excluded.spki_sha256,
      status = excluded.status, enrolled_at = excluded.enrolled_at, last_seen_at = excluded.last_seen_at,
      sealing_epoch = excluded.sealing_epoch`,
      [d.deviceId, d.spkiSha256, d.status, d.enrolledAt, d.lastSeenAt ?? null, d.sealingEpoch ?? null]);
  }

  async getDevice(deviceId: string): Promise<DeviceRecord | undefined> {
    const r = await this.#pool.query<DeviceRow>('SELECT * FROM devices WHERE device_id = $1', [deviceId]);
    const row = r.rows[0];
    return row === undefined ? undefined : deviceFromRow(row);
  }

  async listDevices(): Promise<DeviceRecord[]> {
    return (await this.#pool.query<DeviceRow>('SELECT * FROM devices ORDER BY device_id')).rows.map(deviceFromRow);
  }

  async setDeviceStatus(deviceId: string, status: DeviceStatus): Promise<boolean> {
    return (await this.#pool.query('UPDATE devices SET status = $1 WHERE device_id = $2', [status, deviceId])).rowCount === 1;
  }

  async touchDevice(deviceId: string, seenAt: number, sealingEpoch?: string): Promise<void> {
    await this.#pool.query(`UPDATE devices SET last_seen_at = GREATEST(COALESCE(last_seen_at, 0), $1),
      sealing_epoch = COALESCE($2, sealing_epoch) WHERE device_id = $3`, [seenAt, sealingEpoch ?? null, deviceId]);
  }

  async storeMessage(m: StoredMessage): Promise<'stored' | 'duplicate'> {
    const r = await this.#pool.query(`INSERT INTO messages (device_id, seq, received_at, first_time, last_time, key_version, nonce, ciphertext)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (device_id, seq) DO NOTHING`,
      [m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, Buffer.from(m.nonce), Buffer.from(m.ciphertext)]);
    return r.rowCount === 1 ? 'stored' : 'duplicate';
  }

  async readMessages(deviceId: string, from: number, to: number, limit = 10_000): Promise<StoredMessage[]> {
    const r = await this.#pool.query<MessageRow>(`SELECT * FROM messages WHERE device_id = $1 AND last_time >= $2 AND first_time <= $3
      ORDER BY seq LIMIT $4`, [deviceId, from, to, limit]);
    return r.rows.map(messageFromRow);
  }

  async gaps(deviceId: string): Promise<SequenceGap[]> {
    const r = await this.#pool.query<{ gap_from: string; gap_to: string }>(gapQuery('$1'), [deviceId]);
    return r.rows.map((x) => ({ from: Number(x.gap_from), to: Number(x.gap_to) }));
  }

  async highestSeq(deviceId: string): Promise<number> {
    const r = await this.#pool.query<{ m: string | null }>('SELECT MAX(seq) AS m FROM messages WHERE device_id = $1', [deviceId]);
    return Number(r.rows[0]?.m ?? 0);
  }

  async countMessages(deviceId?: string): Promise<number> {
    const r = deviceId === undefined
      ? await this.#pool.query<{ n: string }>('SELECT COUNT(*) AS n FROM messages')
      : await this.#pool.query<{ n: string }>('SELECT COUNT(*) AS n FROM messages WHERE device_id = $1', [deviceId]);
    return Number(r.rows[0]?.n ?? 0);
  }

  async putDataKey(k: DataKeyRecord): Promise<void> {
    await this.#pool.query('INSERT INTO data_keys (device_id, version, wrapped, kek_name, created_at, state) VALUES ($1, $2, $3, $4, $5, $6)',
      [k.deviceId, k.version, Buffer.from(k.wrapped), k.kekName, k.createdAt, k.state]);
  }

  async dataKeys(deviceId: string): Promise<DataKeyRecord[]> {
    return (await this.#pool.query<KeyRow>('SELECT * FROM data_keys WHERE device_id = $1 ORDER BY version', [deviceId])).rows.map(keyFromRow);
  }

  async setDataKeyState(deviceId: string, version: number, state: DataKeyRecord['state'], wrapped?: Uint8Array): Promise<void> {
    await this.#pool.query('UPDATE data_keys SET state = $1, wrapped = COALESCE($2, wrapped) WHERE device_id = $3 AND version = $4',
      [state, wrapped === undefined ? null : Buffer.from(wrapped), deviceId, version]);
  }

  async messagesBelowKeyVersion(deviceId: string, version: number, limit: number): Promise<StoredMessage[]> {
    const r = await this.#pool.query<MessageRow>('SELECT * FROM messages WHERE device_id = $1 AND key_version < $2 ORDER BY seq LIMIT $3',
      [deviceId, version, limit]);
    return r.rows.map(messageFromRow);
  }

  async rewriteMessage(deviceId: string, seq: number, fromVersion: number, toVersion: number, nonce: Uint8Array, ciphertext: Uint8Array): Promise<boolean> {
    const r = await this.#pool.query('UPDATE messages SET key_version = $1, nonce = $2, ciphertext = $3 WHERE device_id = $4 AND seq = $5 AND key_version = $6',
      [toVersion, Buffer.from(nonce), Buffer.from(ciphertext), deviceId, seq, fromVersion]);
    return r.rowCount === 1;
  }

  async close(): Promise<void> {
    await this.#pool.end();
  }
}

function deviceFromRow(r: DeviceRow): DeviceRecord {
  return {
    deviceId: r.device_id, spkiSha256: r.spki_sha256, status: r.status, enrolledAt: Number(r.enrolled_at),
    ...(r.last_seen_at === null ? {} : { lastSeenAt: Number(r.last_seen_at) }),
    ...(r.sealing_epoch === null ? {} : { sealingEpoch: r.sealing_epoch }),
  };
}

function messageFromRow(r: MessageRow): StoredMessage {
  return {
    deviceId: r.device_id, seq: Number(r.seq), receivedAt: Number(r.received_at), firstTime: Number(r.first_time),
    lastTime: Number(r.last_time), keyVersion: r.key_version, nonce: new Uint8Array(r.nonce), ciphertext: new Uint8Array(r.ciphertext),
  };
}

function keyFromRow(r: KeyRow): DataKeyRecord {
  return { deviceId: r.device_id, version: r.version, wrapped: new Uint8Array(r.wrapped), kekName: r.kek_name, createdAt: Number(r.created_at), state: r.state };
}
