/**
 * X.509 v3 certificates (RFC 5280 §4.1): a strict, bounded parser. Parsing checks structure only;
 * `validateChain` (validate.ts) decides whether a certificate is trusted.
 *
 * @example
 *   const cert = parseCertificate(der);
 *   cert.subject.text;       // 'O=Example Hospital,CN=bed-7'
 *   cert.extensions.subjectAltName?.uris;   // ['urn:dev:vitalseal:bed-7']
 */
import { createHash } from 'node:crypto';
import { toHex } from '../util/bytes.ts';
import { parseSignatureAlgorithm, parseSpki, type SignatureAlgorithm, type SubjectPublicKeyInfo } from './algorithms.ts';
import { ctx, ctxPrim, DerReader, malformed, readIntegerBytes, readOctetAlignedBits, readSmallInt, readTime, TAG } from './der.ts';
import { parseExtensions, type Extensions } from './extensions.ts';
import { parseName, type Name } from './name.ts';

/** Larger inputs are refused before parsing: fleet certificates are well under 2 KiB. */
export const MAX_CERTIFICATE_BYTES = 16 * 1024;
/** RFC 5280 §4.1.2.2: serial numbers are at most 20 octets (one more for a sign octet). */
const MAX_SERIAL_BYTES = 21;

export interface Certificate {
  readonly der: Uint8Array;
  /** The TBSCertificate DER: the bytes the issuer signed. */
  readonly tbs: Uint8Array;
  readonly version: 1 | 2 | 3;
  /** INTEGER content octets as encoded (two's complement). */
  readonly serialNumber: Uint8Array;
  /** Lower-case hex of `serialNumber`. */
  readonly serialHex: string;
  readonly signatureAlgorithm: SignatureAlgorithm;
  readonly signatureValue: Uint8Array;
  readonly issuer: Name;
  readonly subject: Name;
  /** Milliseconds since the epoch (inclusive bounds, RFC 5280 §4.1.2.5). */
  readonly notBefore: number;
  readonly notAfter: number;
  readonly spki: SubjectPublicKeyInfo;
  readonly extensions: Extensions;
}

