/**
 * The ingest's SQLite worker threads (WAL checkpoints: sqlite-checkpointer.ts; message batches:
 * sqlite-writer.ts): each a CommonJS program evaluated in a worker, so no TypeScript loader is
 * needed there, with its own better-sqlite3 connection, and ended by the message 'stop', on which
 * it closes that connection and its port.
 *
 * @example
 *   const worker = startSqliteWorker(`const Database = require(require('node:worker_threads').workerData.driver); ...`, { path });
 *   await stopSqliteWorker(worker);
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/** Starts `code` in a worker; `workerData.driver` is where the worker requires better-sqlite3 from. */
export function startSqliteWorker(code: string, workerData: Readonly<Record<string, unknown>>): Worker {
  const driver = createRequire(import.meta.url).resolve('better-sqlite3');
  return new Worker(code, { eval: true, workerData: { ...workerData, driver } });
}

/** Sends 'stop' and waits for the worker to exit; one that has not exited within 2 s is ended. */
export function stopSqliteWorker(worker: Worker): Promise<void> {
  return new Promise<void>((resolve) => {
    worker.once('exit', () => resolve());
    worker.ref(); // the process waits for it to close its connection
    worker.postMessage('stop');
    setTimeout(() => void worker.terminate(), 2000).unref();
  });
}
