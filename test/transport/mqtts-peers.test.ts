/**
 * Independent peers against our broker set-up and our code:
 *   openssl s_client -tls1_3 with a device certificate gets in (CONNACK); without one it is refused
 *   openssl s_client with the device key in the TPM (tpm2 provider, our TSS2 key PEM) gets in
 *   mosquitto_pub with a device certificate publishes a sealed message the ingest subscriber
 *     opens; without the COSE content type the ingest refuses it (PUBACK 0x99, counted)
 *   mosquitto_sub on the ingest's identity receives what our uplink sent, with its content type
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type IngestInstance, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import type { IssuedIdentity } from '../../scripts/lib/test-fleet.ts';
import { openTpmKeyStore, type TpmKeyStore } from '../../src/keystore/tpm/index.ts';
import { findTpm2Provider, tpm2OpensslConfig } from '../../src/transport/mqtts/tpm2-provider.ts';

/** MQTT v5 CONNECT (clean start, keep-alive 60, client id `id`), then DISCONNECT so the broker hangs up. */
function connectPacket(id: string): Buffer {
  const cid = Buffer.from(id);
  const body = Buffer.concat([Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, cid.length]), cid]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body, Buffer.from([0xe0, 0x00])]);
}

/** CONNACK for MQTT v5 with reason 0 (success): 0x20, length, flags, 0x00. */
function hasConnackSuccess(out: Buffer): boolean {
  for (let i = 0; i + 3 < out.length; i++) if (out[i] === 0x20 && out[i + 2] === 0x00 && out[i + 3] === 0x00) return true;
  return false;
}

