/**
 * The MLLP gateway over real loopback TCP, with an independent HL7 client library as the sender
 * (@medplum/hl7: Medplum's maintained MLLP client, Apache-2.0; see docs/agent.md for why), and raw
 * sockets for the framing abuse a well-behaved library cannot produce.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Hl7Message } from '@medplum/core';
import { Hl7Client } from '@medplum/hl7';
import type { VitalReading } from '../../../../src/codec/vitals.ts';
import { silentLogger } from '../../../../src/agent/log.ts';
import { MllpGateway, type ReadingSink } from '../../../../src/agent/sensors/hl7/gateway.ts';
import { StorageError } from '../../../../src/util/errors.ts';
import { obx, oru } from './messages.ts';

/** A test sink: records what it was given; can be told to wait or fail. */
class RecordingSink implements ReadingSink {
  readonly stored: VitalReading[][] = [];
  delayMs = 0;
  failWith: Error | undefined;
  async submit(readings: readonly VitalReading[]): Promise<void> {
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.failWith !== undefined) throw this.failWith;
    this.stored.push([...readings]);
  }
}

const now = () => Date.now();
const stamp = () => new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14) + '+0000';

function oruNow(control: string, hr = '72'): string {
  const t = stamp();
  return oru([obx(1, '8867-4^Heart rate^LN', hr, '/min^/min^UCUM', { time: t }), obx(2, '150456^MDC_PULS_OXIM_SAT_O2^MDC', '97', '262688^MDC_DIM_PERCENT^MDC', { time: t })], { control });
}

async function send(port: number, text: string): Promise<{ code: string; control: string; text: string }> {
  const client = new Hl7Client({ host: '127.0.0.1', port, connectTimeout: 2000 });
  try {
    const ack = await client.sendAndWait(Hl7Message.parse(text), { timeoutMs: 5000 });
    const msa = ack.getSegment('MSA');
    return { code: msa?.getField(1)?.toString() ?? '', control: msa?.getField(2)?.toString() ?? '', text: msa?.getField(3)?.toString() ?? '' };
  } finally {
    await client.close();
  }
}

function rawSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

function closed(s: Socket, withinMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve(true);
    const t = setTimeout(() => resolve(false), withinMs);
    s.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
    s.on('error', () => undefined);
    s.resume();
  });
}

