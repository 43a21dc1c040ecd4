/**
 * COSE_Encrypt0 (tag 16) and COSE_Encrypt (tag 96) structures (RFC 9052 §5.1, §5.2), parsed
 * strictly: the tag must be present and right, every field must have its type, detached content
 * and nested recipients are refused, and sizes are bounded.
 */
import { CborTag, decodeCbor, encodeCbor, headSize, writeHead } from '../codec/cbor.ts';
import { allocUninit } from '../util/bytes.ts';
import { DecodeError } from '../util/errors.ts';
import { checkBuckets, checkHeaderMap, decodeProtected, type HeaderMap } from './headers.ts';

export const TAG_ENCRYPT0 = 16;
export const TAG_ENCRYPT = 96;
export const DEFAULT_MAX_COSE_BYTES = 256 * 1024;

export interface CoseLayer {
  readonly protectedBytes: Uint8Array;
  readonly protected: HeaderMap;
  readonly unprotected: HeaderMap;
  readonly ciphertext: Uint8Array;
}

export interface ParsedEncrypt0 extends CoseLayer {
  readonly kind: 'encrypt0';
}

export interface ParsedEncrypt extends CoseLayer {
  readonly kind: 'encrypt';
  readonly recipients: readonly CoseLayer[];
}

export type ParsedCoseEncrypt = ParsedEncrypt0 | ParsedEncrypt;

function fail(code: string, message: string): never {
  throw new DecodeError(code, `COSE: ${message}`);
}

function layer(arr: unknown[], what: string): CoseLayer {
  const [p, u, c] = arr;
  const prot = decodeProtected(p);
  const unprot = checkHeaderMap(u, `${what} unprotected`);
  checkBuckets(prot, unprot);
  if (c === null) fail('cose-detached', `${what}: detached ciphertext is not supported`);
  if (!(c instanceof Uint8Array)) fail('cose-structure', `${what}: ciphertext is not a byte string`);
  return { protectedBytes: p as Uint8Array, protected: prot, unprotected: unprot, ciphertext: c };
}

/**
 * Parses a COSE_Encrypt0/COSE_Encrypt. The CBOR tag is required unless the caller's context already
 * says which structure it is (`untagged`), as RFC 9052 §2 allows. The byte strings in the result
 * (protected bytes, ciphertexts) are views of `bytes`: do not change `bytes` while using them.
 */
export function parseCoseEncrypt(bytes: Uint8Array, maxBytes = DEFAULT_MAX_COSE_BYTES, untagged?: 'encrypt0' | 'encrypt'): ParsedCoseEncrypt {
  // Views, not copies: every byte string is used during the open, before the caller gets control back.
  const top = decodeCbor(bytes, { maxBytes, maxStringBytes: maxBytes, maxDepth: 8, allowTags: [TAG_ENCRYPT0, TAG_ENCRYPT], views: true });
  let tag: number;
  let arr: unknown;
  if (top instanceof CborTag) {
    tag = top.tag;
    arr = top.value;
  } else if (untagged !== undefined && Array.isArray(top)) {
    tag = untagged === 'encrypt0' ? TAG_ENCRYPT0 : TAG_ENCRYPT;
    arr = top;
  } else {
    fail('cose-tag', 'message is not tagged COSE_Encrypt0 (16) or COSE_Encrypt (96)');
  }
  if (!Array.isArray(arr)) fail('cose-structure', 'tagged value is not an array');
  if (tag === TAG_ENCRYPT0) {
    if (arr.length !== 3) fail('cose-structure', `COSE_Encrypt0 has ${arr.length} elements, not 3`);
    return { kind: 'encrypt0', ...layer(arr, 'COSE_Encrypt0') };
  }
  if (arr.length !== 4) fail('cose-structure', `COSE_Encrypt has ${arr.length} elements, not 4`);
  const rec = arr[3];
  if (!Array.isArray(rec) || rec.length === 0) fail('cose-structure', 'COSE_Encrypt needs at least one recipient');
  if (rec.length > 16) fail('cose-structure', 'more than 16 recipients');
  const recipients = rec.map((r, i) => {
    if (!Array.isArray(r) || r.length !== 3) fail('cose-structure', `recipient ${i} is not a 3-element array (nested recipients are not supported)`);
    return layer(r, `recipient ${i}`);
  });
  return { kind: 'encrypt', ...layer(arr, 'COSE_Encrypt'), recipients };
}