export function parseCertificate(der: Uint8Array): Certificate {
  const what = 'certificate';
  if (!(der instanceof Uint8Array)) throw new TypeError('parseCertificate: expected Uint8Array');
  if (der.length > MAX_CERTIFICATE_BYTES) throw malformed(what, `${der.length} bytes exceeds ${MAX_CERTIFICATE_BYTES}`);
  const top = new DerReader(der, what);
  const certTlv = top.expect(TAG.SEQUENCE, what);
  top.end(what);

  const cert = new DerReader(certTlv.value, what);
  const tbsTlv = cert.expect(TAG.SEQUENCE, 'TBSCertificate');
  const outerAlg = parseSignatureAlgorithm(cert.expect(TAG.SEQUENCE, 'signatureAlgorithm'), 'signatureAlgorithm');
  const signatureValue = readOctetAlignedBits(cert.expect(TAG.BIT_STRING, 'signatureValue'), 'signatureValue');
  cert.end(what);

  const t = new DerReader(tbsTlv.value, 'TBSCertificate');
  let version: 1 | 2 | 3 = 1;
  const versionTlv = t.optional(ctx(0), 'version');
  if (versionTlv !== undefined) {
    const r = new DerReader(versionTlv.value, 'version');
    const v = readSmallInt(r.expect(TAG.INTEGER, 'version'), 'version', 2);
    r.end('version');
    // X.690 §11.5: v1 is the DEFAULT and is never encoded.
    if (v === 0) throw malformed('version', 'v1 must be omitted in DER');
    version = (v + 1) as 2 | 3;
  }
  const serialNumber = readIntegerBytes(t.expect(TAG.INTEGER, 'serialNumber'), 'serialNumber');
  if (serialNumber.length > MAX_SERIAL_BYTES) throw malformed('serialNumber', `${serialNumber.length} octets is too long`);
  const tbsAlgTlv = t.expect(TAG.SEQUENCE, 'signature');
  // RFC 5280 §4.1.1.2: the field MUST contain the same algorithm identifier as the signature field.
  if (!sameBytes(tbsAlgTlv.der, outerAlg.der)) throw malformed(what, 'TBS signature algorithm differs from the outer one');
  const issuer = parseName(t.expect(TAG.SEQUENCE, 'issuer'), 'issuer');
  const validity = new DerReader(t.expect(TAG.SEQUENCE, 'validity').value, 'validity');
  const notBefore = readTime(validity.read('notBefore'), 'notBefore');
  const notAfter = readTime(validity.read('notAfter'), 'notAfter');
  validity.end('validity');
  const subject = parseName(t.expect(TAG.SEQUENCE, 'subject'), 'subject');
  const spki = parseSpki(t.expect(TAG.SEQUENCE, 'subjectPublicKeyInfo'), 'subjectPublicKeyInfo');
  // RFC 5280 §4.1.2.8: unique identifiers only in v2/v3; never used by this PKI, skipped if present.
  if (t.optional(ctxPrim(1), 'issuerUniqueID') !== undefined && version === 1) throw malformed(what, 'issuerUniqueID in a v1 certificate');
  if (t.optional(ctxPrim(2), 'subjectUniqueID') !== undefined && version === 1) throw malformed(what, 'subjectUniqueID in a v1 certificate');
  const extTlv = t.optional(ctx(3), 'extensions');
  let extensions = parseExtensions(undefined, 'extensions');
  if (extTlv !== undefined) {
    // RFC 5280 §4.1.2.9: extensions only in v3.
    if (version !== 3) throw malformed(what, 'extensions in a certificate that is not v3');
    const r = new DerReader(extTlv.value, 'extensions');
    extensions = parseExtensions(r.expect(TAG.SEQUENCE, 'extensions'), 'extensions');
    r.end('extensions');
  }
  t.end('TBSCertificate');

  return {
    der,
    tbs: tbsTlv.der,
    version,
    serialNumber,
    serialHex: toHex(serialNumber),
    signatureAlgorithm: outerAlg,
    signatureValue,
    issuer,
    subject,
    notBefore,
    notAfter,
    spki,
    extensions,
  };
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** SHA-256 of the whole SubjectPublicKeyInfo DER: the pin (RFC 7469 §2.4 "pin-sha256"). */
export function spkiSha256(spkiDer: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(spkiDer).digest());
}

/** `sha256/<base64>`: the pin text form (as curl's --pinnedpubkey and RFC 7469 write it). */
export function formatSpkiPin(pin: Uint8Array): string {
  return `sha256/${Buffer.from(pin).toString('base64')}`;
}

/** Parses `sha256/<base64>` (or 64 hex digits) into the 32-byte pin. */
export function parseSpkiPin(text: string): Uint8Array {
  const hex = /^[0-9a-fA-F]{64}$/.test(text) ? text : undefined;
  if (hex !== undefined) return new Uint8Array(Buffer.from(hex, 'hex'));
  const m = /^sha256\/([A-Za-z0-9+/]{43}=)$/.exec(text);
  if (m === null || m[1] === undefined) throw new RangeError('parseSpkiPin: expected sha256/<base64 of 32 bytes> or 64 hex digits');
  return new Uint8Array(Buffer.from(m[1], 'base64'));
}

/**
 * Key identifier for a public key: RFC 7093 §2 method 1, the leftmost 160 bits of the SHA-256 of the
 * subjectPublicKey BIT STRING value (avoids RFC 5280's SHA-1 method with the same length).
 */
export function keyIdentifier(subjectPublicKey: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(subjectPublicKey).digest().subarray(0, 20));
}

/** The key identifier children of `issuer` carry in their AKI: the issuer's own SKI when it has one. */
export function authorityKeyIdFor(issuer: Certificate): Uint8Array {
  return issuer.extensions.subjectKeyId ?? keyIdentifier(issuer.spki.publicKey);
}
