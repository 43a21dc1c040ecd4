/**
 * The software key store: development grade. Every key lives in one file (format.ts), encrypted
 * under a file key that comes from a passphrase (scrypt) or from another key store (a TPM-sealed
 * secret, or a blob only that store's KEK unwraps). Private keys are in host memory while the store
 * is open; that is why `describe()` says `development` and opening it logs a warning.
 *
 * Every change rewrites the file atomically (temporary file, fsync, rename, directory fsync) under a
 * lock file, after re-reading the file if another process changed it, so the agent and an operator's
 * `vitalseal keys` can share one store without losing each other's keys.
 *
 * @example
 *   const store = await openSoftwareKeyStore({ path: 'dev-keys.vsks', passphrase, logger });
 *   const signer = await store.createSigningKey('device-identity');
 *   const signature = await signer.sign(message);            // DER ECDSA P-256 / SHA-256
 *   await store.seal('mqtt-psk', psk);
 *   const wrapped = await store.wrapKey('queue-kek', dek);   // KEK created on first use
 *   await store.close();
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign as nodeSign, type KeyObject } from 'node:crypto';
import { hkdf } from '../../crypto/hkdf.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { getProvider } from '../../crypto/registry.ts';
import { abytes, aint } from '../../util/assert.ts';
import { asBuffer, concatBytes, equalBytes, zeroize } from '../../util/bytes.ts';
import { CryptoError, KeyStoreError } from '../../util/errors.ts';
import { checkKeyName } from '../names.ts';
import { fileVersion, readPrivateFileVersioned, writePrivateFileAtomic } from '../private-file.ts';
import type { Signer } from '../signer.ts';
import {
  STORE_EVENT_KEY, type KeyEvent, type KeyEventSink, type KeyInfo, type KeyObjectType, type KeyStore,
  type KeyStoreDescription, type KeyStoreLogger,
} from '../types.ts';
import {
  CHECK_LENGTH, decodeBody, encodeBody, encodeHeader, FILE_KEY_LENGTH, INFO_CHECK, INFO_CONTENT, KEK_LENGTH,
  MAX_FILE_BYTES, MAX_SEALED_BYTES, parseKeyFile, WRITE_SALT_LENGTH, type FileHeader, type FileProtection,
  type StoredEntry,
} from './format.ts';
import { withFileLock } from './lock.ts';
import { checkScryptParams, DEFAULT_SCRYPT, deriveScrypt, isBelowDefaultCost, type ScryptParams } from './scrypt.ts';
import { MAX_WRAPPED_KEY_BYTES, unwrapWithKek, wrapWithKek } from './wrap-blob.ts';

interface CommonOptions {
  /** The key file; made (mode 0600) on first use unless `create` is false. */
  readonly path: string;
  /** Make the file when it does not exist (default true). */
  readonly create?: boolean;
  /** Receives create/open/sign/seal/unseal/wrap/unwrap/delete/export events (never secrets). */
  readonly events?: KeyEventSink;
  /** Receives the development-grade warning on open. */
  readonly logger?: KeyStoreLogger;
  readonly provider?: CryptoProvider;
  /** How long to wait for another process's lock on the file (default 5 s). */
  readonly lockTimeoutMs?: number;
}

/** The file key comes from a passphrase through scrypt. */
export interface PassphraseProtection {
  /** Bytes are used as given (the caller zeroises them); a string is NFC-normalised and UTF-8 encoded. */
  readonly passphrase: Uint8Array | string;
  /** Costs for a new file (default N = 2^15, r = 8, p = 1); an existing file keeps its own. */
  readonly scrypt?: Partial<ScryptParams>;
}

/** The file key is a secret sealed in another store (a TPM sealed object) under `name`. */
export interface SealedProtection {
  readonly fileKeySealedIn: { readonly store: KeyStore; readonly name: string };
}

