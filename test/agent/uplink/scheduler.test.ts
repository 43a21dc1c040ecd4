/**
 * The uplink scheduler core, driven event by event under a fake clock: no sockets, no timers.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Backoff } from '../../../src/agent/uplink/backoff.ts';
import { SchedulerCore, type SchedulerAction } from '../../../src/agent/uplink/scheduler.ts';

type Send = Extract<SchedulerAction, { kind: 'send' }>;
const sends = (as: SchedulerAction[]) => as.filter((a): a is Send => a.kind === 'send').flatMap((a) => a.seqs);
const of = <K extends SchedulerAction['kind']>(as: SchedulerAction[], k: K) => as.filter((a): a is Extract<SchedulerAction, { kind: K }> => a.kind === k);

function connectedCore(opts: { window?: number; ackedThrough?: number; nextSeq?: number; hasFailover?: boolean; random?: () => number } = {}) {
  const core = new SchedulerCore({ hasFailover: opts.hasFailover ?? false, window: opts.window ?? 4, liveSlots: 1, backoff: { initialMs: 100, maxMs: 1600 } }, opts.random ?? (() => 0.5));
  core.start(0, { ackedThrough: opts.ackedThrough ?? 0, nextSeq: opts.nextSeq ?? 1 });
  const [connect] = of(core.takeActions(), 'connect');
  assert.ok(connect);
  core.connected(10, connect.epoch);
  return { core, epoch: connect.epoch, first: core.takeActions() };
}

describe('back-off', () => {
  it('doubles its ceiling per failure up to the maximum, with delays in the upper half', () => {
    const lo = new Backoff({ initialMs: 100, maxMs: 1600 }, () => 0);
    const hi = new Backoff({ initialMs: 100, maxMs: 1600 }, () => 0.999999);
    assert.deepEqual([0, 1, 2, 3, 4, 5, 9].map((f) => lo.ceiling(f)), [100, 200, 400, 800, 1600, 1600, 1600]);
    for (let f = 0; f < 8; f++) {
      assert.equal(lo.delay(f), lo.ceiling(f) / 2);
      assert.ok(hi.delay(f) <= hi.ceiling(f) && hi.delay(f) > hi.ceiling(f) * 0.99);
    }
  });
});

describe('uplink scheduler core', () => {
  it('drains the backlog in order within the window, and persists only the contiguous acknowledged position', () => {
    const { core, first } = connectedCore({ nextSeq: 11 });
    assert.deepEqual(sends(first), [1, 2, 3], 'window 4 minus one slot kept for live data');
    core.sent(20, 2, 'accepted');
    const b = core.takeActions();
    assert.deepEqual(of(b, 'ack'), [], 'no ack while 1 is outstanding');
    assert.deepEqual(sends(b), [4], 'the freed slot takes the next in order');
    core.sent(21, 1, 'accepted');
    const a = core.takeActions();
    assert.deepEqual(of(a, 'ack').map((x) => x.throughSeq), [2]);
    assert.deepEqual(sends(a), [5]);
    assert.equal(core.status().ackedThrough, 2);
  });

  it('coalesces acknowledged-position writes while messages flow, and writes at once when caught up', () => {
    const { core } = connectedCore({ nextSeq: 4, window: 8 });
    core.sent(100, 1, 'accepted');
    assert.deepEqual(of(core.takeActions(), 'ack').map((x) => x.throughSeq), [1]);
    core.sent(110, 2, 'accepted');
    assert.deepEqual(of(core.takeActions(), 'ack'), [], 'within 250 ms of the last write');
    assert.equal(core.nextTimeout(), 350);
    core.sent(120, 3, 'accepted');
    assert.deepEqual(of(core.takeActions(), 'ack').map((x) => x.throughSeq), [3], 'caught up: written now');
  });

  it('live data is sent at once even while a long backlog fills the window', () => {
    const { core, first } = connectedCore({ nextSeq: 1001, window: 4 });
    assert.deepEqual(sends(first), [1, 2, 3]);
    core.appended(50, { ackedThrough: 0, nextSeq: 1002 });
    assert.deepEqual(sends(core.takeActions()), [1001], 'live message on the reserved slot');
    core.appended(60, { ackedThrough: 0, nextSeq: 1003 });
    assert.deepEqual(sends(core.takeActions()), [], 'window full');
    core.sent(70, 1001, 'accepted');
    assert.deepEqual(sends(core.takeActions()), [1002], 'a freed slot goes to live data first');
    core.sent(80, 1, 'accepted');
    assert.deepEqual(sends(core.takeActions()), [4], 'then the backlog continues in order');
    assert.equal(core.status().ackedThrough, 1, 'the live acks wait above the gap');
  });

  it('a transient failure closes the link, backs off, reconnects and resends what was not acknowledged', () => {
    const { core, epoch } = connectedCore({ nextSeq: 6, window: 8 });
    core.sent(20, 2, 'accepted');
    core.takeActions();
    core.sendFailed(30, 1, epoch, 'connection-lost');
    const a = core.takeActions();
    assert.equal(of(a, 'close').length, 1);
    const st = core.status();
    assert.equal(st.link, 'waiting');
    assert.equal(st.retryAt, 30 + 75, 'first retry: half to all of the initial 100 ms');
    core.sendFailed(31, 3, epoch, 'connection-lost');
    assert.equal(core.counters().transientErrors, 1, 'later failures of the same link count once');
    core.tick(105);
    const [c] = of(core.takeActions(), 'connect');
    assert.ok(c && c.epoch !== epoch);
    core.connected(120, c.epoch);
    assert.deepEqual(sends(core.takeActions()), [1, 3, 4, 5], 'everything not acknowledged, 2 skipped');
  });

  it('a link that connects but fails every send backs off like one that does not connect; the first acknowledgement resets the back-off', () => {
    const { core, epoch } = connectedCore({ nextSeq: 4, window: 8 });
    core.takeActions();
    let now = 20;
    let current = epoch;
    const waits: number[] = [];
    for (let i = 0; i < 3; i++) {
      // PUBACK 0x10 (no subscribers) on every message: TransportError, the link is given up.
      core.sendFailed(now, 1, current, 'no-subscribers');
      const retryAt = core.status().retryAt as number;
      waits.push(retryAt - now);
      now = retryAt;
      core.tick(now);
      const [c] = of(core.takeActions(), 'connect');
      assert.ok(c);
      core.connected(now, c.epoch);
      core.takeActions();
      current = c.epoch;
    }
    assert.deepEqual(waits, [75, 150, 300], 'growing, not initialMs every time');
    core.sent(now + 1, 1, 'accepted');
    core.sendFailed(now + 2, 2, current, 'connection-lost');
    assert.equal((core.status().retryAt as number) - (now + 2), 75, 'an acknowledgement resets it');
  });

  it('connect failures back off exponentially and switch to the failover after three; the primary is probed and resumed', () => {
    const core = new SchedulerCore({ hasFailover: true, window: 4, backoff: { initialMs: 100, maxMs: 10_000 }, failoverAfter: 3, primaryProbeMs: 5000 }, () => 0);
    core.start(0, { ackedThrough: 0, nextSeq: 3 });
    const waits: number[] = [];
    const targets: string[] = [];
    let now = 0;
    for (let i = 0; i < 4; i++) {
      const [c] = of(core.takeActions(), 'connect');
      assert.ok(c);
      targets.push(c.target);
      core.connectFailed(now, c.epoch, 'refused');
      const retryAt = core.status().retryAt as number;
      waits.push(retryAt - now);
      now = retryAt;
      core.tick(now);
    }
    assert.deepEqual(targets, ['primary', 'primary', 'primary', 'failover']);
    assert.deepEqual(waits, [50, 100, 200, 400]);
    assert.equal(core.counters().failovers, 1);
    const [c] = of(core.takeActions(), 'connect');
    assert.ok(c && c.target === 'failover');
    core.connected(now, c.epoch);
    assert.deepEqual(sends(core.takeActions()), [1, 2]);
    assert.equal(core.nextTimeout(), Math.min(now + 5000, now + 30_000));
    core.tick(now + 5000);
    const [probe] = of(core.takeActions(), 'probe');
    assert.ok(probe);
    core.probeSucceeded(now + 5010, probe.epoch);
    const after = core.takeActions();
    assert.deepEqual(of(after, 'close').map((x) => x.target), ['failover']);
    assert.equal(core.status().target, 'primary');
    assert.deepEqual(sends(after), [1, 2], 'unacknowledged messages go again on the primary');
    // The failover being closed fails its sends and reports a disconnect: neither touches the primary.
    const failoverEpoch = c.epoch;
    core.sendFailed(now + 5020, 1, failoverEpoch, 'closed');
    core.disconnected(now + 5021, failoverEpoch, 'closed', 'failover');
    assert.equal(core.status().link, 'connected');
    assert.equal(core.status().target, 'primary');
    const [primarySend] = of(after, 'send');
    core.sendFailed(now + 5030, 1, primarySend?.epoch as number, 'lost');
    assert.equal(core.status().link, 'waiting', 'a failure on the primary itself still counts');
  });

  it('a refused message is moved aside and delivery goes on past it; a failed move is retried', () => {
    const { core } = connectedCore({ nextSeq: 4, window: 8 });
    core.rejected(20, 2, 'too-large');
    const [m] = of(core.takeActions(), 'move-aside');
    assert.deepEqual(m, { kind: 'move-aside', seq: 2, reason: 'too-large' });
    core.sent(21, 1, 'accepted');
    core.sent(22, 3, 'accepted');
    assert.equal(core.status().ackedThrough, 1, 'waits for the move');
    core.moveAsideFailed(23, 2);
    assert.equal(core.nextTimeout(), 23 + 5000);
    core.tick(5023);
    assert.deepEqual(of(core.takeActions(), 'move-aside').map((x) => x.seq), [2]);
    core.movedAside(5030, 2);
    assert.equal(core.status().ackedThrough, 3);
    assert.deepEqual(of(core.takeActions(), 'ack').map((x) => x.throughSeq), [3]);
    assert.equal(core.counters().movedAside, 1);
  });

  it('a send left unanswered past the timeout counts as a lost link', () => {
    const { core } = connectedCore({ nextSeq: 2 });
    core.tick(10 + 30_000);
    assert.equal(core.status().link, 'waiting');
    assert.equal(core.counters().sendTimeouts, 1);
  });

  it('messages the queue dropped for capacity move the position; a late acknowledgement still counts', () => {
    const { core, epoch } = connectedCore({ nextSeq: 11, window: 4 });
    core.appended(20, { ackedThrough: 5, nextSeq: 12 });
    assert.equal(core.status().ackedThrough, 5);
    assert.equal(core.counters().dropped, 5);
    const a = core.takeActions();
    assert.deepEqual(sends(a).sort((x, y) => x - y), [6, 7, 8, 11], 'sending resumes after the dropped ones');
    core.sent(25, 3, 'accepted'); // a late answer for a message already dropped
    assert.equal(core.status().ackedThrough, 5);
    core.sendFailed(30, 6, epoch + 99, 'stale');
    assert.equal(core.status().link, 'connected', 'a failure from another link epoch is ignored');
  });

  it('stop persists the acknowledged position and closes the link', () => {
    const { core } = connectedCore({ nextSeq: 4, window: 8 });
    core.sent(20, 1, 'accepted');
    core.takeActions();
    core.sent(21, 2, 'accepted');
    core.stop(22);
    const a = core.takeActions();
    assert.deepEqual(of(a, 'ack').map((x) => x.throughSeq), [2]);
    assert.equal(of(a, 'close').length, 1);
  });

  it('property: under random failures, refusals, drops and appends every message ends acknowledged or moved aside, exactly once, in order per lane', () => {
    type Ev = { k: 'ack' | 'fail' | 'reject' | 'append' | 'tick' | 'disconnect'; n: number };
    const ev = fc.record({ k: fc.constantFrom<Ev['k']>('ack', 'ack', 'ack', 'fail', 'reject', 'append', 'append', 'tick', 'disconnect'), n: fc.nat(1000) });
    fc.assert(fc.property(fc.array(ev, { maxLength: 300 }), fc.integer({ min: 1, max: 40 }), (events, initial) => {
      const core = new SchedulerCore({ hasFailover: false, window: 5, liveSlots: 1, backoff: { initialMs: 10, maxMs: 100 } }, () => 0.5);
      let now = 0;
      let nextSeq = initial;
      let epoch = 0;
      const inFlight = new Set<number>();
      const delivered = new Set<number>();
      const aside = new Set<number>();
      let persisted = 0;
      const apply = (as: SchedulerAction[]) => {
        for (const a of as) {
          if (a.kind === 'connect') {
            epoch = a.epoch;
            core.connected(now, a.epoch);
          } else if (a.kind === 'send') {
            for (const s of a.seqs) {
              assert.ok(s >= 1 && s < nextSeq, `send of ${s} outside the queue`);
              assert.ok(!delivered.has(s) && !aside.has(s), `resend of ${s} after it was settled`);
              inFlight.add(s);
            }
          } else if (a.kind === 'ack') {
            assert.ok(a.throughSeq > persisted, 'acknowledged position only moves forward');
            for (let s = persisted + 1; s <= a.throughSeq; s++) assert.ok(delivered.has(s) || aside.has(s), `ack covers ${s}, never delivered`);
            persisted = a.throughSeq;
          } else if (a.kind === 'move-aside') {
            aside.add(a.seq);
            core.movedAside(now, a.seq);
          } else if (a.kind === 'close') {
            inFlight.clear();
          }
        }
      };
      core.start(now, { ackedThrough: 0, nextSeq });
      apply(core.takeActions());
      for (const e of events) {
        now += 1 + (e.n % 50);
        const pick = [...inFlight][e.n % Math.max(1, inFlight.size)];
        switch (e.k) {
          case 'ack': if (pick !== undefined) { inFlight.delete(pick); delivered.add(pick); core.sent(now, pick, 'accepted'); } break;
          case 'fail': if (pick !== undefined) core.sendFailed(now, pick, epoch, 'lost'); break;
          case 'reject': if (pick !== undefined) { inFlight.delete(pick); core.rejected(now, pick, 'bad-request'); } break;
          case 'append': nextSeq++; core.appended(now, { ackedThrough: 0, nextSeq }); break;
          case 'disconnect': core.disconnected(now, epoch, 'gone'); break;
          case 'tick': core.tick(now); break;
        }
        apply(core.takeActions());
        assert.ok(core.status().inFlight <= 5);
      }
      // Then a perfect link until everything is settled.
      for (let round = 0; round < 10_000 && core.status().ackedThrough < nextSeq - 1; round++) {
        now += 200;
        core.tick(now);
        apply(core.takeActions());
        for (const s of [...inFlight]) {
          inFlight.delete(s);
          delivered.add(s);
          core.sent(now, s, 'accepted');
          apply(core.takeActions());
        }
      }
      core.stop(now + 1);
      apply(core.takeActions());
      assert.equal(core.status().ackedThrough, nextSeq - 1);
      assert.equal(persisted, nextSeq - 1);
      for (let s = 1; s < nextSeq; s++) assert.ok(delivered.has(s) !== aside.has(s), `seq ${s} settled exactly once`);
    }), { numRuns: 300, seed: 42 });
  });
});
