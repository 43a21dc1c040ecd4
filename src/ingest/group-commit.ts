/**
 * Group commit for the message path: stores requested in the same turn of the event loop (or while
 * earlier batches are being written) go to the database together, in one transaction, so one commit
 * (one fsync) acknowledges many messages. Every caller still gets its own result only after its
 * batch is durable, so nothing is acknowledged before it is stored.
 *
 * A batch that fails as a whole is retried one message at a time, so one bad row costs only its own
 * message (which the caller reports as transient), not its neighbours'.
 *
 * @example
 *   const commits = new GroupCommit(storage, { onBatch: (n, s) => metrics.storageLatency.observe(s, { op: 'store' }) });
 *   const result = await commits.store({ message, activity });   // 'stored' | 'duplicate'
 */
import type { IngestStorage, StoreRequest } from './storage/types.ts';

/**
 * Messages per transaction at most. Smaller than the MQTT listener's Receive Maximum (128) on
 * purpose: a burst the broker hands over at once is opened and decoded in one turn, and with a cap
 * at the burst size the whole burst waited for one commit at its end while the database sat idle,
 * then the database worked while nothing was being opened (the broker sends no more until acks
 * come). With 32, the first quarter of a burst is being committed (by PostgreSQL's server, or
 * SQLite's writer thread: storage/sqlite-writer.ts) while the rest is opened, and its
 * acknowledgements go out a quarter of a burst sooner.
 * Measured with 1000 devices (docs/scaling.md): PostgreSQL carried 5,200 sealed messages/s with a
 * cap of 128 and 7,600-8,400 with 32; SQLite 5,750 and 6,600.
 */
export const DEFAULT_MAX_BATCH = 32;

interface Pending {
  readonly req: StoreRequest;
  resolve(r: 'stored' | 'duplicate'): void;
  reject(e: unknown): void;
}

export interface GroupCommitOptions {
  /** Messages per transaction at most (default `DEFAULT_MAX_BATCH`). */
  readonly maxBatch?: number;
  /** Batches being written at once (default 4; PostgreSQL pipelines them on its pool). */
  readonly maxInFlight?: number;
  /** Called after each batch with its size and duration in seconds. */
  readonly onBatch?: (size: number, seconds: number) => void;
}

export class GroupCommit {
  readonly #storage: IngestStorage;
  readonly #maxBatch: number;
  readonly #maxInFlight: number;
  readonly #onBatch: ((n: number, s: number) => void) | undefined;
  #pending: Pending[] = [];
  #scheduled = false;
  #inFlight = 0;
  #idle: (() => void)[] = [];

  constructor(storage: IngestStorage, o: GroupCommitOptions = {}) {
    this.#storage = storage;
    this.#maxBatch = o.maxBatch ?? DEFAULT_MAX_BATCH;
    this.#maxInFlight = o.maxInFlight ?? 4;
    this.#onBatch = o.onBatch;
    if (!Number.isSafeInteger(this.#maxBatch) || this.#maxBatch < 1) throw new RangeError('maxBatch: a positive integer');
    if (!Number.isSafeInteger(this.#maxInFlight) || this.#maxInFlight < 1) throw new RangeError('maxInFlight: a positive integer');
  }

  store(req: StoreRequest): Promise<'stored' | 'duplicate'> {
    return new Promise((resolve, reject) => {
      this.#pending.push({ req, resolve, reject });
      if (this.#pending.length >= this.#maxBatch) this.#pump();
      else this.#schedule();
    });
  }

  /** Pumps after this turn's other accepts have queued theirs (one batch, not a batch per microtask). */
  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#pump();
    });
  }

  /** Resolves when nothing is pending or being written. */
  settled(): Promise<void> {
    if (this.#pending.length === 0 && this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #pump(): void {
    while (this.#pending.length > 0 && this.#inFlight < this.#maxInFlight) {
      const batch = this.#pending.splice(0, this.#maxBatch);
      this.#inFlight++;
      void this.#write(batch).finally(() => {
        this.#inFlight--;
        // Not at once: the callers just answered run on in this turn and queue their next stores
        // (a synchronous backend answers within the same turn), so the next batch waits for them.
        if (this.#pending.length > 0) this.#schedule();
        if (this.#pending.length === 0 && this.#inFlight === 0) for (const f of this.#idle.splice(0)) f();
      });
    }
  }

  async #write(batch: Pending[]): Promise<void> {
    const t0 = performance.now();
    try {
      const results = await this.#storage.storeMessages(batch.map((p) => p.req));
      this.#onBatch?.(batch.length, (performance.now() - t0) / 1000);
      batch.forEach((p, i) => p.resolve(results[i] ?? 'duplicate'));
    } catch {
      // One at a time: only the message that cannot be stored fails.
      for (const p of batch) {
        try {
          p.resolve(await this.#storage.storeMessage(p.req.message, p.req.activity));
        } catch (e) {
          p.reject(e);
        }
      }
    }
  }
}
