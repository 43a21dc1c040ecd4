/**
 * COSE content-encryption algorithms (RFC 9053 §4) mapped to vitalseal's AEAD suites.
 * Choosing an algorithm by COSE id or by its CLI name always goes through this table.
 */
import type { AeadId } from '../crypto/suites.ts';

export type CoseAlgName = 'chacha20-poly1305' | 'aes-ccm-16-64-128' | 'aes-ccm-16-128-128' | 'a128gcm' | 'a256gcm';

export interface CoseContentAlg {
  readonly id: number;
  readonly name: CoseAlgName;
  readonly aead: AeadId;
  readonly keyLength: number;
  readonly nonceLength: number;
}

export const COSE_CONTENT_ALGS: readonly CoseContentAlg[] = Object.freeze([
  { id: 24, name: 'chacha20-poly1305', aead: 'chacha20-poly1305', keyLength: 32, nonceLength: 12 }, // RFC 9053 §4.3
  { id: 10, name: 'aes-ccm-16-64-128', aead: 'aes-128-ccm-8', keyLength: 16, nonceLength: 13 }, // RFC 9053 §4.2: L=16 → 13-byte nonce
  { id: 30, name: 'aes-ccm-16-128-128', aead: 'aes-128-ccm-16', keyLength: 16, nonceLength: 13 },
  { id: 1, name: 'a128gcm', aead: 'aes-128-gcm', keyLength: 16, nonceLength: 12 }, // RFC 9053 §4.1
  { id: 3, name: 'a256gcm', aead: 'aes-256-gcm', keyLength: 32, nonceLength: 12 },
]);

const BY_ID = new Map<unknown, CoseContentAlg>(COSE_CONTENT_ALGS.map((a) => [a.id, a]));
const BY_NAME = new Map<string, CoseContentAlg>(COSE_CONTENT_ALGS.map((a) => [a.name, a]));

export function contentAlgById(id: unknown): CoseContentAlg | undefined {
  return BY_ID.get(id);
}

export function contentAlgByName(name: string): CoseContentAlg | undefined {
  return BY_NAME.get(name);
}

/** Recipient algorithms (RFC 9053 §6.1, §6.3.1). */
export const ALG_DIRECT = -6;
export const ALG_ECDH_ES_HKDF_256 = -25;
