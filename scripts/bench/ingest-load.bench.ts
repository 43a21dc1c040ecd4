/**
 * The ingest service end to end under a fleet: N simulated devices (1000; 100 with --quick), each
 * its own mutual-TLS 1.3 connection with its own certificate, in a load generator process → a
 * private mosquitto (TLS 1.3 only, client certificates, CRL, dynsec rules) → one ingest process
 * started as `vitalseal ingest run` starts it (its MQTT listener in the broker's shared
 * subscription) → SQLite, and → PostgreSQL.
 *
 * Every message is one second of a simulated patient (vitals and a 250 Hz ECG strip: a ~700-byte
 * SenML pack, 819 bytes sealed),
 * sealed by the device with COSE_Encrypt (ChaCha20-Poly1305, ECDH-ES + HKDF against the ingest's
 * static key) at the moment it is sent; the ingest checks the device, opens, decodes, encrypts at
 * rest and stores it once, and acknowledges only then.
 *
 * Baseline, in the same run and the same database: the same devices and packs as plaintext MQTT
 * (mqtt.js, QoS 1) → a second mosquitto's plaintext listener → a plaintext subscriber (the same
 * MQTT client code over TCP) inserting the plaintext pack as a row, batched per event-loop turn,
 * acknowledging after its commit.
 *
 *   paced      every device sends one message per second (the deployment's rate): p50/p99 latency
 *              from the device sealing (baseline: publishing) a message to its commit, memory
 *   sustained  the highest offered rate (devices paced faster) that is carried: commits in the
 *              window ≥ 95 % of the offered rate and p99 sealed → stored ≤ 1 s; found by doubling
 *              the rate (from 1000 msg/s) until a trial fails, then halving the interval between
 *              the last carried and the first failed rate; candidate and baseline trials alternate.
 *              The knee found is run twice more per side (full run) and the median of the three
 *              trials by committed rate is reported, so one lucky trial does not decide a side.
 *              Flat-out senders are no measure here: the broker acknowledges
 *              devices as it queues, so the generator would only take CPU from the receiver.
 *              Target ≥ 0.5 × the baseline's readings/s.
 *
 * CPU time per message of each process (generator, broker, ingest or baseline subscriber, the
 * PostgreSQL cluster) is reported too: on this 2-core machine they all share the cores, so the
 * end-to-end rate follows total CPU; broker + ingest + database is what a deployment's servers
 * spend (the devices are elsewhere there).
 * INGEST_LOAD_PROFILE=<dir> writes V8 CPU profiles of the generator, the ingest and the baseline subscriber.
 * Both receiving processes run with the ingest's node options (src/ingest/node-options.ts);
 * INGEST_LOAD_NODE_OPTIONS=default runs both without them.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { INGEST_NODE_OPTIONS } from '../../src/ingest/node-options.ts';
import { startLoadGenerator, type LoadGeneratorHandle, type LoadMode, type RunReport } from '../lib/load-generator.ts';
import { startMqttIngestSite, type MqttIngestSite, type SiteStorage } from '../lib/mqtt-ingest-site.ts';
import { startPostgres } from '../lib/postgres-server.ts';
import { processCpuMs } from './measure.ts';
import type { Taken } from './ingest-load-records.ts';
import type { BenchContext, BenchResult } from './types.ts';

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * CPU time of a PostgreSQL cluster, ms: the postmaster, its live backends, and the backends that
 * have exited (the postmaster reaps them, so their time is in its cutime/cstime).
 */
function postgresCpuMs(dataDir: string | undefined): number {
  if (dataDir === undefined) return 0;
  let master: number;
  try {
    master = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return 0;
  }
  const stat = (pid: number | string) => readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  let total = 0;
  try {
    const f = stat(master);
    total = (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 10;
  } catch {
    return 0;
  }
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const f = stat(entry);
      if (Number(f[1]) === master) total += (Number(f[11]) + Number(f[12])) * 10;
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

function rssOf(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? 0 : Number(m[1]) * 1024;
  } catch {
    return 0;
  }
}

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] as number;
}

