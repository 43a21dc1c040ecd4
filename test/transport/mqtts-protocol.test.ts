/**
 * The MQTT protocol details of the uplink and the subscriber, against a scripted peer (the real
 * broker will not send every reason code, skip a PUBACK or break Receive Maximum on demand). Time is
 * a ManualTimers: timeouts, keep-alive and back-off fire when the test says so.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { IPublishPacket, Packet } from 'mqtt-packet';
import { ManualTimers } from '../../src/transport/timers.ts';
import { createMqttsSubscriber, type IngestMessage } from '../../src/transport/mqtts/subscriber.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';
import type { UplinkMessage } from '../../src/transport/types.ts';
import { PeerIncompatible, TransportError, UplinkRejected } from '../../src/util/errors.ts';
import { FakeBroker, type FakeConnection } from './support/fake-broker.ts';

const COSE = 'application/cose; cose-type="cose-encrypt"';
const flush = () => new Promise((r) => setImmediate(r));
async function settle(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await flush();
}

/** A payload that starts with the COSE_Encrypt tag (the uplink checks only that). */
function message(seq: number, size = 32): UplinkMessage {
  const payload = new Uint8Array(size);
  payload.set([0xd8, 0x60, 0x84]);
  payload[size - 1] = seq & 0xff;
  return { deviceId: 'bed-7', seq, payload, contentFormat: 'cose-encrypt' };
}

function uplinkOn(broker: FakeBroker, timers = new ManualTimers()) {
  return createMqttsUplink({ deviceId: 'bed-7', host: 'broker.test', port: 8883, tls: broker.connector(), timers });
}

