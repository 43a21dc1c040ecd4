/**
 * The TLS presentation-language codec (RFC 8446 §3): fixed-width big-endian integers and
 * length-prefixed vectors. `Reader` is strict and bounded: every read checks the bytes left and
 * throws `DecodeError`, and a vector's bytes are read by a sub-reader that must be consumed exactly.
 * The codec knows nothing about protocol state.
 *
 * @example
 *   const w = new Writer();
 *   w.u16(0xfefc);
 *   w.vector(1, (inner) => inner.bytes(cookie));
 *   const r = new Reader(w.finish());
 *   const version = r.u16();
 *   const echoed = r.opaque(1, 0, 255);
 *   r.expectEnd('example');
 */
import { DecodeError } from '../../util/errors.ts';

export type LengthWidth = 1 | 2 | 3;

const MAX_FOR_WIDTH: Readonly<Record<LengthWidth, number>> = { 1: 0xff, 2: 0xffff, 3: 0xffffff };

export class Reader {
  readonly #bytes: Uint8Array;
  #offset: number;
  readonly #end: number;

  constructor(bytes: Uint8Array, start = 0, end = bytes.length) {
    this.#bytes = bytes;
    this.#offset = start;
    this.#end = end;
  }

  get offset(): number {
    return this.#offset;
  }

  get remaining(): number {
    return this.#end - this.#offset;
  }

  #need(n: number, what: string): void {
    if (this.#end - this.#offset < n) {
      throw new DecodeError('truncated', `${what}: needs ${n} bytes, ${this.#end - this.#offset} left`);
    }
  }

  u8(what = 'uint8'): number {
    this.#need(1, what);
    return this.#bytes[this.#offset++] as number;
  }

  u16(what = 'uint16'): number {
    this.#need(2, what);
    const b = this.#bytes;
    const o = this.#offset;
    this.#offset += 2;
    return ((b[o] as number) << 8) | (b[o + 1] as number);
  }

  u24(what = 'uint24'): number {
    this.#need(3, what);
    const b = this.#bytes;
    const o = this.#offset;
    this.#offset += 3;
    return ((b[o] as number) << 16) | ((b[o + 1] as number) << 8) | (b[o + 2] as number);
  }

  u32(what = 'uint32'): number {
    this.#need(4, what);
    const b = this.#bytes;
    const o = this.#offset;
    this.#offset += 4;
    return ((b[o] as number) * 0x1000000) + (((b[o + 1] as number) << 16) | ((b[o + 2] as number) << 8) | (b[o + 3] as number));
  }

  u48(what = 'uint48'): number {
    const hi = this.u16(what);
    return hi * 0x1_0000_0000 + this.u32(what);
  }

  /** A uint64 that must fit a safe JavaScript integer (epochs and sequence numbers stay far below 2^53). */
  u64(what = 'uint64'): number {
    const hi = this.u32(what);
    const lo = this.u32(what);
    if (hi > 0x1fffff) throw new DecodeError('value-too-large', `${what}: exceeds 2^53`);
    return hi * 0x1_0000_0000 + lo;
  }

  /** `n` raw bytes as a view into the input (callers that keep them must copy). */
  bytes(n: number, what = 'bytes'): Uint8Array {
    this.#need(n, what);
    const out = this.#bytes.subarray(this.#offset, this.#offset + n);
    this.#offset += n;
    return out;
  }

  /** The rest of this reader's range. */
  rest(): Uint8Array {
    return this.bytes(this.remaining);
  }

  /** A length-prefixed opaque vector `opaque x<min..max>` (RFC 8446 §3.4); returns a copy. */
  opaque(width: LengthWidth, min: number, max: number, what = 'opaque vector'): Uint8Array {
    const length = this.#length(width, min, max, what);
    return Uint8Array.from(this.bytes(length, what));
  }

  /** A length-prefixed vector read through a sub-reader that must consume exactly its bytes. */
  vector<T>(width: LengthWidth, min: number, max: number, what: string, body: (r: Reader) => T): T {
    const length = this.#length(width, min, max, what);
    this.#need(length, what);
    const sub = new Reader(this.#bytes, this.#offset, this.#offset + length);
    const value = body(sub);
    sub.expectEnd(what);
    this.#offset += length;
    return value;
  }

  /** A vector of items, each read by `item` until the vector's bytes are used up. */
  list<T>(width: LengthWidth, min: number, max: number, what: string, item: (r: Reader) => T): T[] {
    return this.vector(width, min, max, what, (sub) => {
      const out: T[] = [];
      while (sub.remaining > 0) out.push(item(sub));
      return out;
    });
  }

  #length(width: LengthWidth, min: number, max: number, what: string): number {
    const length = width === 1 ? this.u8(what) : width === 2 ? this.u16(what) : this.u24(what);
    if (length < min || length > max) {
      throw new DecodeError('bad-length', `${what}: length ${length} outside [${min}, ${max}]`);
    }
    return length;
  }

  expectEnd(what: string): void {
    if (this.#offset !== this.#end) {
      throw new DecodeError('trailing-bytes', `${what}: ${this.#end - this.#offset} unexpected trailing bytes`);
    }
  }
}

