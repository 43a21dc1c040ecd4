/**
 * The shipped agent (`npm run build:agent`, scripts/lib/agent-bundle.ts), built into a temporary
 * directory that has no sources and no TypeScript loader beside it, only the checkout's
 * node_modules, and run by plain node as the Raspberry Pi unit runs it: usage and exit codes, then
 * sealed readings delivered to real receivers over CoAPS (our DTLS 1.3 server) and over MQTTS
 * (mosquitto, TLS 1.3) with the device key held in a TPM (swtpm behind tpm2-abrmd), where the TLS
 * connection runs in `openssl s_client` and the agent process never loads FAPI.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildAgentBundle, type AgentBundle } from '../../scripts/lib/agent-bundle.ts';
import { startCoapsRig, type CoapsRig } from '../../scripts/lib/coaps-rig.ts';
import { provisionDeviceKey } from '../../scripts/lib/device-key.ts';
import { startMqttRig, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { childProcesses } from '../../scripts/lib/processes.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import type { KeyStoreConfig } from '../../src/keystore/config.ts';
import { until } from '../agent/support.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));
let dir: string;
let bundle: AgentBundle;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vitalseal-agent-bundle-'));
  bundle = await buildAgentBundle(join(dir, 'dist'));
  // Only the dependencies: the bundle must not need src/ or a loader.
  symlinkSync(join(repo, 'node_modules'), join(dir, 'node_modules'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function runSync(args: string[]) {
  const r = spawnSync(process.execPath, [bundle.entry, ...args], { encoding: 'utf8', cwd: dir, env: { PATH: process.env['PATH'] ?? '' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `node vitalseal-agent.mjs agent run --config FILE`, its output collected. */
