import { timingSafeEqual } from 'node:crypto';
import { markAsUntransferable } from 'node:worker_threads';

/** Lowercase hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/** Strict hex decoding: even length, hex digits only (no whitespace, no prefix). */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new RangeError(`fromHex: not a hex string of even length (${hex.length} characters)`);
  }
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

/** Bytes per slab: Node's own pool size, so a kept view pins no more than `Buffer.allocUnsafe` would. */
const SLAB_BYTES = 8192;
let slab = new ArrayBuffer(0);
let slabUsed = 0;

/**
 * A new array of `length` bytes whose contents are NOT zeroed: only for outputs the caller
 * overwrites completely before anyone reads them. Arrays up to half a slab are carved from a shared
 * 8 KiB slab (as `Buffer.allocUnsafe` carves Node's pool, but as plain Uint8Array views: no Buffer
 * object per array, which on the DTLS data path cost ~0.2 µs a record); so `.buffer` may hold other
 * data: always read through the view (`byteOffset`, `byteLength`). Long-lived secrets get their
 * own allocation (`Uint8Array.from`), never this.
 */
export function allocUninit(length: number): Uint8Array {
  // As strict as Buffer.allocUnsafe was: a length that is not a whole number is a caller's bug.
  if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`allocUninit: bad length ${String(length)}`);
  if (length === 0) return new Uint8Array(0);
  if (length > SLAB_BYTES >>> 1) {
    const b = Buffer.allocUnsafeSlow(length);
    return new Uint8Array(b.buffer, b.byteOffset, length);
  }
  if (slabUsed + length > slab.byteLength) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES).buffer as ArrayBuffer;
    // As Node marks its pool: transferring one view's buffer to a worker would detach every other.
    markAsUntransferable(slab);
    slabUsed = 0;
  }
  const view = new Uint8Array(slab, slabUsed, length);
  // 8-byte alignment, as Node's pool keeps: a later Float64Array/BigUint64Array view may need it.
  slabUsed += (length + 7) & ~7;
  return view;
}

/** A copy of `bytes` as a plain Uint8Array that shares no memory with the input. */
export function copyBytes(bytes: Uint8Array): Uint8Array {
  const out = allocUninit(bytes.length);
  out.set(bytes);
  return out;
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = allocUninit(length);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** `v` (taken as an unsigned 32-bit integer) as 4 bytes big-endian at `at`, without a DataView. */
export function writeUint32BE(out: Uint8Array, at: number, v: number): void {
  out[at] = v >>> 24;
  out[at + 1] = (v >>> 16) & 0xff;
  out[at + 2] = (v >>> 8) & 0xff;
  out[at + 3] = v & 0xff;
}

/** Constant-time equality; lengths are not secret. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return timingSafeEqual(a, b);
}

/** Overwrites a buffer we own with zeros. JavaScript cannot promise no copy exists elsewhere. */
export function zeroize(...buffers: (Uint8Array | undefined)[]): void {
  for (const b of buffers) b?.fill(0);
}

/** A view of `bytes` as a Buffer without copying (for node:crypto calls). */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

const encoder = new TextEncoder();

export function utf8(text: string): Uint8Array {
  return encoder.encode(text);
}
