/**
 * The anti-replay sliding window of RFC 9147 §4.5.1 (after RFC 4303 §3.4.3), one per epoch.
 * The right edge is the highest sequence number deprotected so far; a bitmap remembers which of
 * the `size` numbers up to it were seen. `check` runs before, `mark` only after a record has been
 * deprotected: the window never moves on an unauthenticated record.
 *
 * @example
 *   const w = new ReplayWindow();
 *   if (w.check(seq)) { ...deprotect...; w.mark(seq); }
 */
export class ReplayWindow {
  readonly size: number;
  readonly #bits: Uint8Array;
  /** Highest sequence number marked, or -1. */
  #right = -1;

  /** `size` must be a multiple of 8; 256 covers any reordering a handshake or a sensor stream sees. */
  constructor(size = 256) {
    if (!Number.isInteger(size) || size < 8 || size % 8 !== 0) throw new RangeError('ReplayWindow size must be a positive multiple of 8');
    this.size = size;
    this.#bits = new Uint8Array(size / 8);
  }

  get highest(): number {
    return this.#right;
  }

  /** True when `seq` is new: right of the window, or inside it and not seen. */
  check(seq: number): boolean {
    if (seq > this.#right) return true;
    if (seq <= this.#right - this.size) return false;
    const i = seq % this.size;
    return ((this.#bits[i >> 3] as number) & (1 << (i & 7))) === 0;
  }

  /** Records `seq` as received; call only after `check(seq)` and successful deprotection. */
  mark(seq: number): void {
    if (seq > this.#right) {
      const advance = seq - this.#right;
      if (advance >= this.size) this.#bits.fill(0);
      else for (let s = this.#right + 1; s <= seq; s++) this.#clear(s % this.size);
      this.#right = seq;
    }
    const i = seq % this.size;
    this.#bits[i >> 3] = (this.#bits[i >> 3] as number) | (1 << (i & 7));
  }

  #clear(i: number): void {
    this.#bits[i >> 3] = (this.#bits[i >> 3] as number) & ~(1 << (i & 7));
  }
}