function startAgent(config: string, env: NodeJS.ProcessEnv): { child: ChildProcess; log(): string } {
  let log = '';
  const child = spawn(process.execPath, [bundle.entry, 'agent', 'run', '--config', config], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout?.on('data', (c: Buffer) => (log += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (log += c.toString()));
  return { child, log: () => log };
}

async function stopAgent(child: ChildProcess | undefined): Promise<number | null> {
  if (child === undefined) return null;
  if (child.exitCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  child.kill('SIGTERM');
  return exited;
}

describe('the agent bundle, run by plain node', () => {
  it('holds the entry and its chunks, and imports no TypeScript', () => {
    assert.ok(existsSync(bundle.entry));
    assert.ok(!bundle.files.some((f) => /tpm-tunnel/.test(f)), 'the agent no longer starts a Node TLS child');
    for (const f of bundle.files.filter((n) => n.endsWith('.mjs'))) {
      // Static imports only.
      assert.doesNotMatch(readFileSync(join(dir, 'dist', f), 'utf8'), /^import\b[^;]*["'](tsx|[^"']*\.ts)["']/m, `${f} imports TypeScript or its loader`);
    }
  });

  it('prints usage, refuses what is not the agent, and reports a bad configuration field by field', () => {
    const help = runSync(['agent', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /vitalseal agent run --config FILE/);
    assert.equal(runSync(['--help']).code, 0);
    const other = runSync(['keys', 'list']);
    assert.equal(other.code, 3);
    assert.match(other.stderr, /'keys' is not part of the agent build/);
    const usage = runSync(['agent', 'run']);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /run needs --config FILE/);
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'device:\n  id: bed 7\nsources: []\n');
    const r = runSync(['run', '--config', bad]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /device\.id: must be.*\[config-invalid\]/s);
  });

  it('CoAPS: sealed readings reach the DTLS 1.3 server, `status` answers, SIGTERM exits 0', { timeout: 120_000 }, async () => {
    let rig: CoapsRig | undefined;
    let agent: ReturnType<typeof startAgent> | undefined;
    try {
      rig = await startCoapsRig({ devices: [] });
      const site = join(dir, 'coaps');
      const keystore: KeyStoreConfig = { kind: 'software', path: join(site, 'keys.vsks'), passphrase: { file: join(site, 'pass') } };
      mkdirSync(site, { recursive: true });
      writeFileSync(join(site, 'pass'), `pass-${process.pid}`, { mode: 0o600 });
      writeFileSync(join(site, 'ingest.pub'), rig.ingestPublicKeyPem);
      writeFileSync(join(site, 'root.pem'), rig.fleet.rootPem);
      await provisionDeviceKey(rig.fleet, 'bed-bundle-c', keystore, join(site, 'chain.pem'));
      const config = join(site, 'agent.yaml');
      writeFileSync(config, [
        'device: { id: bed-bundle-c }',
        'sealing: { ingestPublicKeyFile: ingest.pub }',
        'sources: [{ type: simulated, id: patient, seed: 3, ecgHz: 250 }]',
        'batch: { windowMs: 200 }',
        'queue: { dir: queue }',
        `transport: { primary: { kind: coaps, host: 127.0.0.1, port: ${rig.port}, serverName: 127.0.0.1, caFile: root.pem, certFile: chain.pem,`,
        '  identity: { keystore: { kind: software, path: keys.vsks, passphrase: { file: pass } }, keyLabel: device-identity } } }',
        'metrics: { listen: false }',
        'status: { socket: agent.sock }',
        '',
      ].join('\n'));
      agent = startAgent(config, { PATH: process.env['PATH'] ?? '' });
      const a = agent;
      const received = rig.received;
      await until(() => received.filter((m) => m.deviceId === 'bed-bundle-c').length >= 3, 'three CoAPS messages', 60_000)
        .catch((e: unknown) => { throw new Error(`${(e as Error).message}; agent log:\n${a.log().slice(-3000)}`); });
      const st = runSync(['agent', 'status', '--config', config, '--json']);
      assert.equal(st.code, 0, st.stderr);
      const doc = JSON.parse(st.stdout) as { state: string; transport: { kind: string; link: string } };
      assert.equal(doc.state, 'running');
      assert.equal(doc.transport.kind, 'coaps');
      assert.equal(await stopAgent(agent.child), 0);
      assert.match(agent.log(), /agent stopped; queue state saved/);
    } finally {
      await stopAgent(agent?.child);
      await rig?.stop();
    }
  });

  it('MQTTS with the key in a TPM: openssl s_client signs in the TPM, the agent loads no FAPI, and readings reach the consumer', { timeout: 240_000 }, async () => {
    let rig: MqttRig | undefined;
    let tpm: Swtpm | undefined;
    let agent: ReturnType<typeof startAgent> | undefined;
    try {
      rig = await startMqttRig({ devices: ['bed-bundle-m'] });
      const ingest = await rig.startIngest('ingest-bundle-test');
      tpm = await startSwtpm({ resourceManager: true });
      const site = join(dir, 'mqtts');
      mkdirSync(site, { recursive: true });
      writeFileSync(join(site, 'ingest.pub'), rig.ingestPublicKeyPem);
      writeFileSync(join(site, 'root.pem'), rig.fleet.rootPem);
      const keystore: KeyStoreConfig = { kind: 'tpm', tcti: tpm.tcti, dir: join(site, 'tpm-store') };
      await provisionDeviceKey(rig.fleet, 'bed-bundle-m', keystore, join(site, 'chain.pem'), tpm.env);
      const config = join(site, 'agent.json');
      writeFileSync(config, JSON.stringify({
        device: { id: 'bed-bundle-m' },
        sealing: { ingestPublicKeyFile: 'ingest.pub' },
        sources: [{ type: 'simulated', id: 'patient', seed: 4, ecgHz: 250 }],
        batch: { windowMs: 200 },
        queue: { dir: 'queue' },
        transport: { primary: { kind: 'mqtts', host: '127.0.0.1', port: rig.broker.port, serverName: 'localhost', caFile: 'root.pem', certFile: 'chain.pem',
          identity: { keystore, keyLabel: 'device-identity' } } },
        metrics: { listen: false },
        status: { socket: 'agent.sock' },
      }));
      agent = startAgent(config, { PATH: process.env['PATH'] ?? '', ...tpm.env });
      const a = agent;
      await until(() => ingest.received.filter((r) => r.deviceId === 'bed-bundle-m').length >= 3, 'three MQTTS messages', 120_000)
        .catch((e: unknown) => { throw new Error(`${(e as Error).message}; agent log:\n${a.log().slice(-3000)}`); });
      assert.match(agent.log(), /"protocol":"TLSv1.3"/);
      // The TLS connection runs in openssl s_client with the tpm2 provider; the agent itself never
      // loaded FAPI (its key was read with tpm2-tools), which is what keeps it within its budget.
      const kids = childProcesses(agent.child.pid as number).map((k) => k.argv);
      const relay = kids.find((argv) => argv[0]?.endsWith('openssl') === true && argv[1] === 's_client');
      assert.ok(relay !== undefined, `no openssl s_client among ${JSON.stringify(kids)}`);
      assert.ok(relay.includes('tpm2'), `s_client without the tpm2 provider: ${relay.join(' ')}`);
      const maps = readFileSync(`/proc/${agent.child.pid as number}/maps`, 'utf8');
      assert.ok(!/libtss2-fapi/.test(maps), 'the agent process mapped libtss2-fapi');
      assert.equal(await stopAgent(agent.child), 0);
    } finally {
      await stopAgent(agent?.child);
      await tpm?.stop();
      await rig?.stop();
    }
  });
});