/** The context strings of an Enc_structure, as encoded CBOR text (RFC 9052 §5.3). */
const CONTEXT_TEXT = {
  Encrypt0: Uint8Array.of(0x68, ...new TextEncoder().encode('Encrypt0')),
  Encrypt: Uint8Array.of(0x67, ...new TextEncoder().encode('Encrypt')),
} as const;

/** A byte string item (head and content) written at `at`; returns where the next item starts. */
function writeBytes(out: Uint8Array, at: number, b: Uint8Array): number {
  const start = writeHead(out, at, 2, b.length);
  out.set(b, start);
  return start + b.length;
}

/** Bytes of a byte string item of `n` bytes. */
const bytesItemSize = (n: number) => headSize(n) + n;

/**
 * Enc_structure (RFC 9052 §5.3): the AEAD additional data, `[context, protected, external_aad]`.
 * Written directly (the same bytes `encodeCbor` makes of the array): it is built for every message
 * sealed and opened.
 */
export function encStructure(context: 'Encrypt0' | 'Encrypt', protectedBytes: Uint8Array, externalAad: Uint8Array): Uint8Array {
  const text = CONTEXT_TEXT[context];
  const out = allocUninit(1 + text.length + bytesItemSize(protectedBytes.length) + bytesItemSize(externalAad.length));
  out[0] = 0x83;
  out.set(text, 1);
  writeBytes(out, writeBytes(out, 1 + text.length, protectedBytes), externalAad);
  return out;
}

/**
 * A COSE_Encrypt (tag 96, RFC 9052 §5.1) whose unprotected header is the IV alone and whose
 * recipients array is already encoded (a sealing epoch's `ecdhEsRecipients`): the message a
 * device seals, written in one pass (the same bytes `encodeCbor` makes of the tagged array).
 */
export function serializeEncryptWithIv(protectedBytes: Uint8Array, iv: Uint8Array, ciphertext: Uint8Array, recipients: Uint8Array): Uint8Array {
  const size = 3 + bytesItemSize(protectedBytes.length) + 2 + bytesItemSize(iv.length) + bytesItemSize(ciphertext.length) + recipients.length;
  const out = allocUninit(size);
  out[0] = 0xd8; // tag, one-byte argument
  out[1] = TAG_ENCRYPT;
  out[2] = 0x84; // array of 4
  let at = writeBytes(out, 3, protectedBytes);
  out[at++] = 0xa1; // map of 1: {5 (IV): bstr}
  out[at++] = 0x05;
  at = writeBytes(out, at, iv);
  at = writeBytes(out, at, ciphertext);
  out.set(recipients, at);
  return out;
}

/**
 * The protected bytes that go into the Enc_structure: RFC 9052 §5.3 says "if there are no protected
 * attributes, a zero-length byte string is used", even when the sender wrote an empty map (h'A0').
 */
export function aadProtected(l: CoseLayer): Uint8Array {
  return l.protected.size === 0 ? new Uint8Array(0) : l.protectedBytes;
}

export function serializeEncrypt0(l: Omit<CoseLayer, 'protected'>): Uint8Array {
  return encodeCbor(new CborTag(TAG_ENCRYPT0, [l.protectedBytes, l.unprotected, l.ciphertext]));
}

export function serializeEncrypt(l: Omit<CoseLayer, 'protected'>, recipients: readonly Omit<CoseLayer, 'protected'>[]): Uint8Array {
  return encodeCbor(new CborTag(TAG_ENCRYPT, [
    l.protectedBytes, l.unprotected, l.ciphertext,
    recipients.map((r) => [r.protectedBytes, r.unprotected, r.ciphertext]),
  ]));
}
