/**
 * Runs jobs one at a time, in order. A PKCS#11 session runs one operation at a time (an Init and its
 * C_Sign/C_Encrypt must not interleave with another caller's, PKCS #11 v2.40 §5.2), so every call on
 * a store's session goes through its queue. A failed job does not stop the ones behind it.
 */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(job: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(job);
    this.#tail = result.catch(() => undefined);
    return result;
  }
}
