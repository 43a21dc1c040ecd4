/**
 * The uplink scheduler's core: sans-I/O (STYLE.md rule 1). It is told what happened (a message
 * was appended, a connect succeeded or failed, a send was acknowledged or refused, time passed)
 * and answers with actions for the adapter to carry out (connect, send these sequence numbers,
 * persist the acknowledged position, move a refused message aside, close a link) and when it next
 * wants to be woken. It never touches a socket, a file or a timer; time comes in as `now`.
 *
 * Delivery rules it enforces:
 * - A message leaves the queue only when acknowledged (`ack` actions carry the contiguous
 *   acknowledged position; out-of-order acknowledgements wait until the gap before them closes).
 * - Two lanes after every (re)connect: messages queued before it are the backlog, sent oldest
 *   first in order, using most of the send window; messages appended since are live, sent in order
 *   on `liveSlots` reserved window slots, so a long backlog never starves live data.
 * - `TransientFailure` (a lost link, a send timeout) resends everything not acknowledged after an
 *   exponential back-off with jitter; the receiver dedupes by (device, sequence).
 * - `Rejected` (the receiver refuses these bytes for good) moves the message aside (counted,
 *   kept sealed on disk) and delivery goes on: one bad message never blocks the queue.
 * - With a failover link: after `failoverAfter` consecutive failures on one link, try the other;
 *   while on the failover, probe the primary every `primaryProbeMs` and return to it when it answers.
 *
 * @example
 *   const core = new SchedulerCore({ hasFailover: false }, Math.random);
 *   core.start(clock.now(), queue.stats());
 *   for (const a of core.takeActions()) runner.perform(a);
 *   setTimeout(() => core.tick(clock.now()), core.nextTimeout() - clock.now());
 */
import { Backoff, DEFAULT_BACKOFF, type BackoffPolicy } from './backoff.ts';

export type LinkTarget = 'primary' | 'failover';

export type SchedulerAction =
  | { readonly kind: 'connect'; readonly target: LinkTarget; readonly epoch: number }
  | { readonly kind: 'probe'; readonly target: 'primary'; readonly epoch: number }
  /** `final`: the agent stops (close for good); otherwise only this connection ends and the link is connected again later. */
  | { readonly kind: 'close'; readonly target: LinkTarget; readonly reason: string; readonly final: boolean }
  | { readonly kind: 'send'; readonly target: LinkTarget; readonly epoch: number; readonly seqs: readonly number[] }
  | { readonly kind: 'ack'; readonly throughSeq: number }
  | { readonly kind: 'move-aside'; readonly seq: number; readonly reason: string };

type Link =
  | { readonly state: 'idle' }
  | { readonly state: 'connecting'; readonly target: LinkTarget; readonly epoch: number }
  | { readonly state: 'connected'; readonly target: LinkTarget; readonly epoch: number; readonly since: number; probeAt: number | undefined; probing: boolean }
  | { readonly state: 'waiting'; readonly target: LinkTarget; readonly until: number; readonly reason: string }
  | { readonly state: 'stopped' };

export type LinkState = Link['state'];

export interface SchedulerOptions {
  readonly hasFailover: boolean;
  /** Messages in flight at once (default 16). */
  readonly window?: number;
  /** Window slots kept for live data while a backlog drains (default 1). */
  readonly liveSlots?: number;
  readonly backoff?: BackoffPolicy;
  /** Consecutive failures on one link before trying the other (default 3). */
  readonly failoverAfter?: number;
  /** While on the failover, how often to try the primary (default 5 minutes). */
  readonly primaryProbeMs?: number;
  /** A send not answered within this is a lost link (default 30 s). */
  readonly sendTimeoutMs?: number;
  /** Persist the acknowledged position at most this often while messages flow (default 250 ms). */
  readonly ackIntervalMs?: number;
  /** Retry moving a refused message aside after this (default 5 s). */
  readonly asideRetryMs?: number;
}

export interface SchedulerCounters {
  sent: number;
  acknowledged: number;
  duplicates: number;
  rejected: number;
  movedAside: number;
  transientErrors: number;
  connects: number;
  connectFailures: number;
  failovers: number;
  sendTimeouts: number;
  /** Messages found dropped by the queue's capacity policy before they could be sent. */
  dropped: number;
}

