import { abytes, aint } from '../util/assert.ts';
import { ApiMisuse, CryptoError } from '../util/errors.ts';
import { aeadSuite, type AeadId, type AeadSuite } from './suites.ts';

/**
 * Shared argument checks so both providers reject exactly the same misuse. Labels are built only
 * when a check fails: this runs once per record on the DTLS data path.
 */
export function checkAeadArgs(id: AeadId, key: unknown, nonce: unknown, data: unknown, aad: unknown): AeadSuite {
  const suite = aeadSuite(id);
  if (!(key instanceof Uint8Array) || key.length !== suite.keyLength) abytes(key, `${id} key`, suite.keyLength);
  if (!(nonce instanceof Uint8Array) || !suite.nonceLengths.includes(nonce.length)) abytes(nonce, `${id} nonce`, ...suite.nonceLengths);
  if (!(data instanceof Uint8Array)) abytes(data, `${id} data`);
  if (!(aad instanceof Uint8Array)) abytes(aad, `${id} aad`);
  return suite;
}

/** `checkAeadArgs` plus the output range of a seal-into call. */
export function checkSealInto(id: AeadId, key: unknown, nonce: unknown, data: unknown, aad: unknown, out: unknown, offset: unknown): AeadSuite {
  const suite = checkAeadArgs(id, key, nonce, data, aad);
  const o = out instanceof Uint8Array ? out : abytes(out, `${id} output`);
  const length = (data as Uint8Array).length + suite.tagLength;
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0 || o.length - offset < length) {
    const at = aint(offset, `${id} output offset`);
    throw new RangeError(`${id} output: needs ${length} bytes from offset ${at}, has ${o.length - at}`);
  }
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

/** Keyed contexts (keyed.ts, libcrypto/contexts.ts): the checks both implementations share. */
export function destroyedError(what: string): ApiMisuse {
  return new ApiMisuse('aead-destroyed', `${what}: context used after destroy()`);
}

/** Labels are built only when a check fails: this runs once per record. */
export function checkSeal(suite: AeadSuite, nonceLength: number, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): void {
  if (!(nonce instanceof Uint8Array) || nonce.length !== nonceLength) abytes(nonce, `${suite.id} nonce`, nonceLength);
  if (!(plaintext instanceof Uint8Array)) abytes(plaintext, `${suite.id} plaintext`);
  if (!(aad instanceof Uint8Array)) abytes(aad, `${suite.id} aad`);
  checkOut(suite, out, offset, plaintext.length + suite.tagLength);
}

export function checkOpen(suite: AeadSuite, nonceLength: number, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): number {
  if (!(nonce instanceof Uint8Array) || nonce.length !== nonceLength) abytes(nonce, `${suite.id} nonce`, nonceLength);
  if (!(sealed instanceof Uint8Array)) abytes(sealed, `${suite.id} sealed`);
  if (!(aad instanceof Uint8Array)) abytes(aad, `${suite.id} aad`);
  if (sealed.length < suite.tagLength) throw new CryptoError('aead-auth-failed', `${suite.id}: sealed data shorter than its ${suite.tagLength}-byte tag`);
  const length = sealed.length - suite.tagLength;
  checkOut(suite, out, offset, length);
  return length;
}

function checkOut(suite: AeadSuite, out: Uint8Array, offset: number, length: number): void {
  if (!(out instanceof Uint8Array)) abytes(out, `${suite.id} output`);
  if (!Number.isSafeInteger(offset) || offset < 0 || out.length - offset < length) {
    throw new RangeError(`${suite.id} output: needs ${length} bytes from offset ${String(offset)}, has ${out.length - (Number.isSafeInteger(offset) ? offset : 0)}`);
  }
}
