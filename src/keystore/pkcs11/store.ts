/**
 * The `pkcs11` key store: keys live in a PKCS #11 token (OP-TEE's PKCS#11 trusted application through
 * libckteec on an ARM board; SoftHSM2 in tests) and never leave it.
 *
 * Object layout on the token (every object is a token object, named by CKA_LABEL = the key name):
 *   signing key  CKO_PRIVATE_KEY/CKK_EC P-256 (private, sensitive, never extractable, sign only)
 *                + CKO_PUBLIC_KEY (verify only), same label, same random 16-byte CKA_ID;
 *   KEK          CKO_SECRET_KEY/CKK_AES 256-bit (private, sensitive, never extractable, encrypt/decrypt only);
 *   sealed       CKO_DATA (private, CKA_APPLICATION "vitalseal sealed v1") whose CKA_VALUE is an
 *                AES-256-GCM blob (blob.ts) made by the token under the store's seal key, the
 *                CKO_SECRET_KEY labelled "vitalseal:seal" (a label no key name can take).
 * Mechanisms, all in both SoftHSM2 and OP-TEE's TA: CKM_EC_KEY_PAIR_GEN, CKM_ECDSA over a SHA-256
 * digest computed here (SoftHSM lacks CKM_ECDSA_SHA256), CKM_AES_KEY_GEN, CKM_AES_GCM (OP-TEE lacks
 * AES-KW), C_GenerateRandom. See docs/keystore-pkcs11.md.
 *
 * One logged-in read/write session per store; calls are serialised on it (queue.ts). The PIN is read
 * when the store opens, used for C_Login, and not kept.
 */
import { createHash } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { aint, abytes } from '../../util/assert.ts';
import { asBuffer, toHex, zeroize } from '../../util/bytes.ts';
import { KeyStoreError } from '../../util/errors.ts';
import type { Pkcs11KeyStoreConfig } from '../config.ts';
import { checkKeyName } from '../names.ts';
import type { Signer } from '../signer.ts';
import {
  KEY_NAME_PATTERN, type KeyEvent, type KeyEventSink, type KeyInfo, type KeyObjectType, type KeyStore,
  type KeyStoreDescription,
} from '../types.ts';
import { blobAad, decodeBlob, encodeBlob, GCM_IV_BYTES, GCM_TAG_BYTES, type BlobPurpose } from './blob.ts';
import * as ck from './constants.ts';
import { ecdsaRawToDer, p256PointToSpki, spkiToPem } from './der.ts';
import { toKeyStoreError } from './errors.ts';
import { acquireModule, releaseModule, type LoadedModule, type Pkcs11Handle, type Pkcs11Template } from './module.ts';
import { readPin } from './pin.ts';
import { SerialQueue } from './queue.ts';
import { selectToken, unpad, type LibraryDescription, type SlotDescription } from './token.ts';
import { formatPkcs11Uri, parsePkcs11Uri, type Pkcs11Uri } from './uri.ts';

/** Largest secret `seal` accepts (the contract's 4 KiB). */
export const MAX_SECRET_BYTES = 4096;
/** Largest data key `wrapKey` accepts: keys, not data. */
export const MAX_DATA_KEY_BYTES = 1024;
/** Largest `randomBytes` request. */
export const MAX_RANDOM_BYTES = 65536;
/** The label of the store's seal key: ':' is outside KEY_NAME_PATTERN, so no key name collides. */
export const SEAL_KEY_LABEL = 'vitalseal:seal';
/** CKA_APPLICATION of sealed-secret data objects (and their layout version). */
export const SEALED_APPLICATION = 'vitalseal sealed v1';

const ID_BYTES = 16;
// OP-TEE's TA hands out random numbers in 512-byte chunks; asking for more per call gains nothing.
const RANDOM_CHUNK = 512;
// A find never collects more than this many handles: the token is a key store, not a database.
const MAX_FOUND = 4096;
// P-521 sized, so a token that pads never fails with CKR_BUFFER_TOO_SMALL (which would leave the
// operation active); a P-256 signature must then be exactly 64 bytes.
const SIGNATURE_BUFFER = 132;

export interface Pkcs11KeyStoreOptions {
  /** Receives create/open/sign/seal/unseal/wrap/unwrap/delete events (never secrets). */
  readonly events?: KeyEventSink;
}

/** A `KeyStore` on a PKCS #11 token, with the URIs other tools (pkcs11-tool, OpenSSL) use for its objects. */
export interface Pkcs11KeyStore extends KeyStore {
  /** The RFC 7512 URI of the open token (label and serial). */
  tokenUri(): string;
  /** The RFC 7512 URI of one of the store's objects, e.g. `type: 'private'` for a signing key. */
  objectUri(name: string, type: 'private' | 'public' | 'secret-key' | 'data'): string;
}

/** The live session; one holder shared by the 'open' and 'closing' states, so a session replaced
 * while a close is pending is the one the close ends. */
interface LiveSession {
  session: Pkcs11Handle;
  readonly loggedInHere: boolean;
}

