/**
 * The KeyStore contract every backend (tpm, pkcs11, software) implements and one contract test
 * suite checks. A store hands out handles (names), public keys, signatures and sealed/wrapped
 * blobs, never private key bytes.
 *
 * Key hierarchy (DESIGN.md "Keys"): the store holds a KEK (a TPM-sealed secret, a token AES key, or a
 * scrypt-derived key for the software store) and the device identity signing key. Data keys (DEKs)
 * are generated in host memory, wrapped by the KEK with `wrapKey`, stored beside the data they
 * protect, and zeroised after use.
 *
 * @example
 *   const store: KeyStore = await openSoftwareKeyStore({ path, passphrase });
 *   const signer = await store.createSigningKey('device-identity');
 *   const sig = await signer.sign(message);
 *   const wrapped = await store.wrapKey('queue-kek', dek);   // creates the KEK on first use
 *   const dek2 = await store.unwrapKey('queue-kek', wrapped);
 */
import type { Signer } from './signer.ts';

export type KeyStoreKind = 'tpm' | 'pkcs11' | 'software';

export interface KeyStoreDescription {
  readonly kind: KeyStoreKind;
  /** True when private keys and KEKs cannot leave the hardware (TPM, token). */
  readonly hardwareBound: boolean;
  /** 'development' for the software store: never for patient data in production. */
  readonly assurance: 'hardware' | 'development';
  /** Human detail: TCTI, token label, file path. Never a secret. */
  readonly detail: string;
}

export type KeyObjectType = 'signing' | 'sealed' | 'kek';

export interface KeyInfo {
  readonly name: string;
  readonly type: KeyObjectType;
}

export interface KeyStore {
  describe(): KeyStoreDescription;

  /** Creates a new ECDSA P-256 signing key; fails with `KeyStoreError('exists')` if the name is taken. */
  createSigningKey(name: string): Promise<Signer>;
  /** Opens an existing signing key; `KeyStoreError('not-found')` if absent. */
  openSigningKey(name: string): Promise<Signer>;
  /** The public half of a signing key, as PEM SubjectPublicKeyInfo. */
  publicKeyPem(name: string): Promise<string>;

  /** Seals a secret (at most 128 bytes on a TPM; 4 KiB elsewhere) under `name`; fails if it exists. */
  seal(name: string, secret: Uint8Array): Promise<void>;
  /** Returns the sealed secret; the caller zeroises it after use. */
  unseal(name: string): Promise<Uint8Array>;

  /** Wraps a data key under the KEK `kekName` (created on first use). The blob is opaque and authenticated. */
  wrapKey(kekName: string, dataKey: Uint8Array): Promise<Uint8Array>;
  /** Unwraps a blob made by `wrapKey`; `KeyStoreError('unwrap-failed')` on tampering or the wrong KEK. */
  unwrapKey(kekName: string, wrapped: Uint8Array): Promise<Uint8Array>;

  randomBytes(length: number): Promise<Uint8Array>;
  list(): Promise<KeyInfo[]>;
  /** Destroys the object; `KeyStoreError('not-found')` if absent. */
  delete(name: string): Promise<void>;
  /** Releases the backend (FAPI context, PKCS#11 session); later calls fail with `KeyStoreError('closed')`. */
  close(): Promise<void>;
}

/** Security events a key store reports; the audit log records them. Never carries secret material. */
export interface KeyEvent {
  /** 'export' is the software store's development-only private key export. */
  readonly operation: 'create' | 'open' | 'sign' | 'seal' | 'unseal' | 'wrap' | 'unwrap' | 'delete' | 'rotate' | 'export';
  /** The key's name, or STORE_EVENT_KEY ('-') for events about the store as a whole (opening it). */
  readonly keyName: string;
  readonly store: KeyStoreKind;
  readonly result: 'ok' | 'error';
  /** Error code on failure. */
  readonly code?: string;
}

export interface KeyEventSink {
  record(event: KeyEvent): void;
}

/** `KeyEvent.keyName` for events that concern the whole store, not one key. */
export const STORE_EVENT_KEY = '-';

/** Where a store reports warnings (pino's `logger.warn(message)` fits). Never given secrets. */
export interface KeyStoreLogger {
  warn(message: string): void;
}

/**
 * Names are path-safe on every backend: FAPI paths (/HS/SRK/<name>), PKCS#11 labels, file names.
 * RFC 7512 and FAPI both accept this set; an intermediate element must not be created implicitly.
 */
export const KEY_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
