/**
 * The TPM 2.0 key store (tpm2-tss FAPI through koffi). See docs/keystore-tpm.md.
 *
 * @example
 *   import { openTpmKeyStore } from './keystore/tpm/index.ts';
 *   const store = await openTpmKeyStore({ kind: 'tpm', tcti: 'device:/dev/tpmrm0', dir: '/var/lib/vitalseal/tpm' });
 *   const signer = await store.createSigningKey('device-identity');
 *   await store.seal('wifi-psk', psk);
 *   const wrapped = await store.wrapKey('queue-kek', dek);
 *   // Operators' command, objects named as tpm2-tools names them:
 *   const secret = await store.unsealAt('/HS/SRK/wifi-psk');
 */
export {
  openTpmKeyStore,
  reprovisionTpmKeyStore,
  KEK_DESCRIPTION,
  MAX_SEALED_BYTES,
  type TpmKeyStore,
  type TpmLoadableKey,
  type TpmKeyStoreOptions,
  type TpmObjectInfo,
} from './store.ts';
export { TpmKeyStoreError, errorFromRc, decodeRc, type TpmErrorCode } from './errors.ts';
export { checkObjectPath, pathForName } from './paths.ts';
export { decodeLoadableKey, encodeLoadableKey, loadableKeyPem, LOADABLE_KEY_PEM_LABEL, type LoadableKey } from './loadable-key.ts';
export { FAPI_LIBRARY_ENV, DEFAULT_FAPI_LIBRARY } from './native.ts';
export type { TpmInfo } from './tpm-info.ts';
