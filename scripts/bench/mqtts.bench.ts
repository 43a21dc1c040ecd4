/**
 * MQTTS throughput, latency and connection rate, each against plaintext MQTT QoS 1 to the same
 * mosquitto in the same run (its plaintext listener, opened for this benchmark only):
 *
 *   1 device    one uplink publishing 1 KiB sealed messages (COSE_Encrypt, ChaCha20-Poly1305),
 *               as many in flight as the broker's Receive Maximum allows (mosquitto: 20)
 *   100 devices 100 uplinks, each its own connection and certificate, all at once
 *   connects    mutual-auth TLS 1.3 connect → CONNACK → DISCONNECT cycles, 8 at a time
 *
 * Messages/s count PUBACKs (the device's acknowledgement); latency is send() → PUBACK. The ingest
 * (a shared-subscription consumer) runs in its own process and must have received every
 * acknowledged message by the end of each round. The publishers run in this process, the broker in
 * its own. TLS and plaintext rounds alternate and medians are reported, so drift hits both.
 * Target: MQTTS ≥ 0.9 × plaintext throughput.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startMqttRig, type MqttRig } from '../lib/mqtt-rig.ts';
import { plainTcp } from '../lib/plain-connector.ts';
import type { TlsConnector } from '../../src/transport/mqtts/connector.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';
import type { Uplink, UplinkMessage } from '../../src/transport/types.ts';
import { median, processCpuMs } from './measure.ts';
import type { BenchContext, BenchResult } from './types.ts';

type Variant = 'mqtts' | 'plain';
const PAYLOAD = 1024;
const POOL = 32;

interface RoundResult {
  readonly acked: number;
  readonly seconds: number;
  readonly latencies: number[];
  /** CPU time spent during the measured window, by process. */
  readonly cpuMs: { readonly broker: number; readonly publishers: number; readonly ingest: number };
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

const cpuMs = processCpuMs;

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

class Sink {
  readonly #child: ChildProcess;
  get pid(): number | undefined {
    return this.#child.pid;
  }

  constructor() {
    this.#child = fork(fileURLToPath(new URL('./mqtts-sink.ts', import.meta.url)), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  }

  #ask<T>(msg: object, type: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const onMessage = (m: { type: string }) => {
        if (m.type !== type) return;
        this.#child.off('message', onMessage);
        resolve(m as T);
      };
      this.#child.on('message', onMessage);
      this.#child.once('exit', () => reject(new Error('the sink exited')));
      this.#child.send(msg);
    });
  }

  start(rig: MqttRig, variant: Variant): Promise<unknown> {
    return this.#ask({
      type: 'start',
      settings: {
        host: rig.broker.host,
        port: variant === 'plain' ? rig.broker.plainPort : rig.broker.port,
        plain: variant === 'plain',
        clientId: `bench-sink-${variant}`,
        rootPem: rig.fleet.rootPem,
        certChainPem: rig.ingestIdentity.certChainPem,
        keyPem: rig.ingestIdentity.keyPem,
      },
    }, 'ready');
  }

  async count(): Promise<number> {
    return (await this.#ask<{ received: number }>({ type: 'count' }, 'count')).received;
  }

  stop(): void {
    this.#child.kill('SIGTERM');
  }
}

interface Fleet {
  readonly ids: string[];
  readonly pools: Map<string, UplinkMessage[]>;
  readonly tls: Map<string, TlsConnector>;
}

function uplinksFor(rig: MqttRig, fleet: Fleet, variant: Variant, count: number): Uplink[] {
  return fleet.ids.slice(0, count).map((id) => createMqttsUplink({
    deviceId: id,
    host: rig.broker.host,
    port: variant === 'plain' ? (rig.broker.plainPort as number) : rig.broker.port,
    tls: variant === 'plain' ? plainTcp() : (fleet.tls.get(id) as TlsConnector),
    clientId: `${id}-${variant}`,
    ackTimeoutMs: 60_000,
  }));
}

