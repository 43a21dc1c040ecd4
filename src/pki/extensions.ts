/**
 * The certificate extensions the fleet PKI writes and reads (RFC 5280 §4.2): basic constraints, key
 * usage, extended key usage, subject alternative name, subject and authority key identifiers.
 * Other extensions are kept as raw entries; a critical one we do not process makes validation fail
 * (RFC 5280 §4.2: "A certificate-using system MUST reject the certificate if it encounters a
 * critical extension it does not recognize").
 */
import { isIP } from 'node:net';
import {
  bool, children, ctxPrim, ia5String, malformed, namedBits, octets, oid, parseOne, readBitString, readBoolean, readOctetString,
  readOid, readSmallInt, readString, seq, TAG, tlv, uint, type Tlv,
} from './der.ts';
import { OID, oidName } from './oids.ts';

/** RFC 5280 §4.2.1.3, in bit order. */
export const KEY_USAGE_BITS = [
  'digitalSignature', 'nonRepudiation', 'keyEncipherment', 'dataEncipherment', 'keyAgreement',
  'keyCertSign', 'cRLSign', 'encipherOnly', 'decipherOnly',
] as const;
export type KeyUsage = (typeof KEY_USAGE_BITS)[number];

export interface RawExtension {
  readonly oid: string;
  readonly critical: boolean;
  readonly value: Uint8Array;
}

export interface BasicConstraints {
  readonly ca: boolean;
  /** Present only on CA certificates that limit the path below them. */
  readonly pathLen?: number;
}

export interface GeneralNames {
  readonly dns: readonly string[];
  readonly uris: readonly string[];
  /** Dotted IPv4 or RFC 5952-style IPv6 text. */
  readonly ips: readonly string[];
  readonly emails: readonly string[];
  /** Names of other forms (otherName, directoryName, ...): counted, not interpreted. */
  readonly otherCount: number;
}

export interface Extensions {
  readonly all: readonly RawExtension[];
  readonly basicConstraints?: BasicConstraints;
  readonly keyUsage?: ReadonlySet<KeyUsage>;
  readonly extKeyUsage?: readonly string[];
  readonly subjectAltName?: GeneralNames;
  readonly subjectKeyId?: Uint8Array;
  readonly authorityKeyId?: Uint8Array;
  /** OIDs of critical extensions this module does not process. */
  readonly unhandledCritical: readonly string[];
}

const MAX_EXTENSIONS = 32;
const MAX_NAMES = 64;
/** Extensions we interpret; a critical extension outside this set is unhandled. */
const HANDLED = new Set<string>([
  OID.basicConstraints, OID.keyUsage, OID.extKeyUsage, OID.subjectAltName, OID.subjectKeyIdentifier, OID.authorityKeyIdentifier,
]);

/** Parses the Extensions SEQUENCE inside [3] (RFC 5280 §4.1). */
export function parseExtensions(tlv: Tlv | undefined, what: string): Extensions {
  if (tlv === undefined) return { all: [], unhandledCritical: [] };
  if (tlv.tag !== TAG.SEQUENCE) throw malformed(what, 'Extensions is not a SEQUENCE');
  const list = children(tlv, what, MAX_EXTENSIONS);
  // RFC 5280 §4.1.2.9: if present, the sequence holds one or more extensions.
  if (list.length === 0) throw malformed(what, 'empty Extensions');
  const all: RawExtension[] = [];
  const seen = new Set<string>();
  let out: {
    -readonly [K in keyof Extensions]?: Extensions[K];
  } = {};
  const unhandledCritical: string[] = [];
  for (const ext of list) {
    if (ext.tag !== TAG.SEQUENCE) throw malformed(what, 'Extension is not a SEQUENCE');
    const parts = children(ext, what, 3);
    const [o, second, third] = parts;
    if (o === undefined || second === undefined) throw malformed(what, 'Extension needs an OID and a value');
    const extOid = readOid(o, what);
    let critical = false;
    let valueTlv: Tlv;
    if (third !== undefined) {
      critical = readBoolean(second, what);
      // X.690 §11.5: DER never encodes a DEFAULT value (critical DEFAULT FALSE).
      if (!critical) throw malformed(what, `${oidName(extOid)}: critical FALSE must be omitted in DER`);
      valueTlv = third;
    } else {
      valueTlv = second;
    }
    const value = readOctetString(valueTlv, what);
    // RFC 5280 §4.2: at most one instance of an extension.
    if (seen.has(extOid)) throw malformed(what, `duplicate ${oidName(extOid)} extension`);
    seen.add(extOid);
    all.push({ oid: extOid, critical, value });
    const w = `${what} ${oidName(extOid)}`;
    switch (extOid) {
      case OID.basicConstraints:
        out = { ...out, basicConstraints: parseBasicConstraints(value, w) };
        break;
      case OID.keyUsage:
        out = { ...out, keyUsage: parseKeyUsage(value, w) };
        break;
      case OID.extKeyUsage:
        out = { ...out, extKeyUsage: parseExtKeyUsage(value, w) };
        break;
      case OID.subjectAltName:
        out = { ...out, subjectAltName: parseGeneralNames(parseOne(value, TAG.SEQUENCE, w), w) };
        break;
      case OID.subjectKeyIdentifier:
        out = { ...out, subjectKeyId: parseKeyIdentifier(readOctetString(parseOne(value, TAG.OCTET_STRING, w), w), w) };
        break;
      case OID.authorityKeyIdentifier: {
        const keyId = parseAuthorityKeyId(value, w);
        if (keyId !== undefined) out = { ...out, authorityKeyId: keyId };
        break;
      }
      default:
        if (critical && !HANDLED.has(extOid)) unhandledCritical.push(extOid);
    }
  }
  return { ...out, all, unhandledCritical };
}

