/**
 * A strict, bounded DER reader and a DER writer (ITU-T X.690), just large enough for X.509
 * certificates, PKCS#10 requests, CRLs and PKCS#8 key files.
 *
 * The reader accepts only DER, the distinguished encoding: definite minimal lengths, minimal
 * integers, booleans 0x00/0xFF, zero padding bits, no encoded DEFAULT values (checked by the
 * callers that know the schema). Every read is bounded by the enclosing TLV, so a truncated or
 * mutated input ends in `CertificateError('malformed')`, never in an exception of another type, an
 * out-of-range read or unbounded work.
 *
 * @example
 *   const r = new DerReader(der, 'certificate');
 *   const cert = r.expect(TAG.SEQUENCE, 'Certificate');
 *   r.end('certificate');
 */
import { CertificateError } from '../util/errors.ts';

/** Universal tags (X.690 §8) and the context-specific forms X.509 uses. */
export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  T61_STRING: 0x14,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  BMP_STRING: 0x1e,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

/** Context-specific tag number `n`, constructed ([n] EXPLICIT or a constructed IMPLICIT type). */
export function ctx(n: number): number {
  return 0xa0 | n;
}
/** Context-specific tag number `n`, primitive ([n] IMPLICIT over a primitive type). */
export function ctxPrim(n: number): number {
  return 0x80 | n;
}

/** One decoded TLV. `value` and `der` are views into the input, not copies. */
export interface Tlv {
  readonly tag: number;
  /** The content octets. */
  readonly value: Uint8Array;
  /** The whole TLV (tag, length and content): what a signature covers. */
  readonly der: Uint8Array;
}

export function malformed(what: string, detail: string): CertificateError {
  return new CertificateError('malformed', `${what}: ${detail}`);
}

/** Length fields longer than this many octets are refused: no X.509 object here nears 4 GiB. */
const MAX_LENGTH_OCTETS = 4;

/** Reads consecutive TLVs from `bytes`, never past its end. */
export class DerReader {
  readonly #bytes: Uint8Array;
  readonly #what: string;
  #pos = 0;

  constructor(bytes: Uint8Array, what: string) {
    this.#bytes = bytes;
    this.#what = what;
  }

  get done(): boolean {
    return this.#pos >= this.#bytes.length;
  }

  /** The next tag, or undefined at the end. */
  peekTag(): number | undefined {
    return this.#pos < this.#bytes.length ? this.#bytes[this.#pos] : undefined;
  }

  /** Reads the next TLV, whatever its tag. */
  read(what: string = this.#what): Tlv {
    const b = this.#bytes;
    const start = this.#pos;
    if (start >= b.length) throw malformed(what, 'truncated (missing tag)');
    const tag = b[start] as number;
    // X.690 §8.1.2.4: high tag numbers (low five bits all ones) appear nowhere in X.509.
    if ((tag & 0x1f) === 0x1f) throw malformed(what, `unsupported high-number tag 0x${tag.toString(16)}`);
    let p = start + 1;
    if (p >= b.length) throw malformed(what, 'truncated (missing length)');
    const first = b[p++] as number;
    let length: number;
    if (first < 0x80) {
      length = first;
    } else {
      const n = first & 0x7f;
      // X.690 §10.1: DER uses the definite form only; 0x80 (indefinite) and 0xFF (reserved) are refused.
      if (n === 0) throw malformed(what, 'indefinite length is not DER');
      if (n > MAX_LENGTH_OCTETS) throw malformed(what, `length of ${n} octets is too long`);
      if (p + n > b.length) throw malformed(what, 'truncated (length octets)');
      length = 0;
      for (let i = 0; i < n; i++) length = length * 256 + (b[p + i] as number);
      // X.690 §10.1: the length is encoded in the minimum number of octets.
      if (b[p] === 0 || length < 0x80) throw malformed(what, 'non-minimal length encoding');
      p += n;
    }
    if (length > b.length - p) throw malformed(what, `truncated (needs ${length} content bytes, ${b.length - p} left)`);
    const end = p + length;
    this.#pos = end;
    return { tag, value: b.subarray(p, end), der: b.subarray(start, end) };
  }

