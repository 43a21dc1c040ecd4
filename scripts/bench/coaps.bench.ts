/**
 * CoAPS throughput and latency against MQTTS and plaintext MQTT QoS 1 (the baseline), in one run:
 *
 *   1 device    one uplink sending 1 KiB sealed messages (COSE_Encrypt, ChaCha20-Poly1305), 20 in flight
 *   100 devices 100 uplinks, each its own DTLS session (or TLS connection) and certificate, all at once
 *
 * Messages/s count acknowledgements (CoAP 2.04; MQTT PUBACK); latency is send() → acknowledgement.
 * The CoAPS server runs in its own process (its handler only counts, as the MQTT ingest consumer
 * does); for MQTT the broker and the consumer run in theirs; the devices run in this process. The
 * receiving side must have every acknowledged message by the end of each round. Variants alternate
 * and medians are reported. Target: CoAPS with 100 devices ≥ 0.5 × MQTTS.
 */
import type { MqttRig } from '../lib/mqtt-rig.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { createCoapsUplink } from '../../src/transport/coaps/uplink.ts';
import type { Uplink, UplinkMessage } from '../../src/transport/types.ts';
import { median } from './measure.ts';
import { quantile, round as mqttRound, startBenchFleet, type Fleet, type RoundResult } from './mqtts.bench.ts';
import type { BenchContext, BenchResult } from './types.ts';
import { BenchChild, delay, driveUplinks } from './uplink-load.ts';

type Variant = 'coaps' | 'mqtts' | 'plain';
const IN_FLIGHT = 20;

/** The CoAPS server (coaps-sink.ts) in its own process. */
class CoapsSink extends BenchChild {
  port = 0;

  constructor() {
    super(new URL('./coaps-sink.ts', import.meta.url));
  }

  async start(settings: { rootPem: string; certChainPem: string; keyPem: string }): Promise<void> {
    this.port = (await this.ask<{ port: number }>({ type: 'start', settings }, 'ready')).port;
  }

  async count(): Promise<number> {
    return (await this.stats()).received;
  }

  stats(): Promise<{ received: number; retransmissions: number; emptyAcks: number }> {
    return this.ask({ type: 'count' }, 'count');
  }
}

