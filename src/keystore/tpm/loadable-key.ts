/**
 * A TPM key as a "TSS2 PRIVATE KEY" PEM: the file format of the TCG's "ASN.1 Specification for TPM
 * 2.0 Key Files" (draft-bottomley-tpm2-keys), which OpenSSL's `tpm2` provider (tpm2-openssl), the
 * tpm2-tss-engine and the Linux kernel's trusted keys load.
 *
 *   TPMKey ::= SEQUENCE {
 *     type       OBJECT IDENTIFIER,          -- id-loadablekey 2.23.133.10.1.3
 *     emptyAuth  [0] EXPLICIT BOOLEAN OPTIONAL,
 *     parent     INTEGER,                    -- TPM handle of the parent (here the persistent SRK)
 *     pubkey     OCTET STRING,               -- TPM2B_PUBLIC, marshalled
 *     privkey    OCTET STRING }              -- TPM2B_PRIVATE, marshalled
 *
 * It holds no secret that works anywhere else: privkey is the key's sensitive area encrypted and
 * integrity-protected under the parent's seed-derived keys (TPM 2.0 Part 1 §23.3), which never leave
 * the TPM. Loading it means TPM2_Load under the parent on the same TPM; signing happens inside.
 *
 * @example
 *   const der = encodeLoadableKey({ parent: 0x81000001, emptyAuth: true, tpm2bPublic, tpm2bPrivate });
 *   const pem = loadableKeyPem(der);   // -----BEGIN TSS2 PRIVATE KEY-----
 */
import { DecodeError } from '../../util/errors.ts';

/** id-loadablekey (TCG OID arc 2.23.133.10.1.3), DER content octets. */
const OID_LOADABLE_KEY = Uint8Array.of(0x67, 0x81, 0x05, 0x0a, 0x01, 0x03);
export const LOADABLE_KEY_PEM_LABEL = 'TSS2 PRIVATE KEY';

export interface LoadableKey {
  /** TPM handle of the parent: a persistent handle (0x81xxxxxx) such as FAPI's SRK. */
  readonly parent: number;
  /** True when the key's authValue is empty (no password). */
  readonly emptyAuth: boolean;
  readonly tpm2bPublic: Uint8Array;
  readonly tpm2bPrivate: Uint8Array;
}

function length(n: number): Uint8Array {
  if (n < 0x80) return Uint8Array.of(n);
  if (n < 0x100) return Uint8Array.of(0x81, n);
  if (n < 0x10000) return Uint8Array.of(0x82, n >> 8, n & 0xff);
  throw new RangeError('loadable key: element too long');
}

