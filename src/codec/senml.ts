/**
 * SenML (RFC 8428) packs: CBOR representation with integer labels (§6, Table 4), a JSON reader
 * for the RFC's examples and the HTTP API, and record resolution (§4.6).
 *
 * Decoding is strict: unknown labels, wrong value types, records with no value, names outside
 * §4.5.1's character set, versions above 10 and oversized packs are refused with `DecodeError`.
 *
 * @example
 *   const bytes = encodeSenmlCbor([{ bn: 'urn:dev:vitalseal:bed-7:', bt: 1.7e9, n: 'heart-rate', u: 'beat/min', v: 72 }]);
 *   const records = resolveSenml(decodeSenmlCbor(bytes));   // [{ n: 'urn:dev:vitalseal:bed-7:heart-rate', t: 1.7e9, v: 72, ... }]
 */
import { DecodeError } from '../util/errors.ts';
import { decodeCborWith, encodeCbor, type CborLimits } from './cbor.ts';

const NO_TAGS: readonly number[] = [];

/** One SenML record as it appears in a pack (base fields only on records that carry them). */
export interface SenmlRecord {
  bver?: number;
  bn?: string;
  bt?: number;
  bu?: string;
  bv?: number;
  bs?: number;
  n?: string;
  u?: string;
  v?: number;
  vs?: string;
  vb?: boolean;
  vd?: Uint8Array;
  s?: number;
  t?: number;
  ut?: number;
}

export type SenmlPack = SenmlRecord[];

/** A record after §4.6 resolution: full name, absolute or relative time, unit, exactly one value. */
export interface ResolvedRecord {
  readonly n: string;
  readonly t: number;
  readonly u?: string;
  readonly v?: number;
  readonly vs?: string;
  readonly vb?: boolean;
  readonly vd?: Uint8Array;
  readonly s?: number;
  readonly ut?: number;
}

type Field = keyof SenmlRecord;
type Kind = 'string' | 'number' | 'boolean' | 'bytes' | 'version';

/** RFC 8428 Table 4 (CBOR labels) with each field's type. */
const FIELDS: readonly (readonly [Field, number, Kind])[] = [
  ['bver', -1, 'version'], ['bn', -2, 'string'], ['bt', -3, 'number'], ['bu', -4, 'string'], ['bv', -5, 'number'],
  ['bs', -6, 'number'], ['n', 0, 'string'], ['u', 1, 'string'], ['v', 2, 'number'], ['vs', 3, 'string'],
  ['vb', 4, 'boolean'], ['s', 5, 'number'], ['t', 6, 'number'], ['ut', 7, 'number'], ['vd', 8, 'bytes'],
];
const BY_LABEL = new Map(FIELDS.map(([f, l, k]) => [l, [f, k] as const]));
const BY_NAME = new Map(FIELDS.map(([f, l, k]) => [f as string, [f, l, k] as const]));

export interface SenmlLimits extends Partial<CborLimits> {
  readonly maxRecords?: number;
}


export const DEFAULT_MAX_RECORDS = 4096;

function fail(code: string, message: string): never {
  throw new DecodeError(code, `SenML: ${message}`);
}

/** Stores a checked value under its field (named stores: cheaper than a computed key). */
function setField(r: SenmlRecord, field: Field, v: unknown): void {
  switch (field) {
    case 'bver': r.bver = v as number; return;
    case 'bn': r.bn = v as string; return;
    case 'bt': r.bt = v as number; return;
    case 'bu': r.bu = v as string; return;
    case 'bv': r.bv = v as number; return;
    case 'bs': r.bs = v as number; return;
    case 'n': r.n = v as string; return;
    case 'u': r.u = v as string; return;
    case 'v': r.v = v as number; return;
    case 'vs': r.vs = v as string; return;
    case 'vb': r.vb = v as boolean; return;
    case 'vd': r.vd = v as Uint8Array; return;
    case 's': r.s = v as number; return;
    case 't': r.t = v as number; return;
    case 'ut': r.ut = v as number; return;
    default: {
      const never: never = field;
      throw new TypeError(`unknown SenML field ${String(never)}`);
    }
  }
}

