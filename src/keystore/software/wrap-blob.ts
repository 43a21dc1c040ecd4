/**
 * The software store's wrapped-key blob, version 1:
 *
 *   blob = version u8 (1) | alg u8 (1 = AES-256-GCM, per-blob key) | salt (32) | ciphertext || tag (16)
 *   key  = HKDF-SHA256(KEK, salt, info = "vitalseal software-kek v1 wrap", 32)      (RFC 5869)
 *   aad  = version | alg | salt | KEK name (UTF-8)
 *   nonce = 12 zero bytes
 *
 * Each blob gets its own key from a fresh 32-byte salt, so a key encrypts exactly one data key and a
 * fixed nonce is safe by construction (no counter to persist, none to roll back). The KEK name is
 * bound into the additional data, so a blob presented under another KEK name fails even if the
 * bytes of the two KEKs were equal. Any failure (unknown version, truncation, tampering, wrong KEK)
 * is the one error `unwrap-failed`: the caller learns nothing else from a forged blob.
 */
import { hkdf } from '../../crypto/hkdf.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { concatBytes, zeroize } from '../../util/bytes.ts';
import { CryptoError, KeyStoreError } from '../../util/errors.ts';

export const WRAP_VERSION = 1;
export const WRAP_ALG_AES256GCM_HKDF = 1;
const SALT_LENGTH = 32;
const HEADER_LENGTH = 2 + SALT_LENGTH;
const TAG_LENGTH = 16;
const ZERO_NONCE = new Uint8Array(12);
const INFO = new TextEncoder().encode('vitalseal software-kek v1 wrap');
/** Data keys up to 1 KiB (AES, ChaCha20, X25519 keys and other small secrets). */
export const MAX_WRAPPED_KEY_BYTES = 1024;

function blobKey(p: CryptoProvider, kek: Uint8Array, salt: Uint8Array): Uint8Array {
  return hkdf(p, salt, kek, INFO, 32);
}

function aad(header: Uint8Array, kekName: string): Uint8Array {
  return concatBytes(header, new TextEncoder().encode(kekName));
}

export function wrapWithKek(p: CryptoProvider, kek: Uint8Array, kekName: string, dataKey: Uint8Array): Uint8Array {
  const salt = p.randomBytes(SALT_LENGTH);
  const header = concatBytes(Uint8Array.of(WRAP_VERSION, WRAP_ALG_AES256GCM_HKDF), salt);
  const key = blobKey(p, kek, salt);
  try {
    return concatBytes(header, p.aeadSeal('aes-256-gcm', key, ZERO_NONCE, dataKey, aad(header, kekName)));
  } finally {
    zeroize(key);
  }
}

export function unwrapWithKek(p: CryptoProvider, kek: Uint8Array, kekName: string, blob: Uint8Array): Uint8Array {
  const fail = (why: string) => new KeyStoreError('unwrap-failed', `cannot unwrap with KEK '${kekName}': ${why}`);
  if (blob.length < HEADER_LENGTH + TAG_LENGTH + 1) throw fail('the blob is truncated');
  if (blob[0] !== WRAP_VERSION || blob[1] !== WRAP_ALG_AES256GCM_HKDF) throw fail('unknown blob version or algorithm');
  const header = blob.subarray(0, HEADER_LENGTH);
  const key = blobKey(p, kek, blob.subarray(2, HEADER_LENGTH));
  try {
    return p.aeadOpen('aes-256-gcm', key, ZERO_NONCE, blob.subarray(HEADER_LENGTH), aad(header, kekName));
  } catch (e) {
    if (e instanceof CryptoError) throw fail('authentication failed (tampered blob or another KEK)');
    throw e;
  } finally {
    zeroize(key);
  }
}
