/**
 * Timers, injected where transports time out (connect, acknowledgement, keep-alive, reconnect
 * back-off), so tests decide when a timeout fires instead of sleeping.
 *
 * @example
 *   const timers = new ManualTimers();
 *   const uplink = createMqttsUplink({ ..., timers });
 *   timers.advance(30_000);   // fires every timer due by then, in order
 */
export type TimerHandle = { readonly id: number };

export interface Timers {
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

/** The process's timers. Unref'd: a pending timeout alone does not keep the process alive. */
export const systemTimers: Timers = (() => {
  const live = new Map<number, NodeJS.Timeout>();
  let next = 1;
  return {
    setTimeout(fn, ms) {
      const id = next++;
      const t = setTimeout(() => {
        live.delete(id);
        fn();
      }, ms);
      t.unref();
      live.set(id, t);
      return { id };
    },
    clearTimeout(handle) {
      const t = live.get(handle.id);
      if (t !== undefined) clearTimeout(t);
      live.delete(handle.id);
    },
  };
})();

/** Timers that fire only when told to; time is the manual clock's (ms since 0 unless `start`). */
export class ManualTimers implements Timers {
  #now: number;
  #next = 1;
  readonly #due = new Map<number, { at: number; fn: () => void }>();

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  get pending(): number {
    return this.#due.size;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    if (!(ms >= 0)) throw new RangeError('ManualTimers.setTimeout: ms must be >= 0');
    const id = this.#next++;
    this.#due.set(id, { at: this.#now + ms, fn });
    return { id };
  }

  clearTimeout(handle: TimerHandle): void {
    this.#due.delete(handle.id);
  }

  /** Moves time forward, firing every timer that falls due, earliest first. */
  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError('ManualTimers.advance: ms must be >= 0');
    const end = this.#now + ms;
    for (;;) {
      let first: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.#due) if (entry[1].at <= end && (first === undefined || entry[1].at < first[1].at)) first = entry;
      if (first === undefined) break;
      this.#due.delete(first[0]);
      this.#now = first[1].at;
      first[1].fn();
    }
    this.#now = end;
  }
}
