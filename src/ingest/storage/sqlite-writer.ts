/**
 * The message path's SQLite transactions on a worker thread, on their own connection, so that a
 * batch's inserts, its commit and the commit's fsync no longer stop the event loop.
 *
 * better-sqlite3 is synchronous: on the event loop, every group commit stopped the ingest from
 * opening, decoding and acknowledging anything else until the WAL was on disk, so processing and
 * storage took turns. PostgreSQL overlaps them (its server runs beside the ingest); this gives
 * SQLite the same. The worker runs exactly the transaction the inline path runs (`BEGIN IMMEDIATE`,
 * the inserts, the devices' last-seen updates, `COMMIT` with `synchronous = FULL`) and answers
 * only after the commit, so nothing is acknowledged before it is durable. Writes of the other
 * connection (registry, tokens, re-key) wait for the lock as any two SQLite writers do
 * (`busy_timeout`).
 *
 * A batch the worker cannot store is answered with an error (the group commit then stores its
 * messages one by one on the main connection); a worker that has died leaves every later batch to
 * the main connection: messages are never lost to it.
 *
 * @example
 *   const writer = startMessageWriter('/var/lib/vitalseal/ingest.db', { insertSql, touchSql, pragmas });
 *   const results = await writer.store(rows, touches);   // 'stored' | 'duplicate' per row
 *   await writer.close();
 */
import { StorageError } from '../../util/errors.ts';
import { startSqliteWorker, stopSqliteWorker } from './sqlite-worker.ts';

/** One messages row, in the ingest's insert's parameter order. */
export type MessageRowParams = readonly [deviceId: string, seq: number, receivedAt: number, firstTime: number, lastTime: number, keyVersion: number, nonce: Uint8Array, ciphertext: Uint8Array];

/** One device's last-seen update, by the touch statement's parameter names. */
export interface TouchParams {
  readonly seen: number;
  readonly transport: string;
  readonly suite: string;
  readonly epoch: string | null;
  readonly epochStart: number | null;
  readonly device: string;
}

export interface MessageWriterOptions {
  /** INSERT … ON CONFLICT DO NOTHING with one positional parameter per element of a row. */
  readonly insertSql: string;
  /** The devices' last-seen UPDATE with named parameters (`TouchParams`); none without it. */
  readonly touchSql?: string;
  /** Per-connection pragmas, run in order after `synchronous = FULL`. */
  readonly pragmas: readonly string[];
}

export interface MessageWriter<Row extends readonly unknown[] = MessageRowParams> {
  /** False once the worker has stopped (then the caller writes inline). */
  readonly alive: boolean;
  /** Batches the worker has committed (for tests and metrics). */
  readonly batches: number;
  store(rows: readonly Row[], touches?: readonly TouchParams[]): Promise<('stored' | 'duplicate')[]>;
  /** Waits for the batches already handed over, then closes the worker's connection. */
  close(): Promise<void>;
}