function parseKeyIdentifier(id: Uint8Array, what: string): Uint8Array {
  if (id.length === 0 || id.length > 64) throw malformed(what, `key identifier of ${id.length} bytes`);
  return id;
}

function parseBasicConstraints(value: Uint8Array, what: string): BasicConstraints {
  const parts = children(parseOne(value, TAG.SEQUENCE, what), what, 2);
  let i = 0;
  let ca = false;
  const first = parts[0];
  if (first !== undefined && first.tag === TAG.BOOLEAN) {
    ca = readBoolean(first, what);
    if (!ca) throw malformed(what, 'cA FALSE must be omitted in DER');
    i = 1;
  }
  const rest = parts[i];
  if (rest === undefined) {
    if (parts.length > i) throw malformed(what, 'unexpected element');
    return { ca };
  }
  if (parts.length > i + 1) throw malformed(what, 'unexpected element');
  const pathLen = readSmallInt(rest, what, 255);
  // RFC 5280 §4.2.1.9: pathLenConstraint only when cA is asserted.
  if (!ca) throw malformed(what, 'pathLenConstraint without cA');
  return { ca, pathLen };
}

function parseKeyUsage(value: Uint8Array, what: string): ReadonlySet<KeyUsage> {
  const b = readBitString(parseOne(value, TAG.BIT_STRING, what), what);
  if (b.bytes.length === 0 || b.bytes.length > 2) throw malformed(what, 'KeyUsage must hold 1-9 bits');
  // X.690 §11.2.2: a named bit list has no trailing zero bits.
  const last = b.bytes[b.bytes.length - 1] as number;
  if ((last & (1 << b.unusedBits)) === 0) throw malformed(what, 'KeyUsage has trailing zero bits');
  const set = new Set<KeyUsage>();
  const totalBits = b.bytes.length * 8 - b.unusedBits;
  for (let bit = 0; bit < totalBits; bit++) {
    if (((b.bytes[bit >> 3] as number) & (0x80 >> (bit & 7))) !== 0) {
      const name = KEY_USAGE_BITS[bit];
      if (name === undefined) throw malformed(what, `unknown KeyUsage bit ${bit}`);
      set.add(name);
    }
  }
  return set;
}

function parseExtKeyUsage(value: Uint8Array, what: string): string[] {
  const items = children(parseOne(value, TAG.SEQUENCE, what), what, 32);
  if (items.length === 0) throw malformed(what, 'empty ExtKeyUsage');
  return items.map((t) => readOid(t, what));
}

function parseAuthorityKeyId(value: Uint8Array, what: string): Uint8Array | undefined {
  const parts = children(parseOne(value, TAG.SEQUENCE, what), what, 3);
  let last = -1;
  let keyId: Uint8Array | undefined;
  for (const p of parts) {
    const n = p.tag & 0x1f;
    const cls = p.tag & 0xc0;
    if (cls !== 0x80 || n > 2 || n <= last) throw malformed(what, 'unexpected AuthorityKeyIdentifier element');
    last = n;
    if (n === 0) {
      if ((p.tag & 0x20) !== 0) throw malformed(what, 'keyIdentifier must be primitive');
      keyId = parseKeyIdentifier(p.value, what);
    }
  }
  return keyId;
}

function ipText(bytes: Uint8Array, what: string): string {
  if (bytes.length === 4) return Array.from(bytes).join('.');
  if (bytes.length === 16) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] as number) << 8) | (bytes[i + 1] as number)).toString(16));
    return compressIpv6(groups);
  }
  throw malformed(what, `iPAddress of ${bytes.length} bytes`);
}

