/**
 * Agent benchmarks.
 *
 * 1. Footprint of a real agent process for one simulated patient (1 Hz vitals + 250 Hz ECG,
 *    1 s batches, sealed, fsync per batch), delivering over each real transport on loopback: MQTTS
 *    to mosquitto (a shared-subscription consumer opens every message) and CoAPS to a CoAPS server
 *    (which opens every message), the device key in a software store. Resident memory (VmRSS) and
 *    CPU share of one core over a measured window, read from /proc. Three forms: the headline is
 *    the shipped bundle (`npm run build:agent`, scripts/lib/agent-bundle.ts) run exactly as the
 *    Raspberry Pi unit runs it (`node <the unit's V8 flags> vitalseal-agent.mjs agent run --config
 *    FILE`, logging JSON lines at info); then the same bundle on node without those flags, and
 *    `vitalseal agent run` from a checkout (TypeScript through tsx). Baseline in the same run: the
 *    same runtime idling (node with the same flags; node with tsx registered). Budgets from issue 6: RSS ≤ 80 MB (76.3 MiB), CPU ≤ 5 %.
 *    Also (measured first) the headline form with the device key in a TPM, as on a device (swtpm behind tpm2-abrmd,
 *    scripts/lib/swtpm.ts), over each transport: CoAPS signs its DTLS handshake through the TPM key
 *    store in the agent process; MQTTS runs its TLS connection in `openssl s_client` with the tpm2
 *    provider, started by the agent per connection. Every process the agent started counts: RSS
 *    and CPU are those of the agent plus its child processes (found in /proc), each also reported
 *    alone, s_client against node idling (the least a Node TLS child would cost).
 * 2. Queue append throughput with fsync per batch (the segment queue: framing, CRC-32C, index,
 *    datasync) against a plain append-only file write of the same bytes with a datasync after each,
 *    interleaved in the same run. Target: ≥ 0.5× the plain write.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openSegmentQueue } from '../../src/agent/queue/index.ts';
import { encodeRecord } from '../../src/agent/queue/segment-format.ts';
import { SimulatedPatient } from '../../src/agent/sensors/simulated-patient.ts';
import { encodeVitalsPack } from '../../src/codec/vitals.ts';
import { generateX25519Pem, x25519PublicFromPem } from '../../src/cose/keys.ts';
import { Header, SealingSession } from '../../src/cose/index.ts';
import type { KeyStoreConfig } from '../../src/keystore/config.ts';
import { startCoapsRig, type CoapsRig } from '../lib/coaps-rig.ts';
import { provisionDeviceKey } from '../lib/device-key.ts';
import { startMqttRig, type MqttRig } from '../lib/mqtt-rig.ts';
import { buildAgentBundle } from '../lib/agent-bundle.ts';
import { childProcesses, VITALSEAL_BIN } from '../lib/processes.ts';
import { startSwtpm, type Swtpm } from '../lib/swtpm.ts';
import { median } from './measure.ts';
import type { BenchContext, BenchResult } from './types.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const TICKS = 100; // USER_HZ on Linux

function procSample(pid: number): { rssKiB: number; cpuTicks: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN);
  // /proc/PID/stat: fields 14 and 15 are utime and stime (after the parenthesised command name).
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { rssKiB, cpuTicks: Number(fields[11]) + Number(fields[12]) };
}

/** A process that only keeps the runtime alive: the baseline. It prints IDLE_READY when up. */
const IDLE_READY = 'idle runtime ready';
const IDLE = `setInterval(() => undefined, 1000); process.on('SIGTERM', () => process.exit(0)); console.log('${IDLE_READY}');`;

/** The node options in hardware/raspberry-pi/vitalseal-agent.service's ExecStart (between node and the bundle). */
function unitNodeFlags(): string[] {
  const unit = readFileSync(join(root, 'hardware/raspberry-pi/vitalseal-agent.service'), 'utf8');
  const exec = /^ExecStart=\/usr\/local\/bin\/node (.*?)\s*\/usr\/local\/lib\/vitalseal\/vitalseal-agent\.mjs /m.exec(unit);
  if (exec === null) throw new Error('vitalseal-agent.service: ExecStart does not run /usr/local/lib/vitalseal/vitalseal-agent.mjs with /usr/local/bin/node');
  return (exec[1] ?? '').split(/\s+/).filter((f) => f !== '');
}