  /** Reads the next TLV and insists on its tag. */
  expect(tag: number, what: string): Tlv {
    const t = this.peekTag();
    if (t === undefined) throw malformed(what, 'truncated (missing element)');
    if (t !== tag) throw malformed(what, `expected tag 0x${tag.toString(16)}, found 0x${t.toString(16)}`);
    return this.read(what);
  }

  /** Reads the next TLV if it carries `tag`; otherwise reads nothing. */
  optional(tag: number, what: string): Tlv | undefined {
    return this.peekTag() === tag ? this.read(what) : undefined;
  }

  /** Insists every byte was consumed (a read must consume exactly its bytes). */
  end(what: string = this.#what): void {
    if (!this.done) throw malformed(what, `${this.#bytes.length - this.#pos} trailing bytes`);
  }
}

/** Parses exactly one TLV of `tag` spanning all of `bytes`. */
export function parseOne(bytes: Uint8Array, tag: number, what: string): Tlv {
  const r = new DerReader(bytes, what);
  const t = r.expect(tag, what);
  r.end(what);
  return t;
}

/** The children of a constructed TLV, read as a list (bounded by `max`). */
export function children(tlv: Tlv, what: string, max = 256): Tlv[] {
  if ((tlv.tag & 0x20) === 0) throw malformed(what, 'expected a constructed element');
  const r = new DerReader(tlv.value, what);
  const out: Tlv[] = [];
  while (!r.done) {
    if (out.length >= max) throw malformed(what, `more than ${max} elements`);
    out.push(r.read(what));
  }
  return out;
}

// ---- primitive decoders --------------------------------------------------------------------------

function primitive(tlv: Tlv, tag: number, what: string): Uint8Array {
  if (tlv.tag !== tag) throw malformed(what, `expected tag 0x${tag.toString(16)}, found 0x${tlv.tag.toString(16)}`);
  return tlv.value;
}

/** INTEGER content octets, checked minimal (X.690 §8.3.2). Returned as the two's-complement bytes. */
export function readIntegerBytes(tlv: Tlv, what: string, tag: number = TAG.INTEGER): Uint8Array {
  const v = primitive(tlv, tag, what);
  if (v.length === 0) throw malformed(what, 'empty INTEGER');
  if (v.length > 1) {
    const a = v[0] as number;
    const b = v[1] as number;
    if ((a === 0x00 && b < 0x80) || (a === 0xff && b >= 0x80)) throw malformed(what, 'non-minimal INTEGER');
  }
  return v;
}

/** A small non-negative INTEGER (version, pathLenConstraint, CRL number up to 2^48). */
export function readSmallInt(tlv: Tlv, what: string, max: number): number {
  const v = readIntegerBytes(tlv, what);
  if (((v[0] as number) & 0x80) !== 0) throw malformed(what, 'negative INTEGER');
  if (v.length > 7) throw malformed(what, 'INTEGER too large');
  let n = 0;
  for (const byte of v) n = n * 256 + byte;
  if (n > max) throw malformed(what, `INTEGER ${n} exceeds ${max}`);
  return n;
}

/** BOOLEAN: DER allows only 0x00 and 0xFF (X.690 §11.1). */
export function readBoolean(tlv: Tlv, what: string): boolean {
  const v = primitive(tlv, TAG.BOOLEAN, what);
  if (v.length !== 1 || (v[0] !== 0x00 && v[0] !== 0xff)) throw malformed(what, 'BOOLEAN is not 0x00 or 0xFF');
  return v[0] === 0xff;
}

export function readNull(tlv: Tlv, what: string): void {
  if (primitive(tlv, TAG.NULL, what).length !== 0) throw malformed(what, 'NULL with content');
}

