/**
 * Strict, bounded CBOR (RFC 8949) for everything vitalseal reads from the network or disk, and the
 * encoder for everything it writes.
 *
 * The decoder is one hand-written pass. Before it allocates anything for an item it checks the
 * item's length against the bytes that remain (so a header claiming 4 GiB allocates nothing), and it
 * bounds nesting depth, item count and string sizes. It accepts exactly one item with no trailing
 * bytes and refuses: indefinite lengths, reserved encodings, integers or lengths not in their
 * shortest form, simple values other than false/true/null, NaN and infinities, integers beyond
 * 2^53, text that is not UTF-8, map keys other than integers and text, duplicate map keys, and any
 * tag the caller did not allow. Maps decode as `Map` (COSE uses integer keys); byte strings as new
 * `Uint8Array`s that do not alias the input, unless the caller asks for views (`views: true`, for
 * hot paths that use the values at once and never change or reuse the input meanwhile).
 *
 * The encoder writes preferred serialization (RFC 8949 §4.1): shortest integer and length forms,
 * the shortest float that holds the value exactly. Maps keep insertion order, because COSE
 * structures and their known-answer bytes depend on it.
 *
 * @example
 *   const bytes = encodeCbor(new Map([[1, 24]]));
 *   const value = decodeCbor(bytes, { maxBytes: 1024 });   // Map { 1 => 24 }
 */
import { allocUninit, copyBytes, writeUint32BE } from '../util/bytes.ts';
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
  /**
   * Byte strings as views of the input instead of copies: one allocation less per byte string,
   * for callers that use the values at once. A view changes when the input does (zeroising it
   * included), so never with an input that is changed, reused or zeroised while a value lives.
   */
  readonly views?: boolean;
}

/** A tagged item (RFC 8949 §3.4). */
export class CborTag {
  constructor(
    readonly tag: number,
    readonly value: unknown,
  ) {}
}

/**
 * Bytes that are already one encoded CBOR item, written verbatim by `encodeCbor`: lets a caller
 * encode a constant part once (a sealing epoch's recipient structure) and splice it in per message.
 * The caller vouches that the bytes are exactly one well-formed item.
 */
export class CborRaw {
  constructor(readonly bytes: Uint8Array) {}
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const NO_TAGS: readonly number[] = [];

function fail(code: string, message: string): never {
  throw new DecodeError(code, `CBOR: ${message}`);
}

/** RFC 8949 Appendix D: half-precision to double. */
function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/** One decoding pass over `bytes`; see the module comment for what it refuses. */
class Decoder {
  #pos = 0;
  #items = 0;
  #dataView: DataView | undefined;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly limits: CborLimits,
    private readonly allowTags: readonly number[],
    private readonly views = false,
  ) {}

