/**
 * How long each kind of certificate lives. One object, checked once, stored with a dev PKI
 * (pki.json) and passed to every issuing call, so validity is decided by policy, never by a
 * constant at a call site.
 *
 * @example
 *   const policy = validityPolicy({ deviceDays: 365 });
 */
export interface ValidityPolicy {
  /** Fleet root CA lifetime. */
  readonly rootCaDays: number;
  /** Issuing (intermediate) CA lifetime; at most the root's. */
  readonly issuingCaDays: number;
  /** Device identity certificates: re-enrolment renews them (DESIGN.md "Keys"). */
  readonly deviceDays: number;
  /** Service certificates (ingest listeners, MQTT broker). */
  readonly serviceDays: number;
  /**
   * notBefore is set this far in the past, so a device whose clock is slightly behind the CA's
   * accepts a certificate issued a moment ago. Never more than a day.
   */
  readonly backdateSeconds: number;
}

export const DEFAULT_VALIDITY_POLICY: ValidityPolicy = Object.freeze({
  rootCaDays: 20 * 365,
  issuingCaDays: 10 * 365,
  deviceDays: 2 * 365,
  serviceDays: 397,
  backdateSeconds: 300,
});

const MAX_DAYS = 100 * 365;

/** The default policy with `overrides`, checked: whole days in range, children no longer-lived than parents. */
export function validityPolicy(overrides: Partial<ValidityPolicy> = {}): ValidityPolicy {
  const p: ValidityPolicy = { ...DEFAULT_VALIDITY_POLICY, ...overrides };
  for (const key of ['rootCaDays', 'issuingCaDays', 'deviceDays', 'serviceDays'] as const) {
    const v = p[key];
    if (!Number.isSafeInteger(v) || v < 1 || v > MAX_DAYS) throw new RangeError(`validity policy: ${key} must be a whole number of days in [1, ${MAX_DAYS}]`);
  }
  if (!Number.isSafeInteger(p.backdateSeconds) || p.backdateSeconds < 0 || p.backdateSeconds > 86_400) {
    throw new RangeError('validity policy: backdateSeconds must be a whole number in [0, 86400]');
  }
  if (p.issuingCaDays > p.rootCaDays) throw new RangeError('validity policy: issuingCaDays exceeds rootCaDays');
  if (p.deviceDays > p.issuingCaDays || p.serviceDays > p.issuingCaDays) {
    throw new RangeError('validity policy: a leaf certificate would outlive its issuing CA');
  }
  return Object.freeze(p);
}

export const DAY_MS = 86_400_000;