describe('HL7 MLLP gateway (real TCP, @medplum/hl7 as the sender)', () => {
  const sink = new RecordingSink();
  const gw = new MllpGateway({
    host: '127.0.0.1', port: 0, sink, clock: { now }, log: silentLogger(),
    maxConnections: 3, maxFrameBytes: 4096, idleTimeoutMs: 600, frameTimeoutMs: 300, maxPendingFrames: 2,
  });
  let port = 0;
  before(async () => {
    port = (await gw.start()).port;
  });
  after(() => gw.stop());

  it('answers AA, echoing the control id, only after the sink has stored the readings', async () => {
    sink.delayMs = 150;
    const started = Date.now();
    const before = sink.stored.length;
    const ack = await send(port, oruNow('CTRL-1'));
    sink.delayMs = 0;
    assert.equal(ack.code, 'AA');
    assert.equal(ack.control, 'CTRL-1');
    assert.ok(Date.now() - started >= 140, 'ACK waited for the store');
    assert.equal(sink.stored.length, before + 1);
    assert.deepEqual(sink.stored.at(-1)?.map((r) => [r.kind, r.value]).sort(), [['heart-rate', 72], ['spo2', 97]]);
  });

  it('answers AE with the reason when the readings cannot be stored', async () => {
    sink.failWith = new StorageError('queue-write-failed', 'disk full');
    try {
      const ack = await send(port, oruNow('CTRL-2'));
      assert.equal(ack.code, 'AE');
      assert.equal(ack.control, 'CTRL-2');
      assert.match(ack.text, /could not be stored \(queue-write-failed\)/);
    } finally {
      sink.failWith = undefined;
    }
  });

  it('answers AE/AR to malformed or unsupported HL7 and keeps serving', async () => {
    const before = gw.counters();
    assert.equal((await send(port, oruNow('C3').replace('|72|', '|7two|'))).code, 'AE');
    assert.equal((await send(port, oruNow('C4').replace('ORU^R01^ORU_R01', 'ADT^A01'))).code, 'AR');
    assert.equal((await send(port, oruNow('C5').replace('/min^/min^UCUM', 'furlongs'))).code, 'AE');
    assert.equal((await send(port, oruNow('C6'))).code, 'AA');
    const c = gw.counters();
    assert.equal(c.messagesErrored - before.messagesErrored, 2);
    assert.equal(c.messagesRejected - before.messagesRejected, 1);
  });

  it('several clients at once are each answered', async () => {
    const acks = await Promise.all([1, 2, 3].map((i) => send(port, oruNow(`PAR-${i}`, String(70 + i)))));
    assert.deepEqual(acks.map((a) => a.code), ['AA', 'AA', 'AA']);
    assert.deepEqual(acks.map((a) => a.control).sort(), ['PAR-1', 'PAR-2', 'PAR-3']);
  });

  it('closes a connection that sends an oversized frame, counts it, and other connections are undisturbed', async () => {
    const before = gw.counters().oversizedFrames;
    const bad = await rawSocket(port);
    bad.write(Buffer.concat([Buffer.from([0x0b]), Buffer.alloc(5000, 0x41)]));
    assert.equal(await closed(bad, 2000), true);
    assert.equal(gw.counters().oversizedFrames, before + 1);
    assert.equal((await send(port, oruNow('AFTER-BIG'))).code, 'AA');
  });

  it('closes on framing violations (junk outside a frame, FS without CR)', async () => {
    const before = gw.counters().framingErrors;
    for (const junk of [Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.from('\x0bMSH|^~\\&\x1cX')]) {
      const s = await rawSocket(port);
      s.write(junk);
      assert.equal(await closed(s, 2000), true);
    }
    assert.equal(gw.counters().framingErrors, before + 2);
  });

  it('slow-loris: an idle connection and a frame that never ends are closed on their timeouts', async () => {
    const before = gw.counters();
    const idle = await rawSocket(port);
    const dribble = await rawSocket(port);
    dribble.write(Buffer.from([0x0b]));
    // One byte every 100 ms keeps the idle timer quiet; the frame timer (300 ms) still fires.
    const drip = setInterval(() => { if (!dribble.destroyed) dribble.write('M'); }, 100);
    try {
      assert.equal(await closed(dribble, 2000), true, 'dribbling frame closed');
      assert.equal(await closed(idle, 2000), true, 'idle connection closed');
    } finally {
      clearInterval(drip);
    }
    const c = gw.counters();
    assert.equal(c.frameTimeouts - before.frameTimeouts, 1);
    assert.equal(c.idleTimeouts - before.idleTimeouts, 1);
    assert.equal((await send(port, oruNow('AFTER-LORIS'))).code, 'AA');
  });

  it('refuses connections beyond the maximum, counting them, and serves again once they go', async () => {
    const before = gw.counters().connectionsRefused;
    const hogs = await Promise.all([1, 2, 3].map(() => rawSocket(port)));
    await new Promise((r) => setTimeout(r, 50));
    const extra = await rawSocket(port);
    assert.equal(await closed(extra, 2000), true);
    assert.equal(gw.counters().connectionsRefused, before + 1);
    for (const h of hogs) h.destroy();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal((await send(port, oruNow('AFTER-FLOOD'))).code, 'AA');
  });

  it('closes a connection that pipelines more unacknowledged messages than allowed', async () => {
    sink.delayMs = 200;
    try {
      const s = await rawSocket(port);
      const frame = Buffer.concat([Buffer.from([0x0b]), Buffer.from(oruNow('PIPE'), 'latin1'), Buffer.from([0x1c, 0x0d])]);
      s.write(Buffer.concat([frame, frame, frame, frame]));
      assert.equal(await closed(s, 2000), true);
      assert.ok(gw.counters().pipelineOverflows >= 1);
    } finally {
      sink.delayMs = 0;
    }
  });
});
