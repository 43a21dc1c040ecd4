/**
 * The two DER conversions a PKCS#11 P-256 key needs: the token returns ECDSA signatures as raw
 * r || s (PKCS #11 v2.40 Current Mechanisms §2.3.1) and public keys as an EC point (CKA_EC_POINT),
 * while TLS, X.509 and node:crypto want a DER Ecdsa-Sig-Value and a SubjectPublicKeyInfo.
 */
import { createPublicKey } from 'node:crypto';
import { KeyStoreError } from '../../util/errors.ts';

const P256_BYTES = 32;

/** DER INTEGER of an unsigned big-endian value (X.690 §8.3: minimal, positive). */
function derUnsignedInteger(be: Uint8Array): Uint8Array {
  let i = 0;
  while (i < be.length - 1 && be[i] === 0) i++; // minimal: no leading zero octets...
  const body = be.subarray(i);
  const pad = ((body[0] as number) & 0x80) !== 0 ? 1 : 0; // ...except one that keeps it positive
  const out = new Uint8Array(2 + pad + body.length);
  out[0] = 0x02;
  out[1] = pad + body.length;
  out.set(body, 2 + pad);
  return out;
}

/**
 * Converts a raw P-256 ECDSA signature (r || s, 32 bytes each) to DER:
 * Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 3279 §2.2.3).
 */
export function ecdsaRawToDer(raw: Uint8Array): Uint8Array {
  if (raw.length !== 2 * P256_BYTES) {
    throw new KeyStoreError('token-error', `the token returned a ${raw.length}-byte ECDSA signature; P-256 gives ${2 * P256_BYTES}`);
  }
  const r = raw.subarray(0, P256_BYTES);
  const s = raw.subarray(P256_BYTES);
  // r and s lie in [1, n-1] (FIPS 186-4 §6.4); a zero half is a broken token, never a signature.
  if (r.every((b) => b === 0) || s.every((b) => b === 0)) {
    throw new KeyStoreError('token-error', 'the token returned an ECDSA signature with a zero component');
  }
  const ri = derUnsignedInteger(r);
  const si = derUnsignedInteger(s);
  const len = ri.length + si.length; // at most 2 * 35 = 70 < 128: short-form length
  const out = new Uint8Array(2 + len);
  out[0] = 0x30;
  out[1] = len;
  out.set(ri, 2);
  out.set(si, 2 + ri.length);
  return out;
}

// SubjectPublicKeyInfo for id-ecPublicKey with namedCurve secp256r1 (RFC 5480 §2): everything
// before the 65-byte uncompressed point.
const P256_SPKI_PREFIX = Uint8Array.of(
  0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
  0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
);

/**
 * CKA_EC_POINT → DER SubjectPublicKeyInfo. PKCS #11 v2.40 says CKA_EC_POINT is a DER OCTET STRING
 * holding the X9.62 point; some tokens return the bare point, so both are accepted. Only the
 * uncompressed form (0x04 || X || Y, SEC 1 §2.3.3) is, and the point must be on the curve (node:crypto
 * checks that when it imports the key).
 */
export function p256PointToSpki(ecPoint: Uint8Array): Uint8Array {
  let point: Uint8Array;
  if (ecPoint.length === 67 && ecPoint[0] === 0x04 && ecPoint[1] === 0x41) point = ecPoint.subarray(2);
  else if (ecPoint.length === 65) point = ecPoint;
  else throw new KeyStoreError('token-error', `CKA_EC_POINT of ${ecPoint.length} bytes is not a P-256 uncompressed point`);
  if (point[0] !== 0x04) throw new KeyStoreError('token-error', 'CKA_EC_POINT is not an uncompressed point');
  const spki = new Uint8Array(P256_SPKI_PREFIX.length + 65);
  spki.set(P256_SPKI_PREFIX, 0);
  spki.set(point, P256_SPKI_PREFIX.length);
  try {
    createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  } catch {
    throw new KeyStoreError('token-error', 'CKA_EC_POINT is not a point on P-256');
  }
  return spki;
}

/** PEM ("-----BEGIN PUBLIC KEY-----") of a DER SubjectPublicKeyInfo (RFC 7468 §13). */
export function spkiToPem(spki: Uint8Array): string {
  const b64 = Buffer.from(spki).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN PUBLIC KEY-----\n${lines.join('\n')}\n-----END PUBLIC KEY-----\n`;
}
