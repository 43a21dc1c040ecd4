/**
 * The ingest's MQTT listener against the real thing: mosquitto (TLS 1.3, client certificates, the
 * fleet CRL, dynsec rules), device uplinks with their own certificates, the ingest runtime on
 * SQLite with its software key store. Every case goes through `startIngest(cfg, { listeners: {
 * mqtt: mqttListener } })`, as `vitalseal ingest run` does.
 *
 *   stored        sealed messages from a device reach the database once, with the broker peer
 *   refused       a tampered, a foreign and a COSE_Encrypt0 message are refused and acknowledged
 *                 (never redelivered); a message without a COSE content type never reaches accept()
 *   unavailable   while the database refuses writes, nothing is acknowledged; the broker delivers
 *                 the message again and it is stored once the database is back
 *   revocation    revoking a device in the registry writes the CRL, the listener copies it to the
 *                 broker and signals it, and the broker refuses the device's next connection
 *   broker away   the listener reconnects with back-off; an ingest started while the broker is down
 *                 keeps trying and subscribes once it is up
 *   own TLS       the listener's certificate refused by the broker / the broker's name wrong: the
 *                 start fails, typed, and the handshake failure is counted with its alert
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { connect as mqttConnect } from 'mqtt';
import { startMqttIngestSite, type MqttIngestSite } from '../../scripts/lib/mqtt-ingest-site.ts';
import { encodeVitalsPack } from '../../src/codec/vitals.ts';
import { Header } from '../../src/cose/headers.ts';
import { SealingSession } from '../../src/cose/sealing-session.ts';
import { loadIngestConfig } from '../../src/ingest/config.ts';
import { openCoreFromConfig, startIngest, type RunningIngest } from '../../src/ingest/runtime.ts';
import { mqttListener } from '../../src/ingest/listeners/index.ts';
import { startMqttListener } from '../../src/ingest/listeners/mqtt.ts';
import { cryptoSelfTest } from '../../src/ingest/selftest.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa } from '../../src/pki/dev-ca.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import type { Uplink, UplinkMessage } from '../../src/transport/types.ts';
import { systemClock } from '../../src/util/clock.ts';
import { CertificateError, TransportError, UplinkRejected } from '../../src/util/errors.ts';
import { batchFor } from './support/harness.ts';

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => Promise<boolean> | boolean, ms = 20_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what}: not met within ${ms} ms`);
    await delay(20);
  }
}

/** Sends like the agent: a transport failure keeps the message and reconnects after 100 ms. */
async function sendSurely(uplink: Uplink, m: UplinkMessage): Promise<void> {
  for (;;) {
    try {
      await uplink.send(m);
      return;
    } catch (e) {
      if (!(e instanceof TransportError)) throw e;
      await delay(100);
      await uplink.connect().catch(() => undefined);
    }
  }
}

// One client id for every instance in this file: a session left by one case stays a member of the
// share (mosquitto keeps assigning it messages), so every case resumes the same one.
const CLIENT_ID = 'ingest-listener-test';
const DEVICES = ['bed-ok', 'bed-ref', 'bed-busy', 'bed-rev', 'bed-away', 'bed-late'];

