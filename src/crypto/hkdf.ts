/**
 * HKDF with SHA-256 (RFC 5869), built on a provider's HMAC so both providers share one definition.
 */
import { abytes, aint } from '../util/assert.ts';
import { concatBytes, zeroize } from '../util/bytes.ts';
import type { CryptoProvider } from './provider.ts';

const HASH_LENGTH = 32;

/** RFC 5869 §2.2: PRK = HMAC-Hash(salt, IKM); an absent salt is HashLen zero bytes. */
export function hkdfExtract(p: CryptoProvider, salt: Uint8Array | undefined, ikm: Uint8Array): Uint8Array {
  abytes(ikm, 'hkdf ikm');
  const s = salt === undefined || salt.length === 0 ? new Uint8Array(HASH_LENGTH) : abytes(salt, 'hkdf salt');
  return p.hmacSha256(s, ikm);
}

/** RFC 5869 §2.3: OKM = T(1) | T(2) | ... truncated to `length` (at most 255 * HashLen). */
export function hkdfExpand(p: CryptoProvider, prk: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  abytes(prk, 'hkdf prk');
  abytes(info, 'hkdf info');
  aint(length, 'hkdf length', 0, 255 * HASH_LENGTH);
  const okm = new Uint8Array(length);
  let previous: Uint8Array = new Uint8Array(0);
  for (let i = 1, offset = 0; offset < length; i++) {
    const block = p.hmacSha256(prk, concatBytes(previous, info, Uint8Array.of(i)));
    okm.set(block.subarray(0, Math.min(HASH_LENGTH, length - offset)), offset);
    offset += HASH_LENGTH;
    zeroize(previous);
    previous = block;
  }
  zeroize(previous);
  return okm;
}

/** Extract then expand. */
export function hkdf(p: CryptoProvider, salt: Uint8Array | undefined, ikm: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  const prk = hkdfExtract(p, salt, ikm);
  try {
    return hkdfExpand(p, prk, info, length);
  } finally {
    zeroize(prk);
  }
}