type State =
  | { readonly kind: 'open'; readonly live: LiveSession }
  | { readonly kind: 'closing'; readonly live: LiveSession }
  | { readonly kind: 'closed' };

interface TokenFacts {
  readonly slot: Pkcs11Handle;
  readonly slotKey: string;
  readonly description: SlotDescription;
  readonly mechanisms: ReadonlySet<number>;
  readonly softwareToken: boolean;
}

const attr = (type: number, value?: number | boolean | string | Buffer): { type: number; value?: number | boolean | string | Buffer } =>
  value === undefined ? { type } : { type, value };

function closedError(): KeyStoreError {
  return new KeyStoreError('closed', 'the pkcs11 key store is closed');
}

function slotIdOf(slot: Pkcs11Handle): bigint {
  return slot.length === 8 ? slot.readBigUInt64LE(0) : BigInt(slot.readUInt32LE(0));
}

class TokenKeyStore implements Pkcs11KeyStore {
  #state: State;
  readonly #queue = new SerialQueue();
  readonly #module: LoadedModule;
  readonly #token: TokenFacts;
  readonly #events: KeyEventSink | undefined;
  #closed: Promise<void> | undefined;

  constructor(module: LoadedModule, token: TokenFacts, session: Pkcs11Handle, loggedInHere: boolean, events: KeyEventSink | undefined) {
    this.#module = module;
    this.#token = token;
    this.#state = { kind: 'open', live: { session, loggedInHere } };
    this.#events = events;
  }

  describe(): KeyStoreDescription {
    const d = this.#token.description;
    const token = `token "${unpad(d.tokenLabel)}" (${unpad(d.tokenManufacturer)} ${unpad(d.tokenModel)}, serial ${unpad(d.tokenSerial) || '-'}) ` +
      `in slot ${d.slotId} via ${this.#module.path}`;
    if (this.#token.softwareToken) {
      return {
        kind: 'pkcs11', hardwareBound: false, assurance: 'development',
        detail: `${token}; SoftHSM2 is a software token (its keys are files in its token directory): tests and development only`,
      };
    }
    return { kind: 'pkcs11', hardwareBound: true, assurance: 'hardware', detail: token };
  }

  tokenUri(): string {
    const d = this.#token.description;
    return formatPkcs11Uri({ token: unpad(d.tokenLabel), serial: unpad(d.tokenSerial) });
  }

  objectUri(name: string, type: 'private' | 'public' | 'secret-key' | 'data'): string {
    const d = this.#token.description;
    return formatPkcs11Uri({ token: unpad(d.tokenLabel), serial: unpad(d.tokenSerial), object: checkKeyName(name), type });
  }

  // ---- the KeyStore operations -------------------------------------------------------------

