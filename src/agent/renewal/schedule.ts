/**
 * When to renew the device certificate, and when to try again after a failure: the sans-I/O core
 * of certificate renewal. It is told the current certificate's `notAfter` and the time, and what
 * happened to each attempt; it answers whether to renew now, or when to look again. The adapter
 * (renewer.ts) does the I/O and keeps one timer.
 *
 * States:
 *   idle        no attempt running; the certificate is not due, or it is and an attempt may start
 *   renewing    an attempt is running
 *   backing-off the last attempt(s) failed; the next may start at `retryAt` (exponential back-off
 *               with equal jitter, uplink/backoff.ts), whatever the checks in between say
 *
 * A certificate replaced from outside (a person re-provisioned the device) that is no longer due
 * ends a back-off: the failures no longer matter.
 *
 * @example
 *   const s = new RenewalSchedule({ renewDays: 30, backoff: { initialMs: 60_000, maxMs: 6 * 3_600_000 } }, Math.random);
 *   const d = s.decide(cert.notAfter, clock.now());
 *   if (d.kind === 'renew') { s.started(clock.now()); ... s.succeeded(clock.now(), newNotAfter) or s.failed(clock.now(), code, message) }
 */
import { Backoff, type BackoffPolicy } from '../uplink/backoff.ts';

const DAY = 86_400_000;

export interface RenewalPolicy {
  /** Renew once the certificate has at most this many days left. */
  readonly renewDays: number;
  readonly backoff: BackoffPolicy;
}

export interface RenewalFailure {
  readonly code: string;
  readonly message: string;
  readonly at: number;
}

export type RenewalState =
  | { readonly kind: 'idle'; readonly lastFailure?: RenewalFailure }
  | { readonly kind: 'renewing'; readonly since: number; readonly failures: number; readonly lastFailure?: RenewalFailure }
  | { readonly kind: 'backing-off'; readonly failures: number; readonly retryAt: number; readonly lastFailure: RenewalFailure };

export type RenewalDecision =
  | { readonly kind: 'not-due'; readonly dueAt: number }
  | { readonly kind: 'renew' }
  | { readonly kind: 'busy' }
  | { readonly kind: 'retry-later'; readonly retryAt: number };

export class RenewalSchedule {
  readonly #policy: RenewalPolicy;
  readonly #backoff: Backoff;
  #state: RenewalState = { kind: 'idle' };
  #lastSuccess: { readonly at: number; readonly notAfter: number } | undefined;

  constructor(policy: RenewalPolicy, random: () => number) {
    if (!Number.isSafeInteger(policy.renewDays) || policy.renewDays < 1) throw new RangeError('RenewalSchedule: renewDays must be a whole number of days >= 1');
    this.#policy = policy;
    this.#backoff = new Backoff(policy.backoff, random);
  }

  get state(): RenewalState {
    return this.#state;
  }

  get lastSuccess(): { readonly at: number; readonly notAfter: number } | undefined {
    return this.#lastSuccess;
  }

  /** When a certificate valid until `notAfter` becomes due. */
  dueAt(notAfter: number): number {
    return notAfter - this.#policy.renewDays * DAY;
  }

  decide(notAfter: number, now: number): RenewalDecision {
    const s = this.#state;
    switch (s.kind) {
      case 'renewing':
        return { kind: 'busy' };
      case 'idle':
        return now >= this.dueAt(notAfter) ? { kind: 'renew' } : { kind: 'not-due', dueAt: this.dueAt(notAfter) };
      case 'backing-off':
        if (now < this.dueAt(notAfter)) {
          // Replaced from outside with one that is not due: the failures are history.
          this.#state = { kind: 'idle', lastFailure: s.lastFailure };
          return { kind: 'not-due', dueAt: this.dueAt(notAfter) };
        }
        return now >= s.retryAt ? { kind: 'renew' } : { kind: 'retry-later', retryAt: s.retryAt };
      default: {
        const never: never = s;
        throw new Error(`unreachable ${String(never)}`);
      }
    }
  }

  started(now: number): void {
    const s = this.#state;
    if (s.kind === 'renewing') throw new RangeError('RenewalSchedule: an attempt is already running');
    this.#state = {
      kind: 'renewing', since: now, failures: s.kind === 'backing-off' ? s.failures : 0,
      ...(s.lastFailure === undefined ? {} : { lastFailure: s.lastFailure }),
    };
  }

  succeeded(now: number, notAfter: number): void {
    this.#expectRenewing();
    this.#lastSuccess = { at: now, notAfter };
    this.#state = { kind: 'idle' };
  }

  /** Records a failed attempt; returns when the next may start. */
  failed(now: number, code: string, message: string): number {
    const s = this.#expectRenewing();
    const retryAt = now + this.#backoff.delay(s.failures);
    this.#state = { kind: 'backing-off', failures: s.failures + 1, retryAt, lastFailure: { code, message, at: now } };
    return retryAt;
  }

  #expectRenewing(): Extract<RenewalState, { kind: 'renewing' }> {
    const s = this.#state;
    if (s.kind !== 'renewing') throw new RangeError('RenewalSchedule: no attempt is running');
    return s;
  }
}
