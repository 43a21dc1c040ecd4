import type { AeadId } from './suites.ts';

export type ProviderName = 'node' | 'noble';

export interface X25519KeyPair {
  /** 32-byte scalar; the caller owns it and zeroises it after use. */
  readonly privateKey: Uint8Array;
  /** 32-byte u-coordinate (RFC 7748 §5). */
  readonly publicKey: Uint8Array;
}

/**
 * The primitives vitalseal uses, behind one interface so suites and providers can be swapped and
 * cross-checked. All methods are synchronous and validate their arguments; byte outputs are new
 * arrays owned by the caller.
 *
 * @example
 *   const p = getProvider('node');
 *   const sealed = p.aeadSeal('chacha20-poly1305', key, nonce, plaintext, aad);
 *   const opened = p.aeadOpen('chacha20-poly1305', key, nonce, sealed, aad);
 */
export interface CryptoProvider {
  readonly name: ProviderName;
  /** False where this provider lacks the suite; `aeadSeal`/`aeadOpen` then throw `Unsupported`. */
  supportsAead(id: AeadId): boolean;
  /** Returns ciphertext || tag. */
  aeadSeal(id: AeadId, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array;
  /**
   * Writes ciphertext || tag into `out` from `offset` (exactly plaintext.length + the tag length
   * must fit): a record layer builds header and sealed body in one buffer, without a copy.
   */
  aeadSealInto(id: AeadId, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): void;
  /** Takes ciphertext || tag; throws `CryptoError('aead-auth-failed')` on any mismatch. */
  aeadOpen(id: AeadId, key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Uint8Array;

  x25519Generate(): X25519KeyPair;
  x25519PublicKey(privateKey: Uint8Array): Uint8Array;
  /** RFC 7748 §6.1; throws `CryptoError('x25519-low-order')` when the shared secret is all zeros. */
  x25519(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array;

  sha256(data: Uint8Array): Uint8Array;
  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array;
  randomBytes(length: number): Uint8Array;

  /** One AES block in ECB mode (16- or 32-byte key): the DTLS 1.3 record-number mask (RFC 9147 §4.2.3). */
  aesEcbBlock(key: Uint8Array, block: Uint8Array): Uint8Array;
  /** Raw ChaCha20 keystream XOR (RFC 8439 §2.4) with a 32-bit block counter and a 12-byte nonce. */
  chacha20(key: Uint8Array, nonce: Uint8Array, counter: number, data: Uint8Array): Uint8Array;
}
