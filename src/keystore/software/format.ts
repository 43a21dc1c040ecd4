/**
 * The software key store's file format, version 1. One file holds every key; it is rewritten whole
 * (atomically) on each change.
 *
 *   file   = header || body-ciphertext || tag
 *   header = "VSKS" | version u8 (1) | protection | check (16) | write-salt (32) | body-length u32
 *   protection =
 *       1 (scrypt)  | logN u8 | r u8 | p u8 | salt-length u8 (16-64) | salt
 *     | 2 (sealed)  | store-kind u8 | name-length u8 | name            the file key is a secret sealed in another store
 *     | 3 (wrapped) | store-kind u8 | name-length u8 | KEK name | blob-length u16 | blob   wrapped by another store's KEK
 *
 * The file key (32 bytes) comes from scrypt, from the other store's unseal, or from its unwrapKey.
 * From it, with HKDF-SHA256 (RFC 5869):
 *   check       = HKDF(file key, salt = none,       info = "vitalseal keystore-file v1 check",   16)
 *   content key = HKDF(file key, salt = write-salt, info = "vitalseal keystore-file v1 content", 32)
 * The check tells a wrong passphrase apart from a damaged file. Each write draws a fresh 32-byte
 * write-salt, so each content key encrypts exactly one body and the AES-256-GCM nonce can be fixed
 * at zero: no nonce is ever reused under a key by construction, and restoring an old copy of the
 * file cannot make a counter repeat. The whole header is the GCM additional data (NIST SP 800-38D
 * §5.2.1), so changing any header byte (costs, salt, lengths) fails authentication.
 *
 *   body   = count u16 | entry*      (entries in strictly ascending name order, names unique)
 *   entry  = type u8 (1 signing, 2 sealed, 3 kek) | name-length u8 | name | material-length u16 | material
 *   material: signing = PKCS#8 DER of the P-256 private key; sealed = the secret (at most 4 KiB);
 *             kek = 32 random bytes.
 */
import type { KeyObjectType, KeyStoreKind } from '../types.ts';
import { KEY_NAME_PATTERN } from '../types.ts';
import { KeyStoreError } from '../../util/errors.ts';
import { ByteReader, ByteWriter, Truncated } from './bytes-io.ts';
import type { ScryptParams } from './scrypt.ts';

export const MAGIC = Uint8Array.of(0x56, 0x53, 0x4b, 0x53); // "VSKS"
export const FORMAT_VERSION = 1;
export const CHECK_LENGTH = 16;
export const WRITE_SALT_LENGTH = 32;
export const TAG_LENGTH = 16;
export const FILE_KEY_LENGTH = 32;
export const KEK_LENGTH = 32;
/** The most a sealed secret may hold (the TPM store allows 128 bytes; files and tokens allow this). */
export const MAX_SEALED_BYTES = 4096;
export const MAX_ENTRIES = 1024;
const MAX_SIGNING_MATERIAL = 512;
const MAX_WRAPPED_FILE_KEY_BLOB = 4096;
/** A header is at most ~4.2 KiB; the body at most MAX_ENTRIES entries. */
export const MAX_FILE_BYTES = 8 * 1024 * 1024;

export const INFO_CHECK = new TextEncoder().encode('vitalseal keystore-file v1 check');
export const INFO_CONTENT = new TextEncoder().encode('vitalseal keystore-file v1 content');

export type FileProtection =
  | { readonly kind: 'scrypt'; readonly params: ScryptParams; readonly salt: Uint8Array }
  | { readonly kind: 'sealed'; readonly store: KeyStoreKind; readonly name: string }
  | { readonly kind: 'wrapped'; readonly store: KeyStoreKind; readonly kekName: string; readonly blob: Uint8Array };

export interface FileHeader {
  readonly protection: FileProtection;
  readonly check: Uint8Array;
  readonly writeSalt: Uint8Array;
  /** Length of body ciphertext including the tag. */
  readonly bodyLength: number;
}

export interface StoredEntry {
  readonly name: string;
  readonly type: KeyObjectType;
  /** Owned by the entry; zeroised when the entry is dropped. */
  readonly material: Uint8Array;
}