  createSigningKey(name: string): Promise<Signer> {
    return this.#evented('create', name, () => {
      checkKeyName(name);
      return this.#job(`create signing key ${name}`, async (s) => {
        this.#requireMechanisms(`create signing key ${name}`, ck.CKM_EC_KEY_PAIR_GEN, ck.CKM_ECDSA);
        this.#requireLabelFree(s, name);
        const id = Buffer.from(this.#random(s, ID_BYTES));
        const label = Buffer.from(name, 'utf8');
        const pair = await this.#api.C_GenerateKeyPairAsync(s, { mechanism: ck.CKM_EC_KEY_PAIR_GEN }, [
          attr(ck.CKA_TOKEN, true), attr(ck.CKA_PRIVATE, false), attr(ck.CKA_LABEL, label), attr(ck.CKA_ID, id),
          attr(ck.CKA_EC_PARAMS, Buffer.from(ck.P256_EC_PARAMS)),
          attr(ck.CKA_VERIFY, true), attr(ck.CKA_ENCRYPT, false), attr(ck.CKA_WRAP, false), attr(ck.CKA_DERIVE, false),
          attr(ck.CKA_MODIFIABLE, false),
        ], [
          attr(ck.CKA_TOKEN, true), attr(ck.CKA_PRIVATE, true), attr(ck.CKA_LABEL, label), attr(ck.CKA_ID, id),
          // Generated on the token, sensitive and never extractable: the private key cannot leave it.
          attr(ck.CKA_SENSITIVE, true), attr(ck.CKA_EXTRACTABLE, false),
          attr(ck.CKA_SIGN, true), attr(ck.CKA_SIGN_RECOVER, false), attr(ck.CKA_DECRYPT, false), attr(ck.CKA_UNWRAP, false),
          attr(ck.CKA_DERIVE, false), attr(ck.CKA_MODIFIABLE, false), attr(ck.CKA_COPYABLE, false),
        ]);
        try {
          const spki = this.#publicKeyOf(s, pair.publicKey);
          return this.#signer(name, id, spki);
        } catch (err) {
          // Do not leave half a key behind under a name that would then be "taken".
          this.#destroyQuietly(s, pair.privateKey, pair.publicKey);
          throw err;
        }
      });
    });
  }

  openSigningKey(name: string): Promise<Signer> {
    return this.#evented('open', name, () => {
      checkKeyName(name);
      return this.#job(`open signing key ${name}`, (s) => {
        const { id, spki } = this.#loadSigningKey(s, name);
        return this.#signer(name, id, spki);
      });
    });
  }

  async publicKeyPem(name: string): Promise<string> {
    checkKeyName(name);
    const { spki } = await this.#job(`read public key ${name}`, (s) => this.#loadSigningKey(s, name));
    return spkiToPem(spki);
  }

  seal(name: string, secret: Uint8Array): Promise<void> {
    return this.#evented('seal', name, () => {
      checkKeyName(name);
      abytes(secret, 'secret');
      if (secret.length === 0) throw new RangeError('seal: the secret is empty');
      if (secret.length > MAX_SECRET_BYTES) {
        throw new KeyStoreError('too-large', `seal: ${secret.length} bytes is more than the ${MAX_SECRET_BYTES} this store seals`);
      }
      return this.#job(`seal ${name}`, async (s) => {
        this.#requireMechanisms(`seal ${name}`, ck.CKM_AES_KEY_GEN, ck.CKM_AES_GCM);
        this.#requireLabelFree(s, name);
        const sealKey = this.#findOne(s, this.#secretKeyTemplate(SEAL_KEY_LABEL), SEAL_KEY_LABEL)
          ?? await this.#generateAesKey(s, SEAL_KEY_LABEL);
        const blob = await this.#encryptBlob(s, sealKey, 'seal', name, secret);
        this.#api.C_CreateObject(s, [
          attr(ck.CKA_CLASS, ck.CKO_DATA), attr(ck.CKA_TOKEN, true), attr(ck.CKA_PRIVATE, true),
          attr(ck.CKA_LABEL, Buffer.from(name, 'utf8')), attr(ck.CKA_APPLICATION, Buffer.from(SEALED_APPLICATION, 'utf8')),
          attr(ck.CKA_VALUE, Buffer.from(blob)), attr(ck.CKA_MODIFIABLE, false),
        ]);
      });
    });
  }

  unseal(name: string): Promise<Uint8Array> {
    return this.#evented('unseal', name, () => {
      checkKeyName(name);
      return this.#job(`unseal ${name}`, async (s) => {
        const data = this.#findOne(s, this.#sealedTemplate(name), name);
        if (data === undefined) throw this.#absent(s, name, 'sealed secret');
        const blob = this.#attrs(s, data, [ck.CKA_VALUE]).get(ck.CKA_VALUE) ?? Buffer.alloc(0);
        const sealKey = this.#findOne(s, this.#secretKeyTemplate(SEAL_KEY_LABEL), SEAL_KEY_LABEL);
        if (sealKey === undefined) {
          throw new KeyStoreError('not-found',
            `unseal ${name}: the token's seal key "${SEAL_KEY_LABEL}" is gone, so no sealed secret on this token can be recovered`);
        }
        return this.#decryptBlob(s, sealKey, 'seal', name, new Uint8Array(blob), MAX_SECRET_BYTES);
      });
    });
  }

  wrapKey(kekName: string, dataKey: Uint8Array): Promise<Uint8Array> {
    return this.#evented('wrap', kekName, () => {
      checkKeyName(kekName);
      abytes(dataKey, 'dataKey');
      if (dataKey.length === 0) throw new RangeError('wrapKey: the data key is empty');
      if (dataKey.length > MAX_DATA_KEY_BYTES) {
        throw new KeyStoreError('too-large', `wrapKey: ${dataKey.length} bytes is more than the ${MAX_DATA_KEY_BYTES} a data key may have`);
      }
      return this.#job(`wrap a data key under ${kekName}`, async (s) => {
        this.#requireMechanisms(`wrap under ${kekName}`, ck.CKM_AES_GCM);
        let kek = this.#findOne(s, this.#secretKeyTemplate(kekName), kekName);
        if (kek === undefined) {
          // "Created on first use" (KeyStore.wrapKey), unless the name belongs to something else.
          this.#requireMechanisms(`create KEK ${kekName}`, ck.CKM_AES_KEY_GEN);
          this.#requireLabelFree(s, kekName);
          kek = await this.#generateAesKey(s, kekName);
          this.#record({ operation: 'create', keyName: kekName, store: 'pkcs11', result: 'ok' });
        }
        return this.#encryptBlob(s, kek, 'wrap', kekName, dataKey);
      });
    });
  }

  unwrapKey(kekName: string, wrapped: Uint8Array): Promise<Uint8Array> {
    return this.#evented('unwrap', kekName, () => {
      checkKeyName(kekName);
      abytes(wrapped, 'wrapped');
      return this.#job(`unwrap a data key under ${kekName}`, async (s) => {
        const kek = this.#findOne(s, this.#secretKeyTemplate(kekName), kekName);
        if (kek === undefined) throw this.#absent(s, kekName, 'KEK');
        return this.#decryptBlob(s, kek, 'wrap', kekName, wrapped, MAX_DATA_KEY_BYTES);
      });
    });
  }

  randomBytes(length: number): Promise<Uint8Array> {
    try {
      aint(length, 'randomBytes length', 0, MAX_RANDOM_BYTES);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#job('generate random bytes', (s) => this.#random(s, length));
  }

  list(): Promise<KeyInfo[]> {
    return this.#job('list objects', (s) => {
      const found = new Map<string, KeyObjectType>();
      const collect = (template: Pkcs11Template, type: KeyObjectType): void => {
        for (const h of this.#find(s, template)) {
          const label = this.#label(s, h);
          if (label !== undefined && KEY_NAME_PATTERN.test(label) && !found.has(label)) found.set(label, type);
        }
      };
      collect([attr(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), attr(ck.CKA_KEY_TYPE, ck.CKK_EC)], 'signing');
      collect([attr(ck.CKA_CLASS, ck.CKO_DATA), attr(ck.CKA_APPLICATION, Buffer.from(SEALED_APPLICATION, 'utf8'))], 'sealed');
      collect([attr(ck.CKA_CLASS, ck.CKO_SECRET_KEY), attr(ck.CKA_KEY_TYPE, ck.CKK_AES)], 'kek');
      return [...found].map(([name, type]) => ({ name, type })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    });
  }

  delete(name: string): Promise<void> {
    return this.#evented('delete', name, () => {
      checkKeyName(name);
      return this.#job(`delete ${name}`, (s) => {
        const label = Buffer.from(name, 'utf8');
        const handles = [
          ...this.#find(s, [attr(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), attr(ck.CKA_LABEL, label)]),
          ...this.#find(s, [attr(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), attr(ck.CKA_LABEL, label)]),
          ...this.#find(s, [attr(ck.CKA_CLASS, ck.CKO_SECRET_KEY), attr(ck.CKA_LABEL, label)]),
          ...this.#find(s, this.#sealedTemplate(name)),
        ];
        if (handles.length === 0) throw this.#absent(s, name, 'key');
        for (const h of handles) this.#api.C_DestroyObject(s, h);
      });
    });
  }

  close(): Promise<void> {
    if (this.#closed !== undefined) return this.#closed;
    const st = this.#state;
    if (st.kind !== 'open') return Promise.resolve();
    this.#state = { kind: 'closing', live: st.live };
    // Teardown queues behind the calls already accepted, so they finish on a live session.
    this.#closed = this.#queue.run(async () => {
      const cur = this.#state;
      this.#state = { kind: 'closed' };
      if (cur.kind === 'closed') return;
      if (cur.live.loggedInHere) {
        try { this.#api.C_Logout(cur.live.session); } catch { /* closing the session logs out as well */ }
      }
      try { this.#api.C_CloseSession(cur.live.session); } catch { /* the token may already be gone */ }
      this.#module.openSlots.delete(this.#token.slotKey);
      releaseModule(this.#module);
    });
    return this.#closed;
  }

  // ---- plumbing ----------------------------------------------------------------------------

  get #api(): LoadedModule['api'] {
    return this.#module.api;
  }

  /** Runs `fn` on the session, after the calls before it; maps PKCS#11 failures to KeyStoreErrors. */
  #job<T>(action: string, fn: (session: Pkcs11Handle) => Promise<T> | T): Promise<T> {
    if (this.#state.kind !== 'open') return Promise.reject(closedError());
    return this.#queue.run(async () => {
      const st = this.#state;
      if (st.kind === 'closed') throw closedError();
      try {
        return await fn(st.live.session);
      } catch (err) {
        const mapped = toKeyStoreError(err, { action });
        if (mapped instanceof KeyStoreError && mapped.code === 'operation-active') {
          // An operation left active (by a call that failed mid-way) blocks every later Init on this
          // session. A new session clears it; the login survives because it belongs to the
          // application, not the session (PKCS #11 v2.40 §5.6), as long as one session stays open.
          // Every job is safe to run again from the start: none has created anything by the time an
          // Init fails.
          this.#replaceSession(st.live);
          try {
            return await fn(st.live.session);
          } catch (again) {
            throw toKeyStoreError(again, { action });
          }
        }
        throw mapped;
      }
    });
  }

  #replaceSession(live: LiveSession): void {
    const fresh = this.#api.C_OpenSession(this.#token.slot, ck.CKF_SERIAL_SESSION | ck.CKF_RW_SESSION);
    try { this.#api.C_CloseSession(live.session); } catch { /* the old session is being dropped anyway */ }
    live.session = fresh;
  }

  /** Records the outcome of an operation on a named key, then passes the result or error through. */
  async #evented<T>(operation: KeyEvent['operation'], keyName: string, run: () => Promise<T>): Promise<T> {
    const name = typeof keyName === 'string' ? keyName.slice(0, 63) : String(keyName);
    try {
      const value = await run();
      this.#record({ operation, keyName: name, store: 'pkcs11', result: 'ok' });
      return value;
    } catch (err) {
      const code = err instanceof KeyStoreError ? err.code : err instanceof Error ? err.name : 'error';
      this.#record({ operation, keyName: name, store: 'pkcs11', result: 'error', code });
      throw err;
    }
  }

  #record(event: KeyEvent): void {
    this.#events?.record(event);
  }

  #requireMechanisms(action: string, ...mechanisms: number[]): void {
    for (const m of mechanisms) {
      if (!this.#token.mechanisms.has(m)) {
        throw new KeyStoreError('mechanism-invalid',
          `${action}: token "${unpad(this.#token.description.tokenLabel)}" does not offer ${ck.MECHANISM_NAMES.get(m) ?? `mechanism 0x${m.toString(16)}`}`);
      }
    }
  }

  #find(s: Pkcs11Handle, template: Pkcs11Template): Pkcs11Handle[] {
    this.#api.C_FindObjectsInit(s, template);
    const out: Pkcs11Handle[] = [];
    try {
      for (;;) {
        const batch = this.#api.C_FindObjects(s, 64);
        if (batch.length === 0) break;
        out.push(...batch);
        if (out.length > MAX_FOUND) throw new KeyStoreError('token-error', `more than ${MAX_FOUND} objects match one search`);
      }
    } finally {
      try { this.#api.C_FindObjectsFinal(s); } catch { /* a failed search is reported by the call above */ }
    }
    return out;
  }

  /** The one object matching `template`; undefined if none; 'ambiguous' if several. */
  #findOne(s: Pkcs11Handle, template: Pkcs11Template, name: string): Pkcs11Handle | undefined {
    const found = this.#find(s, template);
    if (found.length > 1) {
      throw new KeyStoreError('ambiguous', `${found.length} objects on the token match "${name}"; remove the duplicates (pkcs11-tool --list-objects shows them)`);
    }
    return found[0];
  }

  #attrs(s: Pkcs11Handle, h: Pkcs11Handle, types: number[]): Map<number, Buffer> {
    const got = this.#api.C_GetAttributeValue(s, h, types.map((t) => ({ type: t })));
    return new Map(got.map((a) => [a.type, a.value]));
  }

  #label(s: Pkcs11Handle, h: Pkcs11Handle): string | undefined {
    const v = this.#attrs(s, h, [ck.CKA_LABEL]).get(ck.CKA_LABEL);
    return v === undefined ? undefined : v.toString('utf8');
  }

  #secretKeyTemplate(label: string): Pkcs11Template {
    return [attr(ck.CKA_CLASS, ck.CKO_SECRET_KEY), attr(ck.CKA_KEY_TYPE, ck.CKK_AES), attr(ck.CKA_LABEL, Buffer.from(label, 'utf8'))];
  }

  #sealedTemplate(name: string): Pkcs11Template {
    return [
      attr(ck.CKA_CLASS, ck.CKO_DATA), attr(ck.CKA_LABEL, Buffer.from(name, 'utf8')),
      attr(ck.CKA_APPLICATION, Buffer.from(SEALED_APPLICATION, 'utf8')),
    ];
  }

  /** Refuses a name any object on the token already carries as its label. */
  #requireLabelFree(s: Pkcs11Handle, name: string): void {
    const taken = this.#find(s, [attr(ck.CKA_LABEL, Buffer.from(name, 'utf8'))]);
    if (taken.length > 0) throw new KeyStoreError('exists', `"${name}" already names an object on the token`);
  }

  /** The error for an absent object of `kind`: 'not-found', or 'wrong-type' when the name is used otherwise. */
  #absent(s: Pkcs11Handle, name: string, kind: string): KeyStoreError {
    const other = this.#find(s, [attr(ck.CKA_LABEL, Buffer.from(name, 'utf8'))]);
    if (other.length > 0) {
      const cls = this.#attrs(s, other[0] as Pkcs11Handle, [ck.CKA_CLASS]).get(ck.CKA_CLASS);
      const clsName = cls === undefined ? 'another object' : ck.CLASS_NAMES.get(readUlong(cls)) ?? 'another object';
      return new KeyStoreError('wrong-type', `"${name}" is not a ${kind} on this token (it names a ${clsName})`);
    }
    return new KeyStoreError('not-found', `no ${kind} named "${name}" on the token`);
  }

  #random(s: Pkcs11Handle, length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let off = 0; off < length; off += RANDOM_CHUNK) {
      const n = Math.min(RANDOM_CHUNK, length - off);
      out.set(this.#api.C_GenerateRandom(s, Buffer.alloc(n)), off);
    }
    return out;
  }

  async #generateAesKey(s: Pkcs11Handle, label: string): Promise<Pkcs11Handle> {
    return this.#api.C_GenerateKeyAsync(s, { mechanism: ck.CKM_AES_KEY_GEN }, [
      attr(ck.CKA_CLASS, ck.CKO_SECRET_KEY), attr(ck.CKA_KEY_TYPE, ck.CKK_AES), attr(ck.CKA_VALUE_LEN, 32),
      attr(ck.CKA_TOKEN, true), attr(ck.CKA_PRIVATE, true), attr(ck.CKA_LABEL, Buffer.from(label, 'utf8')),
      // Sensitive and never extractable: the KEK's bits never leave the token; it only encrypts
      // and decrypts (no C_WrapKey of other token keys, no derivation, no MACs).
      attr(ck.CKA_SENSITIVE, true), attr(ck.CKA_EXTRACTABLE, false),
      attr(ck.CKA_ENCRYPT, true), attr(ck.CKA_DECRYPT, true), attr(ck.CKA_WRAP, false), attr(ck.CKA_UNWRAP, false),
      attr(ck.CKA_SIGN, false), attr(ck.CKA_VERIFY, false), attr(ck.CKA_DERIVE, false),
      attr(ck.CKA_MODIFIABLE, false), attr(ck.CKA_COPYABLE, false),
    ]);
  }

  #gcm(iv: Uint8Array, aad: Uint8Array): { mechanism: number; parameter: { type: number; iv: Buffer; aad: Buffer; ivBits: number; tagBits: number } } {
    return {
      mechanism: ck.CKM_AES_GCM,
      // PKCS #11 v2.40 Current Mechanisms §2.12.3 CK_GCM_PARAMS: 96-bit IV, 128-bit tag.
      parameter: { type: this.#module.paramsGcm, iv: Buffer.from(iv), aad: Buffer.from(aad), ivBits: GCM_IV_BYTES * 8, tagBits: GCM_TAG_BYTES * 8 },
    };
  }

  async #encryptBlob(s: Pkcs11Handle, key: Pkcs11Handle, purpose: BlobPurpose, name: string, plaintext: Uint8Array): Promise<Uint8Array> {
    const iv = this.#random(s, GCM_IV_BYTES); // SP 800-38D §8.2.2: IV from the token's RBG
    this.#api.C_EncryptInit(s, this.#gcm(iv, blobAad(purpose, name)), key);
    const sealed = await this.#api.C_EncryptAsync(s, asBuffer(plaintext), Buffer.alloc(plaintext.length + GCM_TAG_BYTES));
    if (sealed.length !== plaintext.length + GCM_TAG_BYTES) {
      throw new KeyStoreError('token-error', `AES-GCM gave ${sealed.length} bytes for ${plaintext.length}; expected ciphertext and a 16-byte tag`);
    }
    return encodeBlob(iv, sealed);
  }

  async #decryptBlob(s: Pkcs11Handle, key: Pkcs11Handle, purpose: BlobPurpose, name: string, blob: Uint8Array, maxPlaintext: number): Promise<Uint8Array> {
    const what = purpose === 'wrap' ? `unwrap under ${name}` : `unseal ${name}`;
    const { iv, sealed } = decodeBlob(blob, maxPlaintext, what);
    const out = Buffer.alloc(sealed.length);
    try {
      this.#api.C_DecryptInit(s, this.#gcm(iv, blobAad(purpose, name)), key);
      const plain = await this.#api.C_DecryptAsync(s, Buffer.from(sealed), out);
      if (plain.length !== sealed.length - GCM_TAG_BYTES) {
        throw new KeyStoreError('token-error', `AES-GCM decryption gave ${plain.length} bytes for a ${sealed.length}-byte ciphertext`);
      }
      return Uint8Array.from(plain);
    } catch (err) {
      throw toKeyStoreError(err, { action: what, decrypt: true });
    } finally {
      zeroize(out);
    }
  }

  /** Finds a signing key, checks it is one this store may use, and returns its CKA_ID and public key. */
  #loadSigningKey(s: Pkcs11Handle, name: string): { id: Uint8Array; spki: Uint8Array } {
    const label = Buffer.from(name, 'utf8');
    const priv = this.#findOne(s, [attr(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), attr(ck.CKA_KEY_TYPE, ck.CKK_EC), attr(ck.CKA_LABEL, label)], name);
    if (priv === undefined) throw this.#absent(s, name, 'signing key');
    const a = this.#attrs(s, priv, [ck.CKA_ID, ck.CKA_EC_PARAMS, ck.CKA_SENSITIVE, ck.CKA_EXTRACTABLE, ck.CKA_SIGN]);
    const params = a.get(ck.CKA_EC_PARAMS);
    if (params === undefined || !params.equals(Buffer.from(ck.P256_EC_PARAMS))) {
      throw new KeyStoreError('wrong-type', `signing key "${name}" is not on the P-256 curve`);
    }
    // A key that could be read out of the token is not a device key (someone imported it, or made
    // it extractable): refuse it rather than report hardware assurance for it.
    if (!isTrue(a.get(ck.CKA_SENSITIVE)) || isTrue(a.get(ck.CKA_EXTRACTABLE))) {
      throw new KeyStoreError('key-refused', `signing key "${name}" is extractable or not sensitive; this store only uses keys that cannot leave the token`);
    }
    if (!isTrue(a.get(ck.CKA_SIGN))) throw new KeyStoreError('key-refused', `key "${name}" is not allowed to sign (CKA_SIGN is false)`);
    const id = new Uint8Array(a.get(ck.CKA_ID) ?? Buffer.alloc(0));
    const pub = this.#findOne(s, [attr(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), attr(ck.CKA_LABEL, label), attr(ck.CKA_ID, Buffer.from(id))], name);
    if (pub === undefined) throw new KeyStoreError('not-found', `signing key "${name}" has no public key object with its CKA_ID on the token`);
    return { id, spki: this.#publicKeyOf(s, pub) };
  }

  #publicKeyOf(s: Pkcs11Handle, pub: Pkcs11Handle): Uint8Array {
    const a = this.#attrs(s, pub, [ck.CKA_EC_PARAMS, ck.CKA_EC_POINT]);
    const params = a.get(ck.CKA_EC_PARAMS);
    const point = a.get(ck.CKA_EC_POINT);
    if (params === undefined || !params.equals(Buffer.from(ck.P256_EC_PARAMS)) || point === undefined) {
      throw new KeyStoreError('wrong-type', 'the public key object is not a P-256 key');
    }
    return p256PointToSpki(new Uint8Array(point));
  }

  #signer(name: string, id: Uint8Array, spki: Uint8Array): Signer {
    const sign = (message: Uint8Array): Promise<Uint8Array> => this.#evented('sign', name, () => {
      abytes(message, 'message');
      // CKM_ECDSA signs a digest (PKCS #11 v2.40 Current Mechanisms §2.3.6); the SHA-256 is ours,
      // because SoftHSM2 does not offer CKM_ECDSA_SHA256.
      const digest = createHash('sha256').update(message).digest();
      return this.#job(`sign with ${name}`, async (s) => {
        // Found again by label and CKA_ID for every signature: a Signer never signs with a key that
        // replaced the one it was opened for, nor through a stale handle the token may have reused.
        const key = this.#findOne(s, [attr(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), attr(ck.CKA_LABEL, Buffer.from(name, 'utf8')),
          attr(ck.CKA_ID, Buffer.from(id))], name);
        if (key === undefined) throw new KeyStoreError('not-found', `signing key "${name}" was deleted or replaced on the token`);
        this.#api.C_SignInit(s, { mechanism: ck.CKM_ECDSA }, key);
        const raw = await this.#api.C_SignAsync(s, digest, Buffer.alloc(SIGNATURE_BUFFER));
        return ecdsaRawToDer(new Uint8Array(raw));
      });
    });
    return {
      scheme: 'ecdsa-p256-sha256',
      publicKeySpki: async () => Uint8Array.from(spki),
      sign,
    };
  }

  #destroyQuietly(s: Pkcs11Handle, ...handles: Pkcs11Handle[]): void {
    for (const h of handles) {
      try { this.#api.C_DestroyObject(s, h); } catch { /* reported through the original error */ }
    }
  }
}

