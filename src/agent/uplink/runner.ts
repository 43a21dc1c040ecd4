/**
 * The uplink scheduler's thin adapter: carries out what `SchedulerCore` asks (connect, send,
 * persist the acknowledged position, move a refused message aside, close), feeds the outcomes and
 * the transports' events back in, and keeps one timer for the core's next deadline. All decisions
 * live in the core; this file only does I/O.
 *
 * @example
 *   const runner = new UplinkRunner({ uplinks: { primary }, queue, rejected, clock: systemClock, deviceId: 'bed-7', log });
 *   runner.start();
 *   pipeline.onAppended = () => runner.notifyAppended();
 *   ...
 *   await runner.stop();
 */
import type { CoseContentFormat, Uplink } from '../../transport/types.ts';
import type { Clock } from '../../util/clock.ts';
import { TransportError, UplinkRejected, VitalsealError } from '../../util/errors.ts';
import type { Logger } from '../log.ts';
import type { RejectedStore } from '../queue/rejected-store.ts';
import type { QueuedMessage, QueueStore } from '../queue/types.ts';
import { SchedulerCore, type LinkTarget, type SchedulerAction, type SchedulerOptions } from './scheduler.ts';

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: Timers = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface UplinkRunnerOptions {
  readonly uplinks: { readonly primary: Uplink; readonly failover?: Uplink };
  readonly queue: QueueStore;
  readonly rejected: RejectedStore;
  readonly clock: Clock;
  readonly deviceId: string;
  readonly log: Logger;
  readonly scheduler?: Omit<SchedulerOptions, 'hasFailover'>;
  readonly random?: () => number;
  readonly timers?: Timers;
  readonly contentFormat?: CoseContentFormat;
}

function codeOf(e: unknown): string {
  if (e instanceof VitalsealError) return e.code;
  return e instanceof Error ? e.name : 'error';
}

export class UplinkRunner {
  readonly core: SchedulerCore;
  readonly #o: UplinkRunnerOptions;
  readonly #timers: Timers;
  readonly #epochOf: Partial<Record<LinkTarget, number>> = {};
  readonly #pending = new Set<Promise<unknown>>();
  #timer: unknown;
  #timerAt: number | undefined;
  #ackChain: Promise<void> = Promise.resolve();
  #stopped = false;

