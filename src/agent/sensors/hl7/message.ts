/**
 * A strict, bounded HL7 v2 message parser (HL7 v2.5.1 chapter 2, "Control"):
 *
 * - the message starts with an MSH segment; MSH-1 (the character after "MSH") is the field
 *   separator and MSH-2 the encoding characters: component, repetition, escape, subcomponent
 *   (§2.5.4, and a fifth, truncation, from v2.7 on). They must be distinct and not alphanumeric;
 * - segments end with CR (§2.5.1); LF and CR LF are tolerated, as many senders use them;
 * - every field is split into repetitions, components and subcomponents, and each leaf is
 *   unescaped (§2.7): \F\ \S\ \T\ \R\ \E\ become the separators, \Xhh..\ hex data, \.br\ a line
 *   break, \H\ and \N\ (highlighting) vanish; any other or unterminated escape is refused;
 * - limits on segments, fields per segment and repetitions keep the work bounded.
 *
 * Bytes are read as ISO-8859-1 (one character per byte, no decoding failures): the values the
 * gateway uses are ASCII, and text fields (names) are never used or logged.
 *
 * @example
 *   const msg = parseHl7(bytes);
 *   msg.segments[0].id;              // 'MSH'
 *   component(msg.segments[0], 9, 1); // 'ORU'
 */
import { DecodeError } from '../../../util/errors.ts';

export interface Separators {
  readonly field: string;
  readonly component: string;
  readonly repetition: string;
  readonly escape: string;
  readonly subcomponent: string;
}

/** A field: repetitions → components → subcomponents, every leaf unescaped. */
export type Hl7Field = string[][][];

export interface Hl7Segment {
  readonly id: string;
  /** fields[n] is SEG-n; fields[0] is unused (the segment id). For MSH, fields[1] is MSH-1. */
  readonly fields: readonly Hl7Field[];
}

export interface Hl7Message {
  readonly separators: Separators;
  readonly segments: readonly Hl7Segment[];
}

export interface Hl7Limits {
  readonly maxSegments: number;
  readonly maxFieldsPerSegment: number;
  readonly maxRepetitions: number;
}

export const DEFAULT_HL7_LIMITS: Hl7Limits = Object.freeze({ maxSegments: 2000, maxFieldsPerSegment: 256, maxRepetitions: 64 });

function fail(code: string, message: string): never {
  throw new DecodeError(code, `HL7: ${message}`);
}

const SEGMENT_ID = /^[A-Z][A-Z0-9]{2}$/;

export function parseHl7(bytes: Uint8Array, limits: Hl7Limits = DEFAULT_HL7_LIMITS): Hl7Message {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  if (!text.startsWith('MSH')) fail('hl7-no-msh', 'message does not start with an MSH segment');
  if (text.length < 8) fail('hl7-truncated', 'MSH segment too short for its separators');
  const field = text[3] as string;
  // §2.5.4: MSH-2 holds component, repetition, escape, subcomponent (and, from 2.7, truncation).
  const encEnd = text.indexOf(field, 4);
  const enc = text.slice(4, encEnd === -1 ? undefined : encEnd).replace(/[\r\n].*$/s, '');
  if (enc.length !== 4 && enc.length !== 5) fail('hl7-encoding-characters', `MSH-2 must hold 4 or 5 encoding characters, not ${enc.length}`);
  const seps: Separators = { field, component: enc[0] as string, repetition: enc[1] as string, escape: enc[2] as string, subcomponent: enc[3] as string };
  const all = [field, ...enc];
  if (new Set(all).size !== all.length) fail('hl7-encoding-characters', 'field separator and encoding characters must all differ');
  if (all.some((c) => /[A-Za-z0-9\r\n ]/.test(c))) fail('hl7-encoding-characters', 'separators must not be letters, digits, spaces or line ends');

  const lines = text.split(/\r\n|\r|\n/);
  const segments: Hl7Segment[] = [];
  for (const line of lines) {
    if (line.length === 0) continue;
    if (segments.length >= limits.maxSegments) fail('hl7-too-many-segments', `more than ${limits.maxSegments} segments`);
    segments.push(parseSegment(line, seps, limits, segments.length === 0));
  }
  if (segments[0]?.id !== 'MSH') fail('hl7-no-msh', 'first segment is not MSH');
  return { separators: seps, segments };
}

