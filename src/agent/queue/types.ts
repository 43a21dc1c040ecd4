/**
 * The device's durable store-and-forward queue of sealed messages. Implementations share one
 * contract test suite (test/agent/queue/contract.ts).
 *
 * Sequence numbers are per device, start at 1, and increase monotonically across restarts; the
 * ingest service dedupes on (device id, sequence). A message leaves the queue only when `ack`
 * covers it, or when the capacity policy drops it (counted and reported).
 *
 * @example
 *   const q = await openSegmentQueue({ dir: '/var/lib/vitalseal/queue' });
 *   const [seq] = await q.appendWith(1, (seq) => [session.seal(pack, { protectedExtras: new Map([[Header.SEQUENCE, seq]]) })]);
 *   for (const m of await q.peek(100)) await uplink.send(m.payload).then(() => q.ack(m.seq));
 */
export interface QueuedMessage {
  readonly seq: number;
  readonly payload: Uint8Array;
}

export interface QueueStats {
  /** Messages held and not yet acknowledged. */
  readonly depth: number;
  readonly bytes: number;
  readonly capacityBytes: number;
  /** Highest acknowledged sequence number (0 before the first ack). */
  readonly ackedThrough: number;
  /** Sequence number the next append will get. */
  readonly nextSeq: number;
  /** Messages dropped by the capacity policy since the queue was created (persisted). */
  readonly dropped: number;
  /** True at or above the high-water mark: the health alarm. */
  readonly nearlyFull: boolean;
}

export interface QueueStore {
  /** Appends sealed messages in order and makes them durable per the fsync policy; returns their sequence numbers. */
  append(payloads: readonly Uint8Array[]): Promise<number[]>;
  /**
   * Numbers first, then seals: reserves the next `count` sequence numbers, calls `build(firstSeq)`
   * for payloads that carry them (the COSE protected header holds the sequence number, so it must
   * be known before sealing), and appends the result, all in one serialised step so no other append
   * can take those numbers in between. If `build` throws, nothing is appended and no number is
   * used. `build` must return exactly `count` payloads.
   */
  appendWith(count: number, build: (firstSeq: number) => readonly Uint8Array[] | Promise<readonly Uint8Array[]>): Promise<number[]>;
  /** Up to `max` unacknowledged messages after `afterSeq` (default: after the acknowledged position), oldest first. */
  peek(max: number, afterSeq?: number): Promise<QueuedMessage[]>;
  /** Acknowledges every message with seq ≤ `throughSeq`. Acks below the current position are ignored. */
  ack(throughSeq: number): Promise<void>;
  stats(): QueueStats;
  close(): Promise<void>;
}

/** What happens when an append would exceed capacity. */
export type FullPolicy = 'drop-oldest' | 'reject-new';

export interface QueueLimits {
  readonly capacityBytes: number;
  /** Fraction of capacity at which `stats().nearlyFull` turns on. */
  readonly highWater: number;
  /** Largest single message accepted. */
  readonly maxMessageBytes: number;
}

export const DEFAULT_QUEUE_LIMITS: QueueLimits = Object.freeze({
  capacityBytes: 256 * 1024 * 1024,
  highWater: 0.8,
  maxMessageBytes: 1024 * 1024,
});
