/**
 * The byte layout of what the token encrypts for us with AES-256-GCM (NIST SP 800-38D): wrapped data
 * keys (returned to the caller) and sealed secrets (stored in a token data object).
 *
 *   blob = version (1 byte, 0x01) || IV (12 bytes) || ciphertext || tag (16 bytes)
 *   AAD  = "vitalseal/pkcs11/v1" || 0x00 || purpose ("wrap" | "seal") || 0x00 || key name
 *
 * The AAD binds a blob to what it is and to the name it was made for: a wrapped key does not unwrap
 * under another KEK even if two tokens held the same key bits, a wrapped key cannot be passed off as
 * a sealed secret, and a sealed value copied into another object's label does not unseal. The IV is
 * 96 random bits from the token's RNG (SP 800-38D §8.2.2, RBG-based construction); keys and secrets
 * are wrapped on provisioning and rotation, far below the 2^32 invocations per key that bound allows.
 */
import { concatBytes, utf8 } from '../../util/bytes.ts';
import { KeyStoreError } from '../../util/errors.ts';

export const BLOB_VERSION = 0x01;
export const GCM_IV_BYTES = 12;
export const GCM_TAG_BYTES = 16;
export const BLOB_OVERHEAD = 1 + GCM_IV_BYTES + GCM_TAG_BYTES;

export type BlobPurpose = 'wrap' | 'seal';

/** The GCM additional authenticated data for a blob of `purpose` made for `name`. */
export function blobAad(purpose: BlobPurpose, name: string): Uint8Array {
  return concatBytes(utf8('vitalseal/pkcs11/v1'), Uint8Array.of(0), utf8(purpose), Uint8Array.of(0), utf8(name));
}

export function encodeBlob(iv: Uint8Array, sealed: Uint8Array): Uint8Array {
  if (iv.length !== GCM_IV_BYTES) throw new RangeError(`encodeBlob: IV must be ${GCM_IV_BYTES} bytes`);
  if (sealed.length < GCM_TAG_BYTES) throw new RangeError('encodeBlob: ciphertext shorter than the tag');
  return concatBytes(Uint8Array.of(BLOB_VERSION), iv, sealed);
}

export interface DecodedBlob {
  readonly iv: Uint8Array;
  /** ciphertext || tag, as C_Decrypt takes it. */
  readonly sealed: Uint8Array;
}

/**
 * Splits a blob, refusing an unknown version and impossible lengths with 'unwrap-failed' (the same
 * code as a failed tag: to a caller, a damaged blob is a damaged blob). `maxPlaintext` bounds the work.
 */
export function decodeBlob(blob: Uint8Array, maxPlaintext: number, what: string): DecodedBlob {
  if (!(blob instanceof Uint8Array)) throw new TypeError(`${what}: expected Uint8Array`);
  if (blob.length < BLOB_OVERHEAD + 1) {
    throw new KeyStoreError('unwrap-failed', `${what}: ${blob.length} bytes is too short to be a blob (at least ${BLOB_OVERHEAD + 1})`);
  }
  if (blob.length > BLOB_OVERHEAD + maxPlaintext) {
    throw new KeyStoreError('unwrap-failed', `${what}: ${blob.length} bytes is longer than any blob this store makes`);
  }
  if (blob[0] !== BLOB_VERSION) {
    throw new KeyStoreError('unwrap-failed', `${what}: unknown blob version ${blob[0]}`);
  }
  return { iv: blob.subarray(1, 1 + GCM_IV_BYTES), sealed: blob.subarray(1 + GCM_IV_BYTES) };
}