/** `record` is the record's index: the message is built only when a check fails. */
function checkValue(field: Field, kind: Kind, value: unknown, record: number): void {
  const ok =
    kind === 'string' ? typeof value === 'string' :
    kind === 'number' ? typeof value === 'number' && Number.isFinite(value) :
    kind === 'boolean' ? typeof value === 'boolean' :
    kind === 'bytes' ? value instanceof Uint8Array :
    Number.isInteger(value);
  if (!ok) fail('senml-field-type', `record ${record}: field ${field} must be ${kind === 'version' ? 'an integer' : `a ${kind}`}`);
  // §4.4: versions above 10 are ones this implementation does not understand.
  if (kind === 'version' && ((value as number) < 1 || (value as number) > 10)) fail('senml-version', `record ${record}: unsupported version ${String(value)}`);
}

function checkPackSize(n: number, limits: SenmlLimits): void {
  const max = limits.maxRecords ?? DEFAULT_MAX_RECORDS;
  if (n === 0) fail('senml-empty', 'pack has no records');
  if (n > max) fail('senml-too-many-records', `${n} records exceeds the limit of ${max}`);
}

/** Encodes a pack with CBOR integer labels, fields in the order given. */
export function encodeSenmlCbor(pack: SenmlPack): Uint8Array {
  return encodeCbor(pack.map((r) => {
    const m = new Map<number, unknown>();
    for (const [key, value] of Object.entries(r)) {
      if (value === undefined) continue;
      const spec = BY_NAME.get(key);
      if (spec === undefined) throw new RangeError(`SenML encode: unknown field ${key}`);
      m.set(spec[1], value);
    }
    return m;
  }));
}

/**
 * Decodes and checks a CBOR SenML pack; does not resolve base fields (see `resolveSenml`).
 * `views`: `vd` values as views of the input instead of copies (CBOR `views`), for callers that
 * convert them at once and never change the input meanwhile.
 */
export function decodeSenmlCbor(bytes: Uint8Array, limits: SenmlLimits = {}, views = false): SenmlPack {
  const value = decodeCborWith(bytes, limits, NO_TAGS, views);
  if (!Array.isArray(value)) fail('senml-not-a-pack', 'top level is not an array');
  checkPackSize(value.length, limits);
  const out: SenmlPack = new Array<SenmlRecord>(value.length);
  for (let i = 0; i < value.length; i++) {
    const item: unknown = value[i];
    if (!(item instanceof Map)) fail('senml-not-a-record', `record ${i} is not a map`);
    const r: SenmlRecord = {};
    // forEach, not for-of: no [key, value] pair allocated per field.
    (item as Map<unknown, unknown>).forEach((v, label) => {
      const spec = typeof label === 'number' ? BY_LABEL.get(label) : undefined;
      // Strings as labels would be the JSON names: not valid in the CBOR representation (§6).
      if (spec === undefined) fail('senml-unknown-label', `record ${i}: unknown label ${String(label)}`);
      checkValue(spec[0], spec[1], v, i);
      setField(r, spec[0], v);
    });
    out[i] = r;
  }
  return out;
}

/** Decodes the JSON representation (§5). `vd` is base64url (§5). */
export function decodeSenmlJson(text: string, limits: SenmlLimits = {}): SenmlPack {
  if (text.length > (limits.maxBytes ?? 256 * 1024)) fail('senml-too-large', 'JSON pack too large');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    fail('senml-json', 'not valid JSON');
  }
  if (!Array.isArray(value)) fail('senml-not-a-pack', 'top level is not an array');
  checkPackSize(value.length, limits);
  return value.map((item: unknown, i) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) fail('senml-not-a-record', `record ${i} is not an object`);
    const r: SenmlRecord = {};
    for (const [key, raw] of Object.entries(item)) {
      const spec = BY_NAME.get(key);
      // §4.4: a field ending in "_" must be understood; any other unknown field we refuse as well,
      // because vitalseal is the only producer of what it reads.
      if (spec === undefined) fail('senml-unknown-label', `record ${i}: unknown field ${key}`);
      let v = raw;
      if (spec[2] === 'bytes') {
        if (typeof raw !== 'string' || !/^[A-Za-z0-9_-]*$/.test(raw)) fail('senml-field-type', `record ${i}: vd must be base64url`);
        v = new Uint8Array(Buffer.from(raw, 'base64url'));
      }
      checkValue(spec[0], spec[2], v, i);
      (r as Record<string, unknown>)[spec[0]] = v;
    }
    return r;
  });
}

