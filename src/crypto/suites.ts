/**
 * AEAD suites by id. Call sites choose a suite by id from configuration or negotiation; no call
 * site hard-codes an algorithm.
 */
export type AeadId = 'chacha20-poly1305' | 'aes-128-ccm-8' | 'aes-128-ccm-16' | 'aes-128-gcm' | 'aes-256-gcm';

export interface AeadSuite {
  readonly id: AeadId;
  readonly keyLength: number;
  /** Nonce lengths this suite accepts: CCM takes 12 (DTLS) or 13 (COSE); the others take 12. */
  readonly nonceLengths: readonly number[];
  readonly tagLength: number;
  /**
   * Records that may be protected under one key before a key update is due
   * (RFC 8446 §5.5; RFC 9147 §4.5.3 and Annex B for CCM).
   */
  readonly confidentialityLimit: number;
  /** Records that may fail authentication under one key before the key must go (RFC 9147 §4.5.3). */
  readonly integrityLimit: number;
}

// 2^24.5 and 2^23.5 rounded down.
const GCM_CONFIDENTIALITY = 23_726_566;
const CCM_CONFIDENTIALITY = 2 ** 23; // RFC 9147 Annex B.1
const CCM_INTEGRITY = 11_863_283; // RFC 9147 §4.5.3: 2^23.5
const GCM_CHACHA_INTEGRITY = 2 ** 36; // RFC 9147 §4.5.3
// RFC 8446 §5.5: the ChaCha20-Poly1305 confidentiality limit exceeds the 2^64 sequence space; we cap
// it at 2^48, the DTLS 1.3 sequence-number space per epoch (RFC 9147 §4).
const CHACHA_CONFIDENTIALITY = 2 ** 48;
// RFC 9147 Annex B.3: CCM_8 gives 2^7 forgery attempts at the TLS 1.3 margin. We keep that figure;
// DTLS use of CCM_8 therefore rekeys or closes after 128 failed records (documented in docs/).
const CCM8_INTEGRITY = 2 ** 7;

export const AEAD_SUITES: Readonly<Record<AeadId, AeadSuite>> = Object.freeze({
  'chacha20-poly1305': {
    id: 'chacha20-poly1305', keyLength: 32, nonceLengths: [12], tagLength: 16,
    confidentialityLimit: CHACHA_CONFIDENTIALITY, integrityLimit: GCM_CHACHA_INTEGRITY,
  },
  'aes-128-ccm-8': {
    id: 'aes-128-ccm-8', keyLength: 16, nonceLengths: [12, 13], tagLength: 8,
    confidentialityLimit: CCM_CONFIDENTIALITY, integrityLimit: CCM8_INTEGRITY,
  },
  'aes-128-ccm-16': {
    id: 'aes-128-ccm-16', keyLength: 16, nonceLengths: [12, 13], tagLength: 16,
    confidentialityLimit: CCM_CONFIDENTIALITY, integrityLimit: CCM_INTEGRITY,
  },
  'aes-128-gcm': {
    id: 'aes-128-gcm', keyLength: 16, nonceLengths: [12], tagLength: 16,
    confidentialityLimit: GCM_CONFIDENTIALITY, integrityLimit: GCM_CHACHA_INTEGRITY,
  },
  'aes-256-gcm': {
    id: 'aes-256-gcm', keyLength: 32, nonceLengths: [12], tagLength: 16,
    confidentialityLimit: GCM_CONFIDENTIALITY, integrityLimit: GCM_CHACHA_INTEGRITY,
  },
});

export const AEAD_IDS = Object.freeze(Object.keys(AEAD_SUITES) as AeadId[]);

export function isAeadId(value: unknown): value is AeadId {
  return typeof value === 'string' && Object.hasOwn(AEAD_SUITES, value);
}

export function aeadSuite(id: AeadId): AeadSuite {
  const suite = AEAD_SUITES[id];
  if (suite === undefined) throw new RangeError(`unknown AEAD suite id: ${String(id)}`);
  return suite;
}
