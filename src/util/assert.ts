/**
 * Small labelled asserts for public boundaries: TypeError for a wrong type, RangeError for a wrong
 * length or value. Inside the library, typed values are trusted.
 */
export function isBytes(value: unknown): value is Uint8Array {
  return value instanceof Uint8Array;
}

/** Asserts `value` is a Uint8Array, optionally of one of `lengths`. */
export function abytes(value: unknown, label: string, ...lengths: number[]): Uint8Array {
  if (!isBytes(value)) throw new TypeError(`${label}: expected Uint8Array, got ${describeType(value)}`);
  if (lengths.length > 0 && !lengths.includes(value.length)) {
    throw new RangeError(`${label}: expected ${lengths.join(' or ')} bytes, got ${value.length}`);
  }
  return value;
}

/** Asserts a safe non-negative integer within [min, max]. */
export function aint(value: unknown, label: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new TypeError(`${label}: expected an integer, got ${describeType(value)}`);
  }
  if (value < min || value > max) throw new RangeError(`${label}: ${value} is outside [${min}, ${max}]`);
  return value;
}

function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'object') return value.constructor?.name ?? 'object';
  return typeof value;
}
