/**
 * CoAP message codec (RFC 7252 §3). Strict: every "MUST be processed as a message format error"
 * of §3 and §3.1 is a `DecodeError`; option numbers must not decrease; the decoder reads exactly
 * the datagram and allocates nothing beyond it.
 */
import { DecodeError } from '../util/errors.ts';

export type CoapType = 'CON' | 'NON' | 'ACK' | 'RST';
const TYPES: readonly CoapType[] = ['CON', 'NON', 'ACK', 'RST'];

/** Codes as class.detail (RFC 7252 §12.1). */
export const CoapCode = Object.freeze({
  EMPTY: 0x00,
  GET: 0x01,
  POST: 0x02,
  PUT: 0x03,
  DELETE: 0x04,
  CREATED: 0x41, // 2.01
  CHANGED: 0x44, // 2.04
  CONTENT: 0x45, // 2.05
  BAD_REQUEST: 0x80, // 4.00
  UNAUTHORIZED: 0x81, // 4.01
  BAD_OPTION: 0x82, // 4.02
  FORBIDDEN: 0x83, // 4.03
  NOT_FOUND: 0x84, // 4.04
  METHOD_NOT_ALLOWED: 0x85, // 4.05
  REQUEST_ENTITY_TOO_LARGE: 0x8d, // 4.13
  UNSUPPORTED_CONTENT_FORMAT: 0x8f, // 4.15
  INTERNAL_SERVER_ERROR: 0xa0, // 5.00
  SERVICE_UNAVAILABLE: 0xa3, // 5.03
});

/** Option numbers used here (RFC 7252 §5.10). */
export const CoapOption = Object.freeze({
  URI_HOST: 3,
  URI_PORT: 7,
  URI_PATH: 11,
  CONTENT_FORMAT: 12,
  URI_QUERY: 15,
  ACCEPT: 17,
});

/** Content-Formats (RFC 9052 §11.2 / IANA): application/cose; cose-type="cose-encrypt0" = 16, "cose-encrypt" = 96. */
export const ContentFormat = Object.freeze({
  COSE_ENCRYPT0: 16,
  COSE_ENCRYPT: 96,
  SENML_CBOR: 112,
});

export interface CoapOptionValue {
  readonly number: number;
  readonly value: Uint8Array;
}

export interface CoapMessage {
  readonly type: CoapType;
  readonly code: number;
  readonly messageId: number;
  readonly token: Uint8Array;
  /** In ascending option-number order. */
  readonly options: readonly CoapOptionValue[];
  readonly payload: Uint8Array;
}

export function codeString(code: number): string {
  return `${code >> 5}.${String(code & 0x1f).padStart(2, '0')}`;
}

const PAYLOAD_MARKER = 0xff;

export function decodeCoap(datagram: Uint8Array): CoapMessage {
  const fail = (code: string, msg: string): never => {
    throw new DecodeError(code, `CoAP: ${msg}`);
  };
  if (datagram.length < 4) fail('coap-truncated', 'shorter than the 4-byte header');
  const b0 = datagram[0] as number;
  // §3: unknown versions are silently ignored; to the caller that is a decode error it counts and drops.
  if (b0 >> 6 !== 1) fail('coap-version', `version ${b0 >> 6}`);
  const type = TYPES[(b0 >> 4) & 0x3] as CoapType;
  const tkl = b0 & 0x0f;
  if (tkl > 8) fail('coap-token-length', `token length ${tkl} is reserved`); // §3: 9-15 reserved
  const code = datagram[1] as number;
  const messageId = ((datagram[2] as number) << 8) | (datagram[3] as number);
  if (datagram.length < 4 + tkl) fail('coap-truncated', 'token cut short');
  const token = datagram.subarray(4, 4 + tkl);
  let pos = 4 + tkl;
  const options: CoapOptionValue[] = [];
  let number = 0;
  while (pos < datagram.length) {
    const head = datagram[pos++] as number;
    if (head === PAYLOAD_MARKER) {
      // §3: a marker followed by a zero-length payload is a format error.
      if (pos === datagram.length) fail('coap-empty-payload', 'payload marker with no payload');
      break;
    }
    const readExt = (nibble: number, what: string): number => {
      if (nibble < 13) return nibble;
      if (nibble === 13) {
        if (pos + 1 > datagram.length) fail('coap-truncated', `${what} cut short`);
        return (datagram[pos++] as number) + 13;
      }
      if (nibble === 14) {
        if (pos + 2 > datagram.length) fail('coap-truncated', `${what} cut short`);
        const v = (((datagram[pos] as number) << 8) | (datagram[pos + 1] as number)) + 269;
        pos += 2;
        return v;
      }
      return fail('coap-option-format', `${what} nibble 15 is reserved`); // §3.1
    };
    const delta = readExt(head >> 4, 'option delta');
    const length = readExt(head & 0x0f, 'option length');
    number += delta;
    if (number > 0xffff) fail('coap-option-format', 'option number beyond 65535');
    if (pos + length > datagram.length) fail('coap-truncated', `option ${number} value cut short`);
    options.push({ number, value: datagram.subarray(pos, pos + length) });
    pos += length;
  }
  const payload = pos < datagram.length ? datagram.subarray(pos) : new Uint8Array(0);
  // §4.1: an Empty message (0.00) has no token, options or payload.
  if (code === CoapCode.EMPTY && (tkl !== 0 || options.length > 0 || payload.length > 0)) {
    fail('coap-empty-not-empty', 'Empty message carries token, options or payload');
  }
  return { type, code, messageId, token, options, payload };
}