/** §4.5.1: names start with a letter or digit and use only A-Z a-z 0-9 - : . / _ */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9\-:./_]*$/;
/** What may follow a valid first character: a valid base name and a name of these make a valid name. */
const NAME_CHARS_RE = /^[A-Za-z0-9\-:./_]*$/;

/**
 * Resolves base fields (§4.6): each record gets its full name, time (bt + t), unit (u or bu),
 * value (bv + v) and sum (bs + s). Base values apply to the record that carries them and to later ones.
 */
export function resolveSenml(pack: SenmlPack): ResolvedRecord[] {
  let bn = '';
  let bt = 0;
  let bu: string | undefined;
  let bv = 0;
  let bs: number | undefined;
  let version: number | undefined;
  let checkedBn: string | undefined;
  let bnOk = false;
  const out: ResolvedRecord[] = [];
  for (let i = 0; i < pack.length; i++) {
    const r = pack[i] as SenmlRecord;
    // §4.4: all records of a pack carry the same version.
    if (r.bver !== undefined) {
      if (version !== undefined && r.bver !== version) fail('senml-version', `record ${i}: version ${r.bver} after ${version}`);
      version = r.bver;
    }
    if (r.bn !== undefined) bn = r.bn;
    if (r.bt !== undefined) bt = r.bt;
    if (r.bu !== undefined) bu = r.bu;
    if (r.bv !== undefined) bv = r.bv;
    if (r.bs !== undefined) bs = r.bs;
    // A record of base fields only (RFC 8428 §5.1.7's first record) sets bases and resolves to nothing.
    if (onlyBaseFields(r)) continue;
    const n = bn + (r.n ?? '');
    // The base name is checked once per pack (it rarely changes), then only the record's part.
    if (bn !== checkedBn) {
      checkedBn = bn;
      bnOk = bn.length === 0 || NAME_RE.test(bn);
    }
    const valid = bn.length === 0 ? NAME_RE.test(n) : bnOk && NAME_CHARS_RE.test(r.n ?? '');
    if (!valid) fail('senml-name', `record ${i}: invalid name ${JSON.stringify(n)}`);
    const hasValue = (r.v === undefined ? 0 : 1) + (r.vs === undefined ? 0 : 1) + (r.vb === undefined ? 0 : 1) + (r.vd === undefined ? 0 : 1);
    if (hasValue > 1) fail('senml-values', `record ${i}: more than one value field`);
    // §4.2: exactly one value field, unless there is a sum.
    if (hasValue === 0 && r.s === undefined) fail('senml-no-value', `record ${i} (${n}) has no value or sum`);
    const u = r.u ?? bu;
    const rec: { -readonly [K in keyof ResolvedRecord]: ResolvedRecord[K] } = { n, t: bt + (r.t ?? 0) };
    if (u !== undefined) rec.u = u;
    if (r.v !== undefined) rec.v = bv + r.v;
    if (r.vs !== undefined) rec.vs = r.vs;
    if (r.vb !== undefined) rec.vb = r.vb;
    if (r.vd !== undefined) rec.vd = r.vd;
    // §4.5.4: with only one of Base Sum and Sum present, the other counts as zero.
    if (r.s !== undefined || bs !== undefined) rec.s = (bs ?? 0) + (r.s ?? 0);
    if (r.ut !== undefined) rec.ut = r.ut;
    out.push(rec);
  }
  return out;
}

/** True when every field present is a base field (their names start with "b", RFC 8428 Table 1). */
function onlyBaseFields(r: SenmlRecord): boolean {
  for (const k in r) if (!k.startsWith('b')) return false;
  return true;
}
