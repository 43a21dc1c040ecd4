/**
 * How a key store is named in configuration files and on the command line. Secret values (PINs,
 * passphrases) never appear here: only where to read them from (an environment variable or a file
 * with mode 0600), so they stay off command lines and out of config files.
 */
export type SecretSource =
  | { readonly env: string }
  | { readonly file: string };

export interface SoftwareKeyStoreConfig {
  readonly kind: 'software';
  /** The encrypted key file (created on first use, mode 0600). */
  readonly path: string;
  /** Where the passphrase comes from (scrypt derives the file's KEK from it). */
  readonly passphrase: SecretSource;
}

export interface TpmKeyStoreConfig {
  readonly kind: 'tpm';
  /** An existing FAPI config file (as TSS2_FAPICONF names it); wins over `tcti`/`dir`. */
  readonly fapiConfig?: string;
  /** TCTI string: `device:/dev/tpmrm0` on a device, `swtpm:host=127.0.0.1,port=N` in tests. */
  readonly tcti?: string;
  /** The store's own FAPI keystore directories live under here (made on first use). */
  readonly dir?: string;
}

export interface Pkcs11KeyStoreConfig {
  readonly kind: 'pkcs11';
  /** Path of the PKCS#11 module (.so): OP-TEE's libckteec on a board, libsofthsm2 in tests. */
  readonly module: string;
  /** RFC 7512 URI naming the token, e.g. `pkcs11:token=vitalseal`. */
  readonly token: string;
  /** Where the user PIN comes from. */
  readonly pin: SecretSource;
}

export type KeyStoreConfig = SoftwareKeyStoreConfig | TpmKeyStoreConfig | Pkcs11KeyStoreConfig;
