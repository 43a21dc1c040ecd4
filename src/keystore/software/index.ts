/**
 * The development-grade software key store. See store.ts for the model, format.ts for the file
 * layout and wrap-blob.ts for wrapped data keys.
 */
export {
  openSoftwareKeyStore, SoftwareKeyStore, type PassphraseProtection, type SealedProtection,
  type SoftwareKeyStoreOptions, type WrappedProtection,
} from './store.ts';
export { DEFAULT_SCRYPT, SCRYPT_LIMITS, type ScryptParams } from './scrypt.ts';
export { MAX_SEALED_BYTES } from './format.ts';