describe('ingest MQTT listener (mosquitto, device uplinks, SQLite)', () => {
  let site: MqttIngestSite;
  let cfgPath: string;
  let dbPath: string;
  let staticKey: Uint8Array;
  const sessions = new Map<string, SealingSession>();
  const seal = (deviceId: string, seq: number, sealedFor = deviceId): UplinkMessage => {
    let s = sessions.get(deviceId);
    if (s === undefined) {
      s = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: staticKey, clock: systemClock });
      sessions.set(deviceId, s);
    }
    const payload = s.seal(encodeVitalsPack(batchFor(sealedFor, seq, Date.now())), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, sealedFor], [Header.SEQUENCE, seq]]) });
    return { deviceId, seq, payload, contentFormat: 'cose-encrypt' };
  };
  const start = () => startIngest(loadIngestConfig(cfgPath), { env: site.env, selfTest: cryptoSelfTest(), log: quiet, listeners: { mqtt: mqttListener } });
  const stored = async (running: RunningIngest, deviceId: string) => (await running.core.storage.readMessages(deviceId, 0, Number.MAX_SAFE_INTEGER)).map((m) => m.seq);

  before(async () => {
    site = await startMqttIngestSite({ devices: DEVICES });
    dbPath = join(site.dir, 'ingest.db');
    cfgPath = site.config(CLIENT_ID, { sqlite: dbPath }, { crlReload: site.brokerCrlReload, receiveMaximum: 32 });
    staticKey = await site.prepare(cfgPath);
  });
  after(async () => {
    await site?.stop();
  });

  it('stores what a device sends through the broker, once, as a broker-authenticated peer', async () => {
    const running = await start();
    try {
      assert.equal(running.core.metrics.mqttSubscribed.get(), 1);
      const uplink = site.uplink('bed-ok');
      await uplink.connect();
      await Promise.all(Array.from({ length: 60 }, (_, i) => sendSurely(uplink, seal('bed-ok', i + 1))));
      // The device sends seq 7 again (its PUBACK was lost, say): acknowledged, stored once.
      await sendSurely(uplink, seal('bed-ok', 7));
      await waitFor(async () => running.core.metrics.duplicates.get() >= 1 && (await stored(running, 'bed-ok')).length === 60, 20_000, 'all 60 stored');
      assert.deepEqual(await stored(running, 'bed-ok'), Array.from({ length: 60 }, (_, i) => i + 1));
      const m = running.core.metrics;
      assert.equal(m.accepted.get({ transport: 'mqtts' }), 60);
      assert.equal(m.received.get({ transport: 'mqtts' }), 61);
      const d = await running.core.registry.reload('bed-ok');
      assert.equal(d?.transport, 'mqtts');
      assert.match(d?.suite ?? '', /^TLSv1\.3 via broker \/ /);
      await uplink.close();
    } finally {
      await running.stop();
    }
  });

  it('acknowledges refusals without redelivery; a message without a COSE content type never reaches the ingest path', async () => {
    const running = await start();
    try {
      const m = running.core.metrics;
      const uplink = site.uplink('bed-ref');
      await uplink.connect();
      const tampered = seal('bed-ref', 1);
      const bytes = new Uint8Array(tampered.payload);
      bytes[bytes.length - 3] = (bytes[bytes.length - 3] as number) ^ 0x01;
      await sendSurely(uplink, { ...tampered, payload: bytes });
      // Sealed naming another device, sent on this device's own topic.
      await sendSurely(uplink, seal('bed-ref', 2, 'bed-ok'));
      await sendSurely(uplink, seal('bed-ref', 3));
      await waitFor(() => m.rejected.get({ reason: 'decrypt-failed' }) === 1 && m.rejected.get({ reason: 'identity-mismatch' }) === 1 && m.accepted.get({ transport: 'mqtts' }) === 1, 10_000, 'refusals counted');

      // A client with the device's certificate that sets no content type (mqtt.js directly).
      const dev = site.devices.get('bed-ref');
      assert.ok(dev !== undefined);
      const raw = mqttConnect({
        protocol: 'mqtts', host: site.broker.host, port: site.broker.port, protocolVersion: 5, clientId: 'bed-ref-raw', reconnectPeriod: 0,
        key: dev.keyPem, cert: dev.certChainPem, ca: site.rootPem, servername: 'localhost', rejectUnauthorized: true,
      });
      await new Promise<void>((resolve, reject) => {
        raw.once('connect', () => resolve());
        raw.once('error', reject);
      });
      await raw.publishAsync('vitals/bed-ref/v1', Buffer.from(seal('bed-ref', 4).payload), { qos: 1 });
      await raw.endAsync();
      await waitFor(() => m.rejected.get({ reason: 'unsupported-format' }) === 1, 10_000, 'content type refusal counted');
      // Given time, nothing comes back: each refusal was acknowledged once.
      await delay(800);
      assert.equal(m.received.get({ transport: 'mqtts' }), 3, 'the content-type refusal never reached accept(); nothing was redelivered');
      assert.equal(m.rejected.get({ reason: 'decrypt-failed' }), 1);
      assert.equal(m.rejected.get({ reason: 'identity-mismatch' }), 1);
      assert.deepEqual(await stored(running, 'bed-ref'), [3]);
      await uplink.close();
    } finally {
      await running.stop();
    }
  });

  it('leaves a message unacknowledged while the database refuses writes; the broker delivers it again and it is stored once', async () => {
    const running = await start();
    const db = new Database(dbPath);
    try {
      const m = running.core.metrics;
      const uplink = site.uplink('bed-busy');
      await uplink.connect();
      await sendSurely(uplink, seal('bed-busy', 1));
      await waitFor(async () => (await stored(running, 'bed-busy')).length === 1, 10_000, 'first stored');
      const disconnectsBefore = m.mqttDisconnects.get();
      // The database refuses every new message (a real refusal by SQLite, not a stub).
      db.exec("CREATE TRIGGER refuse_messages BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'refused for the test'); END");
      await sendSurely(uplink, seal('bed-busy', 2));
      await sendSurely(uplink, seal('bed-busy', 3));
      await waitFor(() => m.unavailable.total() >= 2, 10_000, 'unavailable counted');
      assert.deepEqual(await stored(running, 'bed-busy'), [1]);
      db.exec('DROP TRIGGER refuse_messages');
      await waitFor(async () => (await stored(running, 'bed-busy')).length === 3, 20_000, 'redelivered and stored');
      assert.deepEqual(await stored(running, 'bed-busy'), [1, 2, 3]);
      assert.ok(m.mqttDisconnects.get() > disconnectsBefore, 'the listener dropped the connection to have the broker redeliver');
      assert.equal(m.rejected.total(), 0, 'a transient failure is never a refusal');
      assert.ok(m.unavailable.total() >= 2);
      await uplink.close();
    } finally {
      db.close();
      await running.stop();
    }
  });

  it('revoking a device in the registry has the broker refuse its next connection (CRL copied, broker signalled)', async () => {
    const running = await start();
    try {
      const uplink = site.uplink('bed-rev');
      await uplink.connect();
      await sendSurely(uplink, seal('bed-rev', 1));
      await waitFor(async () => (await stored(running, 'bed-rev')).length === 1, 10_000, 'stored before revocation');
      const r = await running.core.registry.setStatus('bed-rev', 'revoked', 'test', 'stolen');
      assert.ok(r.crlNumber !== undefined && r.crlNumber >= 2);
      await waitFor(() => running.core.metrics.brokerCrlReloads.get({ result: 'ok' }) === 1, 10_000, 'broker reload');
      assert.ok(await site.broker.waitForLog(/Reloading config/, 5000), 'mosquitto re-read its configuration');
      // The open connection stays (mosquitto keeps authenticated connections); the ingest refuses
      // what comes on it, and acknowledges that refusal.
      await sendSurely(uplink, seal('bed-rev', 2));
      await waitFor(() => running.core.metrics.rejected.get({ reason: 'device-revoked' }) === 1, 10_000, 'refused as revoked');
      await uplink.close();
      const again = site.uplink('bed-rev');
      await assert.rejects(again.connect(), (e: unknown) => e instanceof UplinkRejected && e.code === 'unauthorized' && /certificate_revoked/.test(e.message));
      // Another device is unaffected.
      const other = site.uplink('bed-ok');
      await other.connect();
      await other.close();
      assert.deepEqual(await stored(running, 'bed-rev'), [1]);
    } finally {
      await running.stop();
    }
  });

  it('reconnects after the broker restarts; started while the broker is down, it keeps trying and subscribes once it is up', async () => {
    let running = await start();
    try {
      const uplink = site.uplink('bed-away');
      await uplink.connect();
      for (let seq = 1; seq <= 20; seq++) await sendSurely(uplink, seal('bed-away', seq));
      await site.broker.restart();
      for (let seq = 21; seq <= 40; seq++) await sendSurely(uplink, seal('bed-away', seq));
      await waitFor(async () => (await stored(running, 'bed-away')).length === 40, 30_000, 'all 40 stored across the restart');
      assert.ok(running.core.metrics.mqttDisconnects.get() >= 1);
      assert.equal(running.core.metrics.mqttSubscribed.get(), 1);
      await uplink.close();
      await running.stop();

      await site.broker.down();
      running = await start();
      assert.equal(running.core.metrics.mqttSubscribed.get(), 0, 'started without the broker');
      await site.broker.up();
      await waitFor(() => running.core.metrics.mqttSubscribed.get() === 1, 40_000, 'subscribed once the broker is up');
      const late = site.uplink('bed-late');
      await late.connect();
      await sendSurely(late, seal('bed-late', 1));
      await waitFor(async () => (await stored(running, 'bed-late')).length === 1, 10_000, 'stored');
      await late.close();
    } finally {
      await running.stop();
    }
  });

  it("the listener's own TLS failures stop the start, typed, and are counted with their alert", async () => {
    // A client certificate from another CA: the broker refuses it (unknown_ca).
    const other = await initDevCa({ dir: join(site.dir, 'other-ca'), organization: 'Other Fleet', now: Date.now() - 60_000 });
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const cert = await other.issueService(await createCsr({ signer: keyObjectSigner(key), subject: { commonName: 'ingest.vitalseal.test' } }), { dnsNames: ['ingest.vitalseal.test'], clientAuth: true }, Date.now());
    writeFileSync(join(site.dir, 'other.pem'), pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', other.issuing.der));
    writeFileSync(join(site.dir, 'other.key'), key.export({ format: 'pem', type: 'pkcs8' }).toString(), { mode: 0o600 });
    const core = await openCoreFromConfig(loadIngestConfig(cfgPath), { env: site.env, selfTest: cryptoSelfTest(), log: quiet }, { cli: true });
    try {
      const base = loadIngestConfig(cfgPath).mqtt;
      assert.ok(base !== undefined);
      await assert.rejects(startMqttListener(core, { ...base, clientId: 'ingest-wrong-ca', certFile: join(site.dir, 'other.pem'), keyFile: join(site.dir, 'other.key') }, quiet),
        (e: unknown) => e instanceof UplinkRejected && /unknown_ca/.test(e.message));
      assert.equal(core.metrics.handshakeFailures.get({ transport: 'mqtts', alert: 'unknown_ca' }), 1);
      // The broker's certificate does not carry the configured name: our side refuses it.
      await assert.rejects(startMqttListener(core, { ...base, clientId: 'ingest-wrong-name', serverName: 'broker.elsewhere.test' }, quiet),
        (e: unknown) => e instanceof CertificateError && e.code === 'name-mismatch');
      assert.equal(core.metrics.handshakeFailures.get({ transport: 'mqtts', alert: 'bad_certificate' }), 1);
    } finally {
      await core.close();
    }
  });
});
