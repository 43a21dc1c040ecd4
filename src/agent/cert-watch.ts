/**
 * Watches the device certificate's expiry, and hands it to automatic renewal when that is
 * configured (`certificate.renew`: renewal/renewer.ts re-enrols at the ingest enrolment endpoint
 * from `renewDays` before `notAfter`). It warns from `warnDays` before `notAfter` (with renewal
 * configured, that means renewal has not succeeded yet), and loudly once the certificate has
 * expired. `assessCertificate` is the pure part (injected time); `CertificateWatcher` reads the
 * file, logs, and asks the renewer.
 *
 * @example
 *   const w = new CertificateWatcher({ file: '/var/lib/vitalseal/identity/chain.pem', warnDays: 14, clock: systemClock, log, renewer });
 *   w.check();                 // logs if action is needed; starts a renewal when one is due
 *   w.status().daysLeft;
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Clock } from '../util/clock.ts';
import type { Logger } from './log.ts';
import type { MetricsRegistry } from './metrics.ts';
import type { CertificateRenewer, RenewalStatus } from './renewal/renewer.ts';

export type CertState = 'ok' | 'renew-soon' | 'expired' | 'not-yet-valid' | 'unreadable';

export interface CertStatus {
  readonly state: CertState;
  readonly notBefore?: number;
  readonly notAfter?: number;
  /** Whole days left until notAfter (negative once expired). */
  readonly daysLeft?: number;
  readonly message: string;
}

const DAY = 86_400_000;

/** What to do about an expiring certificate, with and without automatic renewal. */
export const RENEWAL_NOT_CONFIGURED =
  'automatic renewal is not configured (certificate.renew, docs/agent.md): renew it by provisioning the device again (vitalseal provision --enrol) and restart the agent';

function advice(state: 'renew-soon' | 'expired', renewalUrl: string | undefined): string {
  if (renewalUrl === undefined) return RENEWAL_NOT_CONFIGURED;
  return state === 'renew-soon'
    ? `automatic renewal through ${renewalUrl} has not succeeded yet (see the renewal status and the log)`
    : 'an expired certificate no longer authenticates a renewal: provision the device again with a new enrolment token (vitalseal provision --enrol)';
}

/** `renewalUrl`: where automatic renewal goes, when it is configured (changes the advice only). */
export function assessCertificate(validity: { notBefore: number; notAfter: number }, now: number, warnDays: number, renewalUrl?: string): CertStatus {
  const daysLeft = Math.floor((validity.notAfter - now) / DAY);
  const until = new Date(validity.notAfter).toISOString();
  const base = { notBefore: validity.notBefore, notAfter: validity.notAfter, daysLeft };
  if (now < validity.notBefore) return { ...base, state: 'not-yet-valid', message: `device certificate is not valid before ${new Date(validity.notBefore).toISOString()} (check the device clock)` };
  if (now >= validity.notAfter) return { ...base, state: 'expired', message: `device certificate expired at ${until}; the transports will be refused. ${advice('expired', renewalUrl)}` };
  if (validity.notAfter - now <= warnDays * DAY) return { ...base, state: 'renew-soon', message: `device certificate expires in ${daysLeft} day(s), at ${until}; ${advice('renew-soon', renewalUrl)}` };
  return { ...base, state: 'ok', message: `device certificate valid until ${until} (${daysLeft} days)` };
}

export interface CertificateWatcherOptions {
  readonly file: string;
  readonly warnDays: number;
  readonly clock: Clock;
  readonly log: Logger;
  /** Automatic renewal (`certificate.renew`); absent: the watcher only warns. */
  readonly renewer?: CertificateRenewer;
}

export class CertificateWatcher {
  readonly #o: CertificateWatcherOptions;
  #status: CertStatus = { state: 'unreadable', message: 'not checked yet' };

  constructor(o: CertificateWatcherOptions) {
    this.#o = o;
  }

  status(): CertStatus {
    return this.#status;
  }

  /** Renewal's state, when it is configured. */
  renewal(): RenewalStatus | undefined {
    return this.#o.renewer?.status();
  }

  registerMetrics(m: MetricsRegistry): void {
    this.#o.renewer?.registerMetrics(m);
  }

  /** Stops renewal (its retry timer; waits for a running attempt). */
  async stop(): Promise<void> {
    await this.#o.renewer?.stop();
  }

  /** Re-reads the certificate (it may have been replaced) and logs when action is needed. */
  check(): CertStatus {
    let validity: { notBefore: number; notAfter: number };
    try {
      const cert = new X509Certificate(readFileSync(this.#o.file));
      validity = { notBefore: Date.parse(cert.validFrom), notAfter: Date.parse(cert.validTo) };
    } catch (e) {
      this.#status = { state: 'unreadable', message: `device certificate ${this.#o.file} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'not a PEM certificate'})` };
      this.#o.log.error({ file: this.#o.file }, this.#status.message);
      this.#askRenewer();
      return this.#status;
    }
    this.#status = assessCertificate(validity, this.#o.clock.now(), this.#o.warnDays, this.#o.renewer?.status().url);
    const fields = { file: this.#o.file, daysLeft: this.#status.daysLeft, notAfter: new Date(validity.notAfter).toISOString() };
    switch (this.#status.state) {
      case 'ok': this.#o.log.info(fields, this.#status.message); break;
      case 'renew-soon': this.#o.log.warn(fields, this.#status.message); break;
      case 'expired': case 'not-yet-valid': case 'unreadable': this.#o.log.error(fields, this.#status.message); break;
      default: {
        const never: never = this.#status.state;
        throw new Error(`unreachable ${String(never)}`);
      }
    }
    this.#askRenewer();
    return this.#status;
  }

  /** The renewer reads the chain itself and decides; a certificate just renewed is looked at again. */
  #askRenewer(): void {
    void this.#o.renewer?.tick().then((o) => {
      if (o.result === 'renewed') this.check();
    });
  }
}
