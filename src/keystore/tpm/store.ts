/**
 * The TPM 2.0 key store: tpm2-tss FAPI through koffi.
 *
 * Object layout (all directly under the storage root key, created by FAPI's P_ECCP256SHA256 profile):
 *
 *   /HS/SRK/<name>   signing key   ECC P-256, attributes sign + noDA, empty auth; signs host SHA-256 digests
 *   /HS/SRK/<name>   sealed secret keyed-hash data object, noDA, 1..128 bytes (TPM MAX_SYM_DATA)
 *   /HS/SRK/<name>   KEK           a sealed 32-byte secret, FAPI description "vitalseal:kek:v1"; see wrap.ts
 *
 * Keys are non-persistent: FAPI keeps their protected blobs in its keystore directory and loads them
 * under the SRK for each use, so they survive reboots but only ever work on this TPM (the private
 * parts are encrypted under the SRK, which never leaves the TPM). noDA: the device is unattended
 * and its objects have no password, so dictionary-attack counting protects nothing and a lockout
 * caused by someone else must not take the device's identity down with it.
 *
 * Before any command that loads an object, the store checks the object exists in the keystore
 * (a file read, no TPM command): a FAPI "key not found" from the TPM command itself then can only
 * mean the SRK is gone, i.e. the TPM was cleared. At open, the store compares the SRK's Name in the
 * TPM with the one in the keystore, so a cleared TPM or a keystore from another TPM is reported
 * before any key is used, without an authorization attempt that would count against the TPM's
 * dictionary-attack lockout.
 */
import { createHash, randomBytes as nodeRandomBytes } from 'node:crypto';
import { constants as fsConstants, existsSync, promises as fsp, rmSync } from 'node:fs';
import { join } from 'node:path';
import { aint, abytes } from '../../util/assert.ts';
import { equalBytes, toHex, zeroize } from '../../util/bytes.ts';
import { DecodeError, KeyStoreError } from '../../util/errors.ts';
import type { TpmKeyStoreConfig } from '../config.ts';
import type { Signer } from '../signer.ts';
import type { KeyEvent, KeyEventSink, KeyInfo, KeyObjectType, KeyStore, KeyStoreDescription } from '../types.ts';
import { FapiContext, type FapiCalls } from './context.ts';
import { BASE, TPM_RC, TpmKeyStoreError, decodeRc, fapiRc, rcHex } from './errors.ts';
import { loadableKeyParent, resolveFapiConfig, writeOwnFapiConfig, type ResolvedFapiConfig } from './fapi-config.ts';
import { loadFapi } from './native.ts';
import { checkObjectPath, nameOfPath, pathForName, withoutProfile } from './paths.ts';
import { parseTpmInfo, type TpmInfo } from './tpm-info.ts';
import { isP256SigningKey, isSealedData, objectName, p256Spki, parseTpm2bPublic, type TpmPublic } from './tpm-public.ts';
import { encodeLoadableKey, loadableKeyPem } from './loadable-key.ts';
import { KEK_LENGTH, MAX_DATA_KEY, unwrapWithKek, wrapWithKek } from './wrap.ts';

/** TPM 2.0 Part 2 §10.4.2 (MAX_SYM_DATA): the most a sealed data object holds. */
export const MAX_SEALED_BYTES = 128;
/** FAPI description that marks a sealed object as a KEK for wrapKey/unwrapKey. */
export const KEK_DESCRIPTION = 'vitalseal:kek:v1';
const SIGNING_KEY_TYPE = 'sign,noDa';
const SEAL_TYPE = 'noDa';
const MAX_RANDOM = 4096;

export interface TpmKeyStoreOptions {
  /** Key events (create, sign, unseal, ...) go here; the audit log records them. */
  readonly events?: KeyEventSink;
  /** libtss2-fapi to load (name or path); default `libtss2-fapi.so.1`, or $VITALSEAL_TSS2_FAPI_LIBRARY. */
  readonly library?: string;
  /**
   * Only for a config the store writes (`tcti` + `dir`): provision without checking an EK
   * certificate. By default FAPI checks the TPM's EK certificate when the TPM has one, and the store
   * falls back to `ek_cert_less` only when the TPM has none (swtpm, some firmware TPMs).
   */
  readonly ekCertLess?: boolean;
}

