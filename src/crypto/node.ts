/**
 * The default provider: node:crypto (OpenSSL). Fast, native, and the one the hot paths use.
 */
import {
  createCipheriv, createDecipheriv, createHash, createHmac, createPrivateKey, createPublicKey,
  diffieHellman, generateKeyPairSync, randomBytes as nodeRandomBytes,
  type CipherCCMTypes, type CipherGCMTypes, type CipherChaCha20Poly1305Types, type KeyObject,
} from 'node:crypto';
import { abytes, aint } from '../util/assert.ts';
import { allocUninit } from '../util/bytes.ts';
import { CryptoError } from '../util/errors.ts';
import { checkAeadArgs, checkChacha, checkSealInto, checkX25519, isAllZero } from './_validate.ts';
import type { CryptoProvider, X25519KeyPair } from './provider.ts';
import type { AeadId } from './suites.ts';

type NodeAead = CipherCCMTypes | CipherGCMTypes | CipherChaCha20Poly1305Types;

const NODE_AEAD: Record<AeadId, NodeAead> = {
  'chacha20-poly1305': 'chacha20-poly1305',
  'aes-128-ccm-8': 'aes-128-ccm',
  'aes-128-ccm-16': 'aes-128-ccm',
  'aes-128-gcm': 'aes-128-gcm',
  'aes-256-gcm': 'aes-256-gcm',
};

// RFC 8410 §7 / RFC 5958: the fixed DER prefix of a raw X25519 private key (OID 1.3.101.110).
const PKCS8_X25519_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

/**
 * OpenSSL's CCM computes the tag while processing the payload, and reads a NULL input pointer as
 * "set the message length" rather than "process no data". An empty Buffer may reach it as NULL, so
 * the tag is never computed ("tag not set"). Empty inputs therefore go in as a zero-length view into
 * a real allocation, whose pointer is never NULL.
 */
const EMPTY = Buffer.alloc(16).subarray(0, 0);
function input(bytes: Uint8Array): Uint8Array {
  return bytes.length === 0 ? EMPTY : bytes;
}

export function x25519PrivateKeyObject(privateKey: Uint8Array): KeyObject {
  const der = Buffer.concat([PKCS8_X25519_PREFIX, privateKey]);
  try {
    return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } finally {
    der.fill(0);
  }
}

/**
 * Public keys go in and out as JWK, not SPKI DER: OpenSSL 3.0's DER decoder and encoder take
 * 160-190 µs per X25519 public key on the development machine, the JWK paths 3-15 µs, and a DTLS
 * handshake does one of each per side. Private keys keep the DER path, whose buffer can be wiped
 * (a JWK would hold the scalar in an immutable string).
 */
export function x25519PublicKeyObject(publicKey: Uint8Array): KeyObject {
  if (publicKey.length !== 32) throw new RangeError(`x25519 public key: expected 32 bytes, got ${publicKey.length}`);
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.byteLength).toString('base64url') }, format: 'jwk' });
}

/** The 32-byte u-coordinate of an X25519 public (or private) KeyObject. */
export function rawX25519Public(key: KeyObject): Uint8Array {
  const x = key.export({ format: 'jwk' }).x;
  if (typeof x !== 'string') throw new RangeError('x25519 key: no public value');
  const raw = new Uint8Array(Buffer.from(x, 'base64url'));
  if (raw.length !== 32) throw new RangeError(`x25519 public key: expected 32 bytes, got ${raw.length}`);
  return raw;
}

function rawX25519Private(key: KeyObject): Uint8Array {
  const der = key.export({ format: 'der', type: 'pkcs8' });
  const raw = new Uint8Array(der.subarray(PKCS8_X25519_PREFIX.length));
  der.fill(0);
  return raw;
}

function sealInto(id: AeadId, tagLength: number, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): void {
  const cipher = createCipheriv(NODE_AEAD[id] as CipherGCMTypes, key, nonce, { authTagLength: tagLength });
  // CCM needs the plaintext length up front (it is in the first CBC-MAC block, RFC 3610 §2.2).
  cipher.setAAD(input(aad), { plaintextLength: plaintext.length });
  out.set(cipher.update(input(plaintext)), offset);
  cipher.final();
  out.set(cipher.getAuthTag(), offset + plaintext.length);
}

