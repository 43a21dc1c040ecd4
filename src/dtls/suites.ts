/**
 * The DTLS 1.3 cipher suites (RFC 8446 Appendix B.4, all SHA-256) mapped to AEAD ids from
 * src/crypto and to the record-number mask each uses (RFC 9147 §4.2.3).
 */
import type { AeadId } from '../crypto/suites.ts';
import { aeadSuite } from '../crypto/suites.ts';
import { CipherSuiteId, type CipherSuiteName } from './messages/constants.ts';

export interface DtlsCipherSuite {
  readonly id: number;
  readonly name: CipherSuiteName;
  readonly aead: AeadId;
  readonly keyLength: number;
  readonly tagLength: number;
  /** RFC 9147 §4.2.3: AES-based AEADs mask with AES-ECB, ChaCha20-Poly1305 with ChaCha20. */
  readonly mask: 'aes-ecb' | 'chacha20';
}

function suite(name: CipherSuiteName, aead: AeadId, mask: DtlsCipherSuite['mask']): DtlsCipherSuite {
  const a = aeadSuite(aead);
  return Object.freeze({ id: CipherSuiteId[name], name, aead, keyLength: a.keyLength, tagLength: a.tagLength, mask });
}

export const CIPHER_SUITES: Readonly<Record<CipherSuiteName, DtlsCipherSuite>> = Object.freeze({
  TLS_AES_128_GCM_SHA256: suite('TLS_AES_128_GCM_SHA256', 'aes-128-gcm', 'aes-ecb'),
  TLS_CHACHA20_POLY1305_SHA256: suite('TLS_CHACHA20_POLY1305_SHA256', 'chacha20-poly1305', 'chacha20'),
  TLS_AES_128_CCM_SHA256: suite('TLS_AES_128_CCM_SHA256', 'aes-128-ccm-16', 'aes-ecb'),
  TLS_AES_128_CCM_8_SHA256: suite('TLS_AES_128_CCM_8_SHA256', 'aes-128-ccm-8', 'aes-ecb'),
});

export const CIPHER_SUITE_NAMES = Object.freeze(Object.keys(CIPHER_SUITES) as CipherSuiteName[]);

/**
 * The default offer and preference: CCM_8 is left out because RFC 9147 §4.5.3 forbids it in DTLS
 * without extra forgery safeguards (docs/dtls.md); it is available when configured.
 */
export const DEFAULT_CIPHER_SUITES: readonly CipherSuiteName[] = Object.freeze([
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_128_CCM_SHA256',
]);

export function suiteById(id: number): DtlsCipherSuite | undefined {
  for (const s of Object.values(CIPHER_SUITES)) if (s.id === id) return s;
  return undefined;
}

export function isCipherSuiteName(v: string): v is CipherSuiteName {
  return Object.hasOwn(CIPHER_SUITES, v);
}