/** The file key is wrapped by another store's KEK `kekName`; the blob lives in the file header. */
export interface WrappedProtection {
  readonly fileKeyWrappedBy: { readonly store: KeyStore; readonly kekName: string };
}

export type SoftwareKeyStoreOptions = CommonOptions & (PassphraseProtection | SealedProtection | WrappedProtection);

interface StoreInit {
  readonly path: string;
  readonly provider: CryptoProvider;
  readonly events: KeyEventSink | undefined;
  readonly lockTimeoutMs: number;
  readonly protection: FileProtection;
  readonly check: Uint8Array;
  readonly fileKey: Uint8Array;
  readonly entries: Map<string, LoadedEntry>;
  readonly version: string | undefined;
}

interface LoadedEntry {
  readonly type: KeyObjectType;
  readonly material: Uint8Array;
  /** Signing keys: parsed on first use. */
  keyObject?: KeyObject;
  spki?: Uint8Array;
}

const ZERO_NONCE = new Uint8Array(12);
const MAX_RANDOM_BYTES = 65536;

function passphraseBytes(p: Uint8Array | string): { bytes: Uint8Array; owned: boolean } {
  if (typeof p === 'string') return { bytes: new TextEncoder().encode(p.normalize('NFC')), owned: true };
  return { bytes: abytes(p, 'passphrase'), owned: false };
}

function codeOf(e: unknown): string {
  if (e instanceof KeyStoreError || e instanceof CryptoError) return e.code;
  if (e instanceof RangeError) return 'invalid-argument';
  if (e instanceof TypeError) return 'invalid-argument';
  return 'internal';
}

function describeProtection(p: FileProtection): string {
  switch (p.kind) {
    case 'scrypt':
      return `keys encrypted under a scrypt-derived key (N=2^${p.params.logN}, r=${p.params.r}, p=${p.params.p})`;
    case 'sealed':
      return `keys encrypted under a file key sealed in the ${p.store} store as '${p.name}'`;
    case 'wrapped':
      return `keys encrypted under a file key wrapped by the ${p.store} store's KEK '${p.kekName}'`;
    default: {
      const never: never = p;
      return String(never);
    }
  }
}

export class SoftwareKeyStore implements KeyStore {
  readonly #path: string;
  readonly #provider: CryptoProvider;
  readonly #events: KeyEventSink | undefined;
  readonly #lockTimeoutMs: number;
  readonly #protection: FileProtection;
  readonly #check: Uint8Array;
  #fileKey: Uint8Array;
  #entries: Map<string, LoadedEntry>;
  #version: string | undefined;
  #closed = false;
  #queue: Promise<unknown> = Promise.resolve();

  /** Use `openSoftwareKeyStore`. */
  private constructor(init: StoreInit) {
    this.#path = init.path;
    this.#provider = init.provider;
    this.#events = init.events;
    this.#lockTimeoutMs = init.lockTimeoutMs;
    this.#protection = init.protection;
    this.#check = init.check;
    this.#fileKey = init.fileKey;
    this.#entries = init.entries;
    this.#version = init.version;
  }

  /** @internal Built by openSoftwareKeyStore once the file key is known and the body decrypted. */
  static _create(init: StoreInit): SoftwareKeyStore {
    return new SoftwareKeyStore(init);
  }

  describe(): KeyStoreDescription {
    return {
      kind: 'software',
      hardwareBound: false,
      assurance: 'development',
      detail: `development-grade software key store ${this.#path}: ${describeProtection(this.#protection)}`,
    };
  }

