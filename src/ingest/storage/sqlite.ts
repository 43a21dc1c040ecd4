/**
 * SQLite storage (better-sqlite3, WAL): the embedded default. better-sqlite3 is synchronous;
 * each call is short and indexed, so it runs inline rather than on a worker.
 */
import Database from 'better-sqlite3';
import { gapQuery, schemaStatements } from './schema.ts';
import type { DataKeyRecord, DeviceRecord, DeviceStatus, IngestStorage, SequenceGap, StoredMessage } from './types.ts';

interface DeviceRow { device_id: string; spki_sha256: string; status: DeviceStatus; enrolled_at: number; last_seen_at: number | null; sealing_epoch: string | null }
interface MessageRow { device_id: string; seq: number; received_at: number; first_time: number; last_time: number; key_version: number; nonce: Buffer; ciphertext: Buffer }
interface KeyRow { device_id: string; version: number; wrapped: Buffer; kek_name: string; created_at: number; state: DataKeyRecord['state'] }

export interface SqliteStorageOptions {
  /** File path, or ':memory:' for tests that need no durability. */
  readonly path: string;
}

export class SqliteStorage implements IngestStorage {
  readonly kind = 'sqlite' as const;
  readonly #db: Database.Database;

  constructor(opts: SqliteStorageOptions) {
    this.#db = new Database(opts.path);
    this.#db.pragma('journal_mode = WAL');
    // FULL: a commit is on disk before the ingest service acknowledges the device.
    this.#db.pragma('synchronous = FULL');
    this.#db.pragma('foreign_keys = ON');
  }

  async init(): Promise<void> {
    for (const s of schemaStatements('sqlite')) this.#db.exec(s);
  }