const STORE_KINDS: readonly KeyStoreKind[] = ['tpm', 'pkcs11', 'software'];
const ENTRY_TYPES: readonly KeyObjectType[] = ['signing', 'sealed', 'kek'];
const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

function corrupt(path: string, message: string): KeyStoreError {
  return new KeyStoreError('file-corrupt', `key file ${path}: ${message}`);
}

function readName(r: ByteReader, what: string): string {
  const len = r.u8(`${what} length`);
  let name: string;
  try {
    name = utf8Decoder.decode(r.take(len, what));
  } catch (e) {
    if (e instanceof Truncated) throw e;
    throw new RangeError(`${what} is not UTF-8`);
  }
  if (!KEY_NAME_PATTERN.test(name)) throw new RangeError(`${what} is not a valid key name`);
  return name;
}

function writeName(w: ByteWriter, name: string): void {
  const b = utf8.encode(name);
  w.u8(b.length).bytes(b);
}

/** Encodes the header; its bytes are the GCM additional data. */
export function encodeHeader(h: FileHeader): Uint8Array {
  const w = new ByteWriter().bytes(MAGIC).u8(FORMAT_VERSION);
  const p = h.protection;
  switch (p.kind) {
    case 'scrypt':
      w.u8(1).u8(p.params.logN).u8(p.params.r).u8(p.params.p).u8(p.salt.length).bytes(p.salt);
      break;
    case 'sealed':
      w.u8(2).u8(STORE_KINDS.indexOf(p.store) + 1);
      writeName(w, p.name);
      break;
    case 'wrapped':
      w.u8(3).u8(STORE_KINDS.indexOf(p.store) + 1);
      writeName(w, p.kekName);
      w.u16(p.blob.length).bytes(p.blob);
      break;
    default: {
      const never: never = p;
      throw new TypeError(`unknown protection ${String(never)}`);
    }
  }
  return w.bytes(h.check).bytes(h.writeSalt).u32(h.bodyLength).finish();
}

export interface ParsedKeyFile {
  readonly header: FileHeader;
  /** The header's exact bytes (the GCM additional data). */
  readonly headerBytes: Uint8Array;
  /** Body ciphertext || tag (a view into the file bytes). */
  readonly sealedBody: Uint8Array;
}

/** Parses the header and checks the file's length; throws `KeyStoreError('file-corrupt')`. */
export function parseKeyFile(bytes: Uint8Array, path: string): ParsedKeyFile {
  if (bytes.length === 0) throw corrupt(path, 'the file is empty');
  const r = new ByteReader(bytes);
  try {
    const magic = r.take(MAGIC.length, 'magic');
    if (!magic.every((b, i) => b === MAGIC[i])) throw corrupt(path, 'not a vitalseal key file (bad magic)');
    const version = r.u8('version');
    if (version !== FORMAT_VERSION) {
      throw new KeyStoreError('unsupported-version', `key file ${path}: format version ${version} is not supported (this version reads ${FORMAT_VERSION})`);
    }
    const kind = r.u8('protection');
    let protection: FileProtection;
    if (kind === 1) {
      const logN = r.u8('scrypt logN');
      const rr = r.u8('scrypt r');
      const p = r.u8('scrypt p');
      const saltLength = r.u8('salt length');
      if (saltLength < 16 || saltLength > 64) throw corrupt(path, `salt length ${saltLength} is outside 16-64`);
      protection = { kind: 'scrypt', params: { logN, r: rr, p }, salt: Uint8Array.from(r.take(saltLength, 'salt')) };
    } else if (kind === 2 || kind === 3) {
      const storeIndex = r.u8('store kind');
      const store = STORE_KINDS[storeIndex - 1];
      if (store === undefined) throw corrupt(path, `unknown store kind ${storeIndex}`);
      const name = readName(r, 'protecting key name');
      if (kind === 2) {
        protection = { kind: 'sealed', store, name };
      } else {
        const blobLength = r.u16('wrapped file key length');
        if (blobLength === 0 || blobLength > MAX_WRAPPED_FILE_KEY_BLOB) throw corrupt(path, `wrapped file key length ${blobLength} is out of range`);
        protection = { kind: 'wrapped', store, kekName: name, blob: Uint8Array.from(r.take(blobLength, 'wrapped file key')) };
      }
    } else {
      throw corrupt(path, `unknown protection kind ${kind}`);
    }
    const check = Uint8Array.from(r.take(CHECK_LENGTH, 'check'));
    const writeSalt = Uint8Array.from(r.take(WRITE_SALT_LENGTH, 'write salt'));
    const bodyLength = r.u32('body length');
    const headerBytes = bytes.subarray(0, r.offset);
    if (bodyLength < TAG_LENGTH + 2) throw corrupt(path, `body length ${bodyLength} is too short`);
    if (r.remaining < bodyLength) throw corrupt(path, `truncated: the header announces ${bodyLength} body bytes, ${r.remaining} follow`);
    if (r.remaining > bodyLength) throw corrupt(path, `${r.remaining - bodyLength} unexpected bytes after the body`);
    const sealedBody = r.take(bodyLength, 'body');
    return { header: { protection, check, writeSalt, bodyLength }, headerBytes, sealedBody };
  } catch (e) {
    if (e instanceof KeyStoreError) throw e;
    if (e instanceof Truncated) throw corrupt(path, `truncated header (${e.message})`);
    if (e instanceof RangeError) throw corrupt(path, e.message);
    throw e;
  }
}