describe('uplink protocol', () => {
  it('CONNECT asks for a persistent session; PUBLISH is QoS 1 on vitals/<id>/v1 with the COSE content type and the advisory seq', async () => {
    const broker = new FakeBroker();
    const u = uplinkOn(broker);
    const connecting = u.connect();
    const c = await broker.connection(1);
    const connect = await c.next('connect');
    assert.equal(connect.clean, false);
    assert.equal(connect.clientId, 'bed-7');
    assert.equal(connect.protocolVersion, 5);
    assert.equal(connect.properties?.sessionExpiryInterval, 7 * 86_400);
    c.send({ cmd: 'connack', sessionPresent: false, reasonCode: 0 });
    await connecting;
    const sending = u.send(message(42));
    const pub = await c.next('publish');
    assert.equal(pub.topic, 'vitals/bed-7/v1');
    assert.equal(pub.qos, 1);
    assert.equal(pub.retain, false);
    assert.equal(pub.properties?.contentType, COSE);
    assert.equal(pub.properties?.payloadFormatIndicator, false);
    assert.deepEqual({ ...pub.properties?.userProperties }, { seq: '42' });
    c.send({ cmd: 'puback', messageId: pub.messageId as number, reasonCode: 0 });
    assert.deepEqual(await sending, { seq: 42, status: 'accepted' });
    await u.close();
    const disconnect = await c.next('disconnect');
    assert.equal(disconnect.reasonCode ?? 0, 0);
  });

  it('maps every PUBACK reason code (MQTT 5.0 §3.4.2.1): success acknowledges, 0x10 and 0x97 are not taken, ≥ 0x80 refuse', async () => {
    const table: [number, 'accepted' | 'retry' | string][] = [
      [0x00, 'accepted'], [0x10, 'retry:no-subscribers'], [0x97, 'retry:quota-exceeded'], [0x80, 'bad-request'], [0x83, 'bad-request'],
      [0x87, 'forbidden'], [0x90, 'bad-request'], [0x91, 'bad-request'], [0x99, 'unsupported-format'],
    ];
    const broker = new FakeBroker();
    const u = uplinkOn(broker);
    const rejected: string[] = [];
    u.on('rejected', (r) => rejected.push(`${r.seq}:${r.reason}`));
    const connecting = u.connect();
    const c = await broker.connection(1);
    await c.accept();
    await connecting;
    for (const [i, [code, expected]] of table.entries()) {
      const sending = u.send(message(i + 1));
      const pub = await c.next('publish', (p) => p.properties?.userProperties?.['seq'] === String(i + 1));
      c.send({ cmd: 'puback', messageId: pub.messageId as number, reasonCode: code });
      if (expected === 'accepted') {
        assert.equal((await sending).status, 'accepted');
      } else if (expected.startsWith('retry:')) {
        await assert.rejects(sending, (e: unknown) => e instanceof TransportError && e.code === expected.slice(6), `code 0x${code.toString(16)}`);
      } else {
        await assert.rejects(sending, (e: unknown) => e instanceof UplinkRejected && e.code === expected, `code 0x${code.toString(16)}`);
      }
    }
    const counters = u.counters();
    assert.equal(counters.acknowledged, 1);
    assert.equal(counters.transportErrors, 2);
    assert.equal(counters.rejected, 6);
    assert.deepEqual(rejected, ['4:bad-request', '5:bad-request', '6:forbidden', '7:bad-request', '8:bad-request', '9:unsupported-format']);
    await u.close();
  });

  it('no PUBACK within the acknowledgement timeout: TransportError ack-timeout (the message may still arrive: the receiver dedupes)', async () => {
    const broker = new FakeBroker();
    const timers = new ManualTimers();
    const u = uplinkOn(broker, timers);
    const connecting = u.connect();
    const c = await broker.connection(1);
    await c.accept();
    await connecting;
    const sending = u.send(message(1));
    await c.next('publish');
    timers.advance(29_999);
    await settle();
    let done = false;
    void sending.then(() => (done = true), () => (done = true));
    await settle();
    assert.equal(done, false);
    timers.advance(1);
    await assert.rejects(sending, (e: unknown) => e instanceof TransportError && e.code === 'ack-timeout');
    await u.close();
  });

  it('CONNACK refusals are typed: 0x87 unauthorized, 0x84 incompatible, 0x88 transient; no CONNACK: connect-timeout', async () => {
    const cases: [number, (e: unknown) => boolean][] = [
      [0x87, (e) => e instanceof UplinkRejected && e.code === 'unauthorized'],
      [0x86, (e) => e instanceof UplinkRejected && e.code === 'unauthorized'],
      [0x84, (e) => e instanceof PeerIncompatible],
      [0x88, (e) => e instanceof TransportError && e.code === 'connect-refused'],
    ];
    for (const [code, check] of cases) {
      const broker = new FakeBroker();
      const u = uplinkOn(broker);
      const connecting = u.connect();
      const c = await broker.connection(1);
      await c.accept({}, code);
      await assert.rejects(connecting, check, `CONNACK 0x${code.toString(16)}`);
      assert.equal(u.counters().connects, 0);
      await u.close();
    }
    const broker = new FakeBroker();
    const timers = new ManualTimers();
    const u = uplinkOn(broker, timers);
    const connecting = u.connect();
    await (await broker.connection(1)).next('connect');
    timers.advance(15_000);
    await assert.rejects(connecting, (e: unknown) => e instanceof TransportError && e.code === 'connect-timeout');
    await u.close();
  });

  it('never more unacknowledged PUBLISHes than the broker\'s Receive Maximum', async () => {
    const broker = new FakeBroker();
    const u = uplinkOn(broker);
    const connecting = u.connect();
    const c = await broker.connection(1);
    await c.accept({ receiveMaximum: 3 });
    await connecting;
    const sends = Array.from({ length: 10 }, (_, i) => u.send(message(i + 1)));
    let acked = 0;
    let maxOutstanding = 0;
    while (acked < 10) {
      await settle();
      const outstanding = c.count('publish') - acked;
      maxOutstanding = Math.max(maxOutstanding, outstanding);
      const pub = c.received.filter((p): p is IPublishPacket => p.cmd === 'publish')[acked];
      assert.ok(pub !== undefined, 'a PUBLISH is waiting');
      c.send({ cmd: 'puback', messageId: pub.messageId as number, reasonCode: 0 });
      acked += 1;
    }
    assert.equal((await Promise.all(sends)).length, 10);
    assert.equal(maxOutstanding, 3);
    await u.close();
  });

  it('a payload over the broker\'s Maximum Packet Size is refused before sending', async () => {
    const broker = new FakeBroker();
    const u = uplinkOn(broker);
    const connecting = u.connect();
    const c = await broker.connection(1);
    await c.accept({ maximumPacketSize: 1024 });
    await connecting;
    await assert.rejects(u.send(message(1, 2048)), (e: unknown) => e instanceof UplinkRejected && e.code === 'too-large');
    await settle();
    assert.equal(c.count('publish'), 0);
    assert.equal((await Promise.all([u.send(message(2, 100)), c.next('publish').then((p) => c.send({ cmd: 'puback', messageId: p.messageId as number, reasonCode: 0 }))]))[0].status, 'accepted');
    await u.close();
  });

  it('the broker sends DISCONNECT and closes: in-flight sends fail with TransportError, disconnected names the reason', async () => {
    const broker = new FakeBroker();
    const u = uplinkOn(broker);
    const reasons: string[] = [];
    u.on('disconnected', ({ reason }) => reasons.push(reason));
    const connecting = u.connect();
    const c = await broker.connection(1);
    await c.accept();
    await connecting;
    const sending = u.send(message(1));
    await c.next('publish');
    c.send({ cmd: 'disconnect', reasonCode: 0x8b });
    c.end();
    await assert.rejects(sending, (e: unknown) => e instanceof TransportError && e.code === 'connection-lost');
    assert.deepEqual(reasons, ['the broker sent DISCONNECT Server shutting down (0x8b)']);
    assert.equal(u.session, undefined);
    assert.equal(u.counters().disconnects, 1);
    await u.close();
  });
});

