/**
 * The agent builds its MQTTS uplink from configuration alone (uplink/from-config.ts) and delivers
 * through a real mosquitto 2 (TLS 1.3, client certificates, per-device ACL) to a shared-subscription
 * consumer that opens every sealed message with the ingest key: once with the device key in the
 * software store, once with it in a TPM (swtpm behind tpm2-abrmd; TLS then runs in a child process
 * that signs in the TPM), the latter through `vitalseal agent run` as a process of its own. Also the refusals a misconfigured device meets at start-up.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type IngestInstance, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { freePort } from '../../scripts/lib/ports.ts';
import { VITALSEAL_BIN } from '../../scripts/lib/processes.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { createAgent } from '../../src/agent/agent.ts';
import { ConfigError, type AgentConfig } from '../../src/agent/config.ts';
import { silentLogger } from '../../src/agent/log.ts';
import type { KeyStoreConfig } from '../../src/keystore/config.ts';
import { openKeyStore } from '../../src/keystore/open.ts';
import { KeyStoreError, Unsupported } from '../../src/util/errors.ts';
import { rigAgentFiles, until, type RigAgentFiles } from './support.ts';

describe('agent over MQTTS, built from its configuration', () => {
  let rig: MqttRig;
  let ingest: IngestInstance;
  let files: RigAgentFiles;
  let dir: string;

  before(async () => {
    rig = await startMqttRig({ devices: ['bed-soft', 'bed-tpm', 'bed-other'] });
    ingest = await rig.startIngest('ingest-agent-test');
    files = rigAgentFiles(rig, 'vitalseal-agent-mqtts-');
    dir = files.dir;
  });
  after(async () => {
    await rig?.stop();
    files?.cleanup();
  });

  /** A key in `store`, a certificate for it from the rig's fleet, written where the config points. */
  async function provision(deviceId: string, keystore: KeyStoreConfig): Promise<string> {
    const store = await openKeyStore(keystore);
    try {
      const signer = await store.createSigningKey('device-identity');
      const issued = await rig.fleet.device(deviceId, { signer });
      const certFile = join(dir, `${deviceId}.pem`);
      writeFileSync(certFile, issued.certChainPem);
      return certFile;
    } finally {
      await store.close();
    }
  }

  const config = (deviceId: string, transport: Record<string, unknown>) => files.config(deviceId, transport);

  /** Runs the agent until `n` of its messages reached the consumer; returns the sequence numbers seen. */
  async function runUntilDelivered(deviceId: string, cfg: AgentConfig, n: number): Promise<number[]> {
    const agent = await createAgent({ config: cfg, log: silentLogger() });
    await agent.start();
    try {
      await until(() => ingest.received.filter((r) => r.deviceId === deviceId).length >= n, `${n} messages from ${deviceId}`);
      await until(() => agent.status().lastAck !== null, 'an acknowledgement');
      const s = agent.status();
      assert.equal(s.transport.kind, 'mqtts');
      assert.equal(s.transport.protocol, 'TLSv1.3');
    } finally {
      await agent.stop();
    }
    return ingest.received.filter((r) => r.deviceId === deviceId).map((r) => r.seq);
  }

  it('software key store: sealed readings reach the consumer, which opens them with the ingest key', async () => {
    const keystore: KeyStoreConfig = { kind: 'software', path: join(dir, 'soft.vsks'), passphrase: { file: files.pass } };
    const certFile = await provision('bed-soft', keystore);
    const seqs = await runUntilDelivered('bed-soft', config('bed-soft', { certFile, identity: { keystore, keyLabel: 'device-identity' } }), 3);
    // rig.open checked every payload with the ingest key and the sealed device id against the topic.
    assert.ok(seqs.length >= 3);
    assert.deepEqual([...new Set(seqs)].sort((a, b) => a - b).slice(0, 3), [0, 1, 2].map((i) => Math.min(...seqs) + i));
  });

  it('TPM key store: `vitalseal agent run` as its own process, started outside the checkout, signs TLS inside the TPM', { timeout: 240_000 }, async () => {
    let tpm: Swtpm | undefined;
    let agent: ChildProcess | undefined;
    const cwd = mkdtempSync(join(tmpdir(), 'vitalseal-agent-cwd-'));
    try {
      tpm = await startSwtpm({ resourceManager: true });
      const keystore: KeyStoreConfig = { kind: 'tpm', tcti: tpm.tcti, dir: join(dir, 'tpm-store') };
      const saved = { ...process.env };
      Object.assign(process.env, tpm.env);
      let certFile: string;
      try {
        certFile = await provision('bed-tpm', keystore);
      } finally {
        for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      }
      const cfg = join(dir, 'bed-tpm.json');
      writeFileSync(cfg, JSON.stringify(files.document('bed-tpm', { certFile, identity: { keystore, keyLabel: 'device-identity' } })));
      // The command registers its TypeScript loader from inside (no --import flag), and the working
      // directory is not the checkout: openssl s_client and tpm2-tools must start all the same.
      let log = '';
      agent = spawn(process.execPath, [VITALSEAL_BIN, 'agent', 'run', '--config', cfg], { cwd, env: { ...process.env, ...tpm.env }, stdio: ['ignore', 'pipe', 'pipe'] });
      agent.stdout?.on('data', (c: Buffer) => (log += c.toString()));
      agent.stderr?.on('data', (c: Buffer) => (log += c.toString()));
      await until(() => ingest.received.filter((r) => r.deviceId === 'bed-tpm').length >= 2, 'two messages from bed-tpm').catch((e: unknown) => {
        throw new Error(`${(e as Error).message}; agent log:\n${log.slice(-3000)}`);
      });
      assert.match(log, /"protocol":"TLSv1.3"/);
    } finally {
      if (agent !== undefined && agent.exitCode === null) {
        const exited = new Promise((r) => agent?.once('exit', r));
        agent.kill('SIGTERM');
        await exited;
      }
      await tpm?.stop();
      rmSync(cwd, { recursive: true, force: true });
    }
  });

  it('refusals at start-up name the field: missing settings, a certificate for another key, a token key, a TPM that is not there', async () => {
    const keystore: KeyStoreConfig = { kind: 'software', path: join(dir, 'other.vsks'), passphrase: { file: files.pass } };
    const certFile = await provision('bed-other', keystore);
    const identity = { keystore, keyLabel: 'device-identity' };

    const refusal = async (transport: Record<string, unknown>, check: (e: unknown) => boolean) =>
      assert.rejects(createAgent({ config: config('bed-other', transport), log: silentLogger() }), check);

    await refusal({ identity, caFile: undefined, certFile }, (e) => e instanceof ConfigError && /transport\.primary\.caFile: is required/.test(e.message));
    await refusal({ identity }, (e) => e instanceof ConfigError && /transport\.primary\.certFile: is required/.test(e.message));
    await refusal({ certFile }, (e) => e instanceof ConfigError && /transport\.primary\.identity: is required/.test(e.message));
    // A certificate issued to another key (bed-soft's) with this store's key.
    await refusal({ identity, certFile: join(dir, 'bed-soft.pem') }, (e) => e instanceof ConfigError && /not issued for key 'device-identity'/.test(e.message));
    await refusal({ identity: { keystore, keyLabel: 'no-such-key' }, certFile }, (e) => e instanceof ConfigError && /no usable key 'no-such-key'/.test(e.message));
    await refusal({ identity, certFile, topic: 'vitals/bed-7/v1' }, (e) => e instanceof ConfigError && /transport\.primary\.topic/.test(e.message));
    await refusal({ certFile, identity: { keystore: { kind: 'pkcs11', module: '/usr/lib/softhsm/libsofthsm2.so', token: 'pkcs11:token=x', pin: { file: files.pass } }, keyLabel: 'k' } },
      (e) => e instanceof Unsupported && e.code === 'mqtts-pkcs11-key' && /coaps/.test(e.message));
    // A TPM that is not there (nothing listens where its TCTI points) is not a configuration
    // mistake: a KeyStoreError naming the field, `no-tpm`, so the process exits 1 and is restarted.
    const nowhere = await freePort();
    await refusal({ certFile, identity: { keystore: { kind: 'tpm', tcti: `swtpm:host=127.0.0.1,port=${nowhere}`, dir: join(dir, 'absent-tpm') }, keyLabel: 'device-identity' } },
      (e) => !(e instanceof ConfigError) && e instanceof KeyStoreError && e.code === 'no-tpm'
        && /^transport\.primary\.identity\.keystore: the key store is unavailable: .*no TPM reachable/.test(e.message));
    // None of those left a key store open or a message queued: the queue directory holds no segment.
    assert.equal(ingest.received.filter((r) => r.deviceId === 'bed-other').length, 0);
  });
});