/** A child's argv without its program and without directories, for the log: `s_client -connect ... -key key.pem ...`. */
function shortArgv(argv: readonly string[]): string {
  return argv.slice(1).map((a) => a.replace(/(^|=)\/\S*\//, '$1')).join(' ');
}

/** The agent says this once its queue, uplink scheduler and endpoints are up. */
const READY = '"msg":"agent running"';

interface Usage {
  /** Median VmRSS over the window. */
  readonly rssMiB: number;
  readonly peakRssMiB: number;
  readonly cpuPercent: number;
}

interface Footprint extends Usage {
  /** The agent's child processes (openssl s_client with a TPM key), summed; undefined when it started none. */
  readonly children?: Usage & { readonly argv: readonly string[][] };
  /** The agent and its children together: what a device maker counts. */
  readonly total: Usage;
}

interface FootprintOptions {
  /** Added to this process's environment for the measured process (and so for its children). */
  readonly env?: Readonly<Record<string, string>>;
  /** Warm-up begins once this holds (e.g. a first message delivered: the uplink's TLS is up). */
  readonly settled?: () => boolean;
}

function usage(rssKiB: number[], ticks: number, seconds: number): Usage {
  return { rssMiB: median(rssKiB) / 1024, peakRssMiB: Math.max(...rssKiB) / 1024, cpuPercent: (ticks / TICKS / seconds) * 100 };
}

async function footprint(argv: string[], windowMs: number, warmMs: number, opts: FootprintOptions = {}): Promise<Footprint> {
  const child = spawn(process.execPath, argv, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...opts.env } });
  try {
    await new Promise<void>((resolve, reject) => {
      // The agent logs JSON lines to stdout all along: keep reading them so the pipe never fills.
      let seen = '';
      child.stdout.on('data', (d: Buffer) => {
        if (seen.length < 65536) seen += d.toString();
        if (seen.includes(READY) || seen.includes(IDLE_READY)) resolve();
      });
      child.once('exit', (c) => reject(new Error(`footprint child exited ${c}`)));
    });
    const settled = opts.settled;
    if (settled !== undefined) {
      const end = Date.now() + 120_000;
      while (!settled()) {
        if (child.exitCode !== null) throw new Error(`footprint child exited ${child.exitCode} before it settled`);
        if (Date.now() > end) throw new Error('footprint: not settled within 120 s');
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await new Promise((r) => setTimeout(r, warmMs));
    const pid = child.pid as number;
    // Children by pid: CPU is counted from the first sample each was seen in (a child started
    // during the window counts from its start), RSS summed over those alive at each sample.
    const kidTicks = new Map<number, { first: number; last: number; argv: string[] }>();
    const sampleKids = (counted: boolean): number => {
      let rss = 0;
      for (const k of childProcesses(pid)) {
        let s: { rssKiB: number; cpuTicks: number };
        try {
          s = procSample(k.pid);
        } catch {
          continue; // exited between the listing and the read
        }
        rss += s.rssKiB;
        const seen = kidTicks.get(k.pid);
        if (seen === undefined) kidTicks.set(k.pid, { first: counted ? 0 : s.cpuTicks, last: s.cpuTicks, argv: k.argv });
        else seen.last = s.cpuTicks;
      }
      return rss;
    };
    const a = procSample(pid);
    sampleKids(false);
    const t0 = performance.now();
    const rss: number[] = [];
    const kidRss: number[] = [];
    const totalRss: number[] = [];
    while (performance.now() - t0 < windowMs) {
      await new Promise((r) => setTimeout(r, 250));
      const own = procSample(pid).rssKiB;
      const kids = sampleKids(true);
      rss.push(own);
      kidRss.push(kids);
      totalRss.push(own + kids);
    }
    const b = procSample(pid);
    sampleKids(true);
    const seconds = (performance.now() - t0) / 1000;
    const own = usage(rss, b.cpuTicks - a.cpuTicks, seconds);
    if (kidTicks.size === 0) return { ...own, total: own };
    const kidCpu = [...kidTicks.values()].reduce((n, k) => n + k.last - k.first, 0);
    return {
      ...own,
      children: { ...usage(kidRss, kidCpu, seconds), argv: [...kidTicks.values()].map((k) => k.argv) },
      total: usage(totalRss, b.cpuTicks - a.cpuTicks + kidCpu, seconds),
    };
  } finally {
    // A child that has already exited will not say so again: waiting for 'exit' would never end.
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  }
}

/**
 * A receiving side for one device on loopback (mosquitto + a consumer, or a CoAPS server), the
 * device's key in a software store or in a TPM (swtpm behind tpm2-abrmd, as a device reaches its
 * TPM through the resource manager) with a certificate from the site's fleet, and the agent
 * configuration that points at it. `env` must reach the agent (the resource manager's private bus).
 */
async function transportSite(kind: 'mqtts' | 'coaps', key: 'software' | 'tpm'): Promise<{ config: string; env: Readonly<Record<string, string>>; delivered(): number; stop(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), `vitalseal-bench-agent-${kind}-`));
  const id = 'bed-fp';
  let rig: MqttRig | CoapsRig | undefined;
  let tpm: Swtpm | undefined;
  try {
    rig = kind === 'mqtts' ? await startMqttRig({ devices: [id] }) : await startCoapsRig({ devices: [] });
    const delivered = kind === 'mqtts' ? (await (rig as MqttRig).startIngest('bench-footprint')).received : (rig as CoapsRig).received;
    writeFileSync(join(dir, 'ingest.pub'), rig.ingestPublicKeyPem);
    writeFileSync(join(dir, 'root.pem'), rig.fleet.rootPem);
    let keystore: KeyStoreConfig;
    if (key === 'tpm') {
      tpm = await startSwtpm({ resourceManager: true });
      keystore = { kind: 'tpm', tcti: tpm.tcti, dir: join(dir, 'tpm-store') };
    } else {
      writeFileSync(join(dir, 'store.pass'), randomBytes(24).toString('base64url'), { mode: 0o600 });
      keystore = { kind: 'software', path: join(dir, 'keys.vsks'), passphrase: { file: join(dir, 'store.pass') } };
    }
    const env = tpm?.env ?? {};
    await provisionDeviceKey(rig.fleet, id, keystore, join(dir, 'chain.pem'), env);
    const config = join(dir, 'agent.json');
    writeFileSync(config, JSON.stringify({
      device: { id },
      sealing: { ingestPublicKeyFile: join(dir, 'ingest.pub') },
      sources: [{ type: 'simulated', id: 'patient', seed: 1, ecgHz: 250 }],
      queue: { dir: join(dir, 'queue') },
      transport: { primary: { kind, host: '127.0.0.1', port: kind === 'mqtts' ? (rig as MqttRig).broker.port : (rig as CoapsRig).port, serverName: kind === 'mqtts' ? 'localhost' : '127.0.0.1',
        caFile: join(dir, 'root.pem'), certFile: join(dir, 'chain.pem'), identity: { keystore, keyLabel: 'device-identity' } } },
      metrics: { listen: '127.0.0.1:0' },
      status: { socket: join(dir, 'agent.sock') },
      log: { level: 'info' },
    }));
    const started = { rig, tpm };
    return {
      config,
      env,
      delivered: () => delivered.length,
      async stop() {
        await started.rig.stop();
        await started.tpm?.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await rig?.stop();
    await tpm?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Sealed messages as the agent makes them: one second of one simulated patient each. */
function realisticMessages(count: number): Uint8Array[] {
  const { publicPem } = generateX25519Pem();
  const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: x25519PublicFromPem(publicPem), clock: { now: () => 0 } });
  const patient = new SimulatedPatient({ id: 'bench', seed: 5 });
  const t0 = 1_750_000_000_000;
  patient.start(t0);
  const out: Uint8Array[] = [];
  for (let i = 1; i <= count; i++) {
    const r = patient.read(t0 + i * 1000);
    const pack = encodeVitalsPack({
      deviceId: 'bed-7',
      readings: r.vitals.map((v) => ({ kind: v.name, time: v.time, value: v.value })),
      ecg: r.waveforms.map((w) => ({ start: w.start, intervalMs: w.intervalMs, samplesMv: w.samples })),
    });
    out.push(session.seal(pack, { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-7'], [Header.SEQUENCE, i]]) }));
  }
  session.destroy();
  return out;
}

async function appendThroughput(ctx: BenchContext): Promise<BenchResult> {
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-bench-queue-'));
  try {
    const msgs = realisticMessages(64);
    const rounds = ctx.quick ? 2 : 5;
    const perRound = ctx.quick ? 100 : 400;
    const q = await openSegmentQueue({ dir: join(dir, 'q'), fsync: 'every-append' });
    const fh = await open(join(dir, 'plain.log'), 'a', 0o600);
    const queueRates: number[] = [];
    const plainRates: number[] = [];
    let k = 0;
    for (let r = 0; r < rounds; r++) {
      let t = performance.now();
      for (let i = 0; i < perRound; i++) await q.append([msgs[(k++) % msgs.length] as Uint8Array]);
      queueRates.push(perRound / ((performance.now() - t) / 1000));
      // The same bytes the queue writes (its 16-byte record header + payload), appended and synced.
      t = performance.now();
      for (let i = 0; i < perRound; i++) {
        await fh.write(encodeRecord(k, msgs[(k++) % msgs.length] as Uint8Array));
        await fh.datasync();
      }
      plainRates.push(perRound / ((performance.now() - t) / 1000));
      await q.ack(q.stats().nextSeq - 1);
    }
    await q.close();
    await fh.close();
    const value = median(queueRates);
    const baseline = median(plainRates);
    const size = Math.round(msgs.reduce((n, m) => n + m.length, 0) / msgs.length);
    ctx.log(`queue append+fsync: ${value.toFixed(0)}/s vs plain write+fdatasync ${baseline.toFixed(0)}/s (messages ~${size} B)`);
    return {
      name: `agent queue append, fsync per batch (~${size} B sealed)`, unit: 'appends/s', value,
      baseline: { name: 'plain append + fdatasync, same bytes', value: baseline }, ratio: value / baseline,
      target: { ratio: 0.5, comparison: '>=' }, meta: { rounds, perRound, messageBytes: size },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  results.push(await appendThroughput(ctx));

  const windowMs = ctx.quick ? 5000 : 30_000;
  const warmMs = ctx.quick ? 1000 : 5000;
  // The headline: the artefact a device runs (same recipe as `npm run build:agent`), by node with
  // the V8 flags of the Raspberry Pi unit's ExecStart; then the same bundle without them, and the
  // `vitalseal` command from a checkout (TypeScript through tsx).
  const bundle = await buildAgentBundle(join(root, 'node_modules/.cache/vitalseal-bench/agent-bundle'));
  const flags = unitNodeFlags();
  const forms = [
    { label: `shipped bundle as the Pi unit runs it (node ${flags.join(' ')})`, agent: (config: string) => [...flags, bundle.entry, 'agent', 'run', '--config', config], idle: [...flags, '-e', IDLE] },
    { label: 'shipped bundle, node without V8 flags', agent: (config: string) => [bundle.entry, 'agent', 'run', '--config', config], idle: ['-e', IDLE] },
    { label: 'vitalseal command from a checkout, node + tsx', agent: (config: string) => [VITALSEAL_BIN, 'agent', 'run', '--config', config],
      idle: ['--input-type=module', '-e', `import { register } from 'tsx/esm/api'; register(); ${IDLE}`] },
  ];
  const budgetMiB = 80 / 1.048576;
  const headline = forms[0] as (typeof forms)[number];
  // The device's own form with its key in the TPM first, then the software store in every form.
  const configurations = [
    { kind: 'mqtts' as const, key: 'tpm' as const, form: headline },
    { kind: 'coaps' as const, key: 'tpm' as const, form: headline },
    ...forms.map((form) => ({ kind: 'mqtts' as const, key: 'software' as const, form })),
    ...forms.map((form) => ({ kind: 'coaps' as const, key: 'software' as const, form })),
  ];
  let site: Awaited<ReturnType<typeof transportSite>> | undefined;
  let siteOf = '';
  try {
    for (const { kind, key, form } of configurations) {
      if (site === undefined || siteOf !== `${kind}/${key}`) {
        await site?.stop();
        site = undefined;
        site = await transportSite(kind, key);
        siteOf = `${kind}/${key}`;
      }
      const current = site;
      const base = await footprint(form.idle, windowMs, warmMs);
      const delivered0 = current.delivered();
      // With a TPM key the uplink's handshake waits for s_client and the TPM: measure once it is up.
      const agent = await footprint(form.agent(current.config), windowMs, warmMs, { env: current.env, ...(key === 'tpm' ? { settled: () => current.delivered() > delivered0 } : {}) });
      const delivered = current.delivered() - delivered0;
      const label = key === 'tpm' ? `${kind}, device key in a TPM (tpm2-abrmd), ${form.label}` : `${kind}, ${form.label}`;
      ctx.log(`agent (${label}): RSS ${agent.rssMiB.toFixed(1)} MiB (peak ${agent.peakRssMiB.toFixed(1)}), CPU ${agent.cpuPercent.toFixed(2)} % of one core; `
        + `idle runtime: RSS ${base.rssMiB.toFixed(1)} MiB, CPU ${base.cpuPercent.toFixed(2)} %; ${delivered} messages delivered`);
      if (delivered === 0) throw new Error(`agent footprint (${label}): no message was delivered: the measurement would be of an agent that does not work`);
      const meta = { transport: kind, key, form: form.label, windowMs, delivered, peakRssMiB: agent.peakRssMiB, idleRssMiB: base.rssMiB, idleCpuPercent: base.cpuPercent };
      const kids = agent.children;
      if (kids === undefined) {
        results.push(
          { name: `agent RSS, one simulated patient, ${label} (vs the 80 MB budget)`, unit: 'MiB', value: agent.rssMiB, baseline: { name: 'budget 80 MB (issue 6)', value: budgetMiB }, ratio: agent.rssMiB / budgetMiB, target: { ratio: 1, comparison: '<=' }, meta },
          { name: `agent RSS over the idle runtime, ${label}`, unit: 'MiB', value: agent.rssMiB, baseline: { name: 'the same runtime idling, same run', value: base.rssMiB }, ratio: agent.rssMiB / base.rssMiB, meta },
          { name: `agent CPU, one simulated patient, ${label} (vs the 5 % budget)`, unit: '% of one core', value: agent.cpuPercent, baseline: { name: 'budget 5 % (issue 6)', value: 5 }, ratio: agent.cpuPercent / 5, target: { ratio: 1, comparison: '<=' }, meta },
          { name: `agent CPU over the idle runtime, ${label}`, unit: '% of one core', value: agent.cpuPercent, baseline: { name: 'the same runtime idling, same run', value: base.cpuPercent }, ratio: base.cpuPercent > 0 ? agent.cpuPercent / base.cpuPercent : Infinity, meta },
        );
        continue;
      }
      // openssl s_client against plain node idling: the least a Node TLS child (the form MQTTS with
      // a TPM key had before s_client) would cost.
      const childArgv = kids.argv[0] ?? [];
      const childBase = await footprint(['-e', IDLE], windowMs, warmMs);
      const childNode = 'node';
      const { total } = agent;
      ctx.log(`  TLS process (${shortArgv(childArgv)}): RSS ${kids.rssMiB.toFixed(1)} MiB (peak ${kids.peakRssMiB.toFixed(1)}), CPU ${kids.cpuPercent.toFixed(2)} %; `
        + `${childNode} idling: RSS ${childBase.rssMiB.toFixed(1)} MiB; agent + TLS process: RSS ${total.rssMiB.toFixed(1)} MiB (peak ${total.peakRssMiB.toFixed(1)}), CPU ${total.cpuPercent.toFixed(2)} %`);
      const all = { ...meta, agentRssMiB: agent.rssMiB, agentCpuPercent: agent.cpuPercent, childRssMiB: kids.rssMiB, childPeakRssMiB: kids.peakRssMiB, childCpuPercent: kids.cpuPercent,
        childArgv: shortArgv(childArgv), childIdleRssMiB: childBase.rssMiB, totalPeakRssMiB: total.peakRssMiB };
      results.push(
        { name: `agent + TLS process RSS, one simulated patient, ${label} (vs the 80 MB budget)`, unit: 'MiB', value: total.rssMiB, baseline: { name: 'budget 80 MB (issue 6)', value: budgetMiB }, ratio: total.rssMiB / budgetMiB, target: { ratio: 1, comparison: '<=' }, meta: all },
        { name: `agent process RSS over the idle runtime, ${label}`, unit: 'MiB', value: agent.rssMiB, baseline: { name: 'the same runtime idling, same run', value: base.rssMiB }, ratio: agent.rssMiB / base.rssMiB, meta: all },
        { name: `TLS process (openssl s_client) RSS over node idling (the least a Node TLS child costs), ${label}`, unit: 'MiB', value: kids.rssMiB, baseline: { name: `${childNode} idling, same run`, value: childBase.rssMiB }, ratio: kids.rssMiB / childBase.rssMiB, meta: all },
        { name: `agent + TLS process CPU, one simulated patient, ${label} (vs the 5 % budget)`, unit: '% of one core', value: total.cpuPercent, baseline: { name: 'budget 5 % (issue 6)', value: 5 }, ratio: total.cpuPercent / 5, target: { ratio: 1, comparison: '<=' }, meta: all },
        { name: `agent + TLS process CPU over the idle runtime, ${label}`, unit: '% of one core', value: total.cpuPercent, baseline: { name: 'the same runtime idling, same run', value: base.cpuPercent }, ratio: base.cpuPercent > 0 ? total.cpuPercent / base.cpuPercent : Infinity, meta: all },
      );
    }
  } finally {
    await site?.stop();
  }
  return results;
}