/** A QoS 1 PUBLISH; `contentType: null` leaves the property out. */
function publish(id: number, topic = 'vitals/bed-7/v1', contentType: string | null = COSE, dup = false): Packet {
  return {
    cmd: 'publish', qos: 1, dup, retain: false, topic, messageId: id, payload: Buffer.from([0xd8, 0x60, id]),
    ...(contentType === null ? {} : { properties: { contentType } }),
  } as Packet;
}

async function startSubscriber(handler: (m: IngestMessage) => Promise<void>, opts: { receiveMaximum?: number; timers?: ManualTimers } = {}) {
  const broker = new FakeBroker();
  const timers = opts.timers ?? new ManualTimers();
  const sub = createMqttsSubscriber({
    host: 'broker.test', port: 8883, tls: broker.connector(), clientId: 'ingest-1', handler, timers,
    ...(opts.receiveMaximum === undefined ? {} : { receiveMaximum: opts.receiveMaximum }),
  });
  const starting = sub.start();
  const c = await broker.connection(1);
  await c.accept({}, 0, true);
  const s = await c.next('subscribe');
  c.send({ cmd: 'suback', messageId: s.messageId, granted: [1] } as Packet);
  await starting;
  return { broker, sub, c, timers };
}

function pubacks(c: FakeConnection): [number, number][] {
  return c.received.filter((p) => p.cmd === 'puback').map((p) => [p.messageId as number, (p as { reasonCode?: number }).reasonCode ?? 0]);
}

