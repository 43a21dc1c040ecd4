/**
 * A strict, bounded parser and a formatter for PKCS #11 URIs (RFC 7512), which name the token the
 * key store uses (`pkcs11:token=vitalseal`) and the objects in it
 * (`pkcs11:token=vitalseal;object=device-identity;type=private`).
 *
 * Strict means: every attribute RFC 7512 §2.3 defines is understood and checked against its grammar;
 * anything else (vendor-specific attributes, a fragment, a character outside the ABNF, a bad
 * percent-escape, a repeated attribute) is refused with `KeyStoreError('invalid-uri')` naming the
 * offset. `pin-value` is refused outright: a PIN never belongs in a URI, which ends up in
 * configuration files, command lines and logs. Bounded means: the URI (4096 characters) and each
 * value (255 bytes; 4096 for paths) have a maximum length.
 *
 * @example
 *   const uri = parsePkcs11Uri('pkcs11:token=vitalseal;serial=a9a8afa2b2b485d8');
 *   uri.token;                       // 'vitalseal'
 *   formatPkcs11Uri({ token: 'vitalseal', object: 'device-identity', type: 'private' });
 *   // 'pkcs11:token=vitalseal;object=device-identity;type=private'
 */
import { KeyStoreError } from '../../util/errors.ts';

/** RFC 7512 §2.3 pk11-type. */
export type Pkcs11ObjectType = 'public' | 'private' | 'cert' | 'secret-key' | 'data';

export interface Pkcs11LibraryVersion {
  readonly major: number;
  readonly minor: number;
}

/** A parsed PKCS #11 URI: values percent-decoded; absent attributes are absent keys. */
export interface Pkcs11Uri {
  // Path attributes (RFC 7512 §2.3 pk11-pattr).
  readonly token?: string;
  readonly manufacturer?: string;
  readonly serial?: string;
  readonly model?: string;
  readonly libraryManufacturer?: string;
  readonly libraryDescription?: string;
  readonly libraryVersion?: Pkcs11LibraryVersion;
  readonly object?: string;
  readonly type?: Pkcs11ObjectType;
  /** CKA_ID: raw bytes. */
  readonly id?: Uint8Array;
  readonly slotDescription?: string;
  readonly slotManufacturer?: string;
  /** CK_SLOT_ID: an unsigned long, so a bigint. */
  readonly slotId?: bigint;
  // Query attributes (RFC 7512 §2.3 pk11-qattr); `pin-value` is refused by policy.
  readonly pinSource?: string;
  readonly moduleName?: string;
  readonly modulePath?: string;
}

/** Longest URI accepted, in characters. */
export const MAX_URI_LENGTH = 4096;
/** Longest decoded text or id value, in bytes. */
export const MAX_TEXT_BYTES = 255;

interface PathAttrSpec {
  readonly name: string;
  readonly kind: 'text' | 'bytes' | 'type' | 'version' | 'slot-id';
  readonly key: keyof Pkcs11Uri;
  /** Maximum decoded length in bytes (the PKCS #11 field size where there is one). */
  readonly maxBytes: number;
}

// RFC 7512 §2.3: each path attribute and the Pkcs11Uri field it fills. Text values are bounded at
// 255 bytes: generous for the fixed-size, blank-padded PKCS #11 fields they are compared with (a
// token label has 32 bytes, a slot description 64: v2.40 §3.2), and RFC 7512's own §3 example of a
// label with an accented letter is 34 bytes long.
const PATH_ATTRS: readonly PathAttrSpec[] = [
  { name: 'token', kind: 'text', key: 'token', maxBytes: MAX_TEXT_BYTES },
  { name: 'manufacturer', kind: 'text', key: 'manufacturer', maxBytes: MAX_TEXT_BYTES },
  { name: 'serial', kind: 'text', key: 'serial', maxBytes: MAX_TEXT_BYTES },
  { name: 'model', kind: 'text', key: 'model', maxBytes: MAX_TEXT_BYTES },
  { name: 'library-manufacturer', kind: 'text', key: 'libraryManufacturer', maxBytes: MAX_TEXT_BYTES },
  { name: 'library-description', kind: 'text', key: 'libraryDescription', maxBytes: MAX_TEXT_BYTES },
  { name: 'library-version', kind: 'version', key: 'libraryVersion', maxBytes: 7 },
  { name: 'object', kind: 'text', key: 'object', maxBytes: MAX_TEXT_BYTES },
  { name: 'type', kind: 'type', key: 'type', maxBytes: 10 },
  { name: 'id', kind: 'bytes', key: 'id', maxBytes: MAX_TEXT_BYTES },
  { name: 'slot-description', kind: 'text', key: 'slotDescription', maxBytes: MAX_TEXT_BYTES },
  { name: 'slot-manufacturer', kind: 'text', key: 'slotManufacturer', maxBytes: MAX_TEXT_BYTES },
  { name: 'slot-id', kind: 'slot-id', key: 'slotId', maxBytes: 20 },
];

interface QueryAttrSpec {
  readonly name: string;
  readonly key: 'pinSource' | 'moduleName' | 'modulePath';
  readonly maxBytes: number;
}