function tlv(tag: number, content: Uint8Array): Uint8Array {
  const len = length(content.length);
  const out = new Uint8Array(1 + len.length + content.length);
  out[0] = tag;
  out.set(len, 1);
  out.set(content, 1 + len.length);
  return out;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A non-negative 32-bit INTEGER's content octets: minimal, with a 0x00 pad when the top bit is set. */
function uint32Content(v: number): Uint8Array {
  const bytes = [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
  while (bytes.length > 1 && bytes[0] === 0 && ((bytes[1] as number) & 0x80) === 0) bytes.shift();
  if (((bytes[0] as number) & 0x80) !== 0) bytes.unshift(0);
  return Uint8Array.from(bytes);
}

/** The TPM2B_* blobs start with their own big-endian uint16 size (TPM 2.0 Part 2 §10.4). */
function checkTpm2b(blob: Uint8Array, label: string): void {
  if (blob.length < 2 || ((blob[0] as number) << 8 | (blob[1] as number)) !== blob.length - 2) {
    throw new RangeError(`loadable key: ${label} is not a marshalled TPM2B (size prefix does not match)`);
  }
}

/** DER of a TPMKey. */
export function encodeLoadableKey(key: LoadableKey): Uint8Array {
  if (!Number.isInteger(key.parent) || key.parent < 0 || key.parent > 0xffffffff) throw new RangeError('loadable key: parent must be a 32-bit TPM handle');
  checkTpm2b(key.tpm2bPublic, 'pubkey');
  checkTpm2b(key.tpm2bPrivate, 'privkey');
  return tlv(0x30, concat([
    tlv(0x06, OID_LOADABLE_KEY),
    // [0] EXPLICIT BOOLEAN: present only when TRUE (DER leaves out what a reader assumes absent).
    ...(key.emptyAuth ? [tlv(0xa0, tlv(0x01, Uint8Array.of(0xff)))] : []),
    tlv(0x02, uint32Content(key.parent)),
    tlv(0x04, key.tpm2bPublic),
    tlv(0x04, key.tpm2bPrivate),
  ]));
}

export function loadableKeyPem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${LOADABLE_KEY_PEM_LABEL}-----\n${b64}\n-----END ${LOADABLE_KEY_PEM_LABEL}-----\n`;
}

/** Strict reader (tests and diagnostics): the exact structure `encodeLoadableKey` writes. */
export function decodeLoadableKey(der: Uint8Array): LoadableKey {
  let at = 0;
  const fail = (what: string): never => {
    throw new DecodeError('malformed', `loadable key: ${what}`);
  };
  const read = (tag: number): Uint8Array => {
    if (at + 2 > der.length || der[at] !== tag) fail(`expected tag 0x${tag.toString(16)} at ${at}`);
    let len = der[at + 1] as number;
    let hdr = 2;
    if (len === 0x81) {
      if (at + 3 > der.length) fail('truncated length');
      len = der[at + 2] as number;
      if (len < 0x80) fail('non-minimal length');
      hdr = 3;
    } else if (len === 0x82) {
      if (at + 4 > der.length) fail('truncated length');
      len = ((der[at + 2] as number) << 8) | (der[at + 3] as number);
      if (len < 0x100) fail('non-minimal length');
      hdr = 4;
    } else if (len > 0x7f) {
      fail('unsupported length form');
    }
    if (at + hdr + len > der.length) fail('truncated element');
    const content = der.subarray(at + hdr, at + hdr + len);
    at += hdr + len;
    return content;
  };
  const body = read(0x30);
  if (at !== der.length) fail('trailing bytes after the key');
  // Back to the first element inside the SEQUENCE (its content ends the input).
  at = der.length - body.length;
  const oid = read(0x06);
  if (oid.length !== OID_LOADABLE_KEY.length || !oid.every((b, i) => b === OID_LOADABLE_KEY[i])) fail('not an id-loadablekey');
  let emptyAuth = false;
  if (der[at] === 0xa0) {
    const inner = read(0xa0);
    if (inner.length !== 3 || inner[0] !== 0x01 || inner[1] !== 0x01 || inner[2] !== 0xff) fail('emptyAuth must be an explicit BOOLEAN TRUE');
    emptyAuth = true;
  }
  if (der[at] === 0xa1 || der[at] === 0xa2 || der[at] === 0xa3) fail('policies, secrets and auth policies are not supported');
  const parentBytes = read(0x02);
  if (parentBytes.length === 0 || parentBytes.length > 5 || ((parentBytes[0] as number) & 0x80) !== 0) fail('parent is not a 32-bit handle');
  if (parentBytes.length > 1 && parentBytes[0] === 0 && ((parentBytes[1] as number) & 0x80) === 0) fail('parent is not minimally encoded');
  let parent = 0;
  for (const b of parentBytes) parent = parent * 256 + b;
  if (parent > 0xffffffff) fail('parent is not a 32-bit handle');
  const tpm2bPublic = Uint8Array.from(read(0x04));
  const tpm2bPrivate = Uint8Array.from(read(0x04));
  if (at !== der.length) fail('unexpected trailing elements');
  try {
    checkTpm2b(tpm2bPublic, 'pubkey');
    checkTpm2b(tpm2bPrivate, 'privkey');
  } catch (e) {
    fail((e as Error).message.replace(/^loadable key: /, ''));
  }
  return { parent, emptyAuth, tpm2bPublic, tpm2bPrivate };
}