export interface SchedulerStatus {
  readonly link: LinkState;
  readonly target: LinkTarget | undefined;
  readonly ackedThrough: number;
  readonly nextSeq: number;
  readonly inFlight: number;
  readonly backlog: number;
  /** Since the last (re)connect, sequence numbers below this are the backlog lane, the rest live. */
  readonly liveFrom: number;
  readonly lastAckAt: number | undefined;
  readonly lastAckSeq: number | undefined;
  readonly retryAt: number | undefined;
  readonly lastError: string | undefined;
}

interface Flight {
  readonly sentAt: number;
  readonly epoch: number;
}

export class SchedulerCore {
  readonly #hasFailover: boolean;
  readonly #window: number;
  readonly #liveSlots: number;
  readonly #backoff: Backoff;
  readonly #failoverAfter: number;
  readonly #primaryProbeMs: number;
  readonly #sendTimeoutMs: number;
  readonly #ackIntervalMs: number;
  readonly #asideRetryMs: number;
  readonly #counters: SchedulerCounters = {
    sent: 0, acknowledged: 0, duplicates: 0, rejected: 0, movedAside: 0, transientErrors: 0,
    connects: 0, connectFailures: 0, failovers: 0, sendTimeouts: 0, dropped: 0,
  };

  #link: Link = { state: 'idle' };
  #epoch = 0;
  #actions: SchedulerAction[] = [];
  /** Everything ≤ this is acknowledged (or dropped, or moved aside). */
  #ackedThrough = 0;
  /** The next sequence number the queue will assign: messages are (ackedThrough, nextSeq). */
  #nextSeq = 1;
  #persistedThrough = 0;
  #lastPersistAt = -Infinity;
  #backlogCursor = 1;
  #liveBoundary = 1;
  #liveCursor = 1;
  readonly #inFlight = new Map<number, Flight>();
  /** Acknowledged above a gap: waiting for the messages before them. */
  readonly #done = new Set<number>();
  /** Refused messages being moved aside; value = when to retry, or undefined while in progress. */
  readonly #aside = new Map<number, number | undefined>();
  #failures = 0;
  #failuresOnTarget = 0;
  #lastAckAt: number | undefined;
  #lastAckSeq: number | undefined;
  #lastError: string | undefined;

  constructor(o: SchedulerOptions, random: () => number) {
    this.#hasFailover = o.hasFailover;
    this.#window = o.window ?? 16;
    this.#liveSlots = o.liveSlots ?? 1;
    this.#backoff = new Backoff(o.backoff ?? DEFAULT_BACKOFF, random);
    this.#failoverAfter = o.failoverAfter ?? 3;
    this.#primaryProbeMs = o.primaryProbeMs ?? 300_000;
    this.#sendTimeoutMs = o.sendTimeoutMs ?? 30_000;
    this.#ackIntervalMs = o.ackIntervalMs ?? 250;
    this.#asideRetryMs = o.asideRetryMs ?? 5000;
    if (!Number.isInteger(this.#window) || this.#window < 1) throw new RangeError('scheduler window must be a positive integer');
    if (!Number.isInteger(this.#liveSlots) || this.#liveSlots < 0 || this.#liveSlots >= this.#window) throw new RangeError('liveSlots must be 0..window-1');
  }

  // ---- inputs ----

  /** Begins with the queue as it is: (ackedThrough, nextSeq) from its stats. */
  start(now: number, queue: { readonly ackedThrough: number; readonly nextSeq: number }): void {
    if (this.#link.state !== 'idle') return;
    this.#ackedThrough = queue.ackedThrough;
    this.#persistedThrough = queue.ackedThrough;
    this.#nextSeq = queue.nextSeq;
    this.#resetLanes();
    this.#connect('primary');
    this.#drive(now);
  }

  /** The queue grew (its nextSeq) or dropped old messages (its ackedThrough moved by itself). */
  appended(now: number, queue: { readonly ackedThrough: number; readonly nextSeq: number }): void {
    this.#nextSeq = Math.max(this.#nextSeq, queue.nextSeq);
    if (queue.ackedThrough > this.#ackedThrough) {
      this.#counters.dropped += queue.ackedThrough - this.#ackedThrough - this.#countDoneThrough(queue.ackedThrough);
      this.#advanceTo(queue.ackedThrough);
      this.#persistedThrough = Math.max(this.#persistedThrough, queue.ackedThrough);
    }
    this.#drive(now);
  }

  connected(now: number, epoch: number): void {
    const l = this.#link;
    if (l.state !== 'connecting' || l.epoch !== epoch) return;
    this.#counters.connects++;
    // The back-off is reset by the first acknowledgement (`sent`), not here: a link that connects
    // and then fails every send (a broker whose ingest has not subscribed again: PUBACK 0x10) must
    // back off like one that does not connect, not reconnect every `initialMs` for as long as it lasts.
    this.#failuresOnTarget = 0;
    this.#lastError = undefined;
    this.#link = {
      state: 'connected', target: l.target, epoch, since: now, probing: false,
      probeAt: l.target === 'failover' ? now + this.#primaryProbeMs : undefined,
    };
    this.#resetLanes();
    this.#drive(now);
  }

  connectFailed(now: number, epoch: number, reason: string): void {
    const l = this.#link;
    if (l.state !== 'connecting' || l.epoch !== epoch) return;
    this.#counters.connectFailures++;
    this.#lastError = reason;
    this.#failures++;
    this.#failuresOnTarget++;
    let next = l.target;
    if (this.#hasFailover && this.#failuresOnTarget >= this.#failoverAfter) {
      next = l.target === 'primary' ? 'failover' : 'primary';
      this.#failuresOnTarget = 0;
      if (next === 'failover') this.#counters.failovers++;
    }
    this.#link = { state: 'waiting', target: next, until: now + this.#backoff.delay(this.#failures - 1), reason };
    this.#drive(now);
  }

  /** The probe of the primary (sent while on the failover) connected: switch to it. */
  probeSucceeded(now: number, epoch: number): void {
    const l = this.#link;
    if (l.state !== 'connected' || !l.probing || epoch !== this.#epoch) return;
    this.#actions.push({ kind: 'close', target: 'failover', reason: 'primary is back', final: false });
    this.#inFlight.clear();
    this.#counters.connects++;
    // A new epoch: late failures from the failover link being closed must not touch this one.
    this.#epoch++;
    this.#link = { state: 'connected', target: 'primary', epoch: this.#epoch, since: now, probing: false, probeAt: undefined };
    this.#resetLanes();
    this.#drive(now);
  }

  probeFailed(now: number, epoch: number): void {
    const l = this.#link;
    if (l.state !== 'connected' || !l.probing || epoch !== this.#epoch) return;
    l.probing = false;
    l.probeAt = now + this.#primaryProbeMs;
    this.#drive(now);
  }

  /** The receiver took message `seq` ('duplicate': it had it already; also a success). */
  sent(now: number, seq: number, status: 'accepted' | 'duplicate' | 'gone'): void {
    this.#inFlight.delete(seq);
    if (status === 'duplicate') this.#counters.duplicates++;
    if (status === 'gone') {
      if (seq > this.#ackedThrough) this.#counters.dropped++;
    } else {
      this.#counters.acknowledged++;
      this.#failures = 0;
    }
    if (seq > this.#ackedThrough) this.#done.add(seq);
    this.#lastAckAt = now;
    this.#lastAckSeq = seq;
    this.#advance();
    this.#drive(now);
  }

  /** A transient failure (TransportError) sending on link `epoch`: the link is treated as lost. */
  sendFailed(now: number, seq: number, epoch: number, reason: string): void {
    const f = this.#inFlight.get(seq);
    if (f === undefined || f.epoch !== epoch) return; // a result from a link already given up
    this.#counters.transientErrors++;
    this.#linkLost(now, reason);
  }

  /** The receiver refused `seq` for good (UplinkRejected): move it aside, go on. */
  rejected(now: number, seq: number, reason: string): void {
    this.#inFlight.delete(seq);
    if (seq <= this.#ackedThrough || this.#done.has(seq) || this.#aside.has(seq)) return this.#drive(now);
    this.#counters.rejected++;
    this.#aside.set(seq, undefined);
    this.#actions.push({ kind: 'move-aside', seq, reason });
    this.#drive(now);
  }

  movedAside(now: number, seq: number): void {
    if (!this.#aside.has(seq)) return;
    this.#aside.delete(seq);
    this.#counters.movedAside++;
    if (seq > this.#ackedThrough) this.#done.add(seq);
    this.#advance();
    this.#drive(now);
  }

  moveAsideFailed(now: number, seq: number): void {
    if (!this.#aside.has(seq)) return;
    this.#aside.set(seq, now + this.#asideRetryMs);
    this.#drive(now);
  }

  /** The link `target` dropped by itself (the transport's 'disconnected' event). */
  disconnected(now: number, epoch: number, reason: string, target?: LinkTarget): void {
    const l = this.#link;
    if ((l.state === 'connected' || l.state === 'connecting') && l.epoch === epoch && (target === undefined || target === l.target)) {
      if (l.state === 'connecting') return this.connectFailed(now, epoch, reason);
      this.#counters.transientErrors++;
      this.#linkLost(now, reason);
    }
  }

  tick(now: number): void {
    this.#drive(now);
  }

  /** Stops: closes the link, persists the acknowledged position. */
  stop(now: number): void {
    const l = this.#link;
    if (l.state === 'connected' || l.state === 'connecting') this.#actions.push({ kind: 'close', target: l.target, reason: 'stopping', final: true });
    this.#link = { state: 'stopped' };
    this.#inFlight.clear();
    this.#persistAck(now, true);
  }

  // ---- outputs ----

  /** The epoch of the current link (changes on every connect and on a return to the primary). */
  get epoch(): number {
    return this.#epoch;
  }

  takeActions(): SchedulerAction[] {
    const a = this.#actions;
    this.#actions = [];
    return a;
  }

  /** When the core next wants `tick` (ms since the epoch), or undefined. */
  nextTimeout(): number | undefined {
    const times: number[] = [];
    const l = this.#link;
    if (l.state === 'waiting') times.push(l.until);
    if (l.state === 'connected' && l.probeAt !== undefined && !l.probing) times.push(l.probeAt);
    for (const f of this.#inFlight.values()) times.push(f.sentAt + this.#sendTimeoutMs);
    for (const at of this.#aside.values()) if (at !== undefined) times.push(at);
    if (this.#ackedThrough > this.#persistedThrough) times.push(this.#lastPersistAt + this.#ackIntervalMs);
    return times.length === 0 ? undefined : Math.min(...times);
  }

  counters(): Readonly<SchedulerCounters> {
    return { ...this.#counters };
  }

  status(): SchedulerStatus {
    const l = this.#link;
    return {
      link: l.state,
      target: l.state === 'connected' || l.state === 'connecting' || l.state === 'waiting' ? l.target : undefined,
      ackedThrough: this.#ackedThrough,
      nextSeq: this.#nextSeq,
      inFlight: this.#inFlight.size,
      backlog: Math.max(0, this.#nextSeq - 1 - this.#ackedThrough),
      liveFrom: this.#liveBoundary,
      lastAckAt: this.#lastAckAt,
      lastAckSeq: this.#lastAckSeq,
      retryAt: l.state === 'waiting' ? l.until : undefined,
      lastError: this.#lastError,
    };
  }

  // ---- internals ----

  #connect(target: LinkTarget): void {
    this.#epoch++;
    this.#link = { state: 'connecting', target, epoch: this.#epoch };
    this.#actions.push({ kind: 'connect', target, epoch: this.#epoch });
  }

  #linkLost(now: number, reason: string): void {
    const l = this.#link;
    if (l.state !== 'connected') return;
    this.#lastError = reason;
    this.#actions.push({ kind: 'close', target: l.target, reason, final: false });
    this.#inFlight.clear();
    const delay = this.#backoff.delay(this.#failures);
    this.#failures++;
    this.#link = { state: 'waiting', target: l.target, until: now + delay, reason };
    this.#drive(now);
  }

  /** After a (re)connect: everything queued so far is backlog; what comes next is live. */
  #resetLanes(): void {
    this.#backlogCursor = this.#ackedThrough + 1;
    this.#liveBoundary = this.#nextSeq;
    this.#liveCursor = this.#nextSeq;
  }

  #countDoneThrough(seq: number): number {
    let n = 0;
    for (const s of this.#done) if (s <= seq) n++;
    for (const s of this.#aside.keys()) if (s <= seq) n++;
    return n;
  }

  #advanceTo(seq: number): void {
    this.#ackedThrough = seq;
    for (const s of this.#done) if (s <= seq) this.#done.delete(s);
    for (const s of this.#aside.keys()) if (s <= seq) this.#aside.delete(s);
    for (const s of this.#inFlight.keys()) if (s <= seq) this.#inFlight.delete(s);
    this.#backlogCursor = Math.max(this.#backlogCursor, seq + 1);
    this.#liveCursor = Math.max(this.#liveCursor, seq + 1);
    this.#liveBoundary = Math.max(this.#liveBoundary, seq + 1);
  }

  #advance(): void {
    let through = this.#ackedThrough;
    while (this.#done.has(through + 1)) {
      through++;
      this.#done.delete(through);
    }
    if (through > this.#ackedThrough) this.#advanceTo(through);
  }

  #persistAck(now: number, force: boolean): void {
    if (this.#ackedThrough <= this.#persistedThrough) return;
    const caughtUp = this.#ackedThrough >= this.#nextSeq - 1;
    if (force || caughtUp || now - this.#lastPersistAt >= this.#ackIntervalMs) {
      this.#actions.push({ kind: 'ack', throughSeq: this.#ackedThrough });
      this.#persistedThrough = this.#ackedThrough;
      this.#lastPersistAt = now;
    }
  }

  #sendable(seq: number): boolean {
    return !this.#inFlight.has(seq) && !this.#done.has(seq) && !this.#aside.has(seq);
  }

  #drive(now: number): void {
    const l = this.#link;
    switch (l.state) {
      case 'idle':
      case 'stopped':
      case 'connecting':
        break;
      case 'waiting':
        if (now >= l.until) this.#connect(l.target);
        break;
      case 'connected': {
        for (const [seq, f] of this.#inFlight) {
          if (now - f.sentAt >= this.#sendTimeoutMs) {
            this.#counters.sendTimeouts++;
            this.#counters.transientErrors++;
            this.#linkLost(now, `no answer to message ${seq} within ${this.#sendTimeoutMs} ms`);
            return;
          }
        }
        if (l.probeAt !== undefined && !l.probing && now >= l.probeAt) {
          l.probing = true;
          this.#actions.push({ kind: 'probe', target: 'primary', epoch: this.#epoch });
        }
        this.#fillWindow(now, l.target, l.epoch);
        break;
      }
      default: {
        const never: never = l;
        throw new Error(`unreachable link state ${String(never)}`);
      }
    }
    for (const [seq, at] of this.#aside) {
      if (at !== undefined && now >= at) {
        this.#aside.set(seq, undefined);
        this.#actions.push({ kind: 'move-aside', seq, reason: 'retry' });
      }
    }
    this.#persistAck(now, false);
  }

  #fillWindow(now: number, target: LinkTarget, epoch: number): void {
    const backlog: number[] = [];
    const live: number[] = [];
    let backlogInFlight = 0;
    for (const s of this.#inFlight.keys()) if (s < this.#liveBoundary) backlogInFlight++;
    let inFlight = this.#inFlight.size;
    while (inFlight < this.#window) {
      while (this.#backlogCursor < this.#liveBoundary && !this.#sendable(this.#backlogCursor)) this.#backlogCursor++;
      while (this.#liveCursor < this.#nextSeq && !this.#sendable(this.#liveCursor)) this.#liveCursor++;
      if (this.#liveCursor < this.#nextSeq) {
        // Live data takes any free slot first; it arrives at the sampling rate, so it cannot crowd
        // the backlog out.
        live.push(this.#liveCursor++);
      } else if (this.#backlogCursor < this.#liveBoundary && backlogInFlight < this.#window - this.#liveSlots) {
        // The backlog leaves `liveSlots` free so the next live message goes out at once.
        backlog.push(this.#backlogCursor++);
        backlogInFlight++;
      } else {
        break;
      }
      inFlight++;
    }
    for (const seqs of [backlog, live]) {
      if (seqs.length === 0) continue;
      for (const s of seqs) this.#inFlight.set(s, { sentAt: now, epoch });
      this.#counters.sent += seqs.length;
      this.#actions.push({ kind: 'send', target, epoch, seqs });
    }
  }
}
