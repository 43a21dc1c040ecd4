import { timingSafeEqual } from 'node:crypto';

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

/**
 * A new array of `length` bytes whose contents are NOT zeroed: only for outputs the caller
 * overwrites completely before anyone reads them. Small arrays are carved from Node's shared buffer
 * pool (as `Buffer.allocUnsafe` does), which makes hot paths several times cheaper than a fresh
 * `ArrayBuffer` each; so `.buffer` may hold other data: always read through the view (`byteOffset`,
 * `byteLength`). Long-lived secrets get their own allocation (`Uint8Array.from`), never this.
 */
export function allocUninit(length: number): Uint8Array {
  const b = Buffer.allocUnsafe(length);
  return new Uint8Array(b.buffer, b.byteOffset, length);
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