/** One round: `devices` uplinks publish for `ms` with everything the broker allows in flight. */
async function round(rig: MqttRig, fleet: Fleet, variant: Variant, devices: number, ms: number): Promise<RoundResult> {
  const sink = new Sink();
  await sink.start(rig, variant);
  const uplinks = uplinksFor(rig, fleet, variant, devices);
  for (let i = 0; i < uplinks.length; i += 20) await Promise.all(uplinks.slice(i, i + 20).map((u) => u.connect()));
  const latencies: number[] = [];
  let acked = 0;
  let measuring = false;
  let stop = false;
  const sender = async (u: Uplink, pool: UplinkMessage[], slot: number) => {
    for (let k = slot; !stop; k += 20) {
      const m = pool[k % pool.length] as UplinkMessage;
      const t0 = performance.now();
      await u.send(m);
      if (measuring) {
        latencies.push(performance.now() - t0);
        acked += 1;
      }
    }
  };
  // 20 senders per device: the broker's Receive Maximum (mosquitto's max_inflight_messages).
  const running = uplinks.flatMap((u, i) => Array.from({ length: 20 }, (_, slot) => sender(u, fleet.pools.get(fleet.ids[i] as string) as UplinkMessage[], slot)));
  await delay(Math.min(500, ms / 4)); // warm-up: connections settled, JIT warm
  const broker0 = cpuMs(rig.broker.pid);
  const ingest0 = cpuMs(sink.pid);
  const self0 = process.cpuUsage();
  const t0 = performance.now();
  measuring = true;
  await delay(ms);
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  const self = process.cpuUsage(self0);
  const cpu = { broker: cpuMs(rig.broker.pid) - broker0, publishers: (self.user + self.system) / 1000, ingest: cpuMs(sink.pid) - ingest0 };
  stop = true;
  await Promise.all(running);
  const sent = uplinks.reduce((n, u) => n + u.counters().acknowledged, 0);
  for (let i = 0; i < 400 && (await sink.count()) < sent; i++) await delay(25);
  const delivered = await sink.count();
  for (const u of uplinks) await u.close();
  sink.stop();
  if (delivered < sent) throw new Error(`${variant}: the ingest received ${delivered} of ${sent} acknowledged messages`);
  return { acked, seconds, latencies, cpuMs: cpu };
}

