/**
 * `npm run demo`: a small hospital ward on this machine. Starts a development fleet CA, mosquitto,
 * the ingest service and a fleet of simulated devices (scripts/lib/stack.ts), prints a live
 * summary (readings/s per device, transport, suite) and the dashboard's address, and stops
 * everything on Ctrl-C (or after --seconds), leaving no process behind.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { startStack, type Stack, type StackDevice } from '../lib/stack.ts';
import { HELP } from './help.mjs';
import { followLive, type DeviceTally } from './live-feed.ts';


interface Args {
  readonly mqtts: number;
  readonly coaps: number;
  readonly tpm: boolean;
  readonly hl7: boolean;
  readonly seconds: number | undefined;
  readonly httpsPort: number | undefined;
  readonly keep: boolean;
}

function parse(argv: readonly string[]): Args | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      mqtts: { type: 'string' }, coaps: { type: 'string' }, 'no-tpm': { type: 'boolean' }, 'no-hl7': { type: 'boolean' }, seconds: { type: 'string' },
      'https-port': { type: 'string' }, keep: { type: 'boolean' }, help: { type: 'boolean' },
    },
    strict: true,
  });
  if (values.help === true) return 'help';
  const int = (v: string | undefined, name: string, min: number, max: number): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}`);
    return n;
  };
  return {
    mqtts: int(values.mqtts, 'mqtts', 0, 50) ?? 2,
    coaps: int(values.coaps, 'coaps', 0, 50) ?? 2,
    tpm: values['no-tpm'] !== true,
    hl7: values['no-hl7'] !== true,
    seconds: int(values.seconds, 'seconds', 5, 86_400),
    httpsPort: int(values['https-port'], 'https-port', 0, 65535),
    keep: values.keep === true,
  };
}

function plan(a: Args): StackDevice[] {
  const devices: StackDevice[] = [];
  for (let i = 1; i <= a.mqtts; i++) {
    devices.push({ id: `bed-${i}`, transport: 'mqtts', keyStore: a.tpm && i === 2 ? 'tpm' : 'software', source: 'simulated', seed: i, alg: i % 2 === 0 ? 'aes-ccm-16-64-128' : 'chacha20-poly1305' });
  }
  for (let i = 1; i <= a.coaps; i++) {
    // Every second CoAPS device is a constrained one: a pulse oximeter with a PSK instead of a certificate.
    const psk = i % 2 === 0;
    devices.push({ id: psk ? `oxi-${a.mqtts + i}` : `bed-${a.mqtts + i}`, transport: 'coaps', keyStore: 'software', auth: psk ? 'psk' : 'certificate', source: 'simulated', seed: a.mqtts + i, alg: 'chacha20-poly1305' });
  }
  if (a.hl7) devices.push({ id: 'monitor-gw', transport: 'mqtts', keyStore: 'software', source: 'hl7' });
  return devices;
}

function table(stack: Stack, tallies: DeviceTally[], posture: Map<string, { suite: string | null; status: string }>, windowMs: number): string {
  const rows = stack.devices.map((d) => {
    const t = tallies.find((x) => x.deviceId === d.spec.id);
    const p = posture.get(d.spec.id);
    const per = (n: number) => (n / (windowMs / 1000)).toFixed(1);
    return [
      d.spec.id, d.spec.transport, d.spec.auth === 'psk' ? 'PSK' : d.spec.keyStore === 'tpm' ? 'TPM' : 'software', d.spec.source === 'hl7' ? 'HL7 gateway' : 'simulated',
      t === undefined ? '0.0' : per(t.readings), t === undefined ? '0' : per(t.ecgSamples), String(t?.total ?? 0),
      t?.heartRate === undefined ? '-' : t.heartRate.toFixed(0), t?.spo2 === undefined ? '-' : t.spo2.toFixed(0),
      p?.suite ?? '-', d.agent.alive ? (p?.status ?? 'enrolled') : 'agent exited',
    ];
  });
  const head = ['device', 'transport', 'key', 'source', 'vitals/s', 'ECG/s', 'stored', 'HR', 'SpO2', 'suite', 'status'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] as number)).join('  ');
  return [line(head), ...rows.map(line)].join('\n');
}

export async function main(argv: readonly string[]): Promise<number> {
  let args: Args | 'help';
  try {
    args = parse(argv);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (args === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  const devices = plan(args);
  if (devices.length === 0) {
    process.stderr.write('nothing to run: --mqtts 0 --coaps 0 with --no-hl7\n');
    return 2;
  }
  const out = (s: string) => process.stdout.write(`${s}\n`);
  out('vitalseal demo: starting (Ctrl-C stops everything)');
  // 0 asks for any free port; by default 8443 when it is free.
  let httpsPort = args.httpsPort === 0 ? undefined : args.httpsPort;
  if (args.httpsPort === undefined) {
    const { createServer } = await import('node:net');
    httpsPort = await new Promise<number | undefined>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(undefined));
      s.listen(8443, '127.0.0.1', () => s.close(() => resolve(8443)));
    });
  }
  let stack: Stack | undefined;
  let stopping = false;
  const stopAll = async (why: string) => {
    if (stopping) return;
    stopping = true;
    out(`\nvitalseal demo: stopping (${why})`);
    await stack?.stop();
    out('vitalseal demo: stopped; no process left running');
  };
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    stack = await startStack({ devices, keep: args.keep, progress: (l) => out(`  ${l}`), ...(httpsPort === undefined ? {} : { httpsPort }) });
  } catch (e) {
    process.stderr.write(`vitalseal demo: could not start: ${(e as Error).message}\n`);
    return 1;
  }
  const rootPem = readFileSync(stack.rootCaFile, 'utf8');
  out('');
  out(`dashboard:  ${stack.httpsUrl}   (TLS 1.3; certificate from the demo's own CA: ${stack.rootCaFile})`);
  out(`API token:  ${stack.readerToken}   (reader role; paste it into the dashboard; this demo's only)`);
  out(`directory:  ${stack.dir}${args.keep ? ' (kept after stopping)' : ' (removed when the demo stops)'}`);
  out('');

  const feed = followLive({ url: stack.httpsUrl, ca: rootPem, token: stack.readerToken });
  const posture = new Map<string, { suite: string | null; status: string }>();
  const refreshPosture = async () => {
    try {
      const r = await stack?.api<{ devices: { deviceId: string; suite: string | null; status: string }[] }>('/api/v1/devices');
      for (const d of r?.devices ?? []) posture.set(d.deviceId, { suite: d.suite, status: d.status });
    } catch {
      // the next refresh tries again
    }
  };
  const tty = process.stdout.isTTY === true;
  const windowMs = 5000;
  const started = Date.now();
  let lastPrint = 0;
  while (!interrupted && (args.seconds === undefined || Date.now() - started < args.seconds * 1000)) {
    await new Promise((r) => setTimeout(r, 1000));
    if (Date.now() - lastPrint < (tty ? 2000 : 5000)) continue;
    lastPrint = Date.now();
    await refreshPosture();
    const text = table(stack, feed.snapshot(windowMs), posture, windowMs);
    const header = `— ${new Date().toISOString().slice(11, 19)} — readings stored by the ingest service in the last ${windowMs / 1000} s${feed.error === undefined ? '' : ` (${feed.error})`}`;
    out(`${header}\n${text}\n`);
  }
  feed.close();
  const totals = feed.snapshot(60_000);
  await stopAll(interrupted ? 'interrupted' : `${args.seconds ?? 0} s elapsed`);
  out(`stored messages per device: ${stack.devices.map((d) => `${d.spec.id} ${totals.find((t) => t.deviceId === d.spec.id)?.total ?? 0}`).join(', ')}`);
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = await main(process.argv.slice(2));
}