  constructor(o: UplinkRunnerOptions) {
    this.#o = o;
    this.#timers = o.timers ?? realTimers;
    this.core = new SchedulerCore({ ...o.scheduler, hasFailover: o.uplinks.failover !== undefined }, o.random ?? Math.random);
    for (const target of ['primary', 'failover'] as const) {
      const u = o.uplinks[target];
      u?.on('disconnected', ({ reason }) => {
        const epoch = this.#epochOf[target];
        if (epoch === undefined || this.#stopped) return;
        this.#o.log.warn({ target, reason }, 'uplink disconnected');
        this.core.disconnected(this.#o.clock.now(), epoch, reason, target);
        this.#drain();
      });
    }
  }

  start(): void {
    this.core.start(this.#o.clock.now(), this.#o.queue.stats());
    this.#drain();
  }

  /** Tell the scheduler the queue changed (new message, or old ones dropped for capacity). */
  notifyAppended(): void {
    if (this.#stopped) return;
    this.core.appended(this.#o.clock.now(), this.#o.queue.stats());
    this.#drain();
  }

  /** Stops sending, persists the acknowledged position, closes the links. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.core.stop(this.#o.clock.now());
    this.#drain();
    this.#stopped = true;
    this.#timers.clearTimeout(this.#timer);
    await Promise.allSettled([...this.#pending]);
    await this.#ackChain;
  }

  #uplink(target: LinkTarget): Uplink {
    const u = this.#o.uplinks[target];
    if (u === undefined) throw new Error(`no ${target} uplink configured`);
    return u;
  }

  #track(p: Promise<unknown>): void {
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }

  #drain(): void {
    for (const a of this.core.takeActions()) this.#perform(a);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#stopped) return;
    const at = this.core.nextTimeout();
    if (at === this.#timerAt) return;
    this.#timers.clearTimeout(this.#timer);
    this.#timerAt = at;
    if (at === undefined) return;
    this.#timer = this.#timers.setTimeout(() => {
      this.#timerAt = undefined;
      this.core.tick(this.#o.clock.now());
      this.#drain();
    }, Math.max(0, at - this.#o.clock.now()));
  }

  #perform(a: SchedulerAction): void {
    switch (a.kind) {
      case 'connect':
        return this.#connect(a.target, a.epoch, false);
      case 'probe':
        return this.#connect(a.target, a.epoch, true);
      case 'close': {
        this.#o.log.info({ target: a.target, reason: a.reason }, 'closing uplink');
        const u = this.#uplink(a.target);
        // Between connections the uplink stays usable (disconnect); only stopping closes it for good.
        const ending = a.final || u.disconnect === undefined ? u.close() : u.disconnect();
        this.#track(ending.catch((e: unknown) => this.#o.log.warn({ target: a.target, code: codeOf(e) }, 'uplink close failed')));
        return;
      }
      case 'send':
        return this.#send(a.target, a.epoch, a.seqs);
      case 'ack': {
        const through = a.throughSeq;
        this.#ackChain = this.#ackChain.then(() => this.#o.queue.ack(through)).catch((e: unknown) => {
          this.#o.log.error({ through, code: codeOf(e) }, 'could not persist the acknowledged position; messages may be sent again after a restart');
        });
        return;
      }
      case 'move-aside':
        return this.#moveAside(a.seq, a.reason);
      default: {
        const never: never = a;
        throw new Error(`unreachable action ${String(never)}`);
      }
    }
  }

  #connect(target: LinkTarget, epoch: number, probe: boolean): void {
    // A probe's link is not the current one until it succeeds (then the core gives it a new epoch).
    if (!probe) this.#epochOf[target] = epoch;
    this.#o.log.info({ target, probe }, 'connecting uplink');
    const p = this.#uplink(target).connect().then(() => {
      const s = this.#uplink(target).session;
      this.#o.log.info({ target, peer: s?.peer, protocol: s?.protocol, suite: s?.suite }, 'uplink connected');
      if (probe) {
        this.core.probeSucceeded(this.#o.clock.now(), epoch);
        if (this.core.status().target === 'primary') this.#epochOf.primary = this.core.epoch;
      } else this.core.connected(this.#o.clock.now(), epoch);
    }, (e: unknown) => {
      const code = codeOf(e);
      // A transient failure is routine during an outage; anything else (bad credentials, a peer
      // we cannot talk to) needs an operator, so it is logged louder. Both are retried.
      // The reason goes with it: "connection-failed" alone leaves an operator nothing to act on.
      // Transport errors describe the network and the peer, never key material (util/errors.ts).
      if (e instanceof TransportError) this.#o.log.warn({ target, code, reason: e.message }, 'uplink connect failed');
      else this.#o.log.error({ target, code, err: e }, 'uplink connect failed');
      if (probe) this.core.probeFailed(this.#o.clock.now(), epoch);
      else this.core.connectFailed(this.#o.clock.now(), epoch, code);
    }).finally(() => this.#drain());
    this.#track(p);
  }

  #send(target: LinkTarget, epoch: number, seqs: readonly number[]): void {
    const first = seqs[0] as number;
    const last = seqs[seqs.length - 1] as number;
    const p = this.#o.queue.peek(last - first + 1, first - 1).then((msgs) => {
      const bySeq = new Map<number, QueuedMessage>(msgs.map((m) => [m.seq, m]));
      const uplink = this.#uplink(target);
      const sends = seqs.map((seq) => {
        const m = bySeq.get(seq);
        if (m === undefined) {
          this.core.sent(this.#o.clock.now(), seq, 'gone');
          return Promise.resolve();
        }
        return uplink.send({ deviceId: this.#o.deviceId, seq, payload: m.payload, contentFormat: this.#o.contentFormat ?? 'cose-encrypt' }).then(
          (ack) => this.core.sent(this.#o.clock.now(), seq, ack.status),
          (e: unknown) => {
            if (e instanceof UplinkRejected) {
              this.#o.log.warn({ seq, code: e.code }, 'message refused by the receiver; moving it aside');
              this.core.rejected(this.#o.clock.now(), seq, e.code);
            } else {
              if (!(e instanceof TransportError)) this.#o.log.error({ seq, code: codeOf(e), err: e }, 'unexpected error from the uplink; treated as transient');
              this.core.sendFailed(this.#o.clock.now(), seq, epoch, codeOf(e));
            }
          },
        ).finally(() => this.#drain());
      });
      return Promise.all(sends);
    }, (e: unknown) => {
      this.#o.log.error({ code: codeOf(e) }, 'queue read failed');
      for (const seq of seqs) this.core.sendFailed(this.#o.clock.now(), seq, epoch, codeOf(e));
    }).finally(() => this.#drain());
    this.#track(p);
  }

  #moveAside(seq: number, reason: string): void {
    const p = this.#o.queue.peek(1, seq - 1).then(async (msgs) => {
      const m = msgs[0];
      if (m === undefined || m.seq !== seq) {
        // Already gone from the queue (dropped for capacity): nothing left to keep.
        this.core.movedAside(this.#o.clock.now(), seq);
        return;
      }
      const discarded = await this.#o.rejected.put(seq, m.payload, reason);
      if (discarded > 0) this.#o.log.warn({ discarded }, 'rejected-message store full: oldest refused messages deleted');
      this.#o.log.warn({ seq, reason }, 'refused message moved aside');
      this.core.movedAside(this.#o.clock.now(), seq);
    }).catch((e: unknown) => {
      this.#o.log.error({ seq, code: codeOf(e) }, 'could not move a refused message aside; will retry');
      this.core.moveAsideFailed(this.#o.clock.now(), seq);
    }).finally(() => this.#drain());
    this.#track(p);
  }
}