export const nodeProvider: CryptoProvider = Object.freeze({
  name: 'node' as const,

  supportsAead(_id: AeadId): boolean {
    return true;
  },

  aeadSeal(id: AeadId, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
    const suite = checkAeadArgs(id, key, nonce, plaintext, aad);
    const out = allocUninit(plaintext.length + suite.tagLength);
    sealInto(id, suite.tagLength, key, nonce, plaintext, aad, out, 0);
    return out;
  },

  aeadSealInto(id: AeadId, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): void {
    const suite = checkSealInto(id, key, nonce, plaintext, aad, out, offset);
    sealInto(id, suite.tagLength, key, nonce, plaintext, aad, out, offset);
  },

  aeadOpen(id: AeadId, key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Uint8Array {
    const suite = checkAeadArgs(id, key, nonce, sealed, aad);
    if (sealed.length < suite.tagLength) {
      throw new CryptoError('aead-auth-failed', `${id}: sealed data shorter than its ${suite.tagLength}-byte tag`);
    }
    const bodyLength = sealed.length - suite.tagLength;
    const decipher = createDecipheriv(NODE_AEAD[id] as CipherGCMTypes, key, nonce, {
      authTagLength: suite.tagLength,
    });
    decipher.setAuthTag(sealed.subarray(bodyLength));
    decipher.setAAD(input(aad), { plaintextLength: bodyLength });
    const body = decipher.update(input(sealed.subarray(0, bodyLength)));
    try {
      decipher.final();
    } catch {
      body.fill(0);
      throw new CryptoError('aead-auth-failed', `${id}: authentication failed`);
    }
    return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  },

  x25519Generate(): X25519KeyPair {
    const { privateKey, publicKey } = generateKeyPairSync('x25519');
    return { privateKey: rawX25519Private(privateKey), publicKey: rawX25519Public(publicKey) };
  },

  x25519PublicKey(privateKey: Uint8Array): Uint8Array {
    checkX25519(privateKey);
    return rawX25519Public(createPublicKey(x25519PrivateKeyObject(privateKey)));
  },

  x25519(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
    checkX25519(privateKey, publicKey);
    let shared: Buffer;
    try {
      shared = diffieHellman({
        privateKey: x25519PrivateKeyObject(privateKey),
        publicKey: x25519PublicKeyObject(publicKey),
      });
    } catch (cause) {
      // OpenSSL refuses an all-zero result itself (RFC 7748 §6.1 check); report it the same way.
      throw new CryptoError('x25519-low-order', 'x25519: peer public key gives an all-zero shared secret', { cause });
    }
    if (isAllZero(shared)) throw new CryptoError('x25519-low-order', 'x25519: peer public key gives an all-zero shared secret');
    return new Uint8Array(shared.buffer, shared.byteOffset, shared.byteLength);
  },

  sha256(data: Uint8Array): Uint8Array {
    abytes(data, 'sha256 data');
    return new Uint8Array(createHash('sha256').update(data).digest());
  },

  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array {
    abytes(key, 'hmac key');
    abytes(data, 'hmac data');
    return new Uint8Array(createHmac('sha256', key).update(data).digest());
  },

  randomBytes(length: number): Uint8Array {
    aint(length, 'randomBytes length', 0, 1 << 20);
    return new Uint8Array(nodeRandomBytes(length));
  },

  aesEcbBlock(key: Uint8Array, block: Uint8Array): Uint8Array {
    abytes(key, 'aes-ecb key', 16, 32);
    abytes(block, 'aes-ecb block', 16);
    const cipher = createCipheriv(key.length === 16 ? 'aes-128-ecb' : 'aes-256-ecb', key, null);
    cipher.setAutoPadding(false);
    return new Uint8Array(Buffer.concat([cipher.update(block), cipher.final()]));
  },

  chacha20(key: Uint8Array, nonce: Uint8Array, counter: number, data: Uint8Array): Uint8Array {
    checkChacha(key, nonce, counter, data);
    // OpenSSL's "chacha20" takes a 16-byte IV: 32-bit little-endian counter || 96-bit nonce.
    const iv = Buffer.alloc(16);
    iv.writeUInt32LE(counter, 0);
    iv.set(nonce, 4);
    const cipher = createCipheriv('chacha20', key, iv);
    return new Uint8Array(Buffer.concat([cipher.update(data), cipher.final()]));
  },
});