  async createSigningKey(name: string): Promise<Signer> {
    checkKeyName(name);
    const spki = await this.#op('create', name, true, async () => {
      this.#mustBeFree(name);
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const der = privateKey.export({ format: 'der', type: 'pkcs8' });
      const material = Uint8Array.from(der);
      der.fill(0);
      const publicSpki = new Uint8Array(publicKey.export({ format: 'der', type: 'spki' }));
      await this.#commit((next) => next.set(name, { type: 'signing', material, keyObject: privateKey, spki: publicSpki }));
      return publicSpki;
    });
    return this.#signer(name, spki);
  }

  async openSigningKey(name: string): Promise<Signer> {
    checkKeyName(name);
    const spki = await this.#op('open', name, false, async () => this.#signingEntry(name).spki as Uint8Array);
    return this.#signer(name, spki);
  }

  async publicKeyPem(name: string): Promise<string> {
    checkKeyName(name);
    const spki = await this.#run(false, async () => this.#signingEntry(name).spki as Uint8Array);
    return createPublicKey({ key: asBuffer(spki), format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' }).toString();
  }

  async seal(name: string, secret: Uint8Array): Promise<void> {
    checkKeyName(name);
    abytes(secret, 'secret');
    await this.#op('seal', name, true, async () => {
      if (secret.length > MAX_SEALED_BYTES) {
        throw new KeyStoreError('too-large', `a sealed secret holds at most ${MAX_SEALED_BYTES} bytes; got ${secret.length}`);
      }
      this.#mustBeFree(name);
      const material = Uint8Array.from(secret);
      await this.#commit((next) => next.set(name, { type: 'sealed', material }));
    });
  }

  async unseal(name: string): Promise<Uint8Array> {
    checkKeyName(name);
    return this.#op('unseal', name, false, async () => Uint8Array.from(this.#entry(name, 'sealed').material));
  }

  async wrapKey(kekName: string, dataKey: Uint8Array): Promise<Uint8Array> {
    checkKeyName(kekName);
    abytes(dataKey, 'data key');
    if (dataKey.length === 0) throw new RangeError('data key: empty');
    if (dataKey.length > MAX_WRAPPED_KEY_BYTES) {
      throw new KeyStoreError('too-large', `a wrapped key holds at most ${MAX_WRAPPED_KEY_BYTES} bytes; got ${dataKey.length}`);
    }
    // The KEK is made on first use, as its own event.
    const exists = await this.#run(false, async () => this.#entries.has(kekName));
    if (!exists) {
      await this.#op('create', kekName, true, async () => {
        if (this.#entries.has(kekName)) return; // made meanwhile by another process
        const material = this.#provider.randomBytes(KEK_LENGTH);
        await this.#commit((next) => next.set(kekName, { type: 'kek', material }));
      });
    }
    return this.#op('wrap', kekName, false, async () => wrapWithKek(this.#provider, this.#entry(kekName, 'kek').material, kekName, dataKey));
  }

  async unwrapKey(kekName: string, wrapped: Uint8Array): Promise<Uint8Array> {
    checkKeyName(kekName);
    abytes(wrapped, 'wrapped key');
    return this.#op('unwrap', kekName, false, async () => unwrapWithKek(this.#provider, this.#entry(kekName, 'kek').material, kekName, wrapped));
  }

  async randomBytes(length: number): Promise<Uint8Array> {
    aint(length, 'random length', 0, MAX_RANDOM_BYTES);
    return this.#run(false, async () => this.#provider.randomBytes(length));
  }

  async list(): Promise<KeyInfo[]> {
    return this.#run(false, async () =>
      [...this.#entries.entries()].map(([name, e]) => ({ name, type: e.type })).sort((a, b) => (a.name < b.name ? -1 : 1)));
  }

  async delete(name: string): Promise<void> {
    checkKeyName(name);
    await this.#op('delete', name, true, async () => {
      const entry = this.#entries.get(name);
      if (entry === undefined) throw this.#notFound(name);
      await this.#commit((next) => next.delete(name));
      zeroize(entry.material);
    });
  }

  /**
   * DEVELOPMENT ONLY: the private half of a signing key as PKCS#8 PEM, for tools that cannot use a
   * store (a local CA, openssl). The TPM and PKCS#11 stores have no such call: their keys never
   * leave the hardware. Recorded as an `export` key event.
   */
  async exportPrivateKeyPemForDevelopmentOnly(name: string): Promise<string> {
    checkKeyName(name);
    return this.#op('export', name, false, async () => {
      const entry = this.#signingEntry(name);
      return (entry.keyObject as KeyObject).export({ format: 'pem', type: 'pkcs8' }).toString();
    });
  }

  async close(): Promise<void> {
    await this.#queue.catch(() => undefined);
    if (this.#closed) return;
    this.#closed = true;
    this.#dropEntries(this.#entries);
    this.#entries = new Map();
    zeroize(this.#fileKey);
  }

  // ---- internals ----

  #record(operation: KeyEvent['operation'], keyName: string, error?: unknown): void {
    if (this.#events === undefined) return;
    this.#events.record(error === undefined
      ? { operation, keyName, store: 'software', result: 'ok' }
      : { operation, keyName, store: 'software', result: 'error', code: codeOf(error) });
  }

  /** Runs `fn` alone (one operation at a time per store), fresh from disk, under the file lock if it writes. */
  #run<T>(writes: boolean, fn: () => Promise<T>): Promise<T> {
    const task = this.#queue.then(async () => {
      if (this.#closed) throw new KeyStoreError('closed', 'the key store is closed');
      const body = async () => {
        await this.#syncFromDisk();
        return fn();
      };
      return writes ? withFileLock(this.#path, body, { timeoutMs: this.#lockTimeoutMs }) : body();
    });
    this.#queue = task.catch(() => undefined);
    return task;
  }

  /**
   * `#run`, reporting the outcome as a key event. A sink that throws fails the call (the caller
   * asked for every key use to be recorded), and is not asked a second time.
   */
  async #op<T>(operation: KeyEvent['operation'], keyName: string, writes: boolean, fn: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await this.#run(writes, fn);
    } catch (e) {
      this.#record(operation, keyName, e);
      throw e;
    }
    this.#record(operation, keyName);
    return result;
  }

  #notFound(name: string): KeyStoreError {
    return new KeyStoreError('not-found', `no key '${name}' in ${this.#path}`);
  }

  #mustBeFree(name: string): void {
    const existing = this.#entries.get(name);
    if (existing !== undefined) throw new KeyStoreError('exists', `'${name}' already exists (a ${existing.type} object) in ${this.#path}`);
  }

  #entry(name: string, type: KeyObjectType): LoadedEntry {
    const entry = this.#entries.get(name);
    if (entry === undefined) throw this.#notFound(name);
    if (entry.type !== type) throw new KeyStoreError('wrong-type', `'${name}' is a ${entry.type} object, not a ${type} object`);
    return entry;
  }

  #signingEntry(name: string): LoadedEntry {
    const entry = this.#entry(name, 'signing');
    if (entry.keyObject === undefined) {
      const der = Buffer.from(entry.material);
      try {
        entry.keyObject = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
      } finally {
        der.fill(0);
      }
    }
    entry.spki ??= new Uint8Array(createPublicKey(entry.keyObject).export({ format: 'der', type: 'spki' }));
    return entry;
  }

  #signer(name: string, spki: Uint8Array): Signer {
    return {
      scheme: 'ecdsa-p256-sha256',
      publicKeySpki: async () => Uint8Array.from(spki),
      sign: async (message: Uint8Array) => {
        abytes(message, 'message');
        return this.#op('sign', name, false, async () => {
          const entry = this.#signingEntry(name);
          // A handle signs only with the key it was opened for, never a later key of the same name.
          if (!equalBytes(entry.spki as Uint8Array, spki)) throw new KeyStoreError('not-found', `'${name}' was replaced since this handle was opened`);
          return new Uint8Array(nodeSign('sha256', message, { key: entry.keyObject as KeyObject, dsaEncoding: 'der' }));
        });
      },
    };
  }

  /** Applies `change` to a copy of the entries, writes it, and only then makes it current. */
  async #commit(change: (next: Map<string, LoadedEntry>) => void): Promise<void> {
    const next = new Map(this.#entries);
    change(next);
    try {
      await this.#persist(next);
    } catch (e) {
      this.#version = undefined; // unknown state on disk: re-read before the next operation
      throw e;
    }
    this.#entries = next;
  }

  async #persist(entries: Map<string, LoadedEntry>): Promise<void> {
    const stored: StoredEntry[] = [...entries].map(([name, e]) => ({ name, type: e.type, material: e.material }));
    const body = encodeBody(stored);
    const writeSalt = this.#provider.randomBytes(WRITE_SALT_LENGTH);
    const header: FileHeader = { protection: this.#protection, check: this.#check, writeSalt, bodyLength: body.length + 16 };
    const headerBytes = encodeHeader(header);
    const contentKey = hkdf(this.#provider, writeSalt, this.#fileKey, INFO_CONTENT, 32);
    try {
      const sealed = this.#provider.aeadSeal('aes-256-gcm', contentKey, ZERO_NONCE, body, headerBytes);
      await writePrivateFileAtomic(this.#path, concatBytes(headerBytes, sealed));
    } finally {
      zeroize(body, contentKey);
    }
    // Under the file lock nobody else writes, so this is the version just written.
    this.#version = await fileVersion(this.#path);
  }

  /** Re-reads the file when another process (or a restore) replaced it since we last read it. */
  async #syncFromDisk(): Promise<void> {
    const now = await fileVersion(this.#path);
    if (now === undefined) throw new KeyStoreError('file-not-found', `key file ${this.#path} was removed while the store was open`);
    if (now === this.#version) return;
    const { bytes, version } = await readPrivateFileVersioned(this.#path, { maxBytes: MAX_FILE_BYTES, what: 'key file' });
    const parsed = parseKeyFile(bytes, this.#path);
    if (!equalBytes(encodeProtection(parsed.header.protection), encodeProtection(this.#protection)) || !equalBytes(parsed.header.check, this.#check)) {
      throw new KeyStoreError('file-replaced', `key file ${this.#path} was replaced by a file under another key while the store was open; reopen it`);
    }
    const entries = decryptEntries(this.#provider, this.#fileKey, parsed, this.#path);
    this.#dropEntries(this.#entries);
    this.#entries = entries;
    this.#version = version;
  }

  #dropEntries(entries: Map<string, LoadedEntry>): void {
    for (const e of entries.values()) zeroize(e.material);
  }
}

function encodeProtection(p: FileProtection): Uint8Array {
  // The header without check/salt/length differences: compare the protection part only.
  return encodeHeader({ protection: p, check: new Uint8Array(CHECK_LENGTH), writeSalt: new Uint8Array(WRITE_SALT_LENGTH), bodyLength: 0 });
}

function fileKeyCheck(p: CryptoProvider, fileKey: Uint8Array): Uint8Array {
  return hkdf(p, undefined, fileKey, INFO_CHECK, CHECK_LENGTH);
}

function decryptEntries(p: CryptoProvider, fileKey: Uint8Array, parsed: ReturnType<typeof parseKeyFile>, path: string): Map<string, LoadedEntry> {
  const contentKey = hkdf(p, parsed.header.writeSalt, fileKey, INFO_CONTENT, 32);
  let plain: Uint8Array;
  try {
    plain = p.aeadOpen('aes-256-gcm', contentKey, ZERO_NONCE, parsed.sealedBody, parsed.headerBytes);
  } catch (e) {
    if (e instanceof CryptoError) {
      throw new KeyStoreError('file-corrupt', `key file ${path} failed authentication: it was altered or damaged (the passphrase check passed)`);
    }
    throw e;
  } finally {
    zeroize(contentKey);
  }
  try {
    const entries = new Map<string, LoadedEntry>();
    for (const e of decodeBody(plain, path)) entries.set(e.name, { type: e.type, material: e.material });
    return entries;
  } finally {
    zeroize(plain);
  }
}

function protectionKindName(p: FileProtection): string {
  return p.kind === 'scrypt' ? 'a passphrase' : p.kind === 'sealed' ? `a secret sealed in a ${p.store} store as '${p.name}'` : `a ${p.store} store's KEK '${p.kekName}'`;
}

/** Derives or recovers the file key for an existing file, refusing a protection that does not match. */
async function recoverFileKey(opts: SoftwareKeyStoreOptions, protection: FileProtection, path: string): Promise<Uint8Array> {
  const mismatch = (given: string) =>
    new KeyStoreError('wrong-protection', `key file ${path} is protected by ${protectionKindName(protection)}, but ${given} was given`);
  if ('passphrase' in opts) {
    if (protection.kind !== 'scrypt') throw mismatch('a passphrase');
    checkScryptParams(protection.params, 'file-corrupt');
    const { bytes, owned } = passphraseBytes(opts.passphrase);
    try {
      return await deriveScrypt(bytes, protection.salt, protection.params);
    } finally {
      if (owned) zeroize(bytes);
    }
  }
  if ('fileKeySealedIn' in opts) {
    const { store, name } = opts.fileKeySealedIn;
    if (protection.kind !== 'sealed' || protection.name !== name || protection.store !== store.describe().kind) {
      throw mismatch(`a secret sealed in a ${store.describe().kind} store as '${name}'`);
    }
    return store.unseal(name);
  }
  const { store, kekName } = opts.fileKeyWrappedBy;
  if (protection.kind !== 'wrapped' || protection.kekName !== kekName || protection.store !== store.describe().kind) {
    throw mismatch(`a ${store.describe().kind} store's KEK '${kekName}'`);
  }
  return store.unwrapKey(kekName, protection.blob);
}

/** Makes a new file key and the protection that records how to get it back. */
async function newFileKey(opts: SoftwareKeyStoreOptions, provider: CryptoProvider): Promise<{ fileKey: Uint8Array; protection: FileProtection; undo: () => Promise<void> }> {
  if ('passphrase' in opts) {
    const params = checkScryptParams({ ...DEFAULT_SCRYPT, ...opts.scrypt }, 'invalid-argument');
    const salt = provider.randomBytes(32);
    const { bytes, owned } = passphraseBytes(opts.passphrase);
    if (bytes.length === 0) throw new KeyStoreError('invalid-argument', 'the passphrase is empty');
    try {
      return { fileKey: await deriveScrypt(bytes, salt, params), protection: { kind: 'scrypt', params, salt }, undo: async () => undefined };
    } finally {
      if (owned) zeroize(bytes);
    }
  }
  const fileKey = provider.randomBytes(FILE_KEY_LENGTH);
  try {
    if ('fileKeySealedIn' in opts) {
      const { store, name } = opts.fileKeySealedIn;
      checkKeyName(name);
      await store.seal(name, fileKey);
      return { fileKey, protection: { kind: 'sealed', store: store.describe().kind, name }, undo: () => store.delete(name) };
    }
    const { store, kekName } = opts.fileKeyWrappedBy;
    checkKeyName(kekName);
    const blob = await store.wrapKey(kekName, fileKey);
    return { fileKey, protection: { kind: 'wrapped', store: store.describe().kind, kekName, blob }, undo: async () => undefined };
  } catch (e) {
    zeroize(fileKey);
    throw e;
  }
}

async function createFile(opts: SoftwareKeyStoreOptions, provider: CryptoProvider): Promise<{ fileKey: Uint8Array; protection: FileProtection; check: Uint8Array }> {
  const { fileKey, protection, undo } = await newFileKey(opts, provider);
  const check = fileKeyCheck(provider, fileKey);
  const writeSalt = provider.randomBytes(WRITE_SALT_LENGTH);
  const body = encodeBody([]);
  const headerBytes = encodeHeader({ protection, check, writeSalt, bodyLength: body.length + 16 });
  const contentKey = hkdf(provider, writeSalt, fileKey, INFO_CONTENT, 32);
  try {
    const sealed = provider.aeadSeal('aes-256-gcm', contentKey, ZERO_NONCE, body, headerBytes);
    await writePrivateFileAtomic(opts.path, concatBytes(headerBytes, sealed));
  } catch (e) {
    zeroize(fileKey);
    await undo().catch(() => undefined);
    throw e;
  } finally {
    zeroize(contentKey);
  }
  return { fileKey, protection, check };
}

/**
 * Opens (or, unless `create: false`, makes) a software key store. Errors: `wrong-passphrase` (or
 * `wrong-kek` when another store supplies the file key), `insecure-permissions` (mode wider than
 * 0600; the message names the chmod), `file-corrupt` (truncated, altered), `wrong-protection`,
 * `file-not-found`, `unsupported-version`, `locked`.
 */
export async function openSoftwareKeyStore(opts: SoftwareKeyStoreOptions): Promise<SoftwareKeyStore> {
  const provider = opts.provider ?? getProvider();
  const path = opts.path;
  if (typeof path !== 'string' || path.length === 0) throw new TypeError('openSoftwareKeyStore: path must be a non-empty string');
  const record = (error?: unknown) => {
    opts.events?.record(error === undefined
      ? { operation: 'open', keyName: STORE_EVENT_KEY, store: 'software', result: 'ok' }
      : { operation: 'open', keyName: STORE_EVENT_KEY, store: 'software', result: 'error', code: codeOf(error) });
  };
  try {
    const { store, protection } = await withFileLock(path, async () => {
      let read: { bytes: Uint8Array; version: string } | undefined;
      try {
        read = await readPrivateFileVersioned(path, { maxBytes: MAX_FILE_BYTES, what: 'key file' });
      } catch (e) {
        if (!(e instanceof KeyStoreError && e.code === 'file-not-found' && opts.create !== false)) throw e;
      }
      const common = { path, provider, events: opts.events, lockTimeoutMs: opts.lockTimeoutMs ?? 5000 };
      if (read === undefined) {
        const made = await createFile(opts, provider);
        const created = SoftwareKeyStore._create({ ...common, ...made, entries: new Map(), version: await fileVersion(path) });
        return { store: created, protection: made.protection };
      }
      const parsed = parseKeyFile(read.bytes, path);
      const fileKey = await recoverFileKey(opts, parsed.header.protection, path);
      try {
        if (fileKey.length !== FILE_KEY_LENGTH || !equalBytes(fileKeyCheck(provider, fileKey), parsed.header.check)) {
          throw 'passphrase' in opts
            ? new KeyStoreError('wrong-passphrase', `the passphrase does not open key file ${path}`)
            : new KeyStoreError('wrong-kek', `the file key from ${protectionKindName(parsed.header.protection)} does not open key file ${path}`);
        }
        const entries = decryptEntries(provider, fileKey, parsed, path);
        const opened = SoftwareKeyStore._create({ ...common, protection: parsed.header.protection, check: parsed.header.check, fileKey, entries, version: read.version });
        return { store: opened, protection: parsed.header.protection };
      } catch (e) {
        zeroize(fileKey);
        throw e;
      }
    }, { timeoutMs: opts.lockTimeoutMs ?? 5000 });
    record();
    opts.logger?.warn(`DEVELOPMENT KEY STORE ${path}: private keys are protected by software only and sit in this process's memory while it runs (${describeProtection(protection)}). Do not use it for patient data in production: use the tpm or pkcs11 store.`);
    if (protection.kind === 'scrypt' && isBelowDefaultCost(protection.params)) {
      opts.logger?.warn(`key file ${path}: scrypt cost N=2^${protection.params.logN}, r=${protection.params.r} is below the default (N=2^${DEFAULT_SCRYPT.logN}, r=${DEFAULT_SCRYPT.r}): acceptable for tests only`);
    }
    return store;
  } catch (e) {
    record(e);
    throw e;
  }
}
