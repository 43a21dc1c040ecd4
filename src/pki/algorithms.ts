/**
 * Signature and public-key algorithms the fleet PKI signs with and accepts, and signature
 * verification through node:crypto (OpenSSL).
 *
 * Signing: what a `Signer` offers (ECDSA P-256 with SHA-256, Ed25519). Verifying: also ECDSA with
 * SHA-384/512, P-384/P-521 keys and RSA PKCS#1 v1.5 (2048 bits and up), so an existing production CA
 * can be plugged in. RSA-PSS, DSA, SHA-1 and anything else are refused as unsupported.
 */
import { createPublicKey, verify as nodeVerify, type KeyObject } from 'node:crypto';
import type { SignatureScheme } from '../keystore/signer.ts';
import { asBuffer } from '../util/bytes.ts';
import { CertificateError } from '../util/errors.ts';
import { children, malformed, oid, readNull, readOctetAlignedBits, readOid, seq, TAG, type Tlv } from './der.ts';
import { OID, oidName } from './oids.ts';

export type HashName = 'sha256' | 'sha384' | 'sha512';

export interface SignatureAlgorithm {
  readonly oid: string;
  /** The AlgorithmIdentifier's DER, compared between the TBS and the outer structure. */
  readonly der: Uint8Array;
  readonly keyType: 'ec' | 'ed25519' | 'rsa';
  /** Hash for node:crypto's verify; null for Ed25519 (pure EdDSA). */
  readonly hash: HashName | null;
}

const SIG_ALGS: Readonly<Record<string, { keyType: SignatureAlgorithm['keyType']; hash: HashName | null; params: 'absent' | 'null-or-absent' }>> = {
  // RFC 5758 §3.2: the parameters field MUST be absent for ecdsa-with-SHA*.
  [OID.ecdsaWithSha256]: { keyType: 'ec', hash: 'sha256', params: 'absent' },
  [OID.ecdsaWithSha384]: { keyType: 'ec', hash: 'sha384', params: 'absent' },
  [OID.ecdsaWithSha512]: { keyType: 'ec', hash: 'sha512', params: 'absent' },
  // RFC 8410 §3: parameters MUST be absent.
  [OID.ed25519]: { keyType: 'ed25519', hash: null, params: 'absent' },
  // RFC 4055 §5: parameters NULL; some encoders omit them, which OpenSSL also accepts.
  [OID.sha256WithRsa]: { keyType: 'rsa', hash: 'sha256', params: 'null-or-absent' },
  [OID.sha384WithRsa]: { keyType: 'rsa', hash: 'sha384', params: 'null-or-absent' },
  [OID.sha512WithRsa]: { keyType: 'rsa', hash: 'sha512', params: 'null-or-absent' },
};

/** Parses an AlgorithmIdentifier naming a signature algorithm we verify. */
export function parseSignatureAlgorithm(tlv: Tlv, what: string): SignatureAlgorithm {
  if (tlv.tag !== TAG.SEQUENCE) throw malformed(what, 'AlgorithmIdentifier is not a SEQUENCE');
  const parts = children(tlv, what, 2);
  const [o, params] = parts;
  if (o === undefined) throw malformed(what, 'AlgorithmIdentifier without an OID');
  const algOid = readOid(o, what);
  const known = SIG_ALGS[algOid];
  if (known === undefined) throw new CertificateError('unsupported-algorithm', `${what}: signature algorithm ${oidName(algOid)} is not accepted`);
  if (params !== undefined) {
    if (known.params === 'absent') throw malformed(what, `${oidName(algOid)} must have absent parameters`);
    readNull(params, what);
  }
  return { oid: algOid, der: tlv.der, keyType: known.keyType, hash: known.hash };
}

/** The AlgorithmIdentifier a Signer's scheme signs with. */
export function signatureAlgorithmFor(scheme: SignatureScheme): Uint8Array {
  switch (scheme) {
    case 'ecdsa-p256-sha256':
      return seq(oid(OID.ecdsaWithSha256));
    case 'ed25519':
      return seq(oid(OID.ed25519));
    default: {
      const never: never = scheme;
      throw new RangeError(`unknown signature scheme ${String(never)}`);
    }
  }
}