// Run by startSqliteWorker (sqlite-worker.ts).
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path);
db.pragma('synchronous = FULL');
for (const p of workerData.pragmas) db.pragma(p);
// Prepared at the first batch: the tables may not exist yet when the storage is opened.
let insert;
let touch;
// A batch comes packed (see pack()): the rows' other values in order, and their byte strings as
// spans of one buffer, which bind as they are (a view binds only its own bytes).
const write = db.transaction((b) => {
  insert ??= db.prepare(workerData.insertSql);
  if (b.touches.length > 0) touch ??= db.prepare(workerData.touchSql);
  const out = new Uint8Array(b.rows);
  const row = new Array(b.binary.length);
  let v = 0;
  let at = 0;
  let span = 0;
  for (let i = 0; i < b.rows; i++) {
    for (let c = 0; c < b.binary.length; c++) {
      if (b.binary[c]) {
        const n = b.lengths[span++];
        row[c] = b.bytes.subarray(at, at + n);
        at += n;
      } else row[c] = b.values[v++];
    }
    out[i] = insert.run(...row).changes === 1 ? 1 : 0;
  }
  for (const t of b.touches) touch.run(t);
  return out;
});
parentPort.on('message', (m) => {
  if (m === 'stop') {
    db.close();
    parentPort.close();
    return;
  }
  try {
    parentPort.postMessage({ id: m.id, stored: write.immediate(m) });
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: { code: typeof e.code === 'string' ? e.code : 'unknown', message: String(e && e.message) } });
  }
});
`;

interface Waiting {
  resolve(r: ('stored' | 'duplicate')[]): void;
  reject(e: unknown): void;
}

/** What crosses to the worker for one batch. */
interface PackedBatch {
  readonly id: number;
  readonly rows: number;
  /** Per column: a byte string (true) or a value (false), as in the first row. */
  readonly binary: readonly boolean[];
  readonly values: unknown[];
  readonly bytes: Uint8Array;
  readonly lengths: Uint32Array;
  readonly touches: readonly TouchParams[];
}

/**
 * One buffer for the batch's byte strings, moved to the worker rather than cloned: cloning rows
 * cost a new buffer per byte string on each side (about a tenth of the ingest's event-loop time at
 * 6,000 messages/s); a copy into one buffer is a memcpy each.
 */
function pack(id: number, rows: readonly (readonly unknown[])[], touches: readonly TouchParams[]): { batch: PackedBatch; transfer: ArrayBuffer[] } {
  const first = rows[0] ?? [];
  const binary = first.map((x) => x instanceof Uint8Array);
  const spans = binary.filter(Boolean).length;
  let total = 0;
  for (const r of rows) {
    if (r.length !== binary.length) throw new RangeError('message writer: every row needs the same columns');
    for (let c = 0; c < r.length; c++) {
      const x = r[c];
      if ((x instanceof Uint8Array) !== binary[c]) throw new RangeError(`message writer: column ${c} is a byte string in some rows only`);
      if (x instanceof Uint8Array) total += x.length;
    }
  }
  const transfer = [new ArrayBuffer(total), new ArrayBuffer(rows.length * spans * 4)] as const;
  const bytes = new Uint8Array(transfer[0]);
  const lengths = new Uint32Array(transfer[1]);
  const values: unknown[] = [];
  let at = 0;
  let span = 0;
  for (const r of rows) {
    for (const x of r) {
      if (x instanceof Uint8Array) {
        bytes.set(x, at);
        at += x.length;
        lengths[span++] = x.length;
      } else values.push(x);
    }
  }
  return { batch: { id, rows: rows.length, binary, values, bytes, lengths, touches }, transfer: [...transfer] };
}

type FromWorker = { id: number; stored: Uint8Array } | { id: number; error: { code: string; message: string } };

export function startMessageWriter<Row extends readonly unknown[] = MessageRowParams>(path: string, o: MessageWriterOptions): MessageWriter<Row> {
  const worker = startSqliteWorker(WORKER, { path, insertSql: o.insertSql, touchSql: o.touchSql, pragmas: [...o.pragmas] });
  const waiting = new Map<number, Waiting>();
  let next = 0;
  let batches = 0;
  let alive = true;
  let closing: Promise<void> | undefined;
  const drained: (() => void)[] = [];
  const settle = (id: number): Waiting | undefined => {
    const w = waiting.get(id);
    waiting.delete(id);
    if (waiting.size === 0) for (const f of drained.splice(0)) f();
    return w;
  };
  worker.on('message', (m: FromWorker) => {
    const w = settle(m.id);
    if (w === undefined) return;
    if ('error' in m) {
      // The database's own words (constraint, I/O, full disk), never a row's contents.
      w.reject(new StorageError('storage-write', `the message writer could not store a batch (${m.error.code}): ${m.error.message}`));
      return;
    }
    batches++;
    w.resolve(Array.from(m.stored, (s) => (s === 1 ? 'stored' : 'duplicate')));
  });
  const gone = (why: string) => {
    alive = false;
    for (const id of [...waiting.keys()]) settle(id)?.reject(new StorageError('storage-writer-stopped', `the message writer stopped (${why}) before answering`));
  };
  worker.on('error', (e) => gone(e.message));
  worker.once('exit', (code) => gone(`exit ${code}`));
  // Idle, it does not keep the process alive; a batch in flight does (see store).
  worker.unref();
  return {
    get alive() {
      return alive;
    },
    get batches() {
      return batches;
    },
    store(rows, touches = []) {
      if (!alive || closing !== undefined) return Promise.reject(new StorageError('storage-writer-stopped', 'the message writer has stopped'));
      if (touches.length > 0 && o.touchSql === undefined) return Promise.reject(new RangeError('the message writer has no touch statement'));
      let packed: ReturnType<typeof pack>;
      try {
        packed = pack(++next, rows, touches);
      } catch (e) {
        return Promise.reject(e);
      }
      const { batch, transfer } = packed;
      return new Promise((resolve, reject) => {
        waiting.set(batch.id, { resolve, reject });
        worker.ref();
        worker.postMessage(batch, transfer);
      }).finally(() => {
        // Closing, the worker stays referenced until it has closed its connection (stopSqliteWorker).
        if (waiting.size === 0 && closing === undefined) worker.unref();
      }) as Promise<('stored' | 'duplicate')[]>;
    },
    close() {
      closing ??= (async () => {
        if (waiting.size > 0) await new Promise<void>((r) => drained.push(r));
        if (alive) await stopSqliteWorker(worker);
      })();
      return closing;
    },
  };
}
