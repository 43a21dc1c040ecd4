/**
 * A strict, bounded reader for TPM2B_PUBLIC (TPM 2.0 Part 2 §12.2.5): the public area FAPI keeps for
 * every object. The store reads it to tell signing keys from sealed data, to build the SPKI of a
 * signing key without asking the TPM, and to compute object Names (Part 1 §16) so it can check that
 * the TPM still holds the storage root key its keystore was made under.
 *
 * Every read is bounds-checked; the input must be consumed exactly; anything unexpected is a
 * `DecodeError` (never a crash).
 */
import { createHash, createPublicKey } from 'node:crypto';
import { DecodeError } from '../../util/errors.ts';

// TPM 2.0 Part 2 §6.3 (TPM_ALG_ID).
export const ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  SM3_256: 0x0012,
  SM4: 0x0013,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  KDF1_SP800_56A: 0x0020,
  KDF2: 0x0021,
  KDF1_SP800_108: 0x0022,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CAMELLIA: 0x0026,
  MGF1: 0x0007,
} as const;

// TPM 2.0 Part 2 §8.3 (TPMA_OBJECT).
export const ATTR = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const;

/** TPM 2.0 Part 2 §6.4 (TPM_ECC_CURVE). */
export const ECC_NIST_P256 = 0x0003;

const HASH_SIZES = new Map<number, { name: string; size: number }>([
  [ALG.SHA1, { name: 'sha1', size: 20 }],
  [ALG.SHA256, { name: 'sha256', size: 32 }],
  [ALG.SHA384, { name: 'sha384', size: 48 }],
  [ALG.SHA512, { name: 'sha512', size: 64 }],
]);

export type TpmPublicType = 'rsa' | 'ecc' | 'keyedhash' | 'symcipher';

export interface TpmPublic {
  readonly type: TpmPublicType;
  readonly nameAlg: number;
  readonly attributes: number;
  /** The marshalled TPMT_PUBLIC (what the Name hashes). */
  readonly publicArea: Uint8Array;
  /** ECC keys: curve and the public point. */
  readonly ecc?: { readonly curve: number; readonly scheme: number; readonly x: Uint8Array; readonly y: Uint8Array };
  /** Keyed-hash objects: the scheme (NULL for sealed data). */
  readonly keyedHashScheme?: number;
}