function isTrue(v: Buffer | undefined): boolean {
  return v !== undefined && v.length > 0 && v.some((b) => b !== 0);
}

/** A CK_ULONG attribute value in the host's byte order (4 or 8 bytes). */
function readUlong(v: Buffer): number {
  const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  if (v.length === 8) return Number(le ? v.readBigUInt64LE(0) : v.readBigUInt64BE(0));
  if (v.length === 4) return le ? v.readUInt32LE(0) : v.readUInt32BE(0);
  return -1;
}

// ---- opening ---------------------------------------------------------------------------------

function checkTokenUri(config: Pkcs11KeyStoreConfig): Pkcs11Uri {
  const uri = parsePkcs11Uri(config.token);
  if (uri.object !== undefined || uri.type !== undefined || uri.id !== undefined) {
    throw new KeyStoreError('invalid-uri', `${config.token}: the store's URI names a token only; its keys are named by the store (no object, type or id)`);
  }
  if (uri.pinSource !== undefined) {
    throw new KeyStoreError('invalid-uri', `${config.token}: the PIN comes from the store's "pin" setting (an environment variable or a 0600 file), not from pin-source`);
  }
  if (uri.moduleName !== undefined) {
    throw new KeyStoreError('invalid-uri', `${config.token}: name the module by its path in the "module" setting, not module-name`);
  }
  if (uri.modulePath !== undefined) {
    let same = false;
    try { same = realpathSync(uri.modulePath) === realpathSync(config.module); } catch { same = false; }
    if (!same) throw new KeyStoreError('invalid-uri', `${config.token}: module-path ${uri.modulePath} is not the configured module ${config.module}`);
  }
  return uri;
}

