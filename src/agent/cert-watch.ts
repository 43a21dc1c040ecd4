/**
 * Watches the device certificate's expiry. Renewal belongs to the ingest service's enrolment
 * endpoint, which does not exist yet; until it does, the watcher warns clearly, and early
 * (`warnDays` before `notAfter`), that the certificate must be renewed by hand, and loudly once it
 * has expired. `assessCertificate` is the pure part (injected time); `CertificateWatcher` reads the
 * file and logs.
 *
 * @example
 *   const w = new CertificateWatcher({ file: '/etc/vitalseal/device.crt', warnDays: 30, clock: systemClock, log });
 *   w.check();                 // logs if renewal is due
 *   w.status().daysLeft;
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Clock } from '../util/clock.ts';
import type { Logger } from './log.ts';

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

export const RENEWAL_NOT_AVAILABLE =
  'automatic renewal through the ingest enrolment endpoint is not available in this version: issue a new device certificate (vitalseal pki issue / vitalseal provision) and restart the agent';

export function assessCertificate(validity: { notBefore: number; notAfter: number }, now: number, warnDays: number): CertStatus {
  const daysLeft = Math.floor((validity.notAfter - now) / DAY);
  const until = new Date(validity.notAfter).toISOString();
  const base = { notBefore: validity.notBefore, notAfter: validity.notAfter, daysLeft };
  if (now < validity.notBefore) return { ...base, state: 'not-yet-valid', message: `device certificate is not valid before ${new Date(validity.notBefore).toISOString()} (check the device clock)` };
  if (now >= validity.notAfter) return { ...base, state: 'expired', message: `device certificate expired at ${until}; the transports will be refused. ${RENEWAL_NOT_AVAILABLE}` };
  if (validity.notAfter - now <= warnDays * DAY) return { ...base, state: 'renew-soon', message: `device certificate expires in ${daysLeft} day(s), at ${until}; ${RENEWAL_NOT_AVAILABLE}` };
  return { ...base, state: 'ok', message: `device certificate valid until ${until} (${daysLeft} days)` };
}

export interface CertificateWatcherOptions {
  readonly file: string;
  readonly warnDays: number;
  readonly clock: Clock;
  readonly log: Logger;
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

  /** Re-reads the certificate (it may have been replaced) and logs when action is needed. */
  check(): CertStatus {
    let validity: { notBefore: number; notAfter: number };
    try {
      const cert = new X509Certificate(readFileSync(this.#o.file));
      validity = { notBefore: Date.parse(cert.validFrom), notAfter: Date.parse(cert.validTo) };
    } catch (e) {
      this.#status = { state: 'unreadable', message: `device certificate ${this.#o.file} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'not a PEM certificate'})` };
      this.#o.log.error({ file: this.#o.file }, this.#status.message);
      return this.#status;
    }
    this.#status = assessCertificate(validity, this.#o.clock.now(), this.#o.warnDays);
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
    return this.#status;
  }
}