const QUERY_ATTRS: readonly QueryAttrSpec[] = [
  { name: 'pin-source', key: 'pinSource', maxBytes: 4096 },
  { name: 'module-name', key: 'moduleName', maxBytes: 255 },
  { name: 'module-path', key: 'modulePath', maxBytes: 4096 },
];

const TYPES: readonly Pkcs11ObjectType[] = ['public', 'private', 'cert', 'secret-key', 'data'];

// RFC 3986 §2.3 unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~".
const UNRESERVED = /[A-Za-z0-9\-._~]/;
// RFC 7512 §2.3 pk11-res-avail = ":" / "[" / "]" / "@" / "!" / "$" / "'" / "(" / ")" / "*" / "+" / "," / "=".
const RES_AVAIL = ":[]@!$'()*+,=";
// pk11-path-res-avail = pk11-res-avail / "&"
const PATH_EXTRA = '&';
// pk11-query-res-avail = pk11-res-avail / "/" / "?" / "|"
const QUERY_EXTRA = '/?|';

function fail(message: string): never {
  throw new KeyStoreError('invalid-uri', `PKCS#11 URI: ${message}`);
}

/** Checks one value's characters (pk11-pchar or pk11-qchar) and percent-decodes it to bytes. */
function decodeValue(raw: string, offset: number, inQuery: boolean, attr: string, maxBytes: number): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i] as string;
    if (c === '%') {
      // RFC 3986 §2.1: pct-encoded = "%" HEXDIG HEXDIG (either case).
      const hex = raw.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) fail(`bad percent-escape at offset ${offset + i} in "${attr}"`);
      out.push(Number.parseInt(hex, 16));
      i += 2;
    } else if (UNRESERVED.test(c) || RES_AVAIL.includes(c) || (inQuery ? QUERY_EXTRA : PATH_EXTRA).includes(c)) {
      out.push(c.charCodeAt(0));
    } else {
      fail(`character ${JSON.stringify(c)} at offset ${offset + i} is not allowed in a ${inQuery ? 'query' : 'path'} value; percent-encode it`);
    }
    if (out.length > maxBytes) fail(`"${attr}" is longer than ${maxBytes} bytes`);
  }
  return Uint8Array.from(out);
}

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

function asText(bytes: Uint8Array, attr: string): string {
  let text: string;
  try {
    text = utf8Strict.decode(bytes);
  } catch {
    fail(`"${attr}" is not valid UTF-8`);
  }
  // A NUL would truncate the value wherever it reaches C code.
  if (text.includes('\u0000')) fail(`"${attr}" contains a NUL character`);
  return text;
}

/** Splits `s` on `sep`, refusing empty members (RFC 7512's ABNF has no empty attribute). */
function members(s: string, sep: string, base: number, what: string): { text: string; offset: number }[] {
  const out: { text: string; offset: number }[] = [];
  let start = 0;
  for (;;) {
    const end = s.indexOf(sep, start);
    const text = end === -1 ? s.slice(start) : s.slice(start, end);
    if (text.length === 0) fail(`empty ${what} attribute at offset ${base + start}`);
    out.push({ text, offset: base + start });
    if (end === -1) return out;
    start = end + 1;
  }
}

function splitAttr(member: { text: string; offset: number }): { name: string; raw: string; valueOffset: number } {
  const eq = member.text.indexOf('=');
  if (eq <= 0) fail(`attribute at offset ${member.offset} is not name=value`);
  return { name: member.text.slice(0, eq), raw: member.text.slice(eq + 1), valueOffset: member.offset + eq + 1 };
}

/**
 * Parses a PKCS #11 URI (RFC 7512 §2.3). Throws `KeyStoreError('invalid-uri')` on anything outside the
 * grammar, on unknown or repeated attributes, and on `pin-value`.
 */