function parseSegment(line: string, seps: Separators, limits: Hl7Limits, first: boolean): Hl7Segment {
  const raw = line.split(seps.field);
  const id = raw[0] as string;
  if (!SEGMENT_ID.test(id)) fail('hl7-segment-id', `segment ${first ? 1 : '>1'} has an invalid id`);
  if (id === 'MSH' && !first) fail('hl7-segment-order', 'a second MSH segment');
  if (raw.length - 1 > limits.maxFieldsPerSegment) fail('hl7-too-many-fields', `${id} has more than ${limits.maxFieldsPerSegment} fields`);
  const fields: Hl7Field[] = [[]];
  if (id === 'MSH') {
    // MSH-1 is the field separator itself and MSH-2 the encoding characters: neither is split.
    fields.push([[[seps.field]]], [[[raw[1] as string]]]);
    for (let i = 2; i < raw.length; i++) fields.push(parseField(raw[i] as string, seps, limits, `MSH-${i + 1}`));
  } else {
    for (let i = 1; i < raw.length; i++) fields.push(parseField(raw[i] as string, seps, limits, `${id}-${i}`));
  }
  return { id, fields };
}

function parseField(raw: string, seps: Separators, limits: Hl7Limits, where: string): Hl7Field {
  if (raw.length === 0) return [];
  const reps = raw.split(seps.repetition);
  if (reps.length > limits.maxRepetitions) fail('hl7-too-many-repetitions', `${where} has more than ${limits.maxRepetitions} repetitions`);
  return reps.map((rep) => rep.split(seps.component).map((c) => c.split(seps.subcomponent).map((s) => unescapeHl7(s, seps, where))));
}

/** §2.7: escape sequences in a leaf value. */
export function unescapeHl7(s: string, seps: Separators, where = 'value'): string {
  if (!s.includes(seps.escape)) return s;
  let out = '';
  let i = 0;
  while (i < s.length) {
    const c = s[i] as string;
    if (c !== seps.escape) {
      out += c;
      i++;
      continue;
    }
    const end = s.indexOf(seps.escape, i + 1);
    if (end === -1) fail('hl7-escape', `${where}: unterminated escape sequence`);
    const body = s.slice(i + 1, end);
    switch (body[0]) {
      case 'F': out += seps.field; break;
      case 'S': out += seps.component; break;
      case 'T': out += seps.subcomponent; break;
      case 'R': out += seps.repetition; break;
      case 'E': out += seps.escape; break;
      case 'H': case 'N': break; // start/end highlighting: display only
      case 'X': {
        const hex = body.slice(1);
        if (hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9A-Fa-f]+$/.test(hex)) fail('hl7-escape', `${where}: malformed \\X..\\ hex escape`);
        out += Buffer.from(hex, 'hex').toString('latin1');
        break;
      }
      case '.':
        if (body === '.br') out += '\n';
        else if (!/^\.(sp|fi|nf|in|ti|sk|ce)[+-]?\d*$/.test(body)) fail('hl7-escape', `${where}: unknown formatting escape`);
        break;
      default:
        fail('hl7-escape', `${where}: unknown escape sequence`);
    }
    if (body.length !== 1 && body[0] !== 'X' && body[0] !== '.') fail('hl7-escape', `${where}: malformed escape sequence`);
    i = end + 1;
  }
  return out;
}

/** Component `c` (1-based) of the first repetition of field `n`, or '' when absent. */
export function component(seg: Hl7Segment, n: number, c = 1): string {
  return seg.fields[n]?.[0]?.[c - 1]?.[0] ?? '';
}

/** The whole first repetition of field `n` as components (first subcomponent each). */
export function components(seg: Hl7Segment, n: number): string[] {
  return (seg.fields[n]?.[0] ?? []).map((c) => c[0] ?? '');
}