export interface SubjectPublicKeyInfo {
  /** The whole SPKI DER (what pins hash). */
  readonly der: Uint8Array;
  readonly algorithm: string;
  /** The subjectPublicKey BIT STRING content (what key identifiers hash). */
  readonly publicKey: Uint8Array;
}

/** Parses SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) structurally; keys are checked by `publicKeyFromSpki`. */
export function parseSpki(tlv: Tlv, what: string): SubjectPublicKeyInfo {
  if (tlv.tag !== TAG.SEQUENCE) throw malformed(what, 'SubjectPublicKeyInfo is not a SEQUENCE');
  const parts = children(tlv, what, 2);
  const [alg, key] = parts;
  if (parts.length !== 2 || alg === undefined || key === undefined) throw malformed(what, 'SubjectPublicKeyInfo needs an algorithm and a key');
  if (alg.tag !== TAG.SEQUENCE) throw malformed(what, 'key AlgorithmIdentifier is not a SEQUENCE');
  const algParts = children(alg, what, 2);
  if (algParts[0] === undefined) throw malformed(what, 'key AlgorithmIdentifier without an OID');
  const algorithm = readOid(algParts[0], what);
  return { der: tlv.der, algorithm, publicKey: readOctetAlignedBits(key, what) };
}

const EC_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);
const MIN_RSA_BITS = 2048;

/**
 * Parsed keys by SPKI DER. OpenSSL 3 takes ~150 µs to decode and check an EC public key, more than
 * verifying a signature; an ingest validates every device against the same issuing CA and sees the
 * same devices reconnect, so recently used keys are kept (keyed by the exact SPKI bytes).
 */
const KEY_CACHE_SIZE = 256;
const keyCache = new Map<string, KeyObject>();

/**
 * A node:crypto public key from SPKI DER, restricted to the key types we accept: EC P-256/P-384/
 * P-521, Ed25519, RSA of 2048 bits or more. OpenSSL checks that an EC point is on the curve.
 */
export function publicKeyFromSpki(spki: Uint8Array, what: string): KeyObject {
  const cacheKey = Buffer.from(spki.buffer, spki.byteOffset, spki.byteLength).toString('base64');
  const cached = keyCache.get(cacheKey);
  if (cached !== undefined) {
    keyCache.delete(cacheKey);
    keyCache.set(cacheKey, cached);
    return cached;
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: asBuffer(spki), format: 'der', type: 'spki' });
  } catch {
    throw malformed(what, 'public key does not parse');
  }
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails;
  const accepted = (type === 'ec' && EC_CURVES.has(details?.namedCurve ?? '')) || type === 'ed25519' || (type === 'rsa' && (details?.modulusLength ?? 0) >= MIN_RSA_BITS);
  if (!accepted) {
    const desc = type === 'ec' ? `EC ${details?.namedCurve ?? '?'}` : type === 'rsa' ? `RSA-${details?.modulusLength ?? '?'}` : String(type);
    throw new CertificateError('unsupported-algorithm', `${what}: public key type ${desc} is not accepted`);
  }
  keyCache.set(cacheKey, key);
  if (keyCache.size > KEY_CACHE_SIZE) keyCache.delete(keyCache.keys().next().value as string);
  return key;
}

/** Verifies `signature` over `data` with `key` as `alg` says; false on a bad signature. */
export function verifySignature(alg: SignatureAlgorithm, key: KeyObject, data: Uint8Array, signature: Uint8Array, what: string): boolean {
  if (key.asymmetricKeyType !== alg.keyType) {
    throw new CertificateError('bad-signature', `${what}: ${oidName(alg.oid)} signature from a ${String(key.asymmetricKeyType)} key`);
  }
  try {
    return nodeVerify(alg.hash, asBuffer(data), alg.keyType === 'ec' ? { key, dsaEncoding: 'der' } : key, asBuffer(signature));
  } catch {
    // OpenSSL refuses some malformed signatures by throwing rather than returning false.
    return false;
  }
}