/** Encodes the entries (sorted by name here). The caller zeroises the result after encrypting it. */
export function encodeBody(entries: Iterable<StoredEntry>): Uint8Array {
  const sorted = [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  if (sorted.length > MAX_ENTRIES) throw new KeyStoreError('store-full', `a software key store holds at most ${MAX_ENTRIES} objects`);
  const w = new ByteWriter().u16(sorted.length);
  for (const e of sorted) {
    w.u8(ENTRY_TYPES.indexOf(e.type) + 1);
    writeName(w, e.name);
    w.u16(e.material.length).bytes(e.material);
  }
  return w.finish();
}

/**
 * Decodes an authenticated body. Materials are copies, so the caller can zeroise `plain` at once.
 * A body that authenticates but does not parse can only come from a bug or a forger who holds the
 * file key; it is refused all the same.
 */
export function decodeBody(plain: Uint8Array, path: string): StoredEntry[] {
  const r = new ByteReader(plain);
  const out: StoredEntry[] = [];
  try {
    const count = r.u16('entry count');
    if (count > MAX_ENTRIES) throw new RangeError(`${count} entries exceed ${MAX_ENTRIES}`);
    let previous = '';
    for (let i = 0; i < count; i++) {
      const typeIndex = r.u8('entry type');
      const type = ENTRY_TYPES[typeIndex - 1];
      if (type === undefined) throw new RangeError(`entry ${i}: unknown type ${typeIndex}`);
      const name = readName(r, `entry ${i} name`);
      if (i > 0 && !(name > previous)) throw new RangeError(`entry ${i}: names out of order or repeated`);
      previous = name;
      const length = r.u16(`entry ${i} material length`);
      const max = type === 'sealed' ? MAX_SEALED_BYTES : type === 'kek' ? KEK_LENGTH : MAX_SIGNING_MATERIAL;
      if (length === 0 && type !== 'sealed') throw new RangeError(`entry ${i}: empty key material`);
      if (length > max || (type === 'kek' && length !== KEK_LENGTH)) throw new RangeError(`entry ${i}: material length ${length} is wrong for a ${type} object`);
      out.push({ name, type, material: Uint8Array.from(r.take(length, `entry ${i} material`)) });
    }
    if (r.remaining !== 0) throw new RangeError(`${r.remaining} unexpected bytes after the last entry`);
    return out;
  } catch (e) {
    for (const entry of out) entry.material.fill(0);
    if (e instanceof Truncated || e instanceof RangeError) throw corrupt(path, `the decrypted contents do not parse (${e.message})`);
    throw e;
  }
}