/** What `listPaths` reports for each object. */
export interface TpmObjectInfo {
  /** The FAPI path without the profile element, e.g. `/HS/SRK/device-identity`. */
  readonly path: string;
  readonly type: KeyObjectType | 'other';
}

/**
 * The TPM key store: the `KeyStore` contract by key name, plus the same operations by full FAPI path
 * for the operators' command (`vitalseal keys ... --store tpm --path /HS/SRK/NAME`), naming objects
 * exactly as tpm2-tools' `tss2_*` commands do.
 */
export interface TpmKeyStore extends KeyStore {
  /** The FAPI config file in use (give it to tpm2-tools as TSS2_FAPICONF). */
  readonly fapiConfigPath: string;
  /** What the TPM reported about itself at open. */
  readonly tpm: TpmInfo | undefined;
  createSigningKeyAt(path: string): Promise<Signer>;
  openSigningKeyAt(path: string): Promise<Signer>;
  publicKeyPemAt(path: string): Promise<string>;
  /** Signs `message` (SHA-256 on the host, ECDSA in the TPM); DER signature. */
  signAt(path: string, message: Uint8Array): Promise<Uint8Array>;
  sealAt(path: string, secret: Uint8Array): Promise<void>;
  unsealAt(path: string): Promise<Uint8Array>;
  deleteAt(path: string): Promise<void>;
  /** Every object below `searchPath` (default `/HS/SRK`), with its type. */
  listPaths(searchPath?: string): Promise<TpmObjectInfo[]>;
  /**
   * The signing key `name` in the form OpenSSL's `tpm2` provider loads (a TSS2 PRIVATE KEY PEM:
   * the TPM-wrapped blobs under the persistent SRK; see loadable-key.ts), and the TCTI that
   * reaches this TPM. For TLS client authentication in a process that signs through OpenSSL; the
   * key still signs only inside this TPM. Recorded as an `open` key event.
   */
  loadableKey(name: string): Promise<TpmLoadableKey>;
}

export interface TpmLoadableKey {
  /** `-----BEGIN TSS2 PRIVATE KEY-----`: usable only with this TPM. */
  readonly pem: string;
  /** The TCTI from the store's FAPI config ('' = the TSS default search). */
  readonly tcti: string;
  /** The parent's persistent handle (FAPI's SRK). */
  readonly parent: number;
}

type ObjectKind = KeyObjectType | 'other';

interface Inspected {
  readonly kind: ObjectKind;
  /** Undefined when FAPI holds a public area this parser does not know. */
  readonly pub: TpmPublic | undefined;
}

const KEY_NOT_FOUND = fapiRc(BASE.KEY_NOT_FOUND);
const PATH_NOT_FOUND = fapiRc(BASE.PATH_NOT_FOUND);
const ALREADY_PROVISIONED = fapiRc(BASE.ALREADY_PROVISIONED);
const NO_CERT = fapiRc(BASE.NO_CERT);

const REPROVISION_HINT = 'Every key and sealed secret made under it is gone for good: re-provision the keystore '
  + '(reprovisionTpmKeyStore), then re-enrol the device (new identity key and certificate) '
  + 'and treat data wrapped by the old KEKs as lost.';

function clearedError(config: ResolvedFapiConfig, what: string, rc?: number): TpmKeyStoreError {
  return new TpmKeyStoreError('tpm-cleared',
    `TPM ${what}: the TPM no longer holds the storage root key this keystore (${config.systemDir}) was provisioned under: `
    + `the TPM was cleared or its state was reset. ${REPROVISION_HINT}${rc === undefined ? '' : ` [TSS2 rc ${rcHex(rc)}]`}`,
    rc === undefined ? undefined : { rc });
}

function isNotFound(rc: number): boolean {
  return rc === KEY_NOT_FOUND || rc === PATH_NOT_FOUND;
}