  async upsertDevice(d: DeviceRecord): Promise<void> {
    this.#db.prepare(`INSERT INTO devices (device_id, spki_sha256, status, enrolled_at, last_seen_at, sealing_epoch)
      VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET spki_sha256 = excluded.spki_sha256,
      status = excluded.status, enrolled_at = excluded.enrolled_at, last_seen_at = excluded.last_seen_at,
      sealing_epoch = excluded.sealing_epoch`)
      .run(d.deviceId, d.spkiSha256, d.status, d.enrolledAt, d.lastSeenAt ?? null, d.sealingEpoch ?? null);
  }

  async getDevice(deviceId: string): Promise<DeviceRecord | undefined> {
    const row = this.#db.prepare('SELECT * FROM devices WHERE device_id = ?').get(deviceId) as DeviceRow | undefined;
    return row === undefined ? undefined : deviceFromRow(row);
  }

  async listDevices(): Promise<DeviceRecord[]> {
    return (this.#db.prepare('SELECT * FROM devices ORDER BY device_id').all() as DeviceRow[]).map(deviceFromRow);
  }

  async setDeviceStatus(deviceId: string, status: DeviceStatus): Promise<boolean> {
    return this.#db.prepare('UPDATE devices SET status = ? WHERE device_id = ?').run(status, deviceId).changes === 1;
  }

  async touchDevice(deviceId: string, seenAt: number, sealingEpoch?: string): Promise<void> {
    this.#db.prepare('UPDATE devices SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?), sealing_epoch = COALESCE(?, sealing_epoch) WHERE device_id = ?')
      .run(seenAt, sealingEpoch ?? null, deviceId);
  }

  async storeMessage(m: StoredMessage): Promise<'stored' | 'duplicate'> {
    const r = this.#db.prepare(`INSERT INTO messages (device_id, seq, received_at, first_time, last_time, key_version, nonce, ciphertext)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING`)
      .run(m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, Buffer.from(m.nonce), Buffer.from(m.ciphertext));
    return r.changes === 1 ? 'stored' : 'duplicate';
  }

  async readMessages(deviceId: string, from: number, to: number, limit = 10_000): Promise<StoredMessage[]> {
    const rows = this.#db.prepare(`SELECT * FROM messages WHERE device_id = ? AND last_time >= ? AND first_time <= ?
      ORDER BY seq LIMIT ?`).all(deviceId, from, to, limit) as MessageRow[];
    return rows.map(messageFromRow);
  }

  async gaps(deviceId: string): Promise<SequenceGap[]> {
    const rows = this.#db.prepare(gapQuery('?')).all(deviceId) as { gap_from: number; gap_to: number }[];
    return rows.map((r) => ({ from: r.gap_from, to: r.gap_to }));
  }

  async highestSeq(deviceId: string): Promise<number> {
    const r = this.#db.prepare('SELECT MAX(seq) AS m FROM messages WHERE device_id = ?').get(deviceId) as { m: number | null };
    return r.m ?? 0;
  }

  async countMessages(deviceId?: string): Promise<number> {
    const r = deviceId === undefined
      ? (this.#db.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number })
      : (this.#db.prepare('SELECT COUNT(*) AS n FROM messages WHERE device_id = ?').get(deviceId) as { n: number });
    return r.n;
  }

  async putDataKey(k: DataKeyRecord): Promise<void> {
    this.#db.prepare('INSERT INTO data_keys (device_id, version, wrapped, kek_name, created_at, state) VALUES (?, ?, ?, ?, ?, ?)')
      .run(k.deviceId, k.version, Buffer.from(k.wrapped), k.kekName, k.createdAt, k.state);
  }

  async dataKeys(deviceId: string): Promise<DataKeyRecord[]> {
    return (this.#db.prepare('SELECT * FROM data_keys WHERE device_id = ? ORDER BY version').all(deviceId) as KeyRow[]).map(keyFromRow);
  }

  async setDataKeyState(deviceId: string, version: number, state: DataKeyRecord['state'], wrapped?: Uint8Array): Promise<void> {
    this.#db.prepare('UPDATE data_keys SET state = ?, wrapped = COALESCE(?, wrapped) WHERE device_id = ? AND version = ?')
      .run(state, wrapped === undefined ? null : Buffer.from(wrapped), deviceId, version);
  }

  async messagesBelowKeyVersion(deviceId: string, version: number, limit: number): Promise<StoredMessage[]> {
    return (this.#db.prepare('SELECT * FROM messages WHERE device_id = ? AND key_version < ? ORDER BY seq LIMIT ?')
      .all(deviceId, version, limit) as MessageRow[]).map(messageFromRow);
  }

  async rewriteMessage(deviceId: string, seq: number, fromVersion: number, toVersion: number, nonce: Uint8Array, ciphertext: Uint8Array): Promise<boolean> {
    return this.#db.prepare('UPDATE messages SET key_version = ?, nonce = ?, ciphertext = ? WHERE device_id = ? AND seq = ? AND key_version = ?')
      .run(toVersion, Buffer.from(nonce), Buffer.from(ciphertext), deviceId, seq, fromVersion).changes === 1;
  }

  async close(): Promise<void> {
    this.#db.close();
  }
}

function deviceFromRow(r: DeviceRow): DeviceRecord {
  return {
    deviceId: r.device_id, spkiSha256: r.spki_sha256, status: r.status, enrolledAt: r.enrolled_at,
    ...(r.last_seen_at === null ? {} : { lastSeenAt: r.last_seen_at }),
    ...(r.sealing_epoch === null ? {} : { sealingEpoch: r.sealing_epoch }),
  };
}

function messageFromRow(r: MessageRow): StoredMessage {
  return {
    deviceId: r.device_id, seq: r.seq, receivedAt: r.received_at, firstTime: r.first_time, lastTime: r.last_time,
    keyVersion: r.key_version, nonce: new Uint8Array(r.nonce), ciphertext: new Uint8Array(r.ciphertext),
  };
}

function keyFromRow(r: KeyRow): DataKeyRecord {
  return { deviceId: r.device_id, version: r.version, wrapped: new Uint8Array(r.wrapped), kekName: r.kek_name, createdAt: r.created_at, state: r.state };
}