  #uint32(at: number): number {
    const b = this.bytes;
    return (((b[at] as number) << 24) >>> 0) + ((b[at + 1] as number) << 16) + ((b[at + 2] as number) << 8) + (b[at + 3] as number);
  }

  /** Made on first use: only floats need it. */
  get #view(): DataView {
    this.#dataView ??= new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    return this.#dataView;
  }

  /** Decodes the single top-level item and checks nothing follows it. */
  top(): unknown {
    if (this.bytes.length > this.limits.maxBytes) fail('cbor-too-large', `${this.bytes.length} bytes exceeds the ${this.limits.maxBytes}-byte limit`);
    if (this.bytes.length === 0) fail('cbor-truncated', 'no data');
    const value = this.#item(0);
    if (this.#pos !== this.bytes.length) fail('cbor-trailing-bytes', `${this.bytes.length - this.#pos} bytes after the item`);
    return value;
  }

  #need(n: number, what: string): void {
    if (n > this.bytes.length - this.#pos) fail('cbor-truncated', `${what} needs ${n} bytes, ${this.bytes.length - this.#pos} remain`);
  }

  /** RFC 8949 §3: the argument of an item head, which must be in its shortest form (§4.2.1). */
  #argument(ai: number): number {
    if (ai < 24) return ai;
    let v: number;
    let min: number;
    switch (ai) {
      case 24:
        this.#need(1, 'argument');
        v = this.bytes[this.#pos] as number;
        this.#pos += 1;
        min = 24;
        break;
      case 25:
        this.#need(2, 'argument');
        v = ((this.bytes[this.#pos] as number) << 8) | (this.bytes[this.#pos + 1] as number);
        this.#pos += 2;
        min = 0x100;
        break;
      case 26:
        this.#need(4, 'argument');
        v = this.#uint32(this.#pos);
        this.#pos += 4;
        min = 0x10000;
        break;
      case 27: {
        this.#need(8, 'argument');
        const hi = this.#uint32(this.#pos);
        const lo = this.#uint32(this.#pos + 4);
        // Above 2^53 a JavaScript number is inexact: nothing vitalseal reads needs such values.
        if (hi > 0x1fffff) fail('cbor-int-range', 'argument beyond 2^53');
        v = hi * 0x1_0000_0000 + lo;
        this.#pos += 8;
        min = 0x1_0000_0000;
        break;
      }
      case 31:
        return fail('cbor-indefinite', 'indefinite-length items are not accepted');
      default:
        return fail('cbor-reserved', `reserved additional information ${ai}`); // RFC 8949 §3: 28-30
    }
    if (v < min) fail('cbor-non-minimal', 'integer or length not in its shortest form');
    return v;
  }

  #item(depth: number): unknown {
    this.#need(1, 'item header');
    const initial = this.bytes[this.#pos++] as number;
    const major = initial >> 5;
    const ai = initial & 0x1f;
    if (++this.#items > this.limits.maxItems) fail('cbor-too-many-items', `more than ${this.limits.maxItems} items`);
    if (major === 7) return this.#simpleOrFloat(ai);
    const arg = this.#argument(ai);
    switch (major) {
      case 0:
        return arg;
      case 1:
        if (arg >= Number.MAX_SAFE_INTEGER) fail('cbor-int-range', 'negative integer beyond -2^53');
        return -1 - arg;
      case 2:
      case 3: {
        if (arg > this.limits.maxStringBytes) fail('cbor-too-large', `string of ${arg} bytes exceeds the ${this.limits.maxStringBytes}-byte limit`);
        this.#need(arg, major === 2 ? 'byte string' : 'text string');
        const start = this.#pos;
        this.#pos += arg;
        if (major === 2) {
          // A plain Uint8Array either way, even when the input is a Buffer.
          const view = new Uint8Array(this.bytes.buffer, this.bytes.byteOffset + start, arg);
          return this.views ? view : copyBytes(view);
        }
        return this.#text(start, this.#pos);
      }
      case 4: {
        // Every item takes at least one byte: a count beyond the remaining bytes is a lie.
        if (arg > this.bytes.length - this.#pos) fail('cbor-truncated', `array claims ${arg} items, ${this.bytes.length - this.#pos} bytes remain`);
        this.#enter(depth);
        const out = new Array<unknown>(arg);
        for (let i = 0; i < arg; i++) out[i] = this.#item(depth + 1);
        return out;
      }
      case 5: {
        if (arg * 2 > this.bytes.length - this.#pos) fail('cbor-truncated', `map claims ${arg} pairs, ${this.bytes.length - this.#pos} bytes remain`);
        this.#enter(depth);
        const out = new Map<unknown, unknown>();
        for (let i = 0; i < arg; i++) {
          const key = this.#item(depth + 1);
          if (typeof key !== 'number' && typeof key !== 'string') fail('cbor-map-key', 'map keys must be integers or text');
          // A repeated key does not grow the map (one hash lookup per key instead of two).
          out.set(key, this.#item(depth + 1));
          if (out.size !== i + 1) fail('cbor-duplicate-key', 'map has a duplicate key');
        }
        return out;
      }
      case 6: {
        if (!this.allowTags.includes(arg)) fail('cbor-tag', `tag ${arg} is not accepted here`);
        this.#enter(depth);
        return new CborTag(arg, this.#item(depth + 1));
      }
      default:
        return fail('cbor-reserved', `major type ${major}`);
    }
  }

  /** Text must be UTF-8 (RFC 8949 §3.1). Short ASCII, the common case, skips the decoder call. */
  #text(start: number, end: number): string {
    if (end - start <= 32) {
      let ascii = '';
      for (let i = start; i < end; i++) {
        const c = this.bytes[i] as number;
        if (c >= 0x80) return this.#utf8(start, end);
        ascii += String.fromCharCode(c);
      }
      return ascii;
    }
    return this.#utf8(start, end);
  }

  #utf8(start: number, end: number): string {
    try {
      return utf8.decode(this.bytes.subarray(start, end));
    } catch {
      return fail('cbor-utf8', 'text string is not valid UTF-8');
    }
  }

  #enter(depth: number): void {
    if (depth + 1 > this.limits.maxDepth) fail('cbor-too-deep', `nesting deeper than ${this.limits.maxDepth}`);
  }

  #simpleOrFloat(ai: number): unknown {
    let f: number;
    switch (ai) {
      case 20:
        return false;
      case 21:
        return true;
      case 22:
        return null;
      case 25:
        this.#need(2, 'half float');
        f = halfToNumber(this.#view.getUint16(this.#pos));
        this.#pos += 2;
        break;
      case 26:
        this.#need(4, 'float');
        f = this.#view.getFloat32(this.#pos);
        this.#pos += 4;
        break;
      case 27:
        this.#need(8, 'double');
        f = this.#view.getFloat64(this.#pos);
        this.#pos += 8;
        break;
      case 31:
        return fail('cbor-indefinite', 'unexpected break');
      default:
        return fail('cbor-simple', `simple value ${ai === 24 ? String(this.bytes[this.#pos]) : ai} is not accepted`);
    }
    if (!Number.isFinite(f)) fail('cbor-float', 'NaN or infinite float');
    return f;
  }
}

function withDefaults(o: Partial<CborLimits>): CborLimits {
  return {
    maxBytes: o.maxBytes ?? DEFAULT_CBOR_LIMITS.maxBytes,
    maxDepth: o.maxDepth ?? DEFAULT_CBOR_LIMITS.maxDepth,
    maxItems: o.maxItems ?? DEFAULT_CBOR_LIMITS.maxItems,
    maxStringBytes: o.maxStringBytes ?? DEFAULT_CBOR_LIMITS.maxStringBytes,
  };
}

/**
 * Checks that `bytes` is one acceptable item under `limits` (the same checks as `decodeCbor`),
 * for callers that only need to know the bytes are acceptable.
 */
export function scanCbor(bytes: Uint8Array, limits: CborLimits, allowTags: readonly number[] = NO_TAGS): void {
  new Decoder(bytes, limits, allowTags).top();
}

/** Decodes exactly one CBOR item under `limits`; every failure is a `DecodeError` with a `cbor-*` code. */
export function decodeCbor(bytes: Uint8Array, options: CborDecodeOptions = {}): unknown {
  return decodeCborWith(bytes, options, options.allowTags ?? NO_TAGS, options.views === true);
}

/**
 * `decodeCbor` with the options apart, for decoders built on it (SenML) that set `views` per call
 * without copying their caller's limits into a new options object.
 */
export function decodeCborWith(bytes: Uint8Array, limits: Partial<CborLimits>, allowTags: readonly number[], views: boolean): unknown {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('decodeCbor: expected Uint8Array');
  return new Decoder(bytes, withDefaults(limits), allowTags, views).top();
}

/** Bytes of an item head with argument `arg` (RFC 8949 §3, shortest form). */
export function headSize(arg: number): number {
  return arg < 24 ? 1 : arg < 0x100 ? 2 : arg < 0x10000 ? 3 : arg < 0x1_0000_0000 ? 5 : 9;
}

/**
 * Writes an item head with its argument in shortest form (RFC 8949 §3, §4.2.1) at `at`; returns
 * where the item's content starts. For encoders that write a fixed structure directly (COSE's).
 */
export function writeHead(out: Uint8Array, at: number, major: number, arg: number): number {
  const m = major << 5;
  if (arg < 24) {
    out[at] = m | arg;
    return at + 1;
  }
  if (arg < 0x100) {
    out[at] = m | 24;
    out[at + 1] = arg;
    return at + 2;
  }
  if (arg < 0x10000) {
    out[at] = m | 25;
    out[at + 1] = arg >>> 8;
    out[at + 2] = arg & 0xff;
    return at + 3;
  }
  if (arg < 0x1_0000_0000) {
    out[at] = m | 26;
    writeUint32BE(out, at + 1, arg);
    return at + 5;
  }
  out[at] = m | 27;
  writeUint32BE(out, at + 1, Math.floor(arg / 0x1_0000_0000));
  writeUint32BE(out, at + 5, arg >>> 0);
  return at + 9;
}

/**
 * The encoder's output: sized exactly by a first pass (`sizeOf`), so the second pass writes without
 * growing or copying the buffer.
 */
class Writer {
  readonly #buf: Uint8Array;
  readonly #view: DataView;
  #len = 0;

  constructor(size: number) {
    // Every byte is written before the buffer is returned (`result` checks the count).
    this.#buf = allocUninit(size);
    this.#view = new DataView(this.#buf.buffer, this.#buf.byteOffset, size);
  }

  byte(b: number): void {
    this.#buf[this.#len++] = b;
  }

  /** An item head with its argument in shortest form (RFC 8949 §3, §4.2.1). */
  head(major: number, arg: number): void {
    this.#len = writeHead(this.#buf, this.#len, major, arg);
  }

  bytes(b: Uint8Array): void {
    this.#buf.set(b, this.#len);
    this.#len += b.length;
  }

  text(s: string, byteLength: number): void {
    textEncoder.encodeInto(s, this.#buf.subarray(this.#len, this.#len + byteLength));
    this.#len += byteLength;
  }

  uint16(v: number): void {
    this.#view.setUint16(this.#len, v);
    this.#len += 2;
  }

  float32(v: number): void {
    this.#view.setFloat32(this.#len, v);
    this.#len += 4;
  }

  float64(v: number): void {
    this.#view.setFloat64(this.#len, v);
    this.#len += 8;
  }

  result(): Uint8Array {
    if (this.#len !== this.#buf.length) throw new Error(`encodeCbor: sized ${this.#buf.length} bytes, wrote ${this.#len}`);
    return this.#buf;
  }
}

const textEncoder = new TextEncoder();
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The half-precision bits of `x` if it is exactly representable as a half, else -1. */
function exactHalf(x: number): number {
  if (Math.fround(x) !== x) return -1;
  f32[0] = x;
  const bits = u32[0] as number;
  const sign = (bits >>> 16) & 0x8000;
  const exp = ((bits >>> 23) & 0xff) - 127;
  const mant = bits & 0x7fffff;
  if (exp >= -14 && exp <= 15) {
    if ((mant & 0x1fff) !== 0) return -1;
    return sign | ((exp + 15) << 10) | (mant >> 13);
  }
  // Half subnormals: multiples of 2^-24 below 2^-14.
  const scaled = Math.abs(x) * 2 ** 24;
  if (exp < -14 && Number.isInteger(scaled) && scaled < 1024) return sign | scaled;
  return -1;
}

/** How a number goes on the wire: integers as integers, others as the shortest exact float. */
function numberForm(x: number): 'uint' | 'nint' | 'half' | 'single' | 'double' {
  if (!Number.isFinite(x)) throw new RangeError('encodeCbor: NaN and infinities are not encoded');
  // Integral values beyond 2^53 are floats in JavaScript, and stay floats on the wire.
  if (Number.isSafeInteger(x) && !Object.is(x, -0)) return x >= 0 ? 'uint' : 'nint';
  if (exactHalf(x) >= 0) return 'half';
  return Math.fround(x) === x ? 'single' : 'double';
}

const FLOAT_SIZE = { half: 3, single: 5, double: 9 } as const;

function entriesOf(o: object): [string, unknown][] {
  return Object.entries(o).filter(([, v]) => v !== undefined);
}

/** First pass: the exact encoded size of `value`; also rejects what cannot be encoded. */
function sizeOf(value: unknown, depth: number): number {
  if (depth > 64) throw new RangeError('encodeCbor: nesting deeper than 64');
  switch (typeof value) {
    case 'number': {
      const form = numberForm(value);
      return form === 'uint' ? headSize(value) : form === 'nint' ? headSize(-1 - value) : FLOAT_SIZE[form];
    }
    case 'string': {
      const n = Buffer.byteLength(value, 'utf8');
      return headSize(n) + n;
    }
    case 'boolean':
      return 1;
    case 'object':
      break;
    default:
      throw new TypeError(`encodeCbor: cannot encode a ${typeof value}`);
  }
  if (value === null) return 1;
  if (value instanceof Uint8Array) return headSize(value.length) + value.length;
  if (value instanceof CborRaw) return value.bytes.length;
  let n: number;
  if (Array.isArray(value)) {
    n = headSize(value.length);
    for (const v of value) n += sizeOf(v, depth + 1);
  } else if (value instanceof Map) {
    n = headSize(value.size);
    for (const [k, v] of value) n += sizeOf(k, depth + 1) + sizeOf(v, depth + 1);
  } else if (value instanceof CborTag) {
    n = headSize(value.tag) + sizeOf(value.value, depth + 1);
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    const entries = entriesOf(value);
    n = headSize(entries.length);
    for (const [k, v] of entries) n += sizeOf(k, depth + 1) + sizeOf(v, depth + 1);
  } else {
    throw new TypeError(`encodeCbor: cannot encode a ${value.constructor?.name ?? 'object'}`);
  }
  return n;
}

/** Second pass: writes what `sizeOf` measured and accepted. */
function writeItem(w: Writer, value: unknown): void {
  switch (typeof value) {
    case 'number': {
      const form = numberForm(value);
      if (form === 'uint') w.head(0, value);
      else if (form === 'nint') w.head(1, -1 - value);
      else if (form === 'half') {
        w.byte(0xf9);
        w.uint16(exactHalf(value));
      } else if (form === 'single') {
        w.byte(0xfa);
        w.float32(value);
      } else {
        w.byte(0xfb);
        w.float64(value);
      }
      return;
    }
    case 'string': {
      const n = Buffer.byteLength(value, 'utf8');
      w.head(3, n);
      return w.text(value, n);
    }
    case 'boolean':
      return w.byte(value ? 0xf5 : 0xf4);
    default:
      break;
  }
  if (value === null) return w.byte(0xf6);
  if (value instanceof Uint8Array) {
    w.head(2, value.length);
    return w.bytes(value);
  }
  if (value instanceof CborRaw) return w.bytes(value.bytes);
  if (Array.isArray(value)) {
    w.head(4, value.length);
    for (const v of value) writeItem(w, v);
  } else if (value instanceof Map) {
    w.head(5, value.size);
    for (const [k, v] of value) {
      writeItem(w, k);
      writeItem(w, v);
    }
  } else if (value instanceof CborTag) {
    w.head(6, value.tag);
    writeItem(w, value.value);
  } else {
    const entries = entriesOf(value as object);
    w.head(5, entries.length);
    for (const [k, v] of entries) {
      writeItem(w, k);
      writeItem(w, v);
    }
  }
}

/**
 * Encodes one value: numbers (integers as CBOR integers, others as the shortest exact float),
 * strings, booleans, null, `Uint8Array` (byte string), arrays, `Map`s and plain objects (maps, in
 * insertion order), `CborTag`s, and `CborRaw` (pre-encoded, copied verbatim).
 */
export function encodeCbor(value: unknown): Uint8Array {
  const w = new Writer(sizeOf(value, 0));
  writeItem(w, value);
  return w.result();
}

/** The header of a major type with its argument in shortest form (RFC 8949 §3). */
export function headerBytes(major: number, arg: number): Uint8Array {
  const w = new Writer(headSize(arg));
  w.head(major, arg);
  return w.result();
}
