/**
 * Strict, bounded CBOR (RFC 8949) for everything vitalseal reads from the network or disk.
 *
 * Decoding is two passes. First a hand-written scan walks the item headers without allocating:
 * it rejects reserved and indefinite encodings, checks every length against the bytes that remain
 * (so a header claiming 4 GiB allocates nothing), bounds nesting depth, item count and string
 * sizes, checks text is UTF-8, and insists on exactly one item with no trailing bytes. Only then
 * does cborg build values, with maps as `Map` (COSE uses integer keys) and duplicate keys refused.
 *
 * @example
 *   const bytes = encodeCbor(new Map([[1, 24]]));
 *   const value = decodeCbor(bytes, { maxBytes: 1024 });   // Map { 1 => 24 }
 */
import { decode as cborgDecode, encode as cborgEncode, type TagDecoder } from 'cborg';
import { DecodeError } from '../util/errors.ts';

export interface CborLimits {
  readonly maxBytes: number;
  readonly maxDepth: number;
  readonly maxItems: number;
  readonly maxStringBytes: number;
}

export const DEFAULT_CBOR_LIMITS: CborLimits = Object.freeze({
  maxBytes: 64 * 1024,
  maxDepth: 16,
  maxItems: 16_384,
  maxStringBytes: 64 * 1024,
});

export interface CborDecodeOptions extends Partial<CborLimits> {
  /** Tags the caller understands; they decode to `CborTag`. Any other tag is refused. */
  readonly allowTags?: readonly number[];
}