/** RFC 5952 §4.2: the longest run (of two or more) of zero groups becomes "::". */
function compressIpv6(groups: string[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < groups.length; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** GeneralNames (RFC 5280 §4.2.1.6). */
export function parseGeneralNames(tlv: Tlv, what: string): GeneralNames {
  const items = children(tlv, what, MAX_NAMES);
  if (items.length === 0) throw malformed(what, 'empty GeneralNames');
  const dns: string[] = [];
  const uris: string[] = [];
  const ips: string[] = [];
  const emails: string[] = [];
  let otherCount = 0;
  for (const item of items) {
    switch (item.tag) {
      case ctxPrim(1):
        emails.push(readString({ ...item, tag: TAG.IA5_STRING }, what));
        break;
      case ctxPrim(2):
        dns.push(readString({ ...item, tag: TAG.IA5_STRING }, what));
        break;
      case ctxPrim(6):
        uris.push(readString({ ...item, tag: TAG.IA5_STRING }, what));
        break;
      case ctxPrim(7):
        ips.push(ipText(item.value, what));
        break;
      case 0xa0: // otherName
      case 0xa3: // x400Address
      case 0xa4: // directoryName
      case 0xa5: // ediPartyName
      case ctxPrim(8): // registeredID
        otherCount++;
        break;
      default:
        throw malformed(what, `unexpected GeneralName tag 0x${item.tag.toString(16)}`);
    }
  }
  return { dns, uris, ips, emails, otherCount };
}

// ---- encoders -------------------------------------------------------------------------------------

export function encodeExtension(extOid: string, critical: boolean, value: Uint8Array): Uint8Array {
  return critical ? seq(oid(extOid), bool(true), octets(value)) : seq(oid(extOid), octets(value));
}

export function encodeBasicConstraints(bc: BasicConstraints): Uint8Array {
  const parts: Uint8Array[] = [];
  if (bc.ca) parts.push(bool(true));
  if (bc.pathLen !== undefined) {
    if (!bc.ca) throw new RangeError('encodeBasicConstraints: pathLen needs ca');
    parts.push(uint(bc.pathLen));
  }
  return seq(...parts);
}

export function encodeKeyUsage(usages: readonly KeyUsage[]): Uint8Array {
  return namedBits(usages.map((u) => KEY_USAGE_BITS.indexOf(u)));
}

export function encodeExtKeyUsage(oids: readonly string[]): Uint8Array {
  return seq(...oids.map((o) => oid(o)));
}

const DNS_NAME = /^(?=.{1,253}$)(\*\.)?([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export function encodeGeneralNames(names: { dns?: readonly string[]; uris?: readonly string[]; ips?: readonly string[] }): Uint8Array {
  const out: Uint8Array[] = [];
  for (const d of names.dns ?? []) {
    // RFC 5280 §4.2.1.6: preferred name syntax (RFC 1034 §3.5); a leading "*." wildcard is allowed.
    if (!DNS_NAME.test(d)) throw new RangeError(`encodeGeneralNames: ${JSON.stringify(d)} is not a DNS name`);
    out.push(ia5String(d.toLowerCase(), ctxPrim(2)));
  }
  for (const u of names.uris ?? []) out.push(ia5String(u, ctxPrim(6)));
  for (const ip of names.ips ?? []) out.push(encodeIp(ip));
  if (out.length === 0) throw new RangeError('encodeGeneralNames: no names');
  return seq(...out);
}

function encodeIp(ip: string): Uint8Array {
  const v = isIP(ip);
  if (v === 4) return new Uint8Array([0x87, 4, ...ip.split('.').map(Number)]);
  if (v === 6) {
    const [head = '', tail] = ip.split('::');
    const h = head === '' ? [] : head.split(':');
    const t = tail === undefined || tail === '' ? [] : tail.split(':');
    if (h.concat(t).some((g) => g.includes('.'))) throw new RangeError('encodeIp: IPv4-embedded IPv6 addresses are not supported');
    const groups = tail === undefined ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
    const bytes = new Uint8Array(16);
    groups.forEach((g, i) => {
      const n = parseInt(g, 16);
      bytes[2 * i] = n >> 8;
      bytes[2 * i + 1] = n & 0xff;
    });
    return new Uint8Array([0x87, 16, ...bytes]);
  }
  throw new RangeError(`encodeIp: ${JSON.stringify(ip)} is not an IP address`);
}

export function encodeSubjectKeyId(keyId: Uint8Array): Uint8Array {
  return octets(keyId);
}

export function encodeAuthorityKeyId(keyId: Uint8Array): Uint8Array {
  // [0] IMPLICIT KeyIdentifier (OCTET STRING)
  return seq(tlv(ctxPrim(0), keyId));
}
