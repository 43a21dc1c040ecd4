/**
 * COSE header parameters (RFC 9052 §3.1) and the X25519 COSE_Key (RFC 9053 §7.2), with the checks
 * every decoder applies: protected headers are a byte string holding a map (empty bstr = empty
 * map), no label in both buckets, and every label listed in `crit` understood and protected.
 */
import { decodeCbor, encodeCbor } from '../codec/cbor.ts';
import { DecodeError } from '../util/errors.ts';

export const Header = Object.freeze({
  ALG: 1,
  CRIT: 2,
  CONTENT_TYPE: 3,
  KID: 4,
  IV: 5,
  PARTIAL_IV: 6,
  /** RFC 9053 §6.3.1: ephemeral key for ECDH-ES. */
  EPHEMERAL_KEY: -1,
  /** Private use (RFC 9052 §16.2, below -65536): vitalseal's device id, in the protected bucket. */
  DEVICE_ID: -65537,
  /** Private use: the device's message sequence number, in the protected bucket. */
  SEQUENCE: -65538,
});

/** Labels this implementation understands; `crit` may name only these. */
const UNDERSTOOD = new Set<number>(Object.values(Header));

export type HeaderMap = Map<number, unknown>;

function fail(code: string, message: string): never {
  throw new DecodeError(code, `COSE: ${message}`);
}

/** Decodes a protected-header bstr; a zero-length bstr is the empty map (RFC 9052 §3). */
export function decodeProtected(bstr: unknown): HeaderMap {
  if (!(bstr instanceof Uint8Array)) fail('cose-structure', 'protected header is not a byte string');
  if (bstr.length === 0) return new Map();
  const m = decodeCbor(bstr, { maxBytes: 4096, maxDepth: 4 });
  return checkHeaderMap(m, 'protected');
}

export function encodeProtected(h: HeaderMap): Uint8Array {
  return h.size === 0 ? new Uint8Array(0) : encodeCbor(h);
}

export function checkHeaderMap(m: unknown, bucket: string): HeaderMap {
  if (!(m instanceof Map)) fail('cose-structure', `${bucket} header is not a map`);
  for (const k of m.keys()) {
    // Text labels are allowed by RFC 9052 but not used by any algorithm here.
    if (typeof k !== 'number' || !Number.isInteger(k)) fail('cose-header', `${bucket} header has a non-integer label`);
  }
  return m as HeaderMap;
}

/** RFC 9052 §3: a label MUST NOT occur in both buckets; `crit` must be protected and understood. */
export function checkBuckets(prot: HeaderMap, unprot: HeaderMap): void {
  for (const k of prot.keys()) if (unprot.has(k)) fail('cose-header', `label ${k} in both protected and unprotected headers`);
  if (unprot.has(Header.CRIT)) fail('cose-header', 'crit must be in the protected header');
  const crit = prot.get(Header.CRIT);
  if (crit !== undefined) {
    if (!Array.isArray(crit) || crit.length === 0) fail('cose-header', 'crit must be a non-empty array');
    for (const label of crit) {
      if (!UNDERSTOOD.has(label as number)) fail('cose-crit', `critical header ${String(label)} is not understood`);
      if (!prot.has(label as number)) fail('cose-crit', `critical header ${String(label)} is not in the protected header`);
    }
  }
}

/** A parameter from either bucket. */
export function headerValue(prot: HeaderMap, unprot: HeaderMap, label: number): unknown {
  return prot.has(label) ? prot.get(label) : unprot.get(label);
}

/** COSE_Key for an X25519 public key: {1: 1 (OKP), -1: 4 (X25519), -2: x} (RFC 9053 §7.2, §7.1). */
export function encodeX25519CoseKey(publicKey: Uint8Array): Map<number, unknown> {
  return new Map<number, unknown>([[1, 1], [-1, 4], [-2, publicKey]]);
}

export function decodeX25519CoseKey(value: unknown): Uint8Array {
  if (!(value instanceof Map)) fail('cose-key', 'ephemeral key is not a COSE_Key map');
  if (value.get(1) !== 1) fail('cose-key', 'ephemeral key type is not OKP');
  if (value.get(-1) !== 4) fail('cose-key', 'ephemeral key curve is not X25519');
  const x = value.get(-2);
  if (!(x instanceof Uint8Array) || x.length !== 32) fail('cose-key', 'ephemeral key x is not 32 bytes');
  if (value.has(-4)) fail('cose-key', 'ephemeral key carries a private part');
  // RFC 7748 §5 masks bit 255 and reduces mod p, so several encodings name one key. Accept only
  // the canonical one: one epoch, one byte string (and no malleable unprotected field).
  if (!isCanonicalX25519(x)) fail('cose-key', 'ephemeral key is not canonically encoded');
  return x;
}

/** u < 2^255 - 19 with bit 255 clear: the canonical little-endian encoding of an X25519 u-coordinate. */
export function isCanonicalX25519(u: Uint8Array): boolean {
  if (((u[31] as number) & 0x80) !== 0) return false;
  if (u[31] !== 0x7f) return true;
  for (let i = 30; i >= 1; i--) if (u[i] !== 0xff) return true;
  return (u[0] as number) < 0xed;
}