/** Reads and classifies the object at `path` from the keystore (no TPM command). */
async function inspect(f: FapiCalls, path: string): Promise<Inspected | undefined> {
  const blobs = await f.getTpmBlobs(path);
  if (isNotFound(blobs.rc)) return undefined;
  if (blobs.rc !== 0 || blobs.tpm2bPublic === undefined) throw f.error(blobs.rc || 1, { operation: 'read public area of', path });
  let pub: TpmPublic;
  try {
    pub = parseTpm2bPublic(blobs.tpm2bPublic);
  } catch (e) {
    if (e instanceof DecodeError) return { kind: 'other', pub: undefined };
    throw e;
  }
  if (isP256SigningKey(pub)) return { kind: 'signing', pub };
  if (isSealedData(pub)) {
    const d = await f.getDescription(path);
    return { kind: d.rc === 0 && d.description === KEK_DESCRIPTION ? 'kek' : 'sealed', pub };
  }
  return { kind: 'other', pub };
}

function wrongType(path: string, found: ObjectKind, wanted: string): TpmKeyStoreError {
  const what = found === 'kek' ? 'a KEK (used only through wrapKey/unwrapKey; it never leaves the store)' : found === 'other' ? 'an object this store does not use' : `a ${found} object`;
  return new TpmKeyStoreError('wrong-type', `${path} is ${what}, not ${wanted}`);
}

function signingSpki(found: Inspected): Uint8Array {
  if (found.pub === undefined) throw new TpmKeyStoreError('wrong-type', 'not a P-256 signing key');
  return p256Spki(found.pub);
}

function notFound(path: string): TpmKeyStoreError {
  return new TpmKeyStoreError('not-found', `no TPM object at ${path}`);
}

function pemFromSpki(spki: Uint8Array): string {
  const b64 = Buffer.from(spki).toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN PUBLIC KEY-----\n${b64}\n-----END PUBLIC KEY-----\n`;
}

/** Provisions if needed (idempotent). Returns 'need-ek-cert-less' when the TPM has no EK certificate. */
async function provision(f: FapiCalls): Promise<'provisioned' | 'existing' | 'need-ek-cert-less'> {
  const rc = await f.provision();
  if (rc === 0) return 'provisioned';
  if (rc === ALREADY_PROVISIONED) return 'existing';
  if (rc === NO_CERT) return 'need-ek-cert-less';
  throw f.error(rc, { operation: 'provision' });
}

/**
 * Checks that the TPM holds the SRK this keystore was provisioned under, comparing Names (TPM 2.0
 * Part 1 §16). TPM2_ReadPublic needs no authorization, so a mismatch costs no dictionary-attack try.
 */
async function verifySrk(f: FapiCalls, config: ResolvedFapiConfig, info: TpmInfo | undefined): Promise<void> {
  const handle = config.srkHandle;
  if (handle === undefined) return; // the profile keeps no persistent SRK: nothing to compare
  const inspected = await f.getTpmBlobs('/HS/SRK');
  if (inspected.rc !== 0 || inspected.tpm2bPublic === undefined) {
    throw f.error(inspected.rc || 1, { operation: 'read the storage root key from the keystore', path: '/HS/SRK' });
  }
  const expected = objectName(parseTpm2bPublic(inspected.tpm2bPublic));
  if (info !== undefined && !info.persistentHandles.includes(handle)) throw clearedError(config, 'open');
  const r = await f.readPersistentName(handle);
  if (r.rc !== 0) {
    const d = decodeRc(r.rc);
    if (d.code === TPM_RC.HANDLE || d.code === TPM_RC.VALUE) throw clearedError(config, 'open', r.rc);
    throw f.error(r.rc, { operation: 'read the storage root key from the TPM' });
  }
  if (r.name === undefined || !equalBytes(r.name, expected)) {
    throw new TpmKeyStoreError('tpm-mismatch',
      `TPM open: the storage root key at 0x${handle.toString(16)} is not the one this keystore (${config.systemDir}) was provisioned under `
      + `(TPM Name ${r.name === undefined ? '?' : toHex(r.name)}, keystore ${toHex(expected)}). The keystore belongs to another TPM, or this TPM was `
      + 'cleared and then provisioned by another keystore. Using it would only fail, and would count as dictionary-attack failures. '
      + 'Point the store at the keystore made for this TPM; if these objects are known to be dead (this TPM was cleared), remove '
      + `${config.userDir} and ${config.systemDir} and open again: FAPI adopts the TPM's current SRK.`);
  }
}

