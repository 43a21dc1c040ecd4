/**
 * vitalseal/crypto: AEAD suites, X25519, HKDF-SHA256, SHA-256, HMAC and random, behind one
 * `CryptoProvider` interface with two implementations (`node`, the default, and `noble`).
 *
 * @example
 *   import { getProvider, CounterSealer } from 'vitalseal/crypto';
 *   const p = getProvider();
 *   const key = p.randomBytes(32);
 *   const sealer = new CounterSealer(p, 'chacha20-poly1305', key, p.randomBytes(12));
 *   const { nonce, sealed } = sealer.seal(new TextEncoder().encode('72 bpm'), new Uint8Array());
 */
export type { CryptoProvider, ProviderName, X25519KeyPair } from './provider.ts';
export { AEAD_IDS, AEAD_SUITES, aeadSuite, isAeadId, type AeadId, type AeadSuite } from './suites.ts';
export { getProvider, providerForAead, PROVIDER_NAMES } from './registry.ts';
export { hkdf, hkdfExpand, hkdfExtract } from './hkdf.ts';
export { CounterSealer, OneShotSealer, Opener, xorCounterIntoIv, type CounterSealResult } from './aead.ts';