/** A tagged item (RFC 8949 §3.4). */
export class CborTag {
  constructor(
    readonly tag: number,
    readonly value: unknown,
  ) {}
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function fail(code: string, message: string): never {
  throw new DecodeError(code, `CBOR: ${message}`);
}

/**
 * Header-level validation; see the module comment. Returns nothing: it throws on the first problem.
 * Exported for tests and for callers that only need to know the bytes are acceptable.
 */
export function scanCbor(bytes: Uint8Array, limits: CborLimits, allowTags: readonly number[] = []): void {
  if (bytes.length > limits.maxBytes) fail('cbor-too-large', `${bytes.length} bytes exceeds the ${limits.maxBytes}-byte limit`);
  if (bytes.length === 0) fail('cbor-truncated', 'no data');
  let pos = 0;
  let items = 0;
  // Each stack entry: items still expected in an open array/map/tag.
  const stack: number[] = [];
  const need = (n: number, what: string): void => {
    if (n > bytes.length - pos) fail('cbor-truncated', `${what} needs ${n} bytes, ${bytes.length - pos} remain`);
  };
  const argument = (ai: number): number => {
    if (ai < 24) return ai;
    if (ai === 24) { need(1, 'argument'); return bytes[pos++] as number; }
    if (ai === 25) { need(2, 'argument'); const v = ((bytes[pos] as number) << 8) | (bytes[pos + 1] as number); pos += 2; return v; }
    if (ai === 26) {
      need(4, 'argument');
      const v = (((bytes[pos] as number) << 24) >>> 0) + ((bytes[pos + 1] as number) << 16) + ((bytes[pos + 2] as number) << 8) + (bytes[pos + 3] as number);
      pos += 4;
      return v;
    }
    if (ai === 27) {
      need(8, 'argument');
      let v = 0;
      for (let i = 0; i < 8; i++) v = v * 256 + (bytes[pos + i] as number);
      // Above 2^53 a JavaScript number is inexact: nothing vitalseal reads needs such values.
      if (v > Number.MAX_SAFE_INTEGER) fail('cbor-int-range', 'argument beyond 2^53');
      pos += 8;
      return v;
    }
    if (ai === 31) return fail('cbor-indefinite', 'indefinite-length items are not accepted');
    return fail('cbor-reserved', `reserved additional information ${ai}`); // RFC 8949 §3: 28-30
  };
  do {
    need(1, 'item header');
    const initial = bytes[pos++] as number;
    const major = initial >> 5;
    const ai = initial & 0x1f;
    if (++items > limits.maxItems) fail('cbor-too-many-items', `more than ${limits.maxItems} items`);
    let opens = 0;
    if (major === 7) {
      if (ai === 20 || ai === 21 || ai === 22) { /* false, true, null */ }
      else if (ai === 25) { need(2, 'half float'); pos += 2; }
      else if (ai === 26) { need(4, 'float'); pos += 4; }
      else if (ai === 27) { need(8, 'double'); pos += 8; }
      else if (ai === 31) fail('cbor-indefinite', 'unexpected break');
      else fail('cbor-simple', `simple value ${ai === 24 ? bytes[pos] : ai} is not accepted`);
    } else {
      const arg = argument(ai);
      switch (major) {
        case 0:
        case 1:
          break;
        case 2:
        case 3:
          if (arg > limits.maxStringBytes) fail('cbor-too-large', `string of ${arg} bytes exceeds the ${limits.maxStringBytes}-byte limit`);
          need(arg, major === 2 ? 'byte string' : 'text string');
          if (major === 3) {
            try {
              utf8.decode(bytes.subarray(pos, pos + arg));
            } catch {
              fail('cbor-utf8', 'text string is not valid UTF-8');
            }
          }
          pos += arg;
          break;
        case 4:
          // Every item takes at least one byte: a count beyond the remaining bytes is a lie.
          if (arg > bytes.length - pos) fail('cbor-truncated', `array claims ${arg} items, ${bytes.length - pos} bytes remain`);
          opens = arg;
          break;
        case 5:
          if (arg * 2 > bytes.length - pos) fail('cbor-truncated', `map claims ${arg} pairs, ${bytes.length - pos} bytes remain`);
          opens = arg * 2;
          break;
        case 6:
          if (!allowTags.includes(arg)) fail('cbor-tag', `tag ${arg} is not accepted here`);
          opens = 1;
          break;
        default:
          fail('cbor-reserved', `major type ${major}`);
      }
    }
    // This item fills one slot of its parent.
    if (stack.length > 0) stack[stack.length - 1] = (stack[stack.length - 1] as number) - 1;
    if (opens > 0) {
      if (stack.length + 1 > limits.maxDepth) fail('cbor-too-deep', `nesting deeper than ${limits.maxDepth}`);
      stack.push(opens);
    }
    while (stack.length > 0 && stack[stack.length - 1] === 0) stack.pop();
  } while (stack.length > 0);
  if (pos !== bytes.length) fail('cbor-trailing-bytes', `${bytes.length - pos} bytes after the item`);
}

/** Decodes exactly one CBOR item under `limits`; every failure is a `DecodeError` with a `cbor-*` code. */
export function decodeCbor(bytes: Uint8Array, options: CborDecodeOptions = {}): unknown {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('decodeCbor: expected Uint8Array');
  const limits: CborLimits = { ...DEFAULT_CBOR_LIMITS, ...stripUndefined(options) };
  const allowTags = options.allowTags ?? [];
  scanCbor(bytes, limits, allowTags);
  const tags: TagDecoder[] = [];
  for (const t of allowTags) tags[t] = (inner: unknown) => new CborTag(t, inner);
  try {
    return cborgDecode(bytes, {
      useMaps: true,
      rejectDuplicateMapKeys: true,
      allowIndefinite: false,
      allowUndefined: false,
      allowInfinity: false,
      allowNaN: false,
      allowBigInt: false,
      strict: true,
      tags,
    });
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    if (/duplicate|repeat map key/i.test(message)) fail('cbor-duplicate-key', 'map has a duplicate key');
    if (/minimal|strict/i.test(message)) fail('cbor-non-minimal', 'integer or length not in its shortest form');
    if (/NaN|Infinity/i.test(message)) fail('cbor-float', 'NaN or infinite float');
    return fail('cbor-invalid', message.replace(/^CBOR decode error: /, ''));
  }
}

function stripUndefined(o: CborDecodeOptions): Partial<CborLimits> {
  const out: Record<string, number> = {};
  for (const k of ['maxBytes', 'maxDepth', 'maxItems', 'maxStringBytes'] as const) {
    const v = o[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/**
 * Encodes one value. Maps (`Map` or plain objects) keep insertion order, because COSE structures
 * and the known-answer examples depend on it; integers take their shortest form; `Uint8Array` is a
 * byte string. A `CborTag` is accepted at the top level (COSE message tags).
 */
export function encodeCbor(value: unknown): Uint8Array {
  if (value instanceof CborTag) {
    const head = headerBytes(6, value.tag);
    const body = encodeCbor(value.value);
    const out = new Uint8Array(head.length + body.length);
    out.set(head);
    out.set(body, head.length);
    return out;
  }
  return cborgEncode(value, { mapSorter: undefined, float64: false });
}

/** The header of a major type with its argument in shortest form (RFC 8949 §3). */
export function headerBytes(major: number, arg: number): Uint8Array {
  const m = major << 5;
  if (arg < 24) return Uint8Array.of(m | arg);
  if (arg < 0x100) return Uint8Array.of(m | 24, arg);
  if (arg < 0x10000) return Uint8Array.of(m | 25, arg >> 8, arg & 0xff);
  if (arg < 0x100000000) return Uint8Array.of(m | 26, (arg >>> 24) & 0xff, (arg >> 16) & 0xff, (arg >> 8) & 0xff, arg & 0xff);
  throw new RangeError('headerBytes: argument too large');
}