describe('subscriber protocol', () => {
  it('CONNECT: persistent session, Receive Maximum; SUBSCRIBE to the share at QoS 1, every time, even when the session is present', async () => {
    const { c, sub } = await startSubscriber(async () => undefined, { receiveMaximum: 8 });
    const connect = await c.next('connect');
    assert.equal(connect.clean, false);
    assert.equal(connect.clientId, 'ingest-1');
    assert.equal(connect.properties?.receiveMaximum, 8);
    assert.equal(connect.properties?.sessionExpiryInterval, 7 * 86_400);
    const s = await c.next('subscribe');
    assert.deepEqual(s.subscriptions, [{ topic: '$share/vitalseal/vitals/+/v1', qos: 1, nl: false, rap: false, rh: 2 }]);
    await sub.close();
  });

  it('handlers run concurrently; PUBACKs go out in arrival order (MQTT 5.0 §4.6), each once its handler and all earlier ones finished', async () => {
    const release = new Map<number, () => void>();
    let running = 0;
    let maxRunning = 0;
    const { c, sub } = await startSubscriber(async (m) => {
      running += 1;
      maxRunning = Math.max(maxRunning, running);
      await new Promise<void>((r) => release.set(m.payload[2] as number, r));
      running -= 1;
    });
    for (let id = 1; id <= 5; id++) c.send(publish(id));
    await settle();
    assert.equal(maxRunning, 5);
    for (const id of [5, 4, 3, 2]) release.get(id)?.();
    await settle();
    assert.deepEqual(pubacks(c), [], 'nothing before the first finishes');
    release.get(1)?.();
    await settle();
    assert.deepEqual(pubacks(c), [[1, 0], [2, 0], [3, 0], [4, 0], [5, 0]]);
    assert.equal(sub.counters().accepted, 5);
    assert.equal(sub.counters().inFlight, 0);
    await sub.close();
  });

  it('refusals are acknowledged with their reason (0x87, 0x99, 0x80); a non-vitals topic (0x90) or a missing content type (0x99) never reaches the handler', async () => {
    const seen: number[] = [];
    const { c, sub } = await startSubscriber(async (m) => {
      const id = m.payload[2] as number;
      seen.push(id);
      if (id === 1) throw new UplinkRejected('forbidden', 'sealed for another device');
      if (id === 2) throw new UplinkRejected('unsupported-format', 'not COSE');
      if (id === 3) throw new UplinkRejected('bad-request', 'tampered');
    });
    c.send(publish(1));
    c.send(publish(2));
    c.send(publish(3));
    c.send(publish(4, 'vitals/bed-7/v2'));
    c.send(publish(5, 'vitals/bed-7/v1', null));
    c.send(publish(6, 'vitals/bed-7/v1', 'application/json'));
    c.send(publish(7));
    await settle();
    assert.deepEqual(pubacks(c), [[1, 0x87], [2, 0x99], [3, 0x80], [4, 0x90], [5, 0x99], [6, 0x99], [7, 0]]);
    assert.deepEqual(seen, [1, 2, 3, 7]);
    assert.equal(sub.counters().refused, 6);
    await sub.close();
  });

  it('a handler failure leaves the message unacknowledged, drops the connection, and after the back-off the redelivery (DUP) is taken', async () => {
    let fail = true;
    const { broker, c, sub, timers } = await startSubscriber(async (m) => {
      if (m.payload[2] === 2 && fail) {
        fail = false;
        throw new Error('database unavailable');
      }
    });
    const errors: unknown[] = [];
    sub.on('handlerError', (e) => errors.push(e.error));
    c.send(publish(1));
    c.send(publish(2));
    c.send(publish(3));
    await settle();
    assert.deepEqual(pubacks(c), [[1, 0]], 'no PUBACK for 2, and none for 3 after it');
    assert.ok(c.closed);
    assert.equal(errors.length, 1);
    // The first back-off is at most 250 ms (not more: a new connection's CONNACK deadline would pass too).
    timers.advance(250);
    const c2 = await broker.connection(2);
    await c2.accept({}, 0, true);
    const s = await c2.next('subscribe');
    c2.send({ cmd: 'suback', messageId: s.messageId, granted: [1] } as Packet);
    c2.send(publish(2, 'vitals/bed-7/v1', COSE, true));
    c2.send(publish(3, 'vitals/bed-7/v1', COSE, true));
    await settle();
    assert.deepEqual(pubacks(c2), [[2, 0], [3, 0]]);
    const k = sub.counters();
    assert.equal(k.handlerErrors, 1);
    assert.equal(k.redelivered, 2);
    assert.equal(k.connects, 2);
    assert.equal(k.disconnects, 1);
    await sub.close();
  });

  it('a broker past our Receive Maximum (mosquitto 2.0.11 on session resume): the excess waits, handlers stay within the limit, PUBACKs stay in order; a backlog past its byte limit ends the connection with 0x93', async () => {
    const release: (() => void)[] = [];
    let running = 0;
    let maxRunning = 0;
    const broker = new FakeBroker();
    const sub = createMqttsSubscriber({
      host: 'b', port: 1, tls: broker.connector(), clientId: 'i', timers: new ManualTimers(), receiveMaximum: 2, maxBacklogBytes: 30,
      handler: async () => {
        running += 1;
        maxRunning = Math.max(maxRunning, running);
        await new Promise<void>((r) => release.push(r));
        running -= 1;
      },
    });
    const starting = sub.start();
    const c = await broker.connection(1);
    await c.accept();
    const s = await c.next('subscribe');
    c.send({ cmd: 'suback', messageId: s.messageId, granted: [1] } as Packet);
    await starting;
    for (let id = 1; id <= 8; id++) c.send(publish(id));
    await settle();
    assert.equal(sub.counters().overReceiveMaximum, 6);
    assert.equal(maxRunning, 2);
    while (release.length > 0) {
      release.shift()?.();
      await settle();
    }
    assert.deepEqual(pubacks(c), [[1, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0], [7, 0], [8, 0]]);
    assert.equal(maxRunning, 2);
    // 3 bytes each: 2 run, 10 wait = 30 bytes; the 13th is past the limit.
    for (let id = 9; id <= 21; id++) c.send(publish(id));
    await settle();
    const d = await c.next('disconnect');
    assert.equal(d.reasonCode, 0x93);
    await sub.close({ drainMs: 0 });
  });

  it('keep-alive: PINGREQ after the interval; no answer within another interval ends the connection', async () => {
    const { c, sub, timers } = await startSubscriber(async () => undefined);
    timers.advance(30_000);
    await settle();
    assert.equal(c.count('pingreq'), 1);
    c.send({ cmd: 'pingresp' } as Packet);
    await settle();
    timers.advance(30_000);
    await settle();
    assert.equal(c.count('pingreq'), 2);
    assert.ok(!c.closed);
    timers.advance(30_000);
    await settle();
    assert.ok(c.closed, 'no PINGRESP: the connection is given up');
    await sub.close();
  });

  it('start(): a refused subscription or CONNACK rejects with a typed error; a transient refusal is retried after the back-off', async () => {
    for (const [connack, suback, check] of [
      [0x00, 0x87, (e: unknown) => e instanceof UplinkRejected && e.code === 'forbidden'],
      [0x87, undefined, (e: unknown) => e instanceof UplinkRejected && e.code === 'unauthorized'],
    ] as const) {
      const broker = new FakeBroker();
      const sub = createMqttsSubscriber({ host: 'b', port: 1, tls: broker.connector(), clientId: 'i', handler: async () => undefined, timers: new ManualTimers() });
      const starting = sub.start();
      const c = await broker.connection(1);
      await c.accept({}, connack);
      if (suback !== undefined) {
        const s = await c.next('subscribe');
        c.send({ cmd: 'suback', messageId: s.messageId, granted: [suback] } as Packet);
      }
      await assert.rejects(starting, check);
      await sub.close();
    }
    const broker = new FakeBroker();
    const timers = new ManualTimers();
    const sub = createMqttsSubscriber({ host: 'b', port: 1, tls: broker.connector(), clientId: 'i', handler: async () => undefined, timers });
    const failures: string[] = [];
    sub.on('connectFailed', ({ error }) => failures.push(error.code));
    const starting = sub.start();
    await (await broker.connection(1)).accept({}, 0x88);
    await settle();
    timers.advance(250);
    const c2 = await broker.connection(2);
    await c2.accept();
    const s = await c2.next('subscribe');
    c2.send({ cmd: 'suback', messageId: s.messageId, granted: [1] } as Packet);
    await starting;
    assert.deepEqual(failures, ['connect-refused']);
    await sub.close();
  });

  it('close(): a running handler gets to finish and is acknowledged, then DISCONNECT 0x00', async () => {
    let finish: () => void = () => undefined;
    const { c, sub } = await startSubscriber(() => new Promise<void>((r) => (finish = r)));
    c.send(publish(1));
    await settle();
    const closing = sub.close({ drainMs: 60_000 });
    await settle();
    assert.deepEqual(pubacks(c), []);
    finish();
    await closing;
    assert.deepEqual(pubacks(c), [[1, 0]]);
    assert.equal((await c.next('disconnect')).reasonCode, 0);
  });

  it('bytes that are not MQTT never crash the subscriber: the connection ends or the bytes are ignored, and it reconnects', async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 64 }), async (junk) => {
      const { broker, c, sub, timers } = await startSubscriber(async () => undefined);
      c.sendRaw(junk);
      await settle();
      if (c.closed) {
        timers.advance(250);
        const c2 = await broker.connection(2);
        await c2.next('connect');
      }
      await sub.close({ drainMs: 0 });
    }), { numRuns: 150 });
  });
});