/** Connect → CONNACK → DISCONNECT cycles, 8 at a time, for `ms`. */
async function connects(rig: MqttRig, fleet: Fleet, variant: Variant, ms: number): Promise<{ rate: number; latencies: number[] }> {
  let done = 0;
  let stop = false;
  const latencies: number[] = [];
  const slot = async (id: string) => {
    while (!stop) {
      const [u] = uplinksFor(rig, { ...fleet, ids: [id] }, variant, 1) as [Uplink];
      const t0 = performance.now();
      await u.connect();
      latencies.push(performance.now() - t0);
      // close() also closes the connector: keep the shared one (its SecureContext) for the next cycle.
      await u.close();
      done += 1;
    }
  };
  const t0 = performance.now();
  const running = fleet.ids.slice(0, 8).map(slot);
  await delay(ms);
  stop = true;
  const elapsed = (performance.now() - t0) / 1000;
  await Promise.all(running);
  return { rate: done / elapsed, latencies };
}

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const rounds = ctx.quick ? 1 : 5;
  const windowMs = ctx.quick ? 1000 : 3000;
  const ids = Array.from({ length: 100 }, (_, i) => `dev-${String(i).padStart(3, '0')}`);
  const rig = await startMqttRig({ devices: ids, broker: { plaintext: true, captureLog: false } });
  const results: BenchResult[] = [];
  try {
    const pools = new Map<string, UplinkMessage[]>();
    for (const id of ids) pools.set(id, Array.from({ length: POOL }, (_, i) => rig.seal(id, i + 1, PAYLOAD)));
    const tls = new Map<string, TlsConnector>();
    for (const id of ids) {
      const identity = rig.devices.get(id);
      if (identity === undefined) throw new Error(`no identity for ${id}`);
      // One connector (one parsed SecureContext) per device, reused by every reconnect; close() is a no-op for it.
      const connector = rig.tlsFor(identity);
      tls.set(id, { description: connector.description, open: (t) => connector.open(t), close: async () => undefined });
    }
    const fleet: Fleet = { ids, pools, tls };
    const sealedBytes = (pools.get(ids[0] as string) as UplinkMessage[])[0]?.payload.length ?? 0;
    ctx.log(`1 KiB readings sealed to ${sealedBytes} B COSE_Encrypt; ${rounds} round(s) of ${windowMs} ms per variant`);

    // Warm-up of both paths (JIT, first connections), so neither variant pays it in a measured round.
    for (const v of ['mqtts', 'plain'] as Variant[]) await round(rig, fleet, v, 1, ctx.quick ? 300 : 1000);

    for (const devices of [1, 100]) {
      const by: Record<Variant, RoundResult[]> = { mqtts: [], plain: [] };
      for (let r = 0; r < rounds; r++) {
        const order: Variant[] = r % 2 === 0 ? ['mqtts', 'plain'] : ['plain', 'mqtts'];
        for (const v of order) {
          const res = await round(rig, fleet, v, devices, windowMs);
          by[v].push(res);
          const per1000 = (x: number) => (x / (res.acked / 1000)).toFixed(1);
          ctx.log(`${devices} device(s) ${v}: ${Math.round(res.acked / res.seconds)} msg/s; CPU ms per 1000 messages: publishers ${per1000(res.cpuMs.publishers)}, broker ${per1000(res.cpuMs.broker)}, ingest ${per1000(res.cpuMs.ingest)}`);
        }
      }
      const rate = (v: Variant) => median(by[v].map((x) => x.acked / x.seconds));
      const lat = (v: Variant, q: number) => median(by[v].map((x) => quantile([...x.latencies].sort((a, b) => a - b), q)));
      const cpu = (v: Variant, who: keyof RoundResult['cpuMs']) => median(by[v].map((x) => x.cpuMs[who] / (x.acked / 1000)));
      const cpuTable = (v: Variant) => ({ publishers: cpu(v, 'publishers'), broker: cpu(v, 'broker'), ingest: cpu(v, 'ingest') });
      const label = devices === 1 ? '1 device' : `${devices} devices`;
      const mqtts = rate('mqtts');
      const plain = rate('plain');
      results.push({
        name: `mqtts QoS 1, ${label}, 1 KiB sealed`,
        unit: 'msg/s',
        value: mqtts,
        baseline: { name: 'plaintext MQTT QoS 1, same broker', value: plain },
        ratio: mqtts / plain,
        target: { ratio: 0.9, comparison: '>=' },
        meta: { sealedBytes, cpuMsPer1000Messages: { mqtts: cpuTable('mqtts'), plain: cpuTable('plain') }, inFlightPerDevice: 20 },
      });
      // On a machine where the three processes share too few cores, throughput is CPU-bound and
      // follows this ratio; it is also steadier than msg/s when other work competes for the CPU.
      // ms per 1000 messages = µs per message.
      const total = (v: Variant) => {
        const t = cpuTable(v);
        return t.publishers + t.broker + t.ingest;
      };
      results.push({
        name: `mqtts CPU per message (device + broker + ingest), ${label}`,
        unit: 'µs',
        value: total('mqtts'),
        baseline: { name: 'plaintext MQTT, same processes', value: total('plain') },
        ratio: total('mqtts') / total('plain'),
        meta: { usPerMessage: { mqtts: cpuTable('mqtts'), plain: cpuTable('plain') } },
      });
      for (const [q, name] of [[0.5, 'p50'], [0.99, 'p99']] as const) {
        const a = lat('mqtts', q);
        const b = lat('plain', q);
        results.push({
          name: `mqtts send→PUBACK ${name}, ${label}`,
          unit: 'ms',
          value: a,
          baseline: { name: `plaintext MQTT ${name}`, value: b },
          ratio: a / b,
        });
      }
    }

    const c: Record<Variant, number[]> = { mqtts: [], plain: [] };
    const cl: Record<Variant, number[]> = { mqtts: [], plain: [] };
    for (let r = 0; r < rounds; r++) {
      for (const v of (r % 2 === 0 ? ['mqtts', 'plain'] : ['plain', 'mqtts']) as Variant[]) {
        const res = await connects(rig, fleet, v, ctx.quick ? 1000 : 3000);
        c[v].push(res.rate);
        cl[v].push(quantile([...res.latencies].sort((a, b) => a - b), 0.5));
      }
    }
    results.push({
      name: 'mqtts mutual-auth connect → CONNACK → DISCONNECT, 8 concurrent',
      unit: 'conn/s',
      value: median(c.mqtts),
      baseline: { name: 'plaintext MQTT connect cycles', value: median(c.plain) },
      ratio: median(c.mqtts) / median(c.plain),
      meta: { connectP50Ms: { mqtts: median(cl.mqtts), plain: median(cl.plain) } },
    });
  } finally {
    await rig.stop();
  }
  return results;
}
