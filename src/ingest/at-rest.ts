/**
 * Encryption at rest of one stored message: AES-256-GCM (NIST SP 800-38D) under the device's data
 * key (DEK), the plaintext being the opened SenML pack.
 *
 * - AAD binds the row to its place: format label, device id, sequence number and key version, so
 *   a ciphertext moved to another device, another sequence number or relabelled with another key
 *   version does not open.
 * - Nonce (96 bits, SP 800-38D §8.2.1 deterministic construction): a fixed field of 32 zero bits
 *   followed by the sequence number as a 64-bit invocation field. (device, seq) is unique in the
 *   database and each DEK version belongs to one device, so a key never encrypts two stored rows
 *   under one nonce, by construction. Two instances racing on a duplicate may both encrypt it,
 *   but only one row is stored and the loser's ciphertext never leaves memory; a re-key rewrite goes
 *   to a new key version.
 *
 * @example
 *   const { nonce, ciphertext } = sealAtRest(provider, dek, 'bed-7', 42, pack);
 *   const pack2 = openAtRest(provider, dek, { deviceId: 'bed-7', seq: 42, keyVersion: dek.version, nonce, ciphertext });
 */
import type { CryptoProvider } from '../crypto/provider.ts';
import type { DataKey } from '../keystore/hierarchy/data-key.ts';
import { allocUninit, equalBytes, utf8, writeUint32BE } from '../util/bytes.ts';
import { CryptoError } from '../util/errors.ts';
import type { StoredMessage } from './storage/types.ts';

const LABEL = utf8('vitalseal at-rest v1');
export const AT_REST_AEAD = 'aes-256-gcm' as const;

/** SP 800-38D §8.2.1: fixed field (4 zero bytes) || invocation field (seq, 8 bytes big-endian). */
export function atRestNonce(seq: number): Uint8Array {
  // Every byte written: from the shared pool (a buffer of its own per row cost as much as the sealing).
  const n = allocUninit(12);
  n[0] = n[1] = n[2] = n[3] = 0;
  writeU64(n, 4, seq);
  return n;
}

/** label || 0x00 || device id || 0x00 || seq (8 bytes BE) || key version (4 bytes BE). */
export function atRestAad(deviceId: string, seq: number, keyVersion: number): Uint8Array {
  // Device ids are ASCII (src/util/device-id.ts): their UTF-8 is their character codes, written in
  // place; anything else goes through the encoder.
  let ascii = true;
  for (let i = 0; i < deviceId.length && ascii; i++) ascii = deviceId.charCodeAt(i) < 0x80;
  const id = ascii ? undefined : utf8(deviceId);
  const idLength = id === undefined ? deviceId.length : id.length;
  const out = allocUninit(LABEL.length + 1 + idLength + 1 + 8 + 4);
  out.set(LABEL, 0);
  let at = LABEL.length;
  out[at++] = 0;
  if (id === undefined) for (let i = 0; i < idLength; i++) out[at++] = deviceId.charCodeAt(i);
  else {
    out.set(id, at);
    at += idLength;
  }
  out[at++] = 0;
  writeU64(out, at, seq);
  writeUint32BE(out, at + 8, keyVersion);
  return out;
}

/** A non-negative safe integer as 8 bytes big-endian (two 32-bit halves: no BigInt per row). */
function writeU64(out: Uint8Array, at: number, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`at-rest: ${v} is not a non-negative safe integer`);
  writeUint32BE(out, at, Math.floor(v / 0x1_0000_0000));
  writeUint32BE(out, at + 4, v >>> 0);
}

/** Seals through the key's keyed context (`DataKey.sealer`): a cached key sets its cipher up once. */
export function sealAtRest(provider: CryptoProvider, dek: DataKey, deviceId: string, seq: number, plaintext: Uint8Array): { nonce: Uint8Array; ciphertext: Uint8Array } {
  const nonce = atRestNonce(seq);
  const sealer = dek.sealer(provider, AT_REST_AEAD);
  // Written in full; from the shared pool (a buffer of its own per row cost more than the sealing).
  const ciphertext = allocUninit(plaintext.length + sealer.tagLength);
  sealer.sealInto(nonce, plaintext, atRestAad(deviceId, seq, dek.version), ciphertext, 0);
  return { nonce, ciphertext };
}

/** Opens a stored row; `CryptoError('at-rest-open-failed')` when it was tampered with or the key is wrong. */
export function openAtRest(provider: CryptoProvider, dek: DataKey, m: Pick<StoredMessage, 'deviceId' | 'seq' | 'keyVersion' | 'nonce' | 'ciphertext'>): Uint8Array {
  if (dek.version !== m.keyVersion) throw new CryptoError('at-rest-wrong-key', `row ${m.deviceId}#${m.seq} is under key version ${m.keyVersion}, not ${dek.version}`);
  if (!equalBytes(m.nonce, atRestNonce(m.seq))) throw new CryptoError('at-rest-open-failed', `row ${m.deviceId}#${m.seq}: nonce does not belong to the row`);
  try {
    return provider.aeadOpen(AT_REST_AEAD, dek.bytes, m.nonce, m.ciphertext, atRestAad(m.deviceId, m.seq, m.keyVersion));
  } catch (e) {
    if (e instanceof CryptoError) throw new CryptoError('at-rest-open-failed', `row ${m.deviceId}#${m.seq} does not decrypt (tampered, or the wrong key)`);
    throw e;
  }
}