async function readInfo(f: FapiCalls): Promise<TpmInfo | undefined> {
  const r = await f.getInfo();
  return r.rc === 0 && r.info !== undefined ? parseTpmInfo(r.info) : undefined;
}

/** Gives "no TPM" errors for a device TCTI a reason the TCTI's own code cannot say. */
async function explainDevice(tcti: string, e: unknown): Promise<unknown> {
  if (!(e instanceof TpmKeyStoreError) || e.code !== 'no-tpm') return e;
  const m = /^device:(.+)$/.exec(tcti);
  if (m === null) return e;
  const dev = m[1] as string;
  if (!existsSync(dev)) {
    return new TpmKeyStoreError('no-tpm', `no TPM present: ${dev} does not exist (enable the TPM in firmware or the device tree, e.g. dtoverlay=tpm-slb9670 on a Raspberry Pi, and check the tpm_tis driver loaded)`, { cause: e, ...(e.rc === undefined ? {} : { rc: e.rc }) });
  }
  try {
    await fsp.access(dev, fsConstants.R_OK | fsConstants.W_OK);
  } catch {
    return new TpmKeyStoreError('no-tpm', `no access to ${dev}: run the agent as a member of the "tss" group (Debian's tpm-udev rules give that group the resource manager)`, { cause: e, ...(e.rc === undefined ? {} : { rc: e.rc }) });
  }
  return e;
}

interface Opened {
  readonly ctx: FapiContext;
  readonly config: ResolvedFapiConfig;
  readonly info: TpmInfo | undefined;
  readonly provisioned: boolean;
}

/** Initializes, provisions (once), and checks the SRK. Closes the context on any failure. */
async function openContext(config: TpmKeyStoreConfig, opts: TpmKeyStoreOptions, checkSrk: boolean): Promise<Opened> {
  const lib = await loadFapi(opts.library);
  let resolved = resolveFapiConfig(config);
  if (opts.ekCertLess === true && resolved.owned && !resolved.ekCertLess && config.dir !== undefined) {
    resolved = writeOwnFapiConfig(config.dir, resolved.tcti, true);
  }
  for (let attempt = 0; ; attempt++) {
    let ctx: FapiContext;
    try {
      ctx = await FapiContext.open(lib, resolved);
    } catch (e) {
      throw await explainDevice(resolved.tcti, e);
    }
    try {
      const state = await ctx.run(provision);
      if (state === 'need-ek-cert-less') {
        if (!resolved.owned || attempt > 0 || config.dir === undefined) {
          throw new TpmKeyStoreError('no-ek-certificate',
            `TPM provision: the TPM holds no endorsement-key certificate; set "ek_cert_less": "yes" in ${resolved.path}`, { rc: NO_CERT });
        }
        // This TPM has no EK certificate (swtpm has none): record that in our config and retry.
        await ctx.close();
        resolved = writeOwnFapiConfig(config.dir, resolved.tcti, true);
        continue;
      }
      const info = await ctx.run(readInfo);
      if (checkSrk) await ctx.run((f) => verifySrk(f, resolved, info));
      return { ctx, config: resolved, info, provisioned: state === 'provisioned' };
    } catch (e) {
      await ctx.close();
      throw e;
    }
  }
}

/**
 * Opens the TPM key store: loads FAPI, writes the FAPI config when given `tcti` + `dir`, provisions
 * the TPM for FAPI if this keystore has not been (idempotent), and checks the TPM still holds the
 * keystore's storage root key.
 *
 * Errors (all `KeyStoreError`, code in `.code`): `library-missing` (names the Debian package),
 * `no-tpm`, `config`, `tpm-cleared` (see `reprovisionTpmKeyStore`), `tpm-mismatch`, `lockout`, ...
 *
 * @example
 *   const store = await openTpmKeyStore({ kind: 'tpm', tcti: 'device:/dev/tpmrm0', dir: '/var/lib/vitalseal/tpm' });
 *   const signer = await store.openSigningKey('device-identity');
 *   const dek = await store.unwrapKey('queue-kek', wrappedDek);
 */
