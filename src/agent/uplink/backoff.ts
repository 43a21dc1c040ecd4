/**
 * Exponential back-off with jitter for reconnects: the ceiling doubles with each consecutive
 * failure, from `initialMs` up to `maxMs`, and the delay is drawn uniformly from the upper half of
 * the ceiling ("equal jitter"): never near zero (a fleet that lost its broker does not hammer it
 * the instant it returns), never in lockstep (devices that lost the link together spread out).
 *
 * @example
 *   const b = new Backoff({ initialMs: 500, maxMs: 60_000 }, Math.random);
 *   b.delay(0);   // 250..500 ms
 *   b.delay(10);  // 30..60 s
 */
export interface BackoffPolicy {
  readonly initialMs: number;
  readonly maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = Object.freeze({ initialMs: 500, maxMs: 60_000 });

export class Backoff {
  readonly #p: BackoffPolicy;
  readonly #random: () => number;

  constructor(policy: BackoffPolicy, random: () => number) {
    if (!(policy.initialMs > 0) || !(policy.maxMs >= policy.initialMs)) throw new RangeError('backoff: need 0 < initialMs <= maxMs');
    this.#p = policy;
    this.#random = random;
  }

  /** The ceiling after `failures` consecutive failures (0 = the first retry). */
  ceiling(failures: number): number {
    return Math.min(this.#p.maxMs, this.#p.initialMs * 2 ** Math.min(failures, 40));
  }

  delay(failures: number): number {
    const cap = this.ceiling(failures);
    return Math.round(cap / 2 + this.#random() * (cap / 2));
  }
}
