/**
 * Restarts in the middle of a stream: nothing the broker acknowledged is lost. A device streams
 * sealed messages the way the agent does (keeps what is not acknowledged, reconnects with a
 * back-off, sends it again); every sequence number acknowledged to the device must reach the ingest
 * (opened and counted), duplicates allowed.
 *
 *   broker restart (clean shutdown)         the database is saved; sessions and queues come back
 *   ingest instance killed (SIGKILL) and    its share waits in its session and is delivered when
 *   started again, another instance runs    it returns; unacknowledged messages come again (DUP)
 *   broker crash (SIGKILL)                  what mosquitto had not saved is lost: shown here, and
 *                                           in docs/transport-mqtts.md
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startMqttRig, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import type { Uplink } from '../../src/transport/types.ts';
import { TransportError } from '../../src/util/errors.ts';
import { until } from './contract.ts';

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Sends seq 1..n like the agent: at most `window` in flight; a TransportError puts the message
 * back, and the stream waits until `connect()` succeeds again (100 ms back-off). Returns the
 * acknowledged sequence numbers. `onAcked(k)` lets the test act at a point in the stream.
 */
async function stream(rig: MqttRig, uplink: Uplink, deviceId: string, n: number, onAcked: (count: number) => Promise<void> | void, window = 32): Promise<Set<number>> {
  const acked = new Set<number>();
  const queue: number[] = Array.from({ length: n }, (_, i) => i + 1);
  let healthy = true;
  let reconnecting: Promise<void> | undefined;
  const reconnect = () => {
    reconnecting ??= (async () => {
      for (;;) {
        try {
          await uplink.connect();
          healthy = true;
          return;
        } catch {
          await delay(100);
        }
      }
    })().finally(() => {
      reconnecting = undefined;
    });
    return reconnecting;
  };
  const worker = async () => {
    for (;;) {
      if (!healthy) await reconnect();
      const seq = queue.shift();
      if (seq === undefined) return;
      try {
        await uplink.send(rig.seal(deviceId, seq));
        acked.add(seq);
        await onAcked(acked.size);
      } catch (e) {
        if (!(e instanceof TransportError)) throw e;
        queue.push(seq);
        healthy = false;
        await delay(20);
      }
    }
  };
  await uplink.connect();
  await Promise.all(Array.from({ length: window }, worker));
  return acked;
}

interface IngestChild {
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
}

function startIngestProcess(rig: MqttRig, clientId: string, seen: number[]): IngestChild {
  const entry = fileURLToPath(new URL('./support/ingest-process.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', entry], { stdio: ['pipe', 'pipe', 'inherit'] });
  let markReady: () => void = () => undefined;
  const ready = new Promise<void>((r) => {
    markReady = r;
  });
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    const msg = JSON.parse(line) as { ready?: boolean; deviceId?: string; payload?: string };
    if (msg.ready === true) {
      markReady();
      return;
    }
    const opened = rig.open(new Uint8Array(Buffer.from(msg.payload as string, 'base64')));
    assert.equal(opened.deviceId, msg.deviceId);
    seen.push(opened.seq);
  });
  child.stdin?.end(`${JSON.stringify({
    host: rig.broker.host, port: rig.broker.port, clientId, rootPem: rig.fleet.rootPem,
    certChainPem: rig.ingestIdentity.certChainPem, keyPem: rig.ingestIdentity.keyPem, receiveMaximum: 16,
  })}\n`);
  return { child, ready };
}

function missing(acked: Set<number>, seen: readonly number[]): number[] {
  const got = new Set(seen);
  return [...acked].filter((s) => !got.has(s)).sort((a, b) => a - b);
}

