/**
 * Steps that finish synchronously when they can and return a promise only when they wait (the DTLS
 * core's `handleDatagramNow`/`sendNow` and the adapter around them): the two helpers they share.
 *
 * @example
 *   const out = then(connection.handleDatagramNow(bytes, now), (o) => o.datagrams.length);
 *   await settle(() => connection.sendNow(data, now));   // a synchronous throw becomes a rejection
 */

/** `f(value)`: at once for a value, once it settles for a promise. */
export function then<T, U>(value: T | Promise<T>, f: (v: T) => U | Promise<U>): U | Promise<U> {
  return value instanceof Promise ? value.then(f) : f(value);
}

/** A call that may finish synchronously, as a promise (a synchronous throw becomes a rejection). */
export function settle<T>(f: () => T | Promise<T>): Promise<T> {
  try {
    return Promise.resolve(f());
  } catch (e) {
    return Promise.reject(e);
  }
}