async function coapsRound(rig: MqttRig, fleet: Fleet, server: { certChainPem: string; keyPem: string }, devices: number, ms: number, log: (line: string) => void): Promise<RoundResult> {
  const sink = new CoapsSink();
  await sink.start({ rootPem: rig.fleet.rootPem, ...server });
  const ids = fleet.ids.slice(0, devices);
  const uplinks: Uplink[] = ids.map((id) => {
    const identity = rig.devices.get(id);
    if (identity?.key === undefined) throw new Error(`no identity for ${id}`);
    return createCoapsUplink({
      deviceId: id, host: '127.0.0.1', port: sink.port, maxInFlight: IN_FLIGHT,
      identity: { kind: 'certificate', certificateChain: [identity.cert.der, rig.fleet.issuing.der], signer: keyObjectSigner(identity.key) },
      verifier: new X509PeerVerifier({ roots: [rig.fleet.rootPem], purpose: 'server', serverName: '127.0.0.1' }),
    });
  });
  try {
    for (let i = 0; i < uplinks.length; i += 20) await Promise.all(uplinks.slice(i, i + 20).map((u) => u.connect()));
    const r = await driveUplinks({ uplinks, pools: ids.map((id) => fleet.pools.get(id) as UplinkMessage[]), inFlight: IN_FLIGHT, windowMs: ms, peers: { server: sink.pid } });
    const sent = uplinks.reduce((n, u) => n + u.counters().acknowledged, 0);
    for (let i = 0; i < 400 && (await sink.count()) < sent; i++) await delay(25);
    const { received: delivered, retransmissions, emptyAcks } = await sink.stats();
    if (delivered < sent) throw new Error(`coaps: the server received ${delivered} of ${sent} acknowledged messages`);
    if (retransmissions + emptyAcks > 0) log(`  (coaps round: ${retransmissions} CoAP retransmissions reached the server, ${emptyAcks} empty ACKs)`);
    return { acked: r.acked, seconds: r.seconds, latencies: r.latencies, cpuMs: { publishers: r.cpuMs['self'] ?? 0, broker: 0, ingest: r.cpuMs['server'] ?? 0 } };
  } finally {
    for (const u of uplinks) await u.close().catch(() => undefined);
    sink.stop();
  }
}

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const rounds = ctx.quick ? 1 : 5;
  const windowMs = ctx.quick ? 1000 : 3000;
  const { rig, fleet } = await startBenchFleet();
  const { ids, pools } = fleet;
  const results: BenchResult[] = [];
  try {
    const serverIdentity = await rig.fleet.service({ ipAddresses: ['127.0.0.1'] });
    const server = { certChainPem: serverIdentity.certChainPem, keyPem: serverIdentity.keyPem as string };
    const sealedBytes = (pools.get(ids[0] as string) as UplinkMessage[])[0]?.payload.length ?? 0;
    ctx.log(`1 KiB readings sealed to ${sealedBytes} B COSE_Encrypt; ${rounds} round(s) of ${windowMs} ms per variant; ${IN_FLIGHT} in flight per device`);

    const once = (v: Variant, devices: number, ms: number) => v === 'coaps' ? coapsRound(rig, fleet, server, devices, ms, ctx.log) : mqttRound(rig, fleet, v, devices, ms);
    for (const v of ['coaps', 'mqtts', 'plain'] as Variant[]) await once(v, 1, ctx.quick ? 300 : 1000); // warm-up

    for (const devices of [1, 100]) {
      const by: Record<Variant, RoundResult[]> = { coaps: [], mqtts: [], plain: [] };
      const orders: Variant[][] = [['coaps', 'mqtts', 'plain'], ['plain', 'mqtts', 'coaps'], ['mqtts', 'coaps', 'plain']];
      for (let r = 0; r < rounds; r++) {
        for (const v of orders[r % orders.length] as Variant[]) {
          const res = await once(v, devices, windowMs);
          by[v].push(res);
          const per1000 = (x: number) => (x / (res.acked / 1000)).toFixed(1);
          ctx.log(`${devices} device(s) ${v}: ${Math.round(res.acked / res.seconds)} msg/s; CPU ms per 1000 messages: devices ${per1000(res.cpuMs.publishers)}, broker ${per1000(res.cpuMs.broker)}, receiver ${per1000(res.cpuMs.ingest)}`);
        }
      }
      const rate = (v: Variant) => median(by[v].map((x) => x.acked / x.seconds));
      const lat = (v: Variant, q: number) => median(by[v].map((x) => quantile([...x.latencies].sort((a, b) => a - b), q)));
      const cpu = (v: Variant) => median(by[v].map((x) => (x.cpuMs.publishers + x.cpuMs.broker + x.cpuMs.ingest) / (x.acked / 1000)));
      const label = devices === 1 ? '1 device' : `${devices} devices`;
      const coaps = rate('coaps');
      const mqtts = rate('mqtts');
      const plain = rate('plain');
      results.push({
        name: `coaps confirmable POST, ${label}, 1 KiB sealed`,
        unit: 'msg/s',
        value: coaps,
        baseline: { name: 'MQTTS QoS 1 (mutual TLS 1.3), same run', value: mqtts },
        ratio: coaps / mqtts,
        ...(devices === 100 ? { target: { ratio: 0.5, comparison: '>=' as const } } : {}),
        meta: { sealedBytes, inFlightPerDevice: IN_FLIGHT, plaintextMqttMsgPerSecond: plain, ratioToPlaintextMqtt: coaps / plain, mqttsToPlaintext: mqtts / plain },
      });
      results.push({
        name: `coaps vs plaintext MQTT QoS 1, ${label}`,
        unit: 'msg/s',
        value: coaps,
        baseline: { name: 'plaintext MQTT QoS 1, same broker, same run', value: plain },
        ratio: coaps / plain,
      });
      results.push({
        name: `coaps CPU per message (devices + receiver), ${label}`,
        unit: 'µs',
        value: cpu('coaps'),
        baseline: { name: 'MQTTS (devices + broker + ingest), same run', value: cpu('mqtts') },
        ratio: cpu('coaps') / cpu('mqtts'),
        meta: { plaintextMqttUs: cpu('plain') },
      });
      for (const [q, name] of [[0.5, 'p50'], [0.99, 'p99']] as const) {
        results.push({
          name: `coaps send→2.04 ${name}, ${label}`,
          unit: 'ms',
          value: lat('coaps', q),
          baseline: { name: `MQTTS send→PUBACK ${name}`, value: lat('mqtts', q) },
          ratio: lat('coaps', q) / lat('mqtts', q),
          meta: { plaintextMqttMs: lat('plain', q) },
        });
      }
    }
  } finally {
    await rig.stop();
  }
  return results;
}