export function readOctetString(tlv: Tlv, what: string): Uint8Array {
  return primitive(tlv, TAG.OCTET_STRING, what);
}

export interface BitString {
  readonly unusedBits: number;
  readonly bytes: Uint8Array;
}

/** BIT STRING: unused-bit count 0..7, unused bits zero (X.690 §11.2.1). */
export function readBitString(tlv: Tlv, what: string): BitString {
  const v = primitive(tlv, TAG.BIT_STRING, what);
  if (v.length === 0) throw malformed(what, 'BIT STRING without the unused-bits octet');
  const unusedBits = v[0] as number;
  if (unusedBits > 7) throw malformed(what, 'BIT STRING unused-bits count above 7');
  if (v.length === 1 && unusedBits !== 0) throw malformed(what, 'empty BIT STRING with unused bits');
  if (unusedBits > 0 && ((v[v.length - 1] as number) & ((1 << unusedBits) - 1)) !== 0) {
    throw malformed(what, 'BIT STRING unused bits are not zero');
  }
  return { unusedBits, bytes: v.subarray(1) };
}

/** A BIT STRING that carries whole octets (signatures, public keys). */
export function readOctetAlignedBits(tlv: Tlv, what: string): Uint8Array {
  const b = readBitString(tlv, what);
  if (b.unusedBits !== 0) throw malformed(what, 'BIT STRING is not octet-aligned');
  return b.bytes;
}

const MAX_OID_BYTES = 64;

/** OBJECT IDENTIFIER as dotted text (X.690 §8.19), minimal base-128 subidentifiers. */
export function readOid(tlv: Tlv, what: string): string {
  const v = primitive(tlv, TAG.OID, what);
  if (v.length === 0 || v.length > MAX_OID_BYTES) throw malformed(what, `OID of ${v.length} bytes`);
  const arcs: number[] = [];
  let acc = 0;
  let started = false;
  for (let i = 0; i < v.length; i++) {
    const byte = v[i] as number;
    // X.690 §8.19.2: the leading octet of a subidentifier is never 0x80.
    if (!started && byte === 0x80) throw malformed(what, 'non-minimal OID subidentifier');
    started = true;
    acc = acc * 128 + (byte & 0x7f);
    if (acc > Number.MAX_SAFE_INTEGER / 128) throw malformed(what, 'OID subidentifier too large');
    if ((byte & 0x80) === 0) {
      arcs.push(acc);
      acc = 0;
      started = false;
    }
  }
  if (started) throw malformed(what, 'OID ends inside a subidentifier');
  // X.690 §8.19.4: the first subidentifier packs the first two arcs as 40 * X + Y.
  const first = arcs[0] as number;
  const head = first < 40 ? [0, first] : first < 80 ? [1, first - 40] : [2, first - 80];
  return [...head, ...arcs.slice(1)].join('.');
}

function digits(v: Uint8Array, from: number, count: number, what: string): number {
  let n = 0;
  for (let i = from; i < from + count; i++) {
    const c = v[i] as number;
    if (c < 0x30 || c > 0x39) throw malformed(what, 'time has a non-digit');
    n = n * 10 + (c - 0x30);
  }
  return n;
}

/**
 * UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) as milliseconds since the epoch.
 * RFC 5280 §4.1.2.5.1-2: seconds present, Zulu, no fractions; UTCTime years 50-99 are 19xx.
 */