export class Writer {
  #buf: Uint8Array;
  #length = 0;

  constructor(capacity = 256) {
    this.#buf = new Uint8Array(capacity);
  }

  get length(): number {
    return this.#length;
  }

  #ensure(n: number): void {
    if (this.#length + n <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < this.#length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.#buf.subarray(0, this.#length));
    this.#buf = next;
  }

  u8(v: number): this {
    this.#ensure(1);
    this.#buf[this.#length++] = v & 0xff;
    return this;
  }

  u16(v: number): this {
    this.#ensure(2);
    this.#buf[this.#length++] = (v >>> 8) & 0xff;
    this.#buf[this.#length++] = v & 0xff;
    return this;
  }

  u24(v: number): this {
    this.#ensure(3);
    this.#buf[this.#length++] = (v >>> 16) & 0xff;
    this.#buf[this.#length++] = (v >>> 8) & 0xff;
    this.#buf[this.#length++] = v & 0xff;
    return this;
  }

  u32(v: number): this {
    this.#ensure(4);
    this.#buf[this.#length++] = (v >>> 24) & 0xff;
    this.#buf[this.#length++] = (v >>> 16) & 0xff;
    this.#buf[this.#length++] = (v >>> 8) & 0xff;
    this.#buf[this.#length++] = v & 0xff;
    return this;
  }

  u48(v: number): this {
    return this.u16(Math.floor(v / 0x1_0000_0000)).u32(v % 0x1_0000_0000);
  }

  u64(v: number): this {
    return this.u32(Math.floor(v / 0x1_0000_0000)).u32(v % 0x1_0000_0000);
  }

  bytes(b: Uint8Array): this {
    this.#ensure(b.length);
    this.#buf.set(b, this.#length);
    this.#length += b.length;
    return this;
  }

  /** `opaque x<..>` with a `width`-byte length prefix. */
  opaque(width: LengthWidth, b: Uint8Array): this {
    return this.vector(width, (w) => w.bytes(b));
  }

  /** Writes `body` behind a `width`-byte length prefix filled in afterwards. */
  vector(width: LengthWidth, body: (w: this) => void): this {
    this.#ensure(width);
    const at = this.#length;
    this.#length += width;
    body(this);
    const length = this.#length - at - width;
    if (length > MAX_FOR_WIDTH[width]) throw new RangeError(`vector of ${length} bytes does not fit a ${width}-byte length`);
    for (let i = width - 1, v = length; i >= 0; i--, v >>>= 8) this.#buf[at + i] = v & 0xff;
    return this;
  }

  /** The written bytes (a copy sized exactly). */
  finish(): Uint8Array {
    return this.#buf.slice(0, this.#length);
  }
}

/** Encodes with a fresh Writer. */
export function encodeWith(body: (w: Writer) => void, capacity?: number): Uint8Array {
  const w = new Writer(capacity);
  body(w);
  return w.finish();
}

/** Reads a whole buffer with `body` and insists every byte is consumed. */
export function decodeAll<T>(bytes: Uint8Array, what: string, body: (r: Reader) => T): T {
  const r = new Reader(bytes);
  const value = body(r);
  r.expectEnd(what);
  return value;
}