function enumerateSlots(m: LoadedModule): { handle: Pkcs11Handle; description: SlotDescription }[] {
  return m.api.C_GetSlotList(true).map((handle) => {
    const si = m.api.C_GetSlotInfo(handle);
    const ti = m.api.C_GetTokenInfo(handle);
    return {
      handle,
      description: {
        slotId: slotIdOf(handle), slotDescription: si.slotDescription, slotManufacturer: si.manufacturerID,
        tokenLabel: ti.label, tokenManufacturer: ti.manufacturerID, tokenModel: ti.model, tokenSerial: ti.serialNumber,
        tokenFlags: ti.flags,
      },
    };
  });
}

function pinFailureDetail(m: LoadedModule, slot: Pkcs11Handle): string {
  try {
    const flags = m.api.C_GetTokenInfo(slot).flags;
    if ((flags & ck.CKF_USER_PIN_LOCKED) !== 0) return '; the token has now locked the PIN';
    if ((flags & ck.CKF_USER_PIN_FINAL_TRY) !== 0) return '; one more wrong PIN will lock it';
    if ((flags & ck.CKF_USER_PIN_COUNT_LOW) !== 0) return '; the token reports few tries left';
  } catch { /* the detail is a courtesy */ }
  return '';
}

/**
 * Opens the token that `config.token` (an RFC 7512 URI) names in the module `config.module`, logs in
 * with the PIN from `config.pin`, and returns the key store.
 *
 * @example
 *   const store = await openPkcs11KeyStore({
 *     kind: 'pkcs11', module: '/usr/lib/aarch64-linux-gnu/libckteec.so.0',
 *     token: 'pkcs11:token=vitalseal', pin: { file: '/etc/vitalseal/token.pin' },
 *   });
 *   const signer = await store.openSigningKey('device-identity');
 */