export function encodeCoap(m: CoapMessage): Uint8Array {
  if (m.token.length > 8) throw new RangeError('CoAP token longer than 8 bytes');
  if (!Number.isInteger(m.messageId) || m.messageId < 0 || m.messageId > 0xffff) throw new RangeError('CoAP message ID must be 0..65535');
  // §3.1: options in ascending number order (the sort is stable: repeated options keep their order).
  let options = m.options;
  for (let i = 1; i < options.length; i++) {
    if ((options[i] as CoapOptionValue).number < (options[i - 1] as CoapOptionValue).number) {
      options = [...m.options].sort((a, b) => a.number - b.number);
      break;
    }
  }
  // One pass for the size, one to write: every message is built on a hot path.
  let size = 4 + m.token.length + (m.payload.length > 0 ? 1 + m.payload.length : 0);
  let prev = 0;
  for (const o of options) {
    size += 1 + extBytes(o.number - prev) + extBytes(o.value.length) + o.value.length;
    prev = o.number;
  }
  const out = new Uint8Array(size);
  out[0] = (1 << 6) | (TYPES.indexOf(m.type) << 4) | m.token.length;
  out[1] = m.code;
  out[2] = m.messageId >> 8;
  out[3] = m.messageId & 0xff;
  out.set(m.token, 4);
  let off = 4 + m.token.length;
  prev = 0;
  for (const o of options) {
    const delta = o.number - prev;
    prev = o.number;
    const head = off++;
    const dn = writeExt(out, off, delta);
    off += extBytes(delta);
    const ln = writeExt(out, off, o.value.length);
    off += extBytes(o.value.length);
    out[head] = (dn << 4) | ln;
    out.set(o.value, off);
    off += o.value.length;
  }
  if (m.payload.length > 0) {
    out[off++] = PAYLOAD_MARKER;
    out.set(m.payload, off);
  }
  return out;
}

/** §3.1: extended delta/length bytes for a value (0, 1 or 2). */
function extBytes(v: number): number {
  if (v < 13) return 0;
  if (v < 269) return 1;
  if (v <= 0xffff + 269) return 2;
  throw new RangeError('CoAP option delta/length too large');
}

/** Writes the extended bytes of `v` at `off`; returns the nibble. */
function writeExt(out: Uint8Array, off: number, v: number): number {
  if (v < 13) return v;
  if (v < 269) {
    out[off] = v - 13;
    return 13;
  }
  out[off] = (v - 269) >> 8;
  out[off + 1] = (v - 269) & 0xff;
  return 14;
}

/** §3.2 uint option value: shortest big-endian form, 0 as the empty value. */
export function uintOption(number: number, value: number): CoapOptionValue {
  const bytes: number[] = [];
  for (let v = value; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return { number, value: Uint8Array.from(bytes) };
}

export function readUintOption(m: CoapMessage, number: number): number | undefined {
  const o = m.options.find((x) => x.number === number);
  if (o === undefined) return undefined;
  if (o.value.length > 4) throw new DecodeError('coap-option-format', `option ${number}: uint longer than 4 bytes`);
  return o.value.reduce((acc, b) => acc * 256 + b, 0);
}

/** Uri-Path options for "/v1/telemetry" → ["v1", "telemetry"]. */
export function pathOptions(path: string): CoapOptionValue[] {
  const enc = new TextEncoder();
  return path.split('/').filter((s) => s.length > 0).map((s) => ({ number: CoapOption.URI_PATH, value: enc.encode(s) }));
}

export function readPath(m: CoapMessage): string {
  const dec = new TextDecoder('utf-8', { fatal: true });
  try {
    return '/' + m.options.filter((o) => o.number === CoapOption.URI_PATH).map((o) => dec.decode(o.value)).join('/');
  } catch {
    throw new DecodeError('coap-option-format', 'Uri-Path is not UTF-8');
  }
}
