/**
 * The portable provider: @noble/* in pure JavaScript. Slower than node:crypto; used to cross-check
 * it and where OpenSSL is unavailable. It has no AES-CCM: those suites throw `Unsupported`, and the
 * registry picks another provider for them.
 */
import { ecb, gcm } from '@noble/ciphers/aes.js';
import { chacha20, chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { x25519 } from '@noble/curves/ed25519.js';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { randomBytes as nobleRandomBytes } from '@noble/hashes/utils.js';
import { abytes, aint } from '../util/assert.ts';
import { CryptoError, Unsupported } from '../util/errors.ts';
import { checkAeadArgs, checkChacha, checkSealInto, checkX25519, isAllZero } from './_validate.ts';
import type { CryptoProvider, X25519KeyPair } from './provider.ts';
import type { AeadId } from './suites.ts';

type NobleAead = (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array) => {
  encrypt(data: Uint8Array): Uint8Array;
  decrypt(data: Uint8Array): Uint8Array;
};

function nobleAead(id: AeadId): NobleAead {
  switch (id) {
    case 'chacha20-poly1305':
      return chacha20poly1305;
    case 'aes-128-gcm':
    case 'aes-256-gcm':
      return gcm;
    case 'aes-128-ccm-8':
    case 'aes-128-ccm-16':
      throw new Unsupported('suite-unsupported', `noble provider has no ${id}`);
    default: {
      const never: never = id;
      throw new RangeError(`unknown AEAD suite id: ${String(never)}`);
    }
  }
}

export const nobleProvider: CryptoProvider = Object.freeze({
  name: 'noble' as const,

  supportsAead(id: AeadId): boolean {
    return id !== 'aes-128-ccm-8' && id !== 'aes-128-ccm-16';
  },

  aeadSeal(id: AeadId, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
    checkAeadArgs(id, key, nonce, plaintext, aad);
    return nobleAead(id)(key, nonce, aad).encrypt(plaintext);
  },

  aeadSealInto(id: AeadId, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): void {
    checkSealInto(id, key, nonce, plaintext, aad, out, offset);
    out.set(nobleAead(id)(key, nonce, aad).encrypt(plaintext), offset);
  },

  aeadOpen(id: AeadId, key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Uint8Array {
    checkAeadArgs(id, key, nonce, sealed, aad);
    const aead = nobleAead(id);
    try {
      return aead(key, nonce, aad).decrypt(sealed);
    } catch {
      throw new CryptoError('aead-auth-failed', `${id}: authentication failed`);
    }
  },

  x25519Generate(): X25519KeyPair {
    const privateKey = x25519.utils.randomSecretKey();
    return { privateKey, publicKey: x25519.getPublicKey(privateKey) };
  },

  x25519PublicKey(privateKey: Uint8Array): Uint8Array {
    checkX25519(privateKey);
    return x25519.getPublicKey(privateKey);
  },

  x25519(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
    checkX25519(privateKey, publicKey);
    let shared: Uint8Array;
    try {
      shared = x25519.getSharedSecret(privateKey, publicKey);
    } catch (cause) {
      throw new CryptoError('x25519-low-order', 'x25519: peer public key gives an all-zero shared secret', { cause });
    }
    // RFC 7748 §6.1: check for the all-zero value and abort if so.
    if (isAllZero(shared)) throw new CryptoError('x25519-low-order', 'x25519: peer public key gives an all-zero shared secret');
    return shared;
  },

  sha256(data: Uint8Array): Uint8Array {
    return sha256(abytes(data, 'sha256 data'));
  },

  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array {
    return hmac(sha256, abytes(key, 'hmac key'), abytes(data, 'hmac data'));
  },

  randomBytes(length: number): Uint8Array {
    return nobleRandomBytes(aint(length, 'randomBytes length', 0, 1 << 20));
  },

  aesEcbBlock(key: Uint8Array, block: Uint8Array): Uint8Array {
    abytes(key, 'aes-ecb key', 16, 32);
    abytes(block, 'aes-ecb block', 16);
    return ecb(key, { disablePadding: true }).encrypt(block);
  },

  chacha20(key: Uint8Array, nonce: Uint8Array, counter: number, data: Uint8Array): Uint8Array {
    checkChacha(key, nonce, counter, data);
    return chacha20(key, nonce, data, undefined, counter);
  },
});
