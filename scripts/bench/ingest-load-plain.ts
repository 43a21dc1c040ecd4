/**
 * The baseline side of ingest-load.bench.ts, in its own process: plaintext MQTT from the broker's
 * plaintext listener (the same shared-subscription client code as the ingest, over plain TCP) into
 * plaintext rows in the same database the ingest writes, as a competent plain subscriber would:
 * rows of one event-loop turn in one transaction (up to the ingest's group-commit cap, written as
 * soon as the cap is reached; four transactions in flight), each message acknowledged once its row
 * is committed; (device, seq) unique. On SQLite it uses the ingest's cache and checkpoint settings,
 * its background WAL checkpoints and its writer thread for the batches.
 *
 * IPC as ingest-load-ingest.ts: start / take / stop.
 */
import Database from 'better-sqlite3';
import pg from 'pg';
import { DEFAULT_MAX_BATCH } from '../../src/ingest/group-commit.ts';
import { SQLITE_THROUGHPUT_PRAGMAS } from '../../src/ingest/storage/sqlite.ts';
import { startWalCheckpointer } from '../../src/ingest/storage/sqlite-checkpointer.ts';
import { startMessageWriter } from '../../src/ingest/storage/sqlite-writer.ts';
import { createMqttsSubscriber, type MqttsSubscriber } from '../../src/transport/mqtts/subscriber.ts';
import { plainTcp } from '../lib/plain-connector.ts';
import { sampleRss, takeRecords, type RecordSink } from './ingest-load-records.ts';

interface Row {
  readonly deviceId: string;
  readonly seq: number;
  readonly payload: Uint8Array;
  readonly done: (e?: unknown) => void;
}

interface PlainStore {
  write(rows: readonly Row[]): Promise<void>;
  close(): Promise<void>;
}

const TABLE = 'CREATE TABLE IF NOT EXISTS bench_plain (device_id TEXT NOT NULL, seq BIGINT NOT NULL, received_at BIGINT NOT NULL, payload %BLOB% NOT NULL, PRIMARY KEY (device_id, seq))';

function sqliteStore(path: string): PlainStore {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  // The ingest's cache and checkpoint settings: the baseline writes under the same conditions.
  for (const p of SQLITE_THROUGHPUT_PRAGMAS) db.pragma(p);
  db.pragma('busy_timeout = 5000');
  db.exec(TABLE.replace('%BLOB%', 'BLOB'));
  // And its WAL checkpoints off the event loop, and its batches committed by a writer thread, as the ingest's.
  const checkpointer = startWalCheckpointer(path);
  const writer = startMessageWriter<readonly [string, number, number, Uint8Array]>(path, {
    insertSql: 'INSERT INTO bench_plain (device_id, seq, received_at, payload) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING',
    pragmas: [...SQLITE_THROUGHPUT_PRAGMAS, 'busy_timeout = 5000'],
  });
  return {
    async write(rows) {
      const now = Date.now();
      await writer.store(rows.map((r) => [r.deviceId, r.seq, now, r.payload] as const));
    },
    async close() {
      await writer.close();
      await checkpointer.stop();
      db.close();
    },
  };
}

async function postgresStore(connection: string): Promise<PlainStore> {
  const pool = new pg.Pool({ connectionString: connection, max: 10 });
  pool.on('error', () => undefined);
  await pool.query(TABLE.replace('%BLOB%', 'BYTEA'));
  return {
    async write(rows) {
      const now = Date.now();
      const values: unknown[] = [];
      const tuples = rows.map((r, i) => {
        values.push(r.deviceId, r.seq, now, Buffer.from(r.payload));
        return `($${i * 4 + 1}, $${i * 4 + 2}, $${i * 4 + 3}, $${i * 4 + 4})`;
      });
      await pool.query(`INSERT INTO bench_plain (device_id, seq, received_at, payload) VALUES ${tuples.join(', ')} ON CONFLICT DO NOTHING`, values);
    },
    async close() {
      await pool.end();
    },
  };
}

/**
 * Rows of one turn go together, at most the ingest's cap (`DEFAULT_MAX_BATCH`) per transaction,
 * written as soon as the cap is reached (as the ingest's group commit does); at most `maxInFlight`
 * transactions at once.
 */
function batcher(store: PlainStore, maxInFlight: number): (r: Row) => void {
  let pending: Row[] = [];
  let scheduled = false;
  let inFlight = 0;
  const pump = () => {
    while (pending.length > 0 && inFlight < maxInFlight) {
      const rows = pending.splice(0, DEFAULT_MAX_BATCH);
      inFlight++;
      sink.transactions = (sink.transactions ?? 0) + 1;
      sink.rows = (sink.rows ?? 0) + rows.length;
      store.write(rows).then(() => rows.forEach((r) => r.done()), (e: unknown) => rows.forEach((r) => r.done(e))).finally(() => {
        inFlight--;
        pump();
      });
    }
  };
  return (r) => {
    pending.push(r);
    if (pending.length >= DEFAULT_MAX_BATCH) pump();
    else if (!scheduled) {
      scheduled = true;
      setImmediate(() => {
        scheduled = false;
        pump();
      });
    }
  };
}

const sink: RecordSink = { records: [], readings: 0, rssMax: 0 };
sampleRss(sink);
let sub: MqttsSubscriber | undefined;
let store: PlainStore | undefined;

process.on('message', async (raw: unknown) => {
  const m = raw as { type: string; host?: string; port?: number; storage?: { sqlite: string } | { postgres: string } };
  try {
    if (m.type === 'start') {
      const s = m.storage as { sqlite: string } | { postgres: string };
      store = 'sqlite' in s ? sqliteStore(s.sqlite) : await postgresStore(s.postgres);
      const add = batcher(store, 4);
      sub = createMqttsSubscriber({
        host: m.host as string, port: m.port as number, tls: plainTcp(), clientId: 'baseline-plain', sessionExpirySeconds: 0, receiveMaximum: 128,
        handler: (msg) => new Promise<void>((resolve, reject) => {
          const seq = Number(msg.userProperties['seq']);
          add({ deviceId: msg.deviceId, seq, payload: msg.payload, done: (e) => {
            if (e !== undefined) {
              reject(e);
              return;
            }
            sink.records.push(Number(msg.deviceId.slice(msg.deviceId.lastIndexOf('-') + 1)), seq, Date.now());
            resolve();
          } });
        }),
      });
      await sub.start();
      process.send?.({ type: 'ready' });
    } else if (m.type === 'take') {
      process.send?.({ type: 'taken', ...takeRecords(sink) });
    } else if (m.type === 'stop') {
      await sub?.close();
      await store?.close();
      process.send?.({ type: 'stopped' });
    }
  } catch (e) {
    process.send?.({ type: 'error', message: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
  }
});
process.on('disconnect', () => process.exit(0));