export async function openPkcs11KeyStore(config: Pkcs11KeyStoreConfig, opts: Pkcs11KeyStoreOptions = {}): Promise<Pkcs11KeyStore> {
  if (config === null || typeof config !== 'object' || config.kind !== 'pkcs11') throw new TypeError('openPkcs11KeyStore: expected a pkcs11 config');
  if (typeof config.token !== 'string') throw new TypeError('openPkcs11KeyStore: config.token must be a PKCS #11 URI string');
  const uri = checkTokenUri(config);
  // The PIN first: a missing or world-readable PIN file fails before the token is touched.
  let pin: string | undefined = await readPin(config.pin);
  const m = acquireModule(config.module);
  let slotKey: string | undefined;
  let session: Pkcs11Handle | undefined;
  try {
    const info = m.info;
    const library: LibraryDescription = {
      manufacturer: info.manufacturerID, description: info.libraryDescription,
      version: { major: info.libraryVersion.major, minor: info.libraryVersion.minor },
    };
    const slots = enumerateSlots(m);
    const chosen = selectToken(uri, config.token, slots.map((x) => x.description), library, m.path);
    const slot = (slots.find((x) => x.description === chosen) as { handle: Pkcs11Handle }).handle;
    const key = toHex(slot);
    if (m.openSlots.has(key)) {
      throw new KeyStoreError('already-open', `token "${unpad(chosen.tokenLabel)}" is already open in this process; share that store (PKCS#11 login state is per process)`);
    }
    const ti = m.api.C_GetTokenInfo(slot);
    const label = unpad(ti.label);
    if ((ti.flags & ck.CKF_USER_PIN_INITIALIZED) === 0) {
      throw new KeyStoreError('pin-not-initialized', `token "${label}" has no user PIN yet: set one (pkcs11-tool --init-pin, or softhsm2-util --init-token)`);
    }
    if ((ti.flags & ck.CKF_USER_PIN_LOCKED) !== 0) {
      throw new KeyStoreError('pin-locked', `token "${label}" has locked its user PIN after too many wrong attempts; the security officer must unlock it`);
    }
    const pinBytes = Buffer.byteLength(pin, 'utf8');
    // Checked here so a PIN of an impossible length does not cost one of the token's tries.
    if (ti.maxPinLen > 0 && (pinBytes < ti.minPinLen || pinBytes > ti.maxPinLen)) {
      throw new KeyStoreError('pin-invalid', `the configured PIN has ${pinBytes} bytes; token "${label}" takes ${ti.minPinLen}-${ti.maxPinLen}`);
    }
    session = m.api.C_OpenSession(slot, ck.CKF_SERIAL_SESSION | ck.CKF_RW_SESSION);
    let loggedInHere = true;
    try {
      m.api.C_Login(session, ck.CKU_USER, pin);
    } catch (err) {
      if (err instanceof Error && (err as { code?: unknown }).code === 0x100) {
        loggedInHere = false; // CKR_USER_ALREADY_LOGGED_IN: another part of this process logged in
      } else {
        const mapped = toKeyStoreError(err, { action: `log in to token "${label}"` });
        if (mapped instanceof KeyStoreError && mapped.code === 'pin-incorrect') {
          throw new KeyStoreError('pin-incorrect', `${mapped.message}${pinFailureDetail(m, slot)}`, { cause: err });
        }
        throw mapped;
      }
    } finally {
      pin = undefined; // not kept: a JavaScript string cannot be wiped, but it need not stay reachable
    }
    const mechanisms = new Set(m.api.C_GetMechanismList(slot));
    const softwareToken = unpad(chosen.tokenManufacturer) === 'SoftHSM project' || unpad(library.manufacturer) === 'SoftHSM';
    m.openSlots.add(key);
    slotKey = key;
    return new TokenKeyStore(m, { slot, slotKey: key, description: chosen, mechanisms, softwareToken }, session, loggedInHere, opts.events);
  } catch (err) {
    if (slotKey === undefined) {
      if (session !== undefined) {
        try { m.api.C_CloseSession(session); } catch { /* reporting the first failure */ }
      }
      releaseModule(m);
    }
    throw toKeyStoreError(err, { action: `open ${config.token}` });
  }
}