class Reader {
  #offset = 0;
  constructor(private readonly bytes: Uint8Array) {}
  get offset(): number {
    return this.#offset;
  }
  get remaining(): number {
    return this.bytes.length - this.#offset;
  }
  take(n: number, what: string): Uint8Array {
    if (n > this.remaining) throw new DecodeError('tpm-public-truncated', `TPM2B_PUBLIC: truncated in ${what}`);
    const out = this.bytes.subarray(this.#offset, this.#offset + n);
    this.#offset += n;
    return out;
  }
  u16(what: string): number {
    const b = this.take(2, what);
    return ((b[0] as number) << 8) | (b[1] as number);
  }
  u32(what: string): number {
    const b = this.take(4, what);
    return (((b[0] as number) << 24) | ((b[1] as number) << 16) | ((b[2] as number) << 8) | (b[3] as number)) >>> 0;
  }
  /** A TPM2B: 2-byte size then that many bytes, at most `max`. */
  tpm2b(what: string, max: number): Uint8Array {
    const size = this.u16(`${what} size`);
    if (size > max) throw new DecodeError('tpm-public-invalid', `TPM2B_PUBLIC: ${what} of ${size} bytes exceeds ${max}`);
    return this.take(size, what);
  }
}

function bad(message: string): never {
  throw new DecodeError('tpm-public-invalid', `TPM2B_PUBLIC: ${message}`);
}

function hashAlg(r: Reader, what: string, allowNull = false): number {
  const alg = r.u16(what);
  if (allowNull && alg === ALG.NULL) return alg;
  if (!HASH_SIZES.has(alg) && alg !== ALG.SM3_256) bad(`${what}: unknown hash algorithm 0x${alg.toString(16)}`);
  return alg;
}

// Part 2 §11.1.7 TPMT_SYM_DEF_OBJECT.
function symDefObject(r: Reader): void {
  const alg = r.u16('symmetric.algorithm');
  if (alg === ALG.NULL) return;
  if (alg === ALG.XOR) {
    hashAlg(r, 'symmetric.keyBits (xor hash)');
    return;
  }
  if (alg !== ALG.AES && alg !== ALG.SM4 && alg !== ALG.CAMELLIA) bad(`unknown symmetric algorithm 0x${alg.toString(16)}`);
  r.u16('symmetric.keyBits');
  r.u16('symmetric.mode');
}

// Part 2 §11.2.5.1 TPMT_KDF_SCHEME.
function kdfScheme(r: Reader): void {
  const scheme = r.u16('kdf.scheme');
  if (scheme === ALG.NULL) return;
  if (scheme !== ALG.MGF1 && scheme !== ALG.KDF1_SP800_56A && scheme !== ALG.KDF2 && scheme !== ALG.KDF1_SP800_108) {
    bad(`unknown kdf scheme 0x${scheme.toString(16)}`);
  }
  hashAlg(r, 'kdf.hashAlg');
}

// Part 2 §11.2.5.6 TPMT_ECC_SCHEME / §11.2.4.2 TPMT_RSA_SCHEME (signing and key-exchange details).
function asymScheme(r: Reader, allowed: readonly number[]): number {
  const scheme = r.u16('scheme');
  if (scheme === ALG.NULL) return scheme;
  if (!allowed.includes(scheme)) bad(`scheme 0x${scheme.toString(16)} not allowed here`);
  if (scheme === ALG.RSAES) return scheme; // no details
  hashAlg(r, 'scheme.hashAlg');
  if (scheme === ALG.ECDAA) r.u16('scheme.count');
  return scheme;
}

/**
 * Parses a marshalled TPM2B_PUBLIC. Throws `DecodeError` on anything malformed, unknown, truncated
 * or followed by extra bytes.
 */
export function parseTpm2bPublic(bytes: Uint8Array): TpmPublic {
  const outer = new Reader(bytes);
  const size = outer.u16('size');
  if (size !== outer.remaining) bad(`size field ${size} but ${outer.remaining} bytes follow`);
  const publicArea = outer.take(size, 'publicArea');
  const r = new Reader(publicArea);
  const typeId = r.u16('type');
  const nameAlg = hashAlg(r, 'nameAlg');
  const attributes = r.u32('objectAttributes');
  r.tpm2b('authPolicy', 64);
  let result: TpmPublic;
  switch (typeId) {
    case ALG.KEYEDHASH: {
      // §12.2.3.3 TPMS_KEYEDHASH_PARMS: TPMT_KEYEDHASH_SCHEME.
      const scheme = r.u16('keyedHash.scheme');
      if (scheme === ALG.HMAC) hashAlg(r, 'hmac.hashAlg');
      else if (scheme === ALG.XOR) {
        hashAlg(r, 'xor.hashAlg');
        r.u16('xor.kdf');
      } else if (scheme !== ALG.NULL) bad(`unknown keyed-hash scheme 0x${scheme.toString(16)}`);
      r.tpm2b('unique (keyed-hash digest)', 64);
      result = { type: 'keyedhash', nameAlg, attributes, publicArea, keyedHashScheme: scheme };
      break;
    }
    case ALG.SYMCIPHER: {
      symDefObject(r);
      r.tpm2b('unique (symcipher digest)', 64);
      result = { type: 'symcipher', nameAlg, attributes, publicArea };
      break;
    }
    case ALG.RSA: {
      symDefObject(r);
      asymScheme(r, [ALG.RSASSA, ALG.RSAES, ALG.RSAPSS, ALG.OAEP]);
      r.u16('rsa.keyBits');
      r.u32('rsa.exponent');
      r.tpm2b('unique (rsa modulus)', 512);
      result = { type: 'rsa', nameAlg, attributes, publicArea };
      break;
    }
    case ALG.ECC: {
      symDefObject(r);
      const scheme = asymScheme(r, [ALG.ECDSA, ALG.ECDH, ALG.ECDAA, ALG.SM2, ALG.ECSCHNORR, ALG.ECMQV]);
      const curve = r.u16('ecc.curveID');
      kdfScheme(r);
      // §11.2.5.2 TPMS_ECC_POINT: two TPM2B_ECC_PARAMETERs (at most 128 bytes each).
      const x = r.tpm2b('unique.x', 128);
      const y = r.tpm2b('unique.y', 128);
      result = { type: 'ecc', nameAlg, attributes, publicArea, ecc: { curve, scheme, x, y } };
      break;
    }
    default:
      bad(`unknown object type 0x${typeId.toString(16)}`);
  }
  if (r.remaining !== 0) bad(`${r.remaining} unexpected bytes after the public area`);
  return result;
}

/** The object's Name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC) (TPM 2.0 Part 1 §16). */
export function objectName(pub: TpmPublic): Uint8Array {
  const h = HASH_SIZES.get(pub.nameAlg);
  if (h === undefined) throw new DecodeError('tpm-public-invalid', `TPM2B_PUBLIC: cannot compute a Name with hash 0x${pub.nameAlg.toString(16)}`);
  const digest = createHash(h.name).update(pub.publicArea).digest();
  const out = new Uint8Array(2 + digest.length);
  out[0] = pub.nameAlg >>> 8;
  out[1] = pub.nameAlg & 0xff;
  out.set(digest, 2);
  return out;
}

function leftPad(bytes: Uint8Array, size: number, what: string): Uint8Array {
  if (bytes.length > size) throw new DecodeError('tpm-public-invalid', `TPM2B_PUBLIC: ${what} has ${bytes.length} bytes, more than ${size}`);
  const out = new Uint8Array(size);
  out.set(bytes, size - bytes.length);
  return out;
}

/** True for what this store treats as a signing key: an unrestricted P-256 ECC key with `sign` and not `decrypt`. */
export function isP256SigningKey(pub: TpmPublic): boolean {
  return pub.type === 'ecc' && pub.ecc?.curve === ECC_NIST_P256 && (pub.attributes & ATTR.sign) !== 0
    && (pub.attributes & (ATTR.decrypt | ATTR.restricted)) === 0;
}

/** True for a sealed data object: a keyed-hash object with the NULL scheme that neither signs nor decrypts. */
export function isSealedData(pub: TpmPublic): boolean {
  return pub.type === 'keyedhash' && pub.keyedHashScheme === ALG.NULL && (pub.attributes & (ATTR.sign | ATTR.decrypt)) === 0;
}

/**
 * DER SubjectPublicKeyInfo of a P-256 key. node:crypto imports the point, which also checks it
 * is on the curve.
 */
export function p256Spki(pub: TpmPublic): Uint8Array {
  if (pub.ecc === undefined || pub.ecc.curve !== ECC_NIST_P256) {
    throw new DecodeError('tpm-public-invalid', 'TPM2B_PUBLIC: not a NIST P-256 key');
  }
  const x = leftPad(pub.ecc.x, 32, 'x');
  const y = leftPad(pub.ecc.y, 32, 'y');
  let key;
  try {
    key = createPublicKey({
      key: { kty: 'EC', crv: 'P-256', x: Buffer.from(x).toString('base64url'), y: Buffer.from(y).toString('base64url') },
      format: 'jwk',
    });
  } catch (e) {
    throw new DecodeError('tpm-public-invalid', 'TPM2B_PUBLIC: the ECC point is not on P-256', { cause: e });
  }
  return new Uint8Array(key.export({ format: 'der', type: 'spki' }));
}
