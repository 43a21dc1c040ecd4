/**
 * The Uplink contract: what every transport (MQTTS, CoAPS) guarantees the agent, checked against
 * a real receiving peer. A transport's test file supplies a fixture and calls `uplinkContract`.
 *
 *   connect        a session with the negotiated parameters; `connected` once; connects counted
 *   send → ack     resolves only once the receiver took the bytes; the receiver has them exactly
 *   concurrency    many sends in flight; every one acknowledged and received
 *   duplicate seq  the same message twice: both succeed (at-least-once; the receiver dedupes)
 *   not connected  send before connect / after the peer went away → TransportError
 *   close          messages in flight reject with TransportError; none hangs; close resolves
 *   disconnect     the session ends, the uplink does not: connect() again and deliver; close is final
 *   reconnect      after the peer goes away and comes back, connect() again and send
 *   bad input      a payload that is not the COSE object it claims → UplinkRejected, `rejected`
 *                  event, counted; a message for another device → ApiMisuse
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Uplink, UplinkAck, UplinkMessage, UplinkSession } from '../../src/transport/types.ts';
import { ApiMisuse, TransportError, UplinkRejected } from '../../src/util/errors.ts';

export interface UplinkContractFixture {
  readonly deviceId: string;
  /** 'TLSv1.3' or 'DTLSv1.3'. */
  readonly protocol: string;
  readonly kind: Uplink['kind'];
  /** How the uplink authenticates (default 'certificate'; CoAPS devices may use a PSK). */
  readonly auth?: UplinkSession['auth'];
  /** A new, unconnected uplink for `deviceId`. */
  uplink(): Uplink;
  /** A sealed message with this sequence number (payloads differ per sequence number). */
  message(seq: number): UplinkMessage;
  /** Payloads the receiving side has taken so far, in arrival order. */
  received(): readonly Uint8Array[];
  waitForReceived(n: number): Promise<void>;
  /** The receiving peer goes away: connections drop and new ones fail until `startPeer`. */
  stopPeer(): Promise<void>;
  startPeer(): Promise<void>;
  /** The peer stops answering (connections stay up) until the returned function is called. */
  freezePeer(): Promise<() => Promise<void>>;
  teardown(): Promise<void>;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const sessionOf = (u: Uplink): UplinkSession | undefined => u.session;

async function settleAll<T>(ps: Promise<T>[]): Promise<PromiseSettledResult<T>[]> {
  return Promise.allSettled(ps);
}

export function until(cond: () => boolean, ms = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      if (cond()) resolve();
      else if (Date.now() - start > ms) reject(new Error('condition not met in time'));
      else setTimeout(tick, 5);
    };
    tick();
  });
}

