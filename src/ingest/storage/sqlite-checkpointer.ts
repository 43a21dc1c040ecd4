/**
 * WAL checkpoints of the ingest's SQLite database on a worker thread, so the message path's
 * commits never copy pages into the database file or wait for its fsync.
 *
 * In WAL mode a commit appends to the WAL; a checkpoint copies committed pages back into the
 * database file and fsyncs it. By default the connection that commits runs it, inside its commit,
 * on the event loop: with a fleet's interleaved streams that is thousands of pages and a second
 * fsync every few batches, during which no message is opened or acknowledged. Here a second
 * connection on a worker thread runs `PRAGMA wal_checkpoint(PASSIVE)` every `intervalMs`: PASSIVE
 * never blocks the writer (SQLite WAL §"Checkpointing"), and once every frame is copied the next
 * commit starts the WAL again from its beginning, so it stays small. The writer's own
 * `wal_autocheckpoint` stays as a backstop should the worker fall behind or fail.
 *
 * Durability is unchanged: a commit is durable once its WAL frames are fsynced (`synchronous = FULL`),
 * whether or not a checkpoint has copied them yet.
 *
 * @example
 *   const cp = startWalCheckpointer('/var/lib/vitalseal/ingest.db', { intervalMs: 200 });
 *   await cp.stop();
 */
import { startSqliteWorker, stopSqliteWorker } from './sqlite-worker.ts';

export interface WalCheckpointer {
  /** Checkpoints the worker has run (for tests and metrics). */
  readonly runs: number;
  stop(): Promise<void>;
}

// Run by startSqliteWorker (sqlite-worker.ts).
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path);
db.pragma('busy_timeout = 1000');
let busy = false;
const timer = setInterval(() => {
  if (busy) return;
  busy = true;
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
    parentPort.postMessage('ran');
  } catch {
    // the writer's own autocheckpoint covers a failure
  } finally {
    busy = false;
  }
}, workerData.intervalMs);
parentPort.on('message', (m) => {
  if (m !== 'stop') return;
  clearInterval(timer);
  db.close();
  parentPort.close();
});
`;

export function startWalCheckpointer(path: string, o: { readonly intervalMs?: number } = {}): WalCheckpointer {
  const intervalMs = o.intervalMs ?? 200;
  if (!Number.isSafeInteger(intervalMs) || intervalMs < 1) throw new RangeError('intervalMs: a positive integer');
  const worker = startSqliteWorker(WORKER, { path, intervalMs });
  let runs = 0;
  let exited = false;
  worker.on('message', () => {
    runs++;
  });
  worker.once('exit', () => {
    exited = true;
  });
  // A worker that fails leaves checkpoints to the writer's backstop; it never takes the process down.
  worker.on('error', () => undefined);
  worker.unref();
  let stopped: Promise<void> | undefined;
  return {
    get runs() {
      return runs;
    },
    stop() {
      stopped ??= exited ? Promise.resolve() : stopSqliteWorker(worker);
      return stopped;
    },
  };
}