describe('independent peers', () => {
  let rig: MqttRig;
  let dir: string;
  let ingest: IngestInstance;
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode: 0o600 });
    return p;
  };

  before(async () => {
    rig = await startMqttRig({ devices: ['bed-1', 'tpm-1'] });
    dir = mkdtempSync(join(tmpdir(), 'vitalseal-mqtt-peers-'));
    const bed1 = rig.devices.get('bed-1') as IssuedIdentity;
    file('root.pem', rig.fleet.rootPem);
    file('bed-1.pem', bed1.certChainPem);
    file('bed-1.key', bed1.keyPem as string);
    file('ingest.pem', rig.ingestIdentity.certChainPem);
    file('ingest.key', rig.ingestIdentity.keyPem as string);
    // Session expiry 0: when it closes (last test) it leaves the share to mosquitto_sub.
    ingest = await rig.startIngest('ingest-peers', { options: { sessionExpirySeconds: 0 } });
  });

  after(async () => {
    await rig?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const sClient = (extra: string[], env: NodeJS.ProcessEnv = process.env) => spawnSync('openssl', [
    's_client', '-tls1_3', '-connect', `127.0.0.1:${rig.broker.port}`, '-servername', 'localhost',
    '-CAfile', join(dir, 'root.pem'), '-verify_return_error', '-ign_eof', ...extra,
  ], { input: connectPacket('s-client'), timeout: 15_000, env, maxBuffer: 1 << 20 });

  it('openssl s_client -tls1_3 with a device certificate: TLSv1.3, X25519, verified broker, CONNACK success', () => {
    const r = sClient(['-cert', join(dir, 'bed-1.pem'), '-key', join(dir, 'bed-1.key')]);
    const text = r.stdout.toString('latin1');
    assert.match(text, /Protocol\s*:\s*TLSv1\.3/);
    assert.match(text, /Server Temp Key: X25519/);
    assert.match(text, /Verify return code: 0 \(ok\)/);
    assert.ok(hasConnackSuccess(r.stdout), `no CONNACK in s_client output:\n${text.slice(-2000)}`);
  });

  it('openssl s_client -tls1_3 without a certificate: the broker refuses (certificate required), no CONNACK', () => {
    const r = sClient([]);
    assert.ok(!hasConnackSuccess(r.stdout));
    assert.match(`${r.stdout.toString('latin1')}${r.stderr.toString('latin1')}`, /alert certificate required|certificate required/i);
  });

  it('mosquitto_pub with a device certificate: a sealed message the ingest subscriber opens', async () => {
    const before = ingest.received.length;
    const sealed = rig.seal('bed-1', 501);
    const payload = join(dir, 'sealed.cose');
    writeFileSync(payload, sealed.payload);
    const r = spawnSync('mosquitto_pub', [
      '-h', '127.0.0.1', '-p', String(rig.broker.port), '-V', 'mqttv5', '--cafile', join(dir, 'root.pem'),
      '--cert', join(dir, 'bed-1.pem'), '--key', join(dir, 'bed-1.key'), '--tls-version', 'tlsv1.3',
      '-t', 'vitals/bed-1/v1', '-q', '1', '-f', payload, '-D', 'publish', 'content-type', 'application/cose; cose-type="cose-encrypt"',
    ], { encoding: 'utf8', timeout: 15_000 });
    assert.equal(r.status, 0, r.stderr);
    await ingest.waitFor(before + 1);
    const got = ingest.received[before];
    assert.equal(got?.deviceId, 'bed-1');
    assert.equal(got?.seq, 501, 'opened with the ingest key');
    assert.deepEqual(Buffer.from(got.payload), Buffer.from(sealed.payload));
  });

  it('mosquitto_pub without the COSE content type: the ingest refuses it (counted), the broker forgets it', async () => {
    const refusedBefore = ingest.subscriber.counters().refused;
    const refusals: string[] = [];
    ingest.subscriber.on('refused', (r) => refusals.push(r.reason));
    const payload = join(dir, 'sealed2.cose');
    writeFileSync(payload, rig.seal('bed-1', 502).payload);
    const r = spawnSync('mosquitto_pub', [
      '-h', '127.0.0.1', '-p', String(rig.broker.port), '-V', 'mqttv5', '--cafile', join(dir, 'root.pem'),
      '--cert', join(dir, 'bed-1.pem'), '--key', join(dir, 'bed-1.key'), '-t', 'vitals/bed-1/v1', '-q', '1', '-f', payload,
    ], { encoding: 'utf8', timeout: 15_000 });
    assert.equal(r.status, 0, r.stderr);
    for (let i = 0; i < 200 && ingest.subscriber.counters().refused === refusedBefore; i++) await new Promise((res) => setTimeout(res, 10));
    assert.equal(ingest.subscriber.counters().refused, refusedBefore + 1);
    assert.match(refusals[0] ?? '', /content type/);
    assert.equal(ingest.subscriber.counters().inFlight, 0, 'acknowledged (refused), not left hanging');
  });

  it('mosquitto_sub on the ingest identity receives what our uplink sent, with its content type', async () => {
    await ingest.subscriber.close();
    const sub = spawn('mosquitto_sub', [
      '-h', '127.0.0.1', '-p', String(rig.broker.port), '-V', 'mqttv5', '--cafile', join(dir, 'root.pem'),
      '--cert', join(dir, 'ingest.pem'), '--key', join(dir, 'ingest.key'), '-t', '$share/vitalseal/vitals/+/v1', '-q', '1',
      '-i', 'mosquitto-sub-peer', '-C', '1', '-W', '15', '-F', '%t|%C|%l',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    sub.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<number | null>((res) => sub.once('exit', (c) => res(c)));
    const u = rig.uplink('bed-1');
    await u.connect();
    const m = rig.seal('bed-1', 503);
    // Until mosquitto_sub has subscribed the broker answers 0x10 (no subscribers): retry, as the agent would.
    for (let i = 0; i < 100; i++) {
      const sent = await u.send(m).then(() => true, () => false);
      if (sent) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    assert.equal(await exited, 0);
    assert.equal(out.trim(), `vitals/bed-1/v1|application/cose; cose-type="cose-encrypt"|${m.payload.length}`);
    await u.close();
  });
});

describe('independent peer with the TPM key', () => {
  let rig: MqttRig;
  let tpm: Swtpm;
  let store: TpmKeyStore;
  let dir: string;

  before(async () => {
    rig = await startMqttRig({ devices: ['tpm-1'] });
    tpm = await startSwtpm({ resourceManager: true });
    Object.assign(process.env, tpm.env);
    dir = mkdtempSync(join(tmpdir(), 'vitalseal-mqtt-peers-tpm-'));
    store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir: join(dir, 'tpm') });
  });

  after(async () => {
    await store?.close();
    await tpm?.stop();
    await rig?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('openssl s_client with our TSS2 key PEM (tpm2 provider) and the certificate issued to the FAPI key gets a CONNACK', async () => {
    const signer = await store.createSigningKey('device-identity');
    const id = await rig.fleet.device('tpm-1', { signer });
    const key = await store.loadableKey('device-identity');
    writeFileSync(join(dir, 'root.pem'), rig.fleet.rootPem);
    writeFileSync(join(dir, 'tpm-1.pem'), id.certChainPem);
    writeFileSync(join(dir, 'tpm-1.tss2.pem'), key.pem);
    writeFileSync(join(dir, 'openssl.cnf'), tpm2OpensslConfig(findTpm2Provider()));
    const r = spawnSync('openssl', [
      's_client', '-tls1_3', '-connect', `127.0.0.1:${rig.broker.port}`, '-servername', 'localhost', '-CAfile', join(dir, 'root.pem'),
      '-verify_return_error', '-ign_eof', '-cert', join(dir, 'tpm-1.pem'), '-key', join(dir, 'tpm-1.tss2.pem'),
    ], { input: connectPacket('tpm-1'), timeout: 20_000, env: { ...process.env, ...tpm.env, OPENSSL_CONF: join(dir, 'openssl.cnf'), TPM2OPENSSL_TCTI: key.tcti, TSS2_LOG: 'all+NONE' } });
    const text = r.stdout.toString('latin1');
    assert.match(text, /Protocol\s*:\s*TLSv1\.3/, r.stderr.toString());
    assert.ok(hasConnackSuccess(r.stdout), `no CONNACK:\n${text.slice(-1500)}\n${r.stderr.toString().slice(-1500)}`);
    assert.ok(await rig.broker.waitForLog(/as tpm-1 .*u'tpm-1'/));
  });
});