export function readTime(tlv: Tlv, what: string): number {
  const v = tlv.value;
  let year: number;
  let p: number;
  if (tlv.tag === TAG.UTC_TIME) {
    if (v.length !== 13) throw malformed(what, 'UTCTime is not YYMMDDHHMMSSZ');
    const yy = digits(v, 0, 2, what);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
    p = 2;
  } else if (tlv.tag === TAG.GENERALIZED_TIME) {
    if (v.length !== 15) throw malformed(what, 'GeneralizedTime is not YYYYMMDDHHMMSSZ');
    year = digits(v, 0, 4, what);
    p = 4;
  } else {
    throw malformed(what, `expected a time, found tag 0x${tlv.tag.toString(16)}`);
  }
  if (v[v.length - 1] !== 0x5a) throw malformed(what, 'time is not in Zulu (Z)');
  const month = digits(v, p, 2, what);
  const day = digits(v, p + 2, 2, what);
  const hour = digits(v, p + 4, 2, what);
  const minute = digits(v, p + 6, 2, what);
  const second = digits(v, p + 8, 2, what);
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth || hour > 23 || minute > 59 || second > 59) {
    throw malformed(what, 'time out of range');
  }
  const ms = Date.UTC(year, month - 1, day, hour, minute, second);
  // Date.UTC maps years 0-99 to 1900-1999; GeneralizedTime years below 100 are not meaningful here.
  if (year < 100) throw malformed(what, 'year before 0100');
  return ms;
}

const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]*$/;

/** A directory or IA5 string as text. Refuses bytes that break the string type's alphabet. */
export function readString(tlv: Tlv, what: string): string {
  const v = tlv.value;
  switch (tlv.tag) {
    case TAG.UTF8_STRING: {
      try {
        return new TextDecoder('utf-8', { fatal: true }).decode(v);
      } catch {
        throw malformed(what, 'invalid UTF-8');
      }
    }
    case TAG.PRINTABLE_STRING: {
      const s = latin1(v);
      if (!PRINTABLE.test(s)) throw malformed(what, 'PrintableString outside its alphabet');
      return s;
    }
    case TAG.IA5_STRING: {
      for (const c of v) if (c > 0x7f) throw malformed(what, 'IA5String with a non-ASCII byte');
      return latin1(v);
    }
    case TAG.T61_STRING:
      // Legacy; read as Latin-1 as most implementations do.
      return latin1(v);
    case TAG.BMP_STRING: {
      if (v.length % 2 !== 0) throw malformed(what, 'BMPString of odd length');
      let s = '';
      for (let i = 0; i < v.length; i += 2) s += String.fromCharCode(((v[i] as number) << 8) | (v[i + 1] as number));
      return s;
    }
    default:
      throw malformed(what, `unsupported string type 0x${tlv.tag.toString(16)}`);
  }
}

function latin1(v: Uint8Array): string {
  let s = '';
  for (const c of v) s += String.fromCharCode(c);
  return s;
}

// ---- writer ---------------------------------------------------------------------------------------

function lengthOctets(n: number): number[] {
  if (n < 0x80) return [n];
  const out: number[] = [];
  while (n > 0) {
    out.unshift(n & 0xff);
    n = Math.floor(n / 256);
  }
  return [0x80 | out.length, ...out];
}

/** One TLV over the concatenation of `parts`. */
export function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  let len = 0;
  for (const p of parts) len += p.length;
  const head = [tag, ...lengthOctets(len)];
  const out = new Uint8Array(head.length + len);
  out.set(head, 0);
  let o = head.length;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export const seq = (...items: Uint8Array[]): Uint8Array => tlv(TAG.SEQUENCE, ...items);

/** SET OF: DER sorts the encodings as octet strings (X.690 §11.6). */
export function setOf(...items: Uint8Array[]): Uint8Array {
  const sorted = [...items].sort(compareBytes);
  return tlv(TAG.SET, ...sorted);
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return (a[i] as number) - (b[i] as number);
  return a.length - b.length;
}

export const explicit = (n: number, inner: Uint8Array): Uint8Array => tlv(ctx(n), inner);

/** A non-negative INTEGER from unsigned big-endian magnitude bytes, minimally encoded. */
export function uintBytes(magnitude: Uint8Array, tag: number = TAG.INTEGER): Uint8Array {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  const m = magnitude.subarray(i);
  if (m.length === 0) return tlv(tag, Uint8Array.of(0));
  return ((m[0] as number) & 0x80) !== 0 ? tlv(tag, Uint8Array.of(0), m) : tlv(tag, m);
}

