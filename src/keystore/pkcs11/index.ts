/**
 * The PKCS #11 key store (OP-TEE's PKCS#11 TA on ARM boards, SoftHSM2 in tests) and the RFC 7512
 * URI parser it names tokens with. PKCS #11 code lives only in this folder (STYLE.md rule 9).
 *
 * @example
 *   import { openPkcs11KeyStore } from './src/keystore/pkcs11/index.ts';
 *   const store = await openPkcs11KeyStore({
 *     kind: 'pkcs11', module: '/usr/lib/softhsm/libsofthsm2.so',
 *     token: 'pkcs11:token=vitalseal', pin: { env: 'VITALSEAL_TOKEN_PIN' },
 *   });
 *   const signer = await store.createSigningKey('device-identity');
 */
export {
  openPkcs11KeyStore, MAX_DATA_KEY_BYTES, MAX_RANDOM_BYTES, MAX_SECRET_BYTES, SEAL_KEY_LABEL, SEALED_APPLICATION,
  type Pkcs11KeyStore, type Pkcs11KeyStoreOptions,
} from './store.ts';
export { formatPkcs11Uri, parsePkcs11Uri, MAX_URI_LENGTH, type Pkcs11LibraryVersion, type Pkcs11ObjectType, type Pkcs11Uri } from './uri.ts';
export { CKR_TABLE, type Pkcs11ErrorCode } from './errors.ts';
