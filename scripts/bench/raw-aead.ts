/**
 * The baseline the AEAD and COSE benchmarks share: node:crypto used directly, one cipher object
 * per message, as any caller of node:crypto does.
 */
import { createCipheriv, createDecipheriv, type CipherGCMTypes } from 'node:crypto';
import type { AeadId } from '../../src/crypto/index.ts';

export const OPENSSL_NAME: Readonly<Record<AeadId, string>> = {
  'chacha20-poly1305': 'chacha20-poly1305',
  'aes-128-ccm-8': 'aes-128-ccm',
  'aes-128-ccm-16': 'aes-128-ccm',
  'aes-128-gcm': 'aes-128-gcm',
  'aes-256-gcm': 'aes-256-gcm',
};

export function rawSeal(id: AeadId, tagLength: number, key: Buffer, nonce: Buffer, plaintext: Buffer): Buffer {
  const c = createCipheriv(OPENSSL_NAME[id] as CipherGCMTypes, key, nonce, { authTagLength: tagLength });
  c.setAAD(Buffer.alloc(0), { plaintextLength: plaintext.length });
  const body = c.update(plaintext);
  c.final();
  return Buffer.concat([body, c.getAuthTag()]);
}

export function rawOpen(id: AeadId, tagLength: number, key: Buffer, nonce: Buffer, sealed: Buffer): Buffer {
  const n = sealed.length - tagLength;
  const d = createDecipheriv(OPENSSL_NAME[id] as CipherGCMTypes, key, nonce, { authTagLength: tagLength });
  d.setAuthTag(sealed.subarray(n));
  d.setAAD(Buffer.alloc(0), { plaintextLength: n });
  const body = d.update(sealed.subarray(0, n));
  d.final();
  return body;
}