export function uint(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`uint: ${n} is not a non-negative safe integer`);
  const bytes: number[] = [];
  do {
    bytes.unshift(n % 256);
    n = Math.floor(n / 256);
  } while (n > 0);
  return uintBytes(Uint8Array.from(bytes));
}

export const bool = (b: boolean): Uint8Array => tlv(TAG.BOOLEAN, Uint8Array.of(b ? 0xff : 0x00));
export const nullValue = (): Uint8Array => tlv(TAG.NULL);
export const octets = (b: Uint8Array): Uint8Array => tlv(TAG.OCTET_STRING, b);
/** BIT STRING over whole octets (keys, signatures). */
export const bits = (b: Uint8Array): Uint8Array => tlv(TAG.BIT_STRING, Uint8Array.of(0), b);

export function oid(dotted: string): Uint8Array {
  const arcs = dotted.split('.').map((s) => {
    if (!/^(0|[1-9][0-9]*)$/.test(s)) throw new RangeError(`oid: bad arc in ${dotted}`);
    return Number(s);
  });
  const [a, b, ...rest] = arcs;
  if (a === undefined || b === undefined || a > 2 || (a < 2 && b > 39)) throw new RangeError(`oid: bad first arcs in ${dotted}`);
  const out: number[] = [];
  for (const arc of [a * 40 + b, ...rest]) {
    const chunk: number[] = [arc & 0x7f];
    let n = Math.floor(arc / 128);
    while (n > 0) {
      chunk.unshift(0x80 | (n & 0x7f));
      n = Math.floor(n / 128);
    }
    out.push(...chunk);
  }
  return tlv(TAG.OID, Uint8Array.from(out));
}

export const utf8String = (s: string): Uint8Array => tlv(TAG.UTF8_STRING, new TextEncoder().encode(s));

export function printableString(s: string): Uint8Array {
  if (!PRINTABLE.test(s)) throw new RangeError('printableString: character outside the PrintableString alphabet');
  return tlv(TAG.PRINTABLE_STRING, new TextEncoder().encode(s));
}

export function ia5String(s: string, tag: number = TAG.IA5_STRING): Uint8Array {
  // eslint-disable-next-line no-control-regex
  if (!/^[\x00-\x7f]*$/.test(s)) throw new RangeError('ia5String: non-ASCII character');
  return tlv(tag, new TextEncoder().encode(s));
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, Zulu. */
export function time(ms: number): Uint8Array {
  const d = new Date(Math.floor(ms / 1000) * 1000);
  const y = d.getUTCFullYear();
  if (y < 1950 || y > 9999) throw new RangeError(`time: year ${y} is outside 1950-9999`);
  const p2 = (n: number) => String(n).padStart(2, '0');
  const rest = `${p2(d.getUTCMonth() + 1)}${p2(d.getUTCDate())}${p2(d.getUTCHours())}${p2(d.getUTCMinutes())}${p2(d.getUTCSeconds())}Z`;
  return y < 2050
    ? tlv(TAG.UTC_TIME, new TextEncoder().encode(`${p2(y % 100)}${rest}`))
    : tlv(TAG.GENERALIZED_TIME, new TextEncoder().encode(`${y}${rest}`));
}

/**
 * A named BIT STRING (KeyUsage): bit 0 is the most significant bit of the first octet; DER drops
 * trailing zero bits and counts them as unused (X.690 §11.2.2).
 */
export function namedBits(set: readonly number[]): Uint8Array {
  if (set.length === 0) return tlv(TAG.BIT_STRING, Uint8Array.of(0));
  const highest = Math.max(...set);
  const bytes = new Uint8Array((highest >> 3) + 1);
  for (const bit of set) bytes[bit >> 3] = (bytes[bit >> 3] as number) | (0x80 >> (bit & 7));
  const unused = 7 - (highest & 7);
  return tlv(TAG.BIT_STRING, Uint8Array.of(unused), bytes);
}