export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  if (typeof uri !== 'string') throw new TypeError('parsePkcs11Uri: expected a string');
  if (uri.length > MAX_URI_LENGTH) fail(`longer than ${MAX_URI_LENGTH} characters`);
  // RFC 3986 §3.1: the scheme is case-insensitive.
  if (uri.slice(0, 7).toLowerCase() !== 'pkcs11:') fail('does not start with "pkcs11:"');
  const rest = uri.slice(7);
  // RFC 7512 §2.3: pk11-URI = "pkcs11:" pk11-path [ "?" pk11-query ]. A path value never holds "?",
  // so the first "?" ends the path; query values may hold further "?" (pk11-query-res-avail).
  const q = rest.indexOf('?');
  const path = q === -1 ? rest : rest.slice(0, q);
  const query = q === -1 ? '' : rest.slice(q + 1);
  const result: Record<string, unknown> = {};

  // RFC 7512 §2.3: pk11-path = [ pk11-pattr *(";" pk11-pattr) ].
  if (path.length > 0) {
    for (const m of members(path, ';', 7, 'path')) {
      const { name, raw, valueOffset } = splitAttr(m);
      const spec = PATH_ATTRS.find((a) => a.name === name);
      if (spec === undefined) fail(`unknown path attribute "${name.slice(0, 40)}" at offset ${m.offset}`);
      // RFC 7512 §2.3: a path attribute MUST NOT appear more than once.
      if (spec.key in result) fail(`path attribute "${name}" appears twice`);
      const bytes = decodeValue(raw, valueOffset, false, name, spec.maxBytes);
      switch (spec.kind) {
        case 'text':
          result[spec.key] = asText(bytes, name);
          break;
        case 'bytes':
          result[spec.key] = bytes;
          break;
        case 'type': {
          const t = asText(bytes, name);
          const found = TYPES.find((x) => x === t);
          if (found === undefined) fail(`"type" must be one of ${TYPES.join(', ')}`);
          result[spec.key] = found;
          break;
        }
        case 'version': {
          // pk11-lib-ver = "library-version" "=" 1*DIGIT [ "." 1*DIGIT ]; each part is a CK_BYTE.
          const m2 = /^(\d{1,3})(?:\.(\d{1,3}))?$/.exec(raw);
          const major = m2 ? Number(m2[1]) : NaN;
          const minor = m2 ? Number(m2[2] ?? '0') : NaN;
          if (!(major <= 255 && minor <= 255)) fail('"library-version" must be MAJOR[.MINOR] with each part 0-255');
          result[spec.key] = { major, minor };
          break;
        }
        case 'slot-id': {
          // pk11-slot-id = "slot-id" "=" 1*DIGIT; a CK_SLOT_ID is an unsigned long (64 bits here).
          if (!/^\d{1,20}$/.test(raw)) fail('"slot-id" must be a decimal number');
          const id = BigInt(raw);
          if (id > 0xffff_ffff_ffff_ffffn) fail('"slot-id" does not fit a CK_SLOT_ID');
          result[spec.key] = id;
          break;
        }
        default: {
          const never: never = spec.kind;
          throw new Error(`unreachable: ${String(never)}`);
        }
      }
    }
  }

  // RFC 7512 §2.3: pk11-query = [ pk11-qattr *("&" pk11-qattr) ].
  if (query.length > 0) {
    for (const m of members(query, '&', 8 + path.length, 'query')) {
      const { name, raw, valueOffset } = splitAttr(m);
      if (name === 'pin-value') {
        fail('"pin-value" is refused: a PIN never goes in a URI (configure the PIN source separately)');
      }
      const spec = QUERY_ATTRS.find((a) => a.name === name);
      if (spec === undefined) fail(`unknown query attribute "${name.slice(0, 40)}" at offset ${m.offset}`);
      if (spec.key in result) fail(`query attribute "${name}" appears twice`);
      const text = asText(decodeValue(raw, valueOffset, true, name, spec.maxBytes), name);
      if (spec.key === 'modulePath' && !text.startsWith('/')) fail('"module-path" must be an absolute path');
      if (spec.key === 'moduleName' && (text.length === 0 || text.includes('/'))) fail('"module-name" must be a file name without "/"');
      result[spec.key] = text;
    }
  }
  return result as Pkcs11Uri;
}

/** Percent-encodes every byte outside RFC 3986 unreserved: always valid in both path and query. */
function encodeBytes(bytes: Uint8Array, all: boolean): string {
  let out = '';
  for (const b of bytes) {
    const c = String.fromCharCode(b);
    out += !all && b < 0x80 && UNRESERVED.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

const utf8 = new TextEncoder();

/**
 * Formats a URI in a canonical form: attributes in RFC 7512 §2.3 order, every value byte outside
 * "unreserved" percent-encoded, `id` always fully percent-encoded. `parsePkcs11Uri(formatPkcs11Uri(u))`
 * gives `u` back; the formatter refuses values the parser would refuse.
 */
export function formatPkcs11Uri(uri: Pkcs11Uri): string {
  const path: string[] = [];
  for (const spec of PATH_ATTRS) {
    const v = uri[spec.key];
    if (v === undefined) continue;
    let encoded: string;
    switch (spec.kind) {
      case 'text':
        encoded = encodeBytes(utf8.encode(v as string), false);
        break;
      case 'bytes':
        encoded = encodeBytes(v as Uint8Array, true);
        break;
      case 'type':
        encoded = v as string;
        break;
      case 'version': {
        const ver = v as Pkcs11LibraryVersion;
        encoded = `${ver.major}.${ver.minor}`;
        break;
      }
      case 'slot-id':
        encoded = (v as bigint).toString(10);
        break;
      default: {
        const never: never = spec.kind;
        throw new Error(`unreachable: ${String(never)}`);
      }
    }
    path.push(`${spec.name}=${encoded}`);
  }
  const query: string[] = [];
  for (const spec of QUERY_ATTRS) {
    const v = uri[spec.key];
    if (v !== undefined) query.push(`${spec.name}=${encodeBytes(utf8.encode(v), false)}`);
  }
  const text = `pkcs11:${path.join(';')}${query.length > 0 ? `?${query.join('&')}` : ''}`;
  parsePkcs11Uri(text); // the formatter never emits what the parser refuses (too long, bad type, ...)
  return text;
}