export function uplinkContract(name: string, setup: () => Promise<UplinkContractFixture>): void {
  describe(`Uplink contract: ${name}`, () => {
    let f: UplinkContractFixture;
    let seq = 0;
    const open: Uplink[] = [];
    const fresh = () => {
      const u = f.uplink();
      open.push(u);
      return u;
    };

    before(async () => {
      f = await setup();
    });

    after(async () => {
      for (const u of open) await u.close().catch(() => undefined);
      await f?.teardown();
    });

    it('connect: one session with the negotiated parameters, one connected event, counted', async () => {
      const u = fresh();
      const sessions: UplinkSession[] = [];
      u.on('connected', (s) => sessions.push(s));
      assert.equal(u.session, undefined);
      await u.connect();
      await u.connect(); // idempotent while connected
      assert.equal(sessions.length, 1);
      // Read through a function: the assertion above narrowed `u.session` to undefined.
      const s = sessionOf(u);
      assert.ok(s !== undefined);
      assert.deepEqual(s, sessions[0]);
      assert.equal(s.kind, f.kind);
      assert.equal(s.protocol, f.protocol);
      assert.equal(s.group, 'x25519');
      assert.equal(s.auth, f.auth ?? 'certificate');
      assert.match(s.suite, /^TLS_(AES_128_GCM|AES_256_GCM|CHACHA20_POLY1305|AES_128_CCM)_SHA(256|384)$/);
      assert.match(s.peer, /:\d+$/);
      assert.equal(u.counters().connects, 1);
      assert.equal(u.kind, f.kind);
    });

    it('send → ack: resolves with the sequence number once the receiver has exactly these bytes', async () => {
      const u = fresh();
      await u.connect();
      const before = f.received().length;
      const m = f.message(++seq);
      const ack: UplinkAck = await u.send(m);
      assert.deepEqual(ack, { seq: m.seq, status: 'accepted' });
      await f.waitForReceived(before + 1);
      assert.ok(f.received().some((p) => hex(p) === hex(m.payload)), 'the receiver got the exact payload');
      const c = u.counters();
      assert.equal(c.sent, 1);
      assert.equal(c.acknowledged, 1);
      assert.equal(c.rejected, 0);
      assert.equal(c.transportErrors, 0);
    });

    it('many sends in flight: every one acknowledged and received', async () => {
      const u = fresh();
      await u.connect();
      const before = f.received().length;
      const msgs = Array.from({ length: 300 }, () => f.message(++seq));
      const acks = await Promise.all(msgs.map((m) => u.send(m)));
      assert.deepEqual(acks.map((a) => a.seq), msgs.map((m) => m.seq));
      await f.waitForReceived(before + msgs.length);
      const got = new Set(f.received().map(hex));
      for (const m of msgs) assert.ok(got.has(hex(m.payload)), `message ${m.seq} received`);
      assert.equal(u.counters().acknowledged, msgs.length);
    });

    it('duplicate sequence number: both sends succeed (delivery is at least once; the receiver dedupes)', async () => {
      const u = fresh();
      await u.connect();
      const before = f.received().length;
      const m = f.message(++seq);
      const a1 = await u.send(m);
      const a2 = await u.send(m);
      for (const a of [a1, a2]) {
        assert.equal(a.seq, m.seq);
        assert.ok(a.status === 'accepted' || a.status === 'duplicate');
      }
      await f.waitForReceived(before + 1);
      assert.ok(f.received().some((p) => hex(p) === hex(m.payload)));
      const c = u.counters();
      assert.equal(c.acknowledged, 2);
      assert.equal(c.duplicates, [a1, a2].filter((a) => a.status === 'duplicate').length);
    });

    it('send before connect fails with TransportError and is counted', async () => {
      const u = fresh();
      await assert.rejects(u.send(f.message(++seq)), (e: unknown) => e instanceof TransportError);
      assert.equal(u.counters().transportErrors, 1);
    });

    it('bad input: a payload that is not the COSE object it claims is refused (UplinkRejected, event, counter); another device\'s message is misuse', async () => {
      const u = fresh();
      await u.connect();
      const rejected: unknown[] = [];
      u.on('rejected', (r) => rejected.push(r));
      const plain = { ...f.message(++seq), payload: new TextEncoder().encode('{"hr":72}') };
      await assert.rejects(u.send(plain), (e: unknown) => e instanceof UplinkRejected && e.code === 'unsupported-format');
      assert.deepEqual(rejected.length, 1);
      assert.equal((rejected[0] as { seq: number }).seq, plain.seq);
      assert.equal(u.counters().rejected, 1);
      await assert.rejects(u.send({ ...f.message(++seq), deviceId: `${f.deviceId}-other` }), (e: unknown) => e instanceof ApiMisuse);
      await assert.rejects(u.send({ ...f.message(++seq), seq: -1 }), RangeError);
      // The connection is still good.
      assert.equal((await u.send(f.message(++seq))).status, 'accepted');
    });

    it('close with messages in flight: they reject with TransportError, close resolves, later sends fail', async () => {
      const u = fresh();
      await u.connect();
      const disconnected: string[] = [];
      u.on('disconnected', ({ reason }) => disconnected.push(reason));
      const thaw = await f.freezePeer();
      try {
        const inFlight = settleAll(Array.from({ length: 20 }, () => u.send(f.message(++seq))));
        await until(() => u.counters().sent === 20);
        await u.close();
        const results = await inFlight;
        for (const r of results) {
          assert.equal(r.status, 'rejected', 'the frozen peer acknowledged nothing');
          assert.ok(r.reason instanceof TransportError, String(r.reason));
        }
        assert.equal(u.counters().transportErrors, 20);
        assert.equal(disconnected.length, 1);
      } finally {
        await thaw();
      }
      await assert.rejects(u.send(f.message(++seq)), (e: unknown) => e instanceof TransportError || e instanceof ApiMisuse);
      assert.equal(u.session, undefined);
    });

    it('disconnect ends the session but not the uplink: connect() again and deliver; after close, connect() is refused', async () => {
      const u = fresh();
      const events: string[] = [];
      u.on('connected', () => events.push('connected'));
      u.on('disconnected', () => events.push('disconnected'));
      await u.connect();
      const first = f.message(++seq);
      assert.equal((await u.send(first)).seq, first.seq);
      assert.ok(u.disconnect !== undefined, 'the agent reconnects through disconnect(): every transport has it');
      await u.disconnect();
      assert.equal(u.session, undefined);
      await assert.rejects(u.send(f.message(++seq)), (e: unknown) => e instanceof TransportError);
      await u.connect();
      const second = f.message(++seq);
      assert.equal((await u.send(second)).seq, second.seq);
      assert.deepEqual(events, ['connected', 'disconnected', 'connected']);
      assert.equal(u.counters().connects, 2);
      await u.close();
      await assert.rejects(u.connect(), (e: unknown) => e instanceof ApiMisuse);
    });

    it('the peer goes away: in-flight and new sends fail with TransportError, disconnected is emitted; connect() again once it is back', async () => {
      const u = fresh();
      await u.connect();
      assert.equal((await u.send(f.message(++seq))).status, 'accepted');
      const disconnected = new Promise<string>((resolve) => u.once('disconnected', ({ reason }) => resolve(reason)));
      await f.stopPeer();
      try {
        assert.equal(typeof (await disconnected), 'string');
        assert.equal(u.session, undefined);
        await assert.rejects(u.send(f.message(++seq)), (e: unknown) => e instanceof TransportError);
        await assert.rejects(u.connect(), (e: unknown) => e instanceof TransportError);
      } finally {
        await f.startPeer();
      }
      await u.connect();
      const before = f.received().length;
      const m = f.message(++seq);
      assert.equal((await u.send(m)).status, 'accepted');
      await f.waitForReceived(before + 1);
      const c = u.counters();
      assert.equal(c.connects, 2);
      assert.equal(c.disconnects, 1);
      assert.ok(c.transportErrors >= 1);
    });
  });
}
