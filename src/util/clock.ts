/** Time as milliseconds since the Unix epoch. Injected wherever time matters so tests need no sleep. */
export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock that moves only when told to; for tests and simulations. */
export class ManualClock implements Clock {
  #now: number;
  constructor(start = 0) {
    this.#now = start;
  }
  now(): number {
    return this.#now;
  }
  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError('ManualClock.advance: ms must be >= 0');
    this.#now += ms;
  }
  set(ms: number): void {
    this.#now = ms;
  }
}
