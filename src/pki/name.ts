/**
 * X.501 distinguished names as X.509 carries them (RFC 5280 §4.1.2.4): parsed for display and for
 * reading the common name, compared as DER bytes for chain building (RFC 5280 §7.1 allows binary
 * comparison; every certificate in a fleet chain is encoded by the same issuer software).
 *
 * @example
 *   const der = encodeName({ organization: 'Example Hospital', commonName: 'bed-7' });
 *   parseName(der).text;   // 'O=Example Hospital,CN=bed-7'
 */
import { children, malformed, oid, parseOne, printableString, readOid, readString, seq, setOf, TAG, utf8String, type Tlv } from './der.ts';
import { OID, oidName } from './oids.ts';

export interface NameAttribute {
  readonly type: string;
  readonly value: string;
}

export interface Name {
  /** The Name's DER (a SEQUENCE): what issuer/subject matching compares. */
  readonly der: Uint8Array;
  /** Attributes in encoded order (most significant RDN first). */
  readonly attributes: readonly NameAttribute[];
  /** RFC 4514-style text, in encoded order (not reversed), for display and logs. */
  readonly text: string;
}

/** The fields the fleet PKI sets; each is optional, in this order: C, O, OU, CN. */
export interface NameSpec {
  readonly country?: string;
  readonly organization?: string;
  readonly organizationalUnit?: string;
  readonly commonName?: string;
}

const MAX_RDNS = 32;
const MAX_ATTRIBUTE_CHARS = 256;

export function parseName(tlv: Tlv, what: string): Name {
  if (tlv.tag !== TAG.SEQUENCE) throw malformed(what, 'Name is not a SEQUENCE');
  const attributes: NameAttribute[] = [];
  for (const rdn of children(tlv, what, MAX_RDNS)) {
    if (rdn.tag !== TAG.SET) throw malformed(what, 'RDN is not a SET');
    const atvs = children(rdn, what, 8);
    if (atvs.length === 0) throw malformed(what, 'empty RDN');
    for (const atv of atvs) {
      if (atv.tag !== TAG.SEQUENCE) throw malformed(what, 'AttributeTypeAndValue is not a SEQUENCE');
      const parts = children(atv, what, 2);
      const [t, v] = parts;
      if (parts.length !== 2 || t === undefined || v === undefined) throw malformed(what, 'AttributeTypeAndValue needs a type and a value');
      const type = readOid(t, what);
      const value = readString(v, what);
      if (value.length > MAX_ATTRIBUTE_CHARS) throw malformed(what, `${oidName(type)} longer than ${MAX_ATTRIBUTE_CHARS} characters`);
      attributes.push({ type, value });
    }
  }
  return { der: tlv.der, attributes, text: attributes.map((a) => `${oidName(a.type)}=${escapeRdnValue(a.value)}`).join(',') };
}

export function parseNameDer(der: Uint8Array, what: string): Name {
  return parseName(parseOne(der, TAG.SEQUENCE, what), what);
}

/** RFC 4514 §2.4 escaping, plus control characters as \XX so a name can never forge a log line. */
function escapeRdnValue(v: string): string {
  let out = '';
  for (let i = 0; i < v.length; i++) {
    const c = v[i] as string;
    const code = c.charCodeAt(0);
    if (code < 0x20 || code === 0x7f) out += `\\${code.toString(16).padStart(2, '0')}`;
    else if (',+"\\<>;='.includes(c) || (i === 0 && (c === '#' || c === ' ')) || (i === v.length - 1 && c === ' ')) out += `\\${c}`;
    else out += c;
  }
  return out;
}

/** Every value of attribute `type`, in encoded order. */
export function attributeValues(name: Name, type: string): string[] {
  return name.attributes.filter((a) => a.type === type).map((a) => a.value);
}

/** The single common name; undefined if there is none or more than one. */
export function commonNameOf(name: Name): string | undefined {
  const cns = attributeValues(name, OID.commonName);
  return cns.length === 1 ? cns[0] : undefined;
}

/**
 * Encodes a Name: one attribute per RDN. RFC 5280 §4.1.2.4: UTF8String for directory strings,
 * PrintableString for the country code (X.520).
 */
export function encodeName(spec: NameSpec): Uint8Array {
  const rdns: Uint8Array[] = [];
  const add = (type: string, value: Uint8Array) => rdns.push(setOf(seq(oid(type), value)));
  if (spec.country !== undefined) {
    if (!/^[A-Z]{2}$/.test(spec.country)) throw new RangeError('encodeName: country must be two upper-case letters (ISO 3166)');
    add(OID.country, printableString(spec.country));
  }
  for (const [type, value] of [
    [OID.organization, spec.organization],
    [OID.organizationalUnit, spec.organizationalUnit],
    [OID.commonName, spec.commonName],
  ] as const) {
    if (value === undefined) continue;
    if (value.length === 0 || value.length > 64) throw new RangeError(`encodeName: ${oidName(type)} must be 1-64 characters (RFC 5280 upper bounds)`);
    // eslint-disable-next-line no-control-regex
    if (/[\x00-\x1f\x7f]/.test(value)) throw new RangeError(`encodeName: ${oidName(type)} contains a control character`);
    add(type, utf8String(value));
  }
  return seq(...rdns);
}
