/**
 * Deadlines of many sessions in a binary min-heap with lazy deletion: setting a new deadline pushes
 * an entry; entries whose deadline no longer matches their owner's are skipped when they surface.
 * `next()` and `due()` are O(log n), so a server with 100,000 sessions does not scan them all on
 * every datagram.
 *
 * @example
 *   const timers = new TimerHeap<Session>();
 *   timers.set(session, 1_700_000_000_000);
 *   for (const s of timers.due(Date.now())) handleTimeout(s);
 */
interface Entry<T> {
  readonly at: number;
  readonly owner: T;
}

export class TimerHeap<T extends object> {
  readonly #heap: Entry<T>[] = [];
  readonly #current = new WeakMap<T, number>();

  /** Sets (or with undefined clears) `owner`'s deadline. */
  set(owner: T, at: number | undefined): void {
    const had = this.#current.get(owner);
    if (at === undefined) {
      if (had !== undefined) {
        this.#current.delete(owner);
        this.#owners--;
      }
      return;
    }
    if (had === at) return;
    if (had === undefined) this.#owners++;
    this.#current.set(owner, at);
    this.#push({ at, owner });
    // Stale entries are dropped when they surface; rebuild when they come to dominate the heap.
    if (this.#heap.length > 64 + 2 * this.#owners) this.#compact();
  }

  /** The earliest live deadline, or undefined. */
  next(): number | undefined {
    this.#dropStale();
    return this.#heap[0]?.at;
  }

  /** Removes and returns the owners whose deadline is at or before `now`, earliest first. */
  due(now: number): T[] {
    const out: T[] = [];
    for (;;) {
      this.#dropStale();
      const top = this.#heap[0];
      if (top === undefined || top.at > now) return out;
      this.#pop();
      this.#current.delete(top.owner);
      this.#owners--;
      out.push(top.owner);
    }
  }

  /** Owners with a deadline. */
  get size(): number {
    return this.#owners;
  }

  #owners = 0;

  #compact(): void {
    const live = this.#heap.filter((e) => this.#current.get(e.owner) === e.at);
    this.#heap.length = 0;
    for (const e of live) this.#push(e);
  }

  #dropStale(): void {
    for (;;) {
      const top = this.#heap[0];
      if (top === undefined || this.#current.get(top.owner) === top.at) return;
      this.#pop();
    }
  }

  #push(e: Entry<T>): void {
    const h = this.#heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((h[parent] as Entry<T>).at <= e.at) break;
      h[i] = h[parent] as Entry<T>;
      i = parent;
    }
    h[i] = e;
  }

  #pop(): void {
    const h = this.#heap;
    const last = h.pop();
    if (last === undefined || h.length === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      let mAt = last.at;
      if (l < h.length && (h[l] as Entry<T>).at < mAt) {
        m = l;
        mAt = (h[l] as Entry<T>).at;
      }
      if (r < h.length && (h[r] as Entry<T>).at < mAt) m = r;
      if (m === i) break;
      h[i] = h[m] as Entry<T>;
      i = m;
    }
    h[i] = last;
  }
}
