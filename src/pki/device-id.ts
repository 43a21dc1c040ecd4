/**
 * Where a device certificate carries the device id, and how it is read back.
 *
 * The binding is the URI subject alternative name `urn:dev:vitalseal:<id>` (the `dev` URN namespace
 * of RFC 9039; see docs/pki.md for why this subtype). The subject common name carries the same id,
 * because tools that know only the CN (mosquitto's `use_identity_as_username`, log lines) name the
 * device by it. A certificate whose CN and URI disagree, or that names two device ids, is refused.
 *
 * @example
 *   deviceIdUri('bed-7');                 // 'urn:dev:vitalseal:bed-7'
 *   deviceIdOf(parseCertificate(der));    // 'bed-7'
 */
import { DEVICE_ID_PATTERN, isDeviceId } from '../util/device-id.ts';
import { CertificateError } from '../util/errors.ts';
import type { Certificate } from './certificate.ts';
import { attributeValues } from './name.ts';
import { OID } from './oids.ts';

export { DEVICE_ID_PATTERN, isDeviceId };

export const DEVICE_ID_URN_PREFIX = 'urn:dev:vitalseal:';

export function checkDeviceId(id: unknown): string {
  if (typeof id !== 'string' || !DEVICE_ID_PATTERN.test(id)) {
    throw new RangeError(`invalid device id ${JSON.stringify(String(id)).slice(0, 80)}: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit`);
  }
  return id;
}

export function deviceIdUri(id: string): string {
  return `${DEVICE_ID_URN_PREFIX}${checkDeviceId(id)}`;
}

/**
 * The device id a certificate carries, or undefined if it carries none.
 * Throws `device-id-mismatch` when the certificate is inconsistent: two device URIs, a URI whose id
 * is not a valid device id, or a subject CN that differs from the URI's id.
 */
export function deviceIdOf(cert: Certificate): string | undefined {
  const uris = (cert.extensions.subjectAltName?.uris ?? []).filter(
    // RFC 8141 §3.1: the "urn" scheme and the namespace id compare case-insensitively.
    (u) => u.length >= DEVICE_ID_URN_PREFIX.length && u.slice(0, DEVICE_ID_URN_PREFIX.length).toLowerCase() === DEVICE_ID_URN_PREFIX,
  );
  if (uris.length === 0) return undefined;
  if (uris.length > 1) throw new CertificateError('device-id-mismatch', 'certificate names more than one device id');
  const id = (uris[0] as string).slice(DEVICE_ID_URN_PREFIX.length);
  if (!isDeviceId(id)) throw new CertificateError('device-id-mismatch', 'certificate device URI does not hold a valid device id');
  const cns = attributeValues(cert.subject, OID.commonName);
  if (cns.length !== 1 || cns[0] !== id) {
    throw new CertificateError('device-id-mismatch', `certificate subject CN does not match its device URI (${JSON.stringify(id)})`);
  }
  return id;
}
