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

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
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

export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}
