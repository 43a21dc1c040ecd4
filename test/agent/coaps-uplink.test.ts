/**
 * The agent builds its CoAPS uplink (CoAP over DTLS 1.3) from configuration alone and delivers to a
 * real CoAPS server on loopback UDP that opens every sealed message with the ingest key and checks
 * its device id against the authenticated peer: with the device key in the software store, in a
 * PKCS#11 token (SoftHSM2; our DTLS signs CertificateVerify through the token, which MQTTS cannot),
 * and with an external PSK read from a 0600 file. Also the refusals a misconfigured device meets.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startCoapsRig, type CoapsRig } from '../../scripts/lib/coaps-rig.ts';
import { startSoftHsm, type SoftHsm } from '../../scripts/lib/softhsm.ts';
import { createAgent } from '../../src/agent/agent.ts';
import { ConfigError, parseAgentConfig, type AgentConfig } from '../../src/agent/config.ts';
import { silentLogger } from '../../src/agent/log.ts';
import type { KeyStoreConfig } from '../../src/keystore/config.ts';
import { openKeyStore } from '../../src/keystore/open.ts';
import { toHex } from '../../src/util/bytes.ts';
import { until } from './support.ts';

describe('agent over CoAPS, built from its configuration', () => {
  let rig: CoapsRig;
  let hsm: SoftHsm;
  let dir: string;
  const files = { ca: '', ingestPub: '', pass: '' };

  before(async () => {
    rig = await startCoapsRig({ devices: [] });
    hsm = await startSoftHsm();
    dir = mkdtempSync(join(tmpdir(), 'vitalseal-agent-coaps-'));
    files.ca = join(dir, 'fleet-root.pem');
    writeFileSync(files.ca, rig.fleet.rootPem);
    files.ingestPub = join(dir, 'ingest.pub');
    writeFileSync(files.ingestPub, rig.ingestPublicKeyPem);
    files.pass = join(dir, 'store.pass');
    writeFileSync(files.pass, `pass-${process.pid}-${Date.now()}`, { mode: 0o600 });
  });
  after(async () => {
    await rig?.stop();
    await hsm?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  async function provision(deviceId: string, keystore: KeyStoreConfig): Promise<string> {
    const store = await openKeyStore(keystore);
    try {
      const issued = await rig.fleet.device(deviceId, { signer: await store.createSigningKey('device-identity') });
      const certFile = join(dir, `${deviceId}.pem`);
      writeFileSync(certFile, issued.certChainPem);
      return certFile;
    } finally {
      await store.close();
    }
  }

  function config(deviceId: string, transport: Record<string, unknown>): AgentConfig {
    return parseAgentConfig({
      device: { id: deviceId },
      sealing: { alg: 'aes-ccm-16-64-128', ingestPublicKeyFile: files.ingestPub, epochMessages: 50, epochSeconds: 60 },
      sources: [{ type: 'simulated', id: 'patient', seed: 5, ecgHz: 250 }],
      batch: { windowMs: 200 },
      queue: { dir: join(dir, `queue-${deviceId}`) },
      transport: { primary: { kind: 'coaps', host: '127.0.0.1', port: rig.port, ...transport } },
      uplink: { backoffInitialMs: 50, backoffMaxMs: 400 },
      metrics: { listen: false },
      status: { socket: join(dir, `${deviceId}.sock`) },
    }, { baseDir: dir });
  }

  async function runUntilDelivered(deviceId: string, cfg: AgentConfig, n: number): Promise<void> {
    const agent = await createAgent({ config: cfg, log: silentLogger() });
    await agent.start();
    try {
      await until(() => rig.received.filter((r) => r.deviceId === deviceId).length >= n, `${n} messages from ${deviceId}`);
      await until(() => agent.status().lastAck !== null, 'an acknowledgement');
      const s = agent.status();
      assert.equal(s.transport.kind, 'coaps');
      assert.equal(s.transport.protocol, 'DTLSv1.3');
    } finally {
      await agent.stop();
    }
  }

  it('software key store: a certificate session; every message opened and bound to the peer', async () => {
    const keystore: KeyStoreConfig = { kind: 'software', path: join(dir, 'soft.vsks'), passphrase: { file: files.pass } };
    const certFile = await provision('bed-c1', keystore);
    // The ECG strip makes each message larger than one datagram: it goes block-wise.
    await runUntilDelivered('bed-c1', config('bed-c1', { serverName: '127.0.0.1', caFile: files.ca, certFile, identity: { keystore, keyLabel: 'device-identity' } }), 3);
    const got = rig.received.filter((r) => r.deviceId === 'bed-c1');
    assert.ok(got.every((r) => r.peer.kind === 'certificate'));
  });

  it('PKCS#11 token (SoftHSM2): CertificateVerify is signed in the token', async () => {
    const token = await hsm.addToken('agent-coaps');
    const keystore: KeyStoreConfig = { kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } };
    const certFile = await provision('bed-c2', keystore);
    await runUntilDelivered('bed-c2', config('bed-c2', { serverName: '127.0.0.1', caFile: files.ca, certFile, identity: { keystore, keyLabel: 'device-identity' } }), 2);
  });

  it('external PSK from a 0600 file: a PSK session', async () => {
    const key = rig.addPsk('oxi-3');
    const keyFile = join(dir, 'oxi-3.psk');
    writeFileSync(keyFile, `${toHex(key)}\n`, { mode: 0o600 });
    await runUntilDelivered('oxi-3', config('oxi-3', { psk: { keyFile } }), 2);
    assert.ok(rig.received.filter((r) => r.deviceId === 'oxi-3').every((r) => r.peer.kind === 'psk'));
  });

  it('refusals name the field and never quote a key', async () => {
    const keyFile = join(dir, 'loose.psk');
    writeFileSync(keyFile, `${'ab'.repeat(32)}\n`, { mode: 0o644 });
    chmodSync(keyFile, 0o644);
    const refusal = (transport: Record<string, unknown>, check: (e: unknown) => boolean) =>
      assert.rejects(createAgent({ config: config('bed-x', transport), log: silentLogger() }), check);
    await refusal({ psk: { keyFile } }, (e) => e instanceof ConfigError && /transport\.primary\.psk\.keyFile/.test(e.message) && !e.message.includes('abab'));
    const short = join(dir, 'short.psk');
    writeFileSync(short, 'cafe\n', { mode: 0o600 });
    await refusal({ psk: { keyFile: short } }, (e) => e instanceof ConfigError && /64 hex digits/.test(e.message) && !e.message.includes('cafe'));
    await refusal({ caFile: files.ca }, (e) => e instanceof ConfigError && /transport\.primary\.identity: is required for coaps/.test(e.message));
    assert.throws(() => config('bed-x', { psk: { keyFile: short }, certFile: files.ca }), (e) => e instanceof ConfigError && /a PSK replaces the certificate/.test(e.message));
    assert.throws(() => parseAgentConfig({ ...JSON.parse('{}'), device: { id: 'x' }, sealing: { ingestPublicKeyFile: files.ingestPub }, sources: [{ type: 'simulated' }], queue: { dir },
      transport: { primary: { kind: 'mqtts', host: '127.0.0.1', psk: { keyFile: short } } } }, { baseDir: dir }), (e) => e instanceof ConfigError && /psk: applies to coaps only/.test(e.message));
  });
});