export async function openTpmKeyStore(config: TpmKeyStoreConfig, opts: TpmKeyStoreOptions = {}): Promise<TpmKeyStore> {
  const opened = await openContext(config, opts, true);
  return new FapiKeyStore(opened, opts.events);
}

/**
 * The re-provisioning path after a TPM clear (or a simulator state reset): only when the TPM no
 * longer holds the keystore's SRK, wipes this profile's objects from the keystore directories
 * (they cannot work again) and provisions afresh. Refuses (`refused`) when the SRK is still there,
 * and (`tpm-mismatch`) when the TPM holds a different SRK: then the keystore may be another
 * device's, whose keys still work there, and deleting it is an operator's decision.
 *
 * @example
 *   try { store = await openTpmKeyStore(cfg); }
 *   catch (e) { if (e instanceof KeyStoreError && e.code === 'tpm-cleared') store = await reprovisionTpmKeyStore(cfg); else throw e; }
 */
export async function reprovisionTpmKeyStore(config: TpmKeyStoreConfig, opts: TpmKeyStoreOptions = {}): Promise<TpmKeyStore> {
  let opened: Opened | undefined;
  try {
    opened = await openContext(config, opts, true);
  } catch (e) {
    if (!(e instanceof KeyStoreError) || e.code !== 'tpm-cleared') throw e;
  }
  if (opened !== undefined) {
    await opened.ctx.close();
    throw new TpmKeyStoreError('refused', 'TPM reprovision: the TPM still holds this keystore\'s storage root key; nothing to re-provision (delete objects one by one instead)');
  }
  const resolved = resolveFapiConfig(config);
  for (const dir of [resolved.userDir, resolved.systemDir]) {
    rmSync(join(dir, resolved.profileName), { recursive: true, force: true });
  }
  return openTpmKeyStore(config, opts);
}

class FapiKeyStore implements TpmKeyStore {
  readonly #ctx: FapiContext;
  readonly #config: ResolvedFapiConfig;
  readonly #events: KeyEventSink | undefined;
  readonly tpm: TpmInfo | undefined;
  readonly #description: KeyStoreDescription;

