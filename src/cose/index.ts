/**
 * vitalseal/cose: COSE_Encrypt0 and COSE_Encrypt (RFC 9052/9053) with ChaCha20/Poly1305, AES-CCM
 * and AES-GCM content encryption and ECDH-ES + HKDF-256 over X25519 recipients; sealing epochs on
 * the sender and an epoch-key cache on the receiver.
 *
 * @example
 *   import { SealingSession, openCose, EpochKeyCache, x25519Recipient } from 'vitalseal/cose';
 *   const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey, clock: systemClock });
 *   const message = session.seal(plaintext);
 *   const cache = new EpochKeyCache();
 *   const { plaintext: back } = openCose(message, { recipient: x25519Recipient(getProvider(), privateKey), cache });
 */
export { ALG_DIRECT, ALG_ECDH_ES_HKDF_256, COSE_CONTENT_ALGS, contentAlgById, contentAlgByName, type CoseAlgName, type CoseContentAlg } from './algorithms.ts';
export { EpochKeyCache } from './epoch-cache.ts';
export { assembleEncrypt, ecdhEsContentKey, ecdhEsRecipients, openCose, openParsedCose, requireAlg, sealEncrypt, sealEncrypt0, type OpenedCose, type OpenKeys, type OpenOptions, type SealEncryptOptions } from './encrypt.ts';
export { Header, type HeaderMap } from './headers.ts';
export { kdfContext } from './kdf.ts';
export { generateX25519Pem, x25519PrivateFromPem, x25519PublicFromPem, x25519PublicToPem, x25519Recipient, type X25519Recipient } from './keys.ts';
export { aadProtected, encStructure, parseCoseEncrypt, serializeEncrypt, serializeEncrypt0, TAG_ENCRYPT, TAG_ENCRYPT0, type ParsedCoseEncrypt } from './message.ts';
export { SealingSession, type EpochInfo, type SealingSessionOptions } from './sealing-session.ts';