describe('restarts in the middle of a stream', () => {
  // One broker per case: an ingest session left behind by one case would still be a member of the
  // share and take part of the next case's stream into its queue.
  let rig: MqttRig;
  const children: ChildProcess[] = [];

  beforeEach(async () => {
    rig = await startMqttRig({ devices: ['bed-1', 'bed-2', 'bed-3'] });
  });

  afterEach(async () => {
    for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
    await rig?.stop();
  });

  it('broker restart: every acknowledged sequence number reaches the ingest', async () => {
    const ingest = await rig.startIngest('ingest-broker-restart');
    const uplink = rig.uplink('bed-1');
    let restarted = false;
    const acked = await stream(rig, uplink, 'bed-1', 1500, async (count) => {
      if (count === 500 && !restarted) {
        restarted = true;
        await rig.broker.restart();
      }
    });
    assert.ok(restarted);
    assert.equal(acked.size, 1500);
    await until(() => missing(acked, ingest.received.map((r) => r.seq)).length === 0, 30_000).catch(() => undefined);
    assert.deepEqual(missing(acked, ingest.received.map((r) => r.seq)), []);
    assert.ok(uplink.counters().disconnects >= 1, 'the device saw the broker go');
    assert.ok(ingest.subscriber.counters().disconnects >= 1, 'the ingest saw the broker go');
    assert.doesNotMatch(rig.broker.log(), /dropped/i, 'the broker dropped nothing from a queue');
    await uplink.close();
    await ingest.subscriber.close();
  });

  it('an ingest instance killed (SIGKILL) and started again while another runs: every acknowledged sequence number is stored', async () => {
    const seenA: number[] = [];
    const b = await rig.startIngest('ingest-b');
    let a = startIngestProcess(rig, 'ingest-a', seenA);
    children.push(a.child);
    await a.ready;
    const uplink = rig.uplink('bed-2');
    let phase = 0;
    let storedBeforeKill = 0;
    const acked = await stream(rig, uplink, 'bed-2', 2000, async (count) => {
      if (count === 600 && phase === 0) {
        phase = 1;
        a.child.kill('SIGKILL');
        storedBeforeKill = seenA.length;
      } else if (count === 1400 && phase === 1) {
        phase = 2;
        a = startIngestProcess(rig, 'ingest-a', seenA);
        children.push(a.child);
      }
    });
    assert.equal(phase, 2);
    await a.ready;
    const seen = () => [...seenA, ...b.received.filter((r) => r.deviceId === 'bed-2').map((r) => r.seq)];
    await until(() => missing(acked, seen()).length === 0, 30_000).catch(() => undefined);
    assert.deepEqual(missing(acked, seen()), []);
    assert.ok(seenA.length > 0 && b.received.length > 0, 'both instances took a share');
    assert.ok(seenA.length > storedBeforeKill, 'the restarted instance received what its session kept while it was dead');
    assert.doesNotMatch(rig.broker.log(), /dropped/i);
    a.child.kill('SIGTERM');
    await uplink.close();
    await b.subscriber.close();
  });

  it('what a broker crash loses: messages acknowledged since its last save (mosquitto writes its database on shutdown and every autosave_interval, not per message)', async () => {
    // The ingest is away (session kept), so acknowledged messages wait in its queue in the broker's memory.
    const ingest = await rig.startIngest('ingest-crash');
    await ingest.subscriber.close();
    const uplink = rig.uplink('bed-3');
    await uplink.connect();
    for (let seq = 1; seq <= 10; seq++) assert.equal((await uplink.send(rig.seal('bed-3', seq))).status, 'accepted');
    await rig.broker.crashAndRestart();
    const back = await rig.startIngest('ingest-crash');
    await delay(500);
    assert.deepEqual(back.received.filter((r) => r.deviceId === 'bed-3').map((r) => r.seq), [], 'the ten acknowledged messages died with the broker');

    // The same with a clean restart: all ten survive.
    await back.subscriber.close();
    for (let seq = 11; seq <= 20; seq++) {
      for (;;) {
        const ok = await uplink.send(rig.seal('bed-3', seq)).then(() => true, async () => {
          await uplink.connect().catch(() => undefined);
          return false;
        });
        if (ok) break;
        await delay(50);
      }
    }
    await rig.broker.restart();
    const again = await rig.startIngest('ingest-crash');
    await again.waitFor(10);
    assert.deepEqual(again.received.map((r) => r.seq).sort((x, y) => x - y), [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
    await uplink.close();
  });
});