  constructor(opened: Opened, events: KeyEventSink | undefined) {
    this.#ctx = opened.ctx;
    this.#config = opened.config;
    this.#events = events;
    this.tpm = opened.info;
    const info = opened.info;
    const hardwareBound = info !== undefined && !info.simulator;
    const who = info === undefined ? 'unknown TPM' : `${info.manufacturer}${info.vendor ? ` ${info.vendor}` : ''}${info.firmware ? ` firmware ${info.firmware}` : ''}`;
    this.#description = {
      kind: 'tpm',
      hardwareBound,
      assurance: hardwareBound ? 'hardware' : 'development',
      detail: `TPM 2.0 (${who}) through FAPI profile ${opened.config.profileName}, TCTI ${opened.config.tcti || '(FAPI default)'}, `
        + `keystore ${opened.config.userDir}`
        + (info?.simulator === true ? '; a TPM simulator: keys are only as safe as its state directory, development use only' : '')
        + (info === undefined ? '; the TPM did not report its capabilities, so hardware binding is not asserted' : ''),
    };
  }

  get fapiConfigPath(): string {
    return this.#config.path;
  }

  describe(): KeyStoreDescription {
    return this.#description;
  }

  #record(operation: KeyEvent['operation'], keyName: string, error?: unknown): void {
    if (this.#events === undefined) return;
    const event: KeyEvent = error === undefined
      ? { operation, keyName, store: 'tpm', result: 'ok' }
      : { operation, keyName, store: 'tpm', result: 'error', code: error instanceof KeyStoreError ? error.code : 'internal' };
    try {
      this.#events.record(event);
    } catch {
      // An audit sink failure must not turn a completed key operation into an error.
    }
  }

  async #audited<T>(operation: KeyEvent['operation'], keyName: string, fn: () => Promise<T>): Promise<T> {
    try {
      const out = await fn();
      this.#record(operation, keyName);
      return out;
    } catch (e) {
      this.#record(operation, keyName, e);
      throw e;
    }
  }

  /** The error for a failed TPM command on an object known to exist in the keystore. */
  #tpmError(f: FapiCalls, rc: number, operation: string, path?: string): TpmKeyStoreError {
    if (rc === KEY_NOT_FOUND) return clearedError(this.#config, path === undefined ? operation : `${operation} ${path}`, rc);
    return f.error(rc, path === undefined ? { operation } : { operation, path });
  }

  async #requireKind(f: FapiCalls, path: string, wanted: ObjectKind, label: string): Promise<Inspected> {
    const found = await inspect(f, path);
    if (found === undefined) throw notFound(path);
    if (found.kind !== wanted) throw wrongType(path, found.kind, label);
    return found;
  }

  async #refuseExisting(f: FapiCalls, path: string): Promise<void> {
    if ((await inspect(f, path)) !== undefined) throw new TpmKeyStoreError('exists', `a TPM object already exists at ${path}`);
  }

  // ---- signing keys ----

  #signer(path: string, spki: Uint8Array): Signer {
    return {
      scheme: 'ecdsa-p256-sha256',
      publicKeySpki: async () => {
        if (this.#ctx.closed) throw new TpmKeyStoreError('closed', 'the TPM key store is closed');
        return spki.slice();
      },
      sign: (message) => this.signAt(path, message),
    };
  }

  async createSigningKey(name: string): Promise<Signer> {
    return this.#createSigningKey(pathForName(name), name);
  }

  async createSigningKeyAt(path: string): Promise<Signer> {
    const p = checkObjectPath(path);
    return this.#createSigningKey(p, p);
  }

  #createSigningKey(path: string, label: string): Promise<Signer> {
    return this.#audited('create', label, () => this.#ctx.run(async (f) => {
      await this.#refuseExisting(f, path);
      const rc = await f.createKey(path, SIGNING_KEY_TYPE);
      if (rc !== 0) throw this.#tpmError(f, rc, 'create signing key', path);
      const found = await this.#requireKind(f, path, 'signing', 'a P-256 signing key');
      return this.#signer(path, signingSpki(found));
    }));
  }

  async openSigningKey(name: string): Promise<Signer> {
    return this.#openSigningKey(pathForName(name), name);
  }

  async openSigningKeyAt(path: string): Promise<Signer> {
    const p = checkObjectPath(path);
    return this.#openSigningKey(p, p);
  }

  #openSigningKey(path: string, label: string): Promise<Signer> {
    return this.#audited('open', label, () => this.#ctx.run(async (f) => {
      const found = await this.#requireKind(f, path, 'signing', 'a P-256 signing key');
      return this.#signer(path, signingSpki(found));
    }));
  }

  async publicKeyPem(name: string): Promise<string> {
    return this.publicKeyPemAt(pathForName(name));
  }

  async loadableKey(name: string): Promise<TpmLoadableKey> {
    const path = pathForName(name);
    return this.#audited('open', name, () => this.#ctx.run(async (f) => {
      const parent = loadableKeyParent(this.#config, path);
      await this.#requireKind(f, path, 'signing', 'a P-256 signing key');
      const blobs = await f.getTpmBlobs(path);
      if (blobs.rc !== 0 || blobs.tpm2bPublic === undefined || blobs.tpm2bPrivate === undefined) {
        throw f.error(blobs.rc || 1, { operation: 'read the key blobs of', path });
      }
      // Keys made by createSigningKey have an empty authValue (noDA; see the module comment).
      const der = encodeLoadableKey({ parent, emptyAuth: true, tpm2bPublic: blobs.tpm2bPublic, tpm2bPrivate: blobs.tpm2bPrivate });
      return { pem: loadableKeyPem(der), tcti: this.#config.tcti, parent };
    }));
  }

  async publicKeyPemAt(path: string): Promise<string> {
    const p = checkObjectPath(path);
    return this.#ctx.run(async (f) => pemFromSpki(signingSpki(await this.#requireKind(f, p, 'signing', 'a P-256 signing key'))));
  }

  async signAt(path: string, message: Uint8Array): Promise<Uint8Array> {
    const p = checkObjectPath(path);
    abytes(message, 'message');
    const label = nameOfPath(p) ?? p;
    return this.#audited('sign', label, () => this.#ctx.run(async (f) => {
      await this.#requireKind(f, p, 'signing', 'a P-256 signing key');
      // The key signs a host-computed digest (FAPI signs digests); ECDSA with SHA-256 per the profile.
      const digest = createHash('sha256').update(message).digest();
      const r = await f.sign(p, digest);
      if (r.rc !== 0 || r.signature === undefined) throw this.#tpmError(f, r.rc || 1, 'sign with', p);
      return r.signature;
    }));
  }

  // ---- sealed secrets ----

  async seal(name: string, secret: Uint8Array): Promise<void> {
    return this.#seal(pathForName(name), name, secret);
  }

  async sealAt(path: string, secret: Uint8Array): Promise<void> {
    const p = checkObjectPath(path);
    return this.#seal(p, p, secret);
  }

  #seal(path: string, label: string, secret: Uint8Array): Promise<void> {
    abytes(secret, 'secret');
    return this.#audited('seal', label, async () => {
      if (secret.length > MAX_SEALED_BYTES) {
        throw new TpmKeyStoreError('too-large', `a TPM seals at most ${MAX_SEALED_BYTES} bytes (MAX_SYM_DATA), got ${secret.length}: seal a KEK and wrap larger secrets with wrapKey`);
      }
      if (secret.length === 0) throw new TpmKeyStoreError('too-small', 'a TPM cannot seal an empty secret');
      const copy = Uint8Array.from(secret);
      try {
        await this.#ctx.run(async (f) => {
          await this.#refuseExisting(f, path);
          const rc = await f.createSeal(path, SEAL_TYPE, copy);
          if (rc !== 0) throw this.#tpmError(f, rc, 'seal', path);
        });
      } finally {
        zeroize(copy);
      }
    });
  }

  async unseal(name: string): Promise<Uint8Array> {
    return this.#unseal(pathForName(name), name);
  }

  async unsealAt(path: string): Promise<Uint8Array> {
    const p = checkObjectPath(path);
    return this.#unseal(p, p);
  }

  #unseal(path: string, label: string): Promise<Uint8Array> {
    return this.#audited('unseal', label, () => this.#ctx.run(async (f) => {
      await this.#requireKind(f, path, 'sealed', 'a sealed secret');
      const r = await f.unseal(path);
      if (r.rc !== 0 || r.data === undefined) throw this.#tpmError(f, r.rc || 1, 'unseal', path);
      return r.data;
    }));
  }

  // ---- KEKs ----

  /** Unseals the KEK at `path` (creating it first when `create`), runs `use`, wipes the KEK. */
  async #withKek<T>(f: FapiCalls, path: string, create: boolean, use: (kek: Uint8Array) => T): Promise<T> {
    let found = await inspect(f, path);
    if (found === undefined && create) {
      // The TPM's RNG, mixed with the host's: the KEK is no weaker than the better of the two.
      // (FAPI could generate the data itself, but tpm2-tss 3.2.1 crashes unsealing such objects.)
      const r = await f.getRandom(KEK_LENGTH);
      if (r.rc !== 0 || r.data === undefined) throw this.#tpmError(f, r.rc || 1, 'random for KEK', path);
      const kek = r.data;
      const host = nodeRandomBytes(KEK_LENGTH);
      for (let i = 0; i < KEK_LENGTH; i++) kek[i] = (kek[i] as number) ^ (host[i] as number);
      zeroize(host);
      try {
        const rc = await f.createSeal(path, SEAL_TYPE, kek);
        if (rc !== 0) throw this.#tpmError(f, rc, 'create KEK', path);
      } finally {
        zeroize(kek);
      }
      const tag = await f.setDescription(path, KEK_DESCRIPTION);
      if (tag !== 0) throw f.error(tag, { operation: 'mark KEK', path });
      this.#record('create', nameOfPath(path) ?? path);
      found = await inspect(f, path);
    }
    if (found === undefined) throw notFound(path);
    if (found.kind !== 'kek') throw wrongType(path, found.kind, 'a KEK');
    const r = await f.unseal(path);
    if (r.rc !== 0 || r.data === undefined) throw this.#tpmError(f, r.rc || 1, 'unseal KEK', path);
    const kek = r.data;
    try {
      if (kek.length !== KEK_LENGTH) throw new TpmKeyStoreError('wrong-type', `${path} holds ${kek.length} bytes, not a ${KEK_LENGTH}-byte KEK`);
      return use(kek);
    } finally {
      zeroize(kek);
    }
  }

  async wrapKey(kekName: string, dataKey: Uint8Array): Promise<Uint8Array> {
    const path = pathForName(kekName);
    abytes(dataKey, 'dataKey');
    return this.#audited('wrap', kekName, async () => {
      if (dataKey.length === 0) throw new TpmKeyStoreError('too-small', 'cannot wrap an empty data key');
      if (dataKey.length > MAX_DATA_KEY) throw new TpmKeyStoreError('too-large', `data keys are at most ${MAX_DATA_KEY} bytes, got ${dataKey.length}`);
      const salt = nodeRandomBytes(32);
      return this.#ctx.run((f) => this.#withKek(f, path, true, (kek) => wrapWithKek(kek, salt, dataKey)));
    });
  }

  async unwrapKey(kekName: string, wrapped: Uint8Array): Promise<Uint8Array> {
    const path = pathForName(kekName);
    abytes(wrapped, 'wrapped');
    return this.#audited('unwrap', kekName, () => this.#ctx.run((f) => this.#withKek(f, path, false, (kek) => unwrapWithKek(kek, wrapped))));
  }

  // ---- the rest ----

  async randomBytes(length: number): Promise<Uint8Array> {
    aint(length, 'length', 0, MAX_RANDOM);
    return this.#ctx.run(async (f) => {
      if (length === 0) return new Uint8Array(0);
      const r = await f.getRandom(length);
      // FAPI salts its session with the SRK even for GetRandom: "key not found" here also means cleared.
      if (r.rc !== 0 || r.data === undefined) throw this.#tpmError(f, r.rc || 1, 'get random');
      if (r.data.length !== length) throw new TpmKeyStoreError('tpm-error', `TPM returned ${r.data.length} random bytes, asked for ${length}`);
      return r.data;
    });
  }

  async list(): Promise<KeyInfo[]> {
    const objects = await this.listPaths('/HS/SRK');
    const out: KeyInfo[] = [];
    for (const o of objects) {
      const name = nameOfPath(o.path);
      // Direct children of the SRK with valid key names; deeper or foreign objects only via listPaths.
      if (name !== undefined && o.type !== 'other') out.push({ name, type: o.type });
    }
    return out;
  }

  async listPaths(searchPath = '/HS/SRK'): Promise<TpmObjectInfo[]> {
    if (typeof searchPath !== 'string' || !/^\/?[A-Za-z0-9_./-]{0,512}$/.test(searchPath) || searchPath.includes('..')) {
      return Promise.reject(new TpmKeyStoreError('invalid-path', `invalid FAPI search path ${JSON.stringify(String(searchPath)).slice(0, 80)}`));
    }
    return this.#ctx.run(async (f) => {
      const r = await f.list(searchPath);
      if (isNotFound(r.rc)) return [];
      if (r.rc !== 0 || r.paths === undefined) throw f.error(r.rc || 1, { operation: 'list', path: searchPath });
      const out: TpmObjectInfo[] = [];
      for (const listed of r.paths) {
        const path = withoutProfile(listed);
        // Only objects below the SRK; the hierarchies and the SRK itself are FAPI's.
        if (!path.startsWith('/HS/SRK/')) continue;
        const found = await inspect(f, path);
        if (found !== undefined) out.push({ path, type: found.kind });
      }
      return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    });
  }

  async delete(name: string): Promise<void> {
    return this.#delete(pathForName(name), name);
  }

  async deleteAt(path: string): Promise<void> {
    const p = checkObjectPath(path);
    return this.#delete(p, p);
  }

  #delete(path: string, label: string): Promise<void> {
    return this.#audited('delete', label, () => this.#ctx.run(async (f) => {
      if ((await inspect(f, path)) === undefined) throw notFound(path);
      const rc = await f.delete(path);
      if (rc !== 0) throw f.error(rc, { operation: 'delete', path });
    }));
  }

  close(): Promise<void> {
    return this.#ctx.close();
  }
}
