/**
 * A queue held in memory only: for embedding where the host provides its own durability, and as a
 * reference for the contract suite. Everything in it is lost when the process ends.
 */
import { ApiMisuse } from '../../util/errors.ts';
import { RECORD_HEADER_BYTES } from './segment-format.ts';
import { DEFAULT_QUEUE_LIMITS, type FullPolicy, type QueuedMessage, type QueueLimits, type QueueStats, type QueueStore } from './types.ts';

export interface MemoryQueueOptions {
  readonly limits?: Partial<QueueLimits>;
  readonly fullPolicy?: FullPolicy;
}

export class MemoryQueue implements QueueStore {
  readonly #limits: QueueLimits;
  readonly #policy: FullPolicy;
  readonly #messages: QueuedMessage[] = [];
  #nextSeq = 1;
  #ackedThrough = 0;
  #dropped = 0;
  #bytes = 0;
  #closed = false;
  #chain: Promise<unknown> = Promise.resolve();

  constructor(opts: MemoryQueueOptions = {}) {
    this.#limits = { ...DEFAULT_QUEUE_LIMITS, ...opts.limits };
    this.#policy = opts.fullPolicy ?? 'drop-oldest';
  }

  append(payloads: readonly Uint8Array[]): Promise<number[]> {
    return this.#serial(async () => this.#appendNow(payloads));
  }

  appendWith(count: number, build: (firstSeq: number) => readonly Uint8Array[] | Promise<readonly Uint8Array[]>): Promise<number[]> {
    return this.#serial(async () => {
      if (!Number.isSafeInteger(count) || count < 1) throw new RangeError('queue appendWith: count must be a positive integer');
      const payloads = await build(this.#nextSeq);
      if (payloads.length !== count) throw new ApiMisuse('queue-build-count', `queue appendWith: build returned ${payloads.length} payloads for ${count} numbers`);
      return this.#appendNow(payloads);
    });
  }

  /** Appends run one at a time, so an async `build` never shares numbers with another append. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(() => {
      this.#open();
      return fn();
    });
    this.#chain = run.catch(() => undefined);
    return run;
  }

  #appendNow(payloads: readonly Uint8Array[]): number[] {
    for (const p of payloads) {
      if (!(p instanceof Uint8Array) || p.length === 0) throw new TypeError('queue append: payloads must be non-empty Uint8Arrays');
      if (p.length > this.#limits.maxMessageBytes) {
        throw new ApiMisuse('queue-message-too-large', `queue append: ${p.length} bytes exceeds the ${this.#limits.maxMessageBytes}-byte limit`);
      }
    }
    const incoming = payloads.reduce((n, p) => n + RECORD_HEADER_BYTES + p.length, 0);
    if (incoming > this.#limits.capacityBytes) throw new ApiMisuse('queue-full', 'queue append: batch larger than the whole queue capacity');
    if (this.#bytes + incoming > this.#limits.capacityBytes) {
      if (this.#policy === 'reject-new') throw new ApiMisuse('queue-full', 'queue is full; append refused (policy reject-new)');
      while (this.#bytes + incoming > this.#limits.capacityBytes) {
        const m = this.#messages.shift() as QueuedMessage;
        this.#bytes -= RECORD_HEADER_BYTES + m.payload.length;
        this.#ackedThrough = m.seq;
        this.#dropped++;
      }
    }
    return payloads.map((p) => {
      const seq = this.#nextSeq++;
      this.#messages.push({ seq, payload: Uint8Array.from(p) });
      this.#bytes += RECORD_HEADER_BYTES + p.length;
      return seq;
    });
  }

  async peek(max: number, afterSeq = 0): Promise<QueuedMessage[]> {
    this.#open();
    return this.#messages.filter((m) => m.seq > afterSeq).slice(0, max);
  }

  async ack(throughSeq: number): Promise<void> {
    this.#open();
    if (!Number.isSafeInteger(throughSeq) || throughSeq < 0) throw new RangeError('queue ack: sequence must be a non-negative integer');
    if (throughSeq >= this.#nextSeq) throw new ApiMisuse('queue-ack-ahead', `queue ack: ${throughSeq} was never appended (next is ${this.#nextSeq})`);
    while (this.#messages.length > 0 && (this.#messages[0] as QueuedMessage).seq <= throughSeq) {
      this.#bytes -= RECORD_HEADER_BYTES + (this.#messages.shift() as QueuedMessage).payload.length;
    }
    this.#ackedThrough = Math.max(this.#ackedThrough, throughSeq);
  }

  stats(): QueueStats {
    return {
      depth: this.#messages.length, bytes: this.#bytes, capacityBytes: this.#limits.capacityBytes,
      ackedThrough: this.#ackedThrough, nextSeq: this.#nextSeq, dropped: this.#dropped,
      nearlyFull: this.#bytes >= this.#limits.capacityBytes * this.#limits.highWater,
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #open(): void {
    if (this.#closed) throw new ApiMisuse('queue-closed', 'queue is closed');
  }
}
