import { abytes, aint } from '../util/assert.ts';
import { aeadSuite, type AeadId, type AeadSuite } from './suites.ts';

/** Shared argument checks so both providers reject exactly the same misuse. */
export function checkAeadArgs(id: AeadId, key: unknown, nonce: unknown, data: unknown, aad: unknown): AeadSuite {
  const suite = aeadSuite(id);
  abytes(key, `${id} key`, suite.keyLength);
  abytes(nonce, `${id} nonce`, ...suite.nonceLengths);
  abytes(data, `${id} data`);
  abytes(aad, `${id} aad`);
  return suite;
}

export function checkX25519(privateKey: unknown, publicKey?: unknown): void {
  abytes(privateKey, 'x25519 private key', 32);
  if (publicKey !== undefined) abytes(publicKey, 'x25519 public key', 32);
}

export function checkChacha(key: unknown, nonce: unknown, counter: unknown, data: unknown): void {
  abytes(key, 'chacha20 key', 32);
  abytes(nonce, 'chacha20 nonce', 12);
  aint(counter, 'chacha20 counter', 0, 0xffffffff);
  abytes(data, 'chacha20 data');
}

export function isAllZero(bytes: Uint8Array): boolean {
  let acc = 0;
  for (const b of bytes) acc |= b;
  return acc === 0;
}