/** What a receiver committed during a trial (`Taken` summed). */
interface Committed {
  records: number[];
  readings: number;
  rssMax: number;
  cpuMs: number;
  /** Storage transactions, and the messages they held: rows / transactions is the batching achieved. */
  transactions: number;
  rows: number;
}

/**
 * Node options of both receiving processes: the ingest's own (src/ingest/node-options.ts, what a
 * deployment runs it with), and the same for the baseline subscriber so that neither side is
 * measured with a heap tuned differently. INGEST_LOAD_NODE_OPTIONS=default runs both without them
 * (for comparing).
 */
const RECEIVER_NODE_OPTIONS: readonly string[] = process.env['INGEST_LOAD_NODE_OPTIONS'] === 'default' ? [] : INGEST_NODE_OPTIONS;

/** A receiving side (the ingest, or the baseline subscriber) in its own process. */
class Receiver {
  readonly #child: ChildProcess;
  readonly #waiting: { type: string; resolve: (m: Record<string, unknown>) => void; reject: (e: Error) => void }[] = [];

  constructor(entry: string, env: NodeJS.ProcessEnv) {
    // INGEST_LOAD_PROFILE=<dir>: a V8 CPU profile of each receiving process, for finding where the time goes.
    const profile = process.env['INGEST_LOAD_PROFILE'];
    const execArgv = [...RECEIVER_NODE_OPTIONS, '--import', 'tsx', ...(profile === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profile}`])];
    this.#child = fork(fileURLToPath(new URL(entry, import.meta.url)), [], { execArgv, env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
    this.#child.on('message', (raw) => {
      const m = raw as Record<string, unknown> & { type: string };
      const i = this.#waiting.findIndex((w) => w.type === m.type || m.type === 'error');
      if (i < 0) return;
      const [w] = this.#waiting.splice(i, 1);
      if (m.type === 'error') w?.reject(new Error(String(m['message'])));
      else w?.resolve(m);
    });
    this.#child.once('exit', (code) => {
      for (const w of this.#waiting.splice(0)) w.reject(new Error(`${entry} exited (${code})`));
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  ask(msg: object, answer: string): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ type: answer, resolve, reject });
      this.#child.send(msg);
    });
  }

  async take(): Promise<Taken> {
    return (await this.ask({ type: 'take' }, 'taken')) as unknown as Taken;
  }

  /** Collects commit records until `expected` have arrived (or `ms` passed). */
  async drain(expected: number, ms = 180_000): Promise<Committed> {
    const out = { records: [] as number[], readings: 0, rssMax: 0, cpuMs: 0, transactions: 0, rows: 0 };
    const end = Date.now() + ms;
    for (;;) {
      const t = await this.take();
      for (const x of t.records) out.records.push(x);
      out.readings += t.readings;
      out.rssMax = Math.max(out.rssMax, t.rssMax);
      out.cpuMs += t.cpuMs;
      out.transactions += t.transactions;
      out.rows += t.rows;
      if (out.records.length / 3 >= expected) return out;
      if (Date.now() > end) throw new Error(`only ${out.records.length / 3} of ${expected} messages committed after ${ms} ms`);
      await delay(100);
    }
  }

  async stop(): Promise<void> {
    await this.ask({ type: 'stop' }, 'stopped').catch(() => undefined);
    this.#child.disconnect();
  }
}

interface Measured {
  /** Offered messages/s (all devices). */
  readonly offered: number;
  readonly report: RunReport;
  readonly committed: Committed;
  /** Seal (baseline: publish) → commit, ms. */
  readonly latencies: number[];
  /** Commits per second in [start + ramp, start + duration]. */
  readonly rate: number;
  readonly cpuMs: { readonly generator: number; readonly broker: number; readonly receiver: number; readonly database: number };
}

function latenciesOf(sent: readonly number[], committed: readonly number[]): number[] {
  const at = new Map<number, number>();
  for (let i = 0; i + 2 < sent.length; i += 3) at.set((sent[i] as number) * 2 ** 32 + (sent[i + 1] as number), sent[i + 2] as number);
  const out: number[] = [];
  for (let i = 0; i + 2 < committed.length; i += 3) {
    const t = at.get((committed[i] as number) * 2 ** 32 + (committed[i + 1] as number));
    if (t !== undefined) out.push((committed[i + 2] as number) - t);
  }
  return out;
}

interface Side {
  readonly mode: LoadMode;
  readonly receiver: Receiver;
  readonly brokerPid: number | undefined;
}

/** One trial: every device paced at `offered / devices` messages/s for `durationMs`. */
async function trial(gen: LoadGeneratorHandle, side: Side, pgData: string | undefined, devices: number, offered: number, o: { durationMs: number; rampMs: number }): Promise<Measured> {
  await side.receiver.take(); // what came before is not this trial's
  const g0 = processCpuMs(gen.pid);
  const b0 = processCpuMs(side.brokerPid);
  const d0 = postgresCpuMs(pgData);
  const report = await gen.run({ mode: side.mode, window: 8, durationMs: o.durationMs, ratePerDevice: offered / devices, collectTimes: true });
  const committed = await side.receiver.drain(report.acked);
  const cpuMs = { generator: processCpuMs(gen.pid) - g0, broker: processCpuMs(side.brokerPid) - b0, receiver: committed.cpuMs, database: postgresCpuMs(pgData) - d0 };
  const from = report.startedAt + o.rampMs;
  const to = report.startedAt + o.durationMs;
  let inWindow = 0;
  for (let i = 2; i < committed.records.length; i += 3) {
    const t = committed.records[i] as number;
    if (t >= from && t < to) inWindow++;
  }
  return { offered, report, committed, latencies: latenciesOf(report.times ?? [], committed.records), rate: inWindow / ((to - from) / 1000), cpuMs };
}

/** Carried: commits keep up with the offer, and nothing waits long. */
function carried(m: Measured): boolean {
  return m.rate >= 0.95 * m.offered && quantile(m.latencies, 0.99) <= 1000;
}

const round1 = (x: number) => Math.round(x * 10) / 10;
/** Messages per storage transaction in a trial (the group commit's batching). */
const rowsPerTx = (m: Measured) => round1(m.committed.rows / Math.max(1, m.committed.transactions));

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const n = ctx.quick ? 100 : 1000;
  const trialMs = ctx.quick ? 2500 : 6000;
  const rampMs = ctx.quick ? 1000 : 2000;
  // Enough halvings on the full run for both searches to close to within 8 % (where they stop).
  const steps = ctx.quick ? 5 : 10;
  // Trials at each side's knee after the search (the median of these and the search's best is reported).
  const kneeRepeats = ctx.quick ? 0 : 2;
  const ids = Array.from({ length: n }, (_, i) => `load-${String(i).padStart(4, '0')}`);
  const results: BenchResult[] = [];
  const t0 = Date.now();
  const site: MqttIngestSite = await startMqttIngestSite({ devices: ids, broker: { captureLog: false, maxQueuedMessages: 1_000_000 }, baselineBroker: true });
  const pgServer = await startPostgres();
  let gen: LoadGeneratorHandle | undefined;
  try {
    ctx.log(`${n} device identities, two brokers, PostgreSQL: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const plainPort = site.plainBroker?.plainPort as number;
    const backends: { name: 'sqlite' | 'postgres'; storage: SiteStorage; pgData?: string }[] = [
      { name: 'sqlite', storage: { sqlite: join(site.dir, 'bench.db') } },
      { name: 'postgres', storage: { postgres: pgServer.connectionString }, pgData: join(pgServer.dir, 'data') },
    ];
    for (const backend of backends) {
      // One client id for both backends' ingests: a stopped instance's session stays a member of the
      // share in mosquitto (and would take half the stream), so the second resumes the first's.
      const cfg = site.config(`bench-${backend.name}`, backend.storage, { receiveMaximum: 128, clientId: 'bench-ingest' });
      const staticKey = await site.prepare(cfg);
      if (gen === undefined) {
        gen = await startLoadGenerator({
          host: site.broker.host, port: site.broker.port, plainPort, serverName: '127.0.0.1', rootPem: site.rootPem,
          staticPublicKey: Buffer.from(staticKey).toString('base64'), devices: site.loadDevices(), connectConcurrency: 16, packPool: 8,
        }, process.env['INGEST_LOAD_PROFILE'] === undefined ? {} : { profileDir: process.env['INGEST_LOAD_PROFILE'] });
        const tls = await gen.connect('mqtts');
        const plain = await gen.connect('plain');
        ctx.log(`connected ${tls.connected} devices over mutual TLS 1.3 in ${(tls.ms / 1000).toFixed(1)} s (${Math.round(tls.connected / (tls.ms / 1000))}/s), ${plain.connected} plaintext in ${(plain.ms / 1000).toFixed(1)} s`);
        results.push({
          name: 'concurrent device connections (each mutual TLS 1.3, its own certificate) on one broker, streaming to one ingest',
          unit: 'devices',
          value: tls.connected,
          baseline: { name: 'plaintext MQTT connections, same devices', value: plain.connected },
          ratio: tls.connected / plain.connected,
          meta: { target: 1000, connectSeconds: tls.ms / 1000, plainConnectSeconds: plain.ms / 1000, connectsPerSecond: tls.connected / (tls.ms / 1000) },
        });
      } else {
        await gen.sealTo(staticKey);
      }
      const ingest = new Receiver('./ingest-load-ingest.ts', site.env);
      await ingest.ask({ type: 'start', config: cfg }, 'ready');
      const plain = new Receiver('./ingest-load-plain.ts', process.env);
      await plain.ask({ type: 'start', host: site.broker.host, port: plainPort, storage: backend.storage }, 'ready');
      const sides: Record<LoadMode, Side> = {
        mqtts: { mode: 'mqtts', receiver: ingest, brokerPid: site.broker.pid },
        plain: { mode: 'plain', receiver: plain, brokerPid: site.plainBroker?.pid },
      };
      try {
        // Warm-up: every device's first sealing epoch (one ECDH each), its data key, JIT.
        for (const mode of ['mqtts', 'plain'] as const) {
          const w = await gen.run({ mode, window: 1, perDevice: 2 });
          await sides[mode].receiver.drain(w.acked);
        }
        const brokerRss = rssOf(site.broker.pid);
        const genRss = await gen.rss();

        // Paced at the deployment's rate first; then the search for the highest carried rate.
        const paced: Partial<Record<LoadMode, Measured>> = {};
        const best: Partial<Record<LoadMode, Measured>> = {};
        const failed: Partial<Record<LoadMode, number>> = {};
        const next: Record<LoadMode, number> = { mqtts: n, plain: n };
        const trials: Record<LoadMode, { offered: number; committed: number; p99: number; carried: boolean }[]> = { mqtts: [], plain: [] };
        for (let step = 0; step < steps; step++) {
          for (const mode of (step % 2 === 0 ? ['mqtts', 'plain'] : ['plain', 'mqtts']) as LoadMode[]) {
            const lo = best[mode]?.offered ?? 0;
            const hi = failed[mode];
            if (step > 0 && hi !== undefined && hi / Math.max(lo, 1) < 1.08) continue; // close enough
            const m = await trial(gen, sides[mode], backend.pgData, n, next[mode], { durationMs: trialMs, rampMs });
            if (step === 0) paced[mode] = m;
            const ok = carried(m);
            trials[mode].push({ offered: Math.round(m.offered), committed: Math.round(m.rate), p99: Math.round(quantile(m.latencies, 0.99)), carried: ok });
            const per = (ms: number) => (ms * 1000 / Math.max(1, m.report.acked)).toFixed(0);
            ctx.log(`${backend.name} ${mode}: offered ${Math.round(m.offered)} msg/s → committed ${Math.round(m.rate)} msg/s, p99 ${quantile(m.latencies, 0.99).toFixed(0)} ms: ${ok ? 'carried' : 'not carried'}; CPU µs/msg generator ${per(m.cpuMs.generator)}, broker ${per(m.cpuMs.broker)}, receiver ${per(m.cpuMs.receiver)}${backend.pgData === undefined ? '' : `, postgres ${per(m.cpuMs.database)}`}; ${rowsPerTx(m)} messages per transaction`);
            if (ok) {
              if (best[mode] === undefined || m.offered > (best[mode] as Measured).offered) best[mode] = m;
              next[mode] = failed[mode] === undefined ? Math.max(2 * m.offered, 1000) : (m.offered + (failed[mode] as number)) / 2;
            } else {
              failed[mode] = Math.min(failed[mode] ?? Infinity, m.offered);
              next[mode] = ((best[mode]?.offered ?? m.offered / 2) + m.offered) / 2;
            }
          }
        }
        for (const mode of ['mqtts', 'plain'] as const) {
          if (best[mode] === undefined) throw new Error(`${backend.name} ${mode}: not even ${n} msg/s (1 per device) was carried; see the trials above`);
        }
        // The search keeps the best carried trial, which favours a side that had one lucky trial
        // near its knee: each side's knee is run again (alternating), and the median of the trials
        // there, by committed rate, is what is reported.
        const atKnee: Record<LoadMode, Measured[]> = { mqtts: [best.mqtts as Measured], plain: [best.plain as Measured] };
        for (let i = 0; i < kneeRepeats; i++) {
          for (const mode of (i % 2 === 0 ? ['mqtts', 'plain'] : ['plain', 'mqtts']) as LoadMode[]) {
            const m = await trial(gen, sides[mode], backend.pgData, n, (best[mode] as Measured).offered, { durationMs: trialMs, rampMs });
            atKnee[mode].push(m);
            ctx.log(`${backend.name} ${mode}: knee again, offered ${Math.round(m.offered)} msg/s → committed ${Math.round(m.rate)} msg/s, p99 ${quantile(m.latencies, 0.99).toFixed(0)} ms: ${carried(m) ? 'carried' : 'not carried'}`);
          }
        }
        const median = (ms: Measured[]) => [...ms].sort((a, b) => a.rate - b.rate)[Math.floor(ms.length / 2)] as Measured;
        const bm = median(atKnee.mqtts);
        const bp = median(atKnee.plain);
        const kneeTrials = (mode: LoadMode) => atKnee[mode].map((m) => ({ committed: Math.round(m.rate), p99: Math.round(quantile(m.latencies, 0.99)), carried: carried(m) }));
        const readingsPerMessage = bm.committed.readings / (bm.committed.records.length / 3);
        const cpuPer = (m: Measured, who: keyof Measured['cpuMs']) => round1((m.cpuMs[who] * 1000) / m.report.acked);
        const cpuTable = (m: Measured) => ({ generator: cpuPer(m, 'generator'), broker: cpuPer(m, 'broker'), receiver: cpuPer(m, 'receiver'), database: cpuPer(m, 'database') });
        // What a deployment's servers spend per message (the devices are elsewhere there).
        const serverSide = (m: Measured) => {
          const t = cpuTable(m);
          return t.broker + t.receiver + t.database;
        };
        results.push({
          name: `ingest end to end: ${n} devices → mosquitto (mutual TLS 1.3) → ingest → ${backend.name}, ${kneeRepeats === 0 ? 'highest carried rate' : `sustained rate (median of ${kneeRepeats + 1} trials at the knee)`}`,
          unit: 'readings/s',
          value: bm.rate * readingsPerMessage,
          baseline: { name: `plaintext MQTT → mosquitto → plaintext row inserts into the same ${backend.name}`, value: bp.rate * readingsPerMessage },
          ratio: bm.rate / bp.rate,
          target: { ratio: 0.5, comparison: '>=' },
          meta: {
            messagesPerSecond: Math.round(bm.rate), baselineMessagesPerSecond: Math.round(bp.rate), readingsPerMessage: round1(readingsPerMessage),
            receiverNodeOptions: RECEIVER_NODE_OPTIONS.join(' '),
            messagesPerTransaction: rowsPerTx(bm), baselineMessagesPerTransaction: rowsPerTx(bp),
            p99LatencyMs: Math.round(quantile(bm.latencies, 0.99)), baselineP99LatencyMs: Math.round(quantile(bp.latencies, 0.99)),
            cpuMicrosecondsPerMessage: { sealedMtls: cpuTable(bm), plaintext: cpuTable(bp) },
            // Memory at that rate (the paced row below is memory at the deployment's rate).
            ingestRssMiBAtSustained: round1(bm.committed.rssMax / 2 ** 20), baselineRssMiBAtSustained: round1(bp.committed.rssMax / 2 ** 20),
            trials, trialSeconds: trialMs / 1000,
            kneeOffered: { mqtts: Math.round(bm.offered), plain: Math.round(bp.offered) }, kneeTrials: { mqtts: kneeTrials('mqtts'), plain: kneeTrials('plain') },
          },
        });
        results.push({
          name: `ingest end to end → ${backend.name}: server-side CPU per message (broker + ingest${backend.pgData === undefined ? '' : ' + PostgreSQL'}; devices excluded)`,
          unit: 'µs',
          value: serverSide(bm),
          baseline: { name: `broker + plaintext subscriber${backend.pgData === undefined ? '' : ' + PostgreSQL'}`, value: serverSide(bp) },
          ratio: serverSide(bm) / serverSide(bp),
          meta: { sealedMtls: cpuTable(bm), plaintext: cpuTable(bp) },
        });
        const pm = paced.mqtts as Measured;
        const pp = paced.plain as Measured;
        results.push({
          name: `ingest end to end: ${n} devices at 1 message/s each → ${backend.name}, p99 sealed → stored`,
          unit: 'ms',
          value: quantile(pm.latencies, 0.99),
          baseline: { name: 'plaintext MQTT publish → plaintext row committed, same rate', value: quantile(pp.latencies, 0.99) },
          ratio: quantile(pm.latencies, 0.99) / quantile(pp.latencies, 0.99),
          meta: {
            p50Ms: round1(quantile(pm.latencies, 0.5)), baselineP50Ms: round1(quantile(pp.latencies, 0.5)),
            committedPerSecond: Math.round(pm.rate), baselineCommittedPerSecond: Math.round(pp.rate),
            ingestRssBytes: pm.committed.rssMax, baselineSubscriberRssBytes: pp.committed.rssMax,
            brokerRssBytes: brokerRss, generatorRssBytes: genRss,
          },
        });
        results.push({
          name: `ingest process memory (RSS) with ${n} devices at 1 message/s → ${backend.name}`,
          unit: 'MiB',
          value: pm.committed.rssMax / 2 ** 20,
          baseline: { name: 'the plaintext subscriber process', value: pp.committed.rssMax / 2 ** 20 },
          ratio: pm.committed.rssMax / pp.committed.rssMax,
        });
      } finally {
        await ingest.stop();
        await plain.stop();
      }
    }
  } finally {
    await gen?.close();
    await site.stop();
    await pgServer.stop();
  }
  return results;
}
