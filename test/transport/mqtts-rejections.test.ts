/**
 * Who does not get in, each case asserted against the real broker (and, for the device's own
 * checks, against TLS servers that are wrong in one way each):
 *
 *   broker refuses   no client certificate · a certificate from another CA · an expired one · a
 *                    revoked one (new CRL, SIGHUP) · a TLS 1.2 client · publishing under another
 *                    device's topic · a device the broker does not know · a device joining the
 *                    ingest's shared subscription
 *   device refuses   a broker certificate for another name · an SPKI pin that does not match ·
 *                    a broker certificate from another CA · a TLS 1.2-only server · a server
 *                    without X25519
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { connect as tlsConnect, createServer, type ConnectionOptions, type Server, type TLSSocket } from 'node:tls';
import { connectAsync, type MqttClient } from 'mqtt';
import { startMqttRig, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { createTestFleet, ONE_DAY_DEVICES, type IssuedIdentity, type TestFleet } from '../../scripts/lib/test-fleet.ts';
import { freePort } from '../../scripts/lib/ports.ts';
import { spkiSha256 } from '../../src/pki/certificate.ts';
import { inProcessTls } from '../../src/transport/mqtts/connector.ts';
import { mapConnectionError, trustFromPem } from '../../src/transport/mqtts/tls.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';
import { CertificateError, PeerIncompatible, TransportError, UplinkRejected } from '../../src/util/errors.ts';

const DAY = 86_400_000;

function refusedBecause(alert: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof UplinkRejected, `expected UplinkRejected, got ${String(e)}`);
    assert.equal(e.code, 'unauthorized');
    assert.match(e.message, alert);
    return true;
  };
}

/** A raw TLS connection that sends an MQTT v5 CONNECT; resolves with the error that ended it. */
function rawAttempt(opts: ConnectionOptions): Promise<{ error: unknown; secured: boolean; connack: boolean }> {
  return new Promise((resolve) => {
    let secured = false;
    let connack = false;
    let error: unknown;
    const s: TLSSocket = tlsConnect(opts, () => {
      secured = true;
      // CONNECT, MQTT v5, clean start, keep-alive 60, client id "raw".
      s.write(Buffer.from([0x10, 0x10, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x03, 0x72, 0x61, 0x77]));
    });
    s.on('data', (d: Buffer) => {
      if (d[0] === 0x20) connack = true;
    });
    s.on('error', (e) => {
      error = e;
    });
    s.on('close', () => resolve({ error, secured, connack }));
  });
}

describe('the broker refuses', () => {
  let rig: MqttRig;
  let other: TestFleet;

  before(async () => {
    rig = await startMqttRig({ devices: ['bed-1', 'bed-2', 'bed-3', 'bed-old', 'bed-r'], unregisteredDevices: ['bed-x'] });
    other = await createTestFleet('Impostor Fleet');
  });

  after(async () => {
    await rig?.stop();
  });

  const base = () => ({ host: rig.broker.host, port: rig.broker.port, ca: rig.fleet.rootPem, servername: 'localhost', minVersion: 'TLSv1.3' as const });

  it('a client without a certificate (TLS 1.3 certificate_required alert)', async () => {
    const r = await rawAttempt(base());
    assert.equal(r.connack, false, 'no MQTT session');
    const mapped = mapConnectionError(r.error, 'broker');
    assert.ok(mapped instanceof UplinkRejected && /certificate_required/.test(mapped.message), String(r.error));
    assert.ok(await rig.broker.waitForLog(/peer did not return a certificate/), rig.broker.log());
  });

  it('a device certificate from another CA (unknown_ca)', async () => {
    const impostor = await other.device('bed-1');
    const u = createMqttsUplink({ deviceId: 'bed-1', host: rig.broker.host, port: rig.broker.port, tls: inProcessTls({ certChainPem: impostor.certChainPem, privateKey: impostor.key as never, trust: rig.trust }) });
    await assert.rejects(u.connect(), refusedBecause(/unknown_ca/));
    await u.close();
  });

  it('an expired device certificate (certificate_expired)', async () => {
    // Issued 20 days ago for one day.
    const expired = await rig.fleet.device('bed-old', { now: Date.now() - 20 * DAY, policy: ONE_DAY_DEVICES });
    assert.ok(expired.cert.notAfter < Date.now());
    const u = createMqttsUplink({ deviceId: 'bed-old', host: rig.broker.host, port: rig.broker.port, tls: rig.tlsFor(expired) });
    await assert.rejects(u.connect(), refusedBecause(/certificate_expired/));
    await u.close();
  });

  it('a revoked certificate once the new CRL is loaded (SIGHUP); a connection made before stays up until the broker restarts', async () => {
    const id = rig.devices.get('bed-r') as IssuedIdentity;
    // Session expiry 0: once closed, this instance leaves the share (a persistent member would keep
    // receiving its share of later tests' messages into its session).
    const ingest = await rig.startIngest('ingest-revocation', { options: { sessionExpirySeconds: 0 } });
    const early = createMqttsUplink({ deviceId: 'bed-r', host: rig.broker.host, port: rig.broker.port, tls: rig.tlsFor(id) });
    await early.connect();
    await rig.broker.updateCrl(await rig.fleet.revoke(id.cert.serialHex));

    const late = createMqttsUplink({ deviceId: 'bed-r', host: rig.broker.host, port: rig.broker.port, tls: rig.tlsFor(id) });
    await assert.rejects(late.connect(), refusedBecause(/certificate_revoked/));
    await late.close();

    // What SIGHUP does not do in mosquitto 2.0.11: end sessions that are already authenticated.
    assert.equal((await early.send(rig.seal('bed-r', 1))).status, 'accepted');
    await ingest.waitFor(1);
    await rig.broker.restart();
    await assert.rejects(early.connect(), refusedBecause(/certificate_revoked/));
    await early.close();
    await ingest.subscriber.close();
  });

  it('a TLS 1.2 client (protocol_version)', async () => {
    const id = rig.devices.get('bed-1') as IssuedIdentity;
    const r = await rawAttempt({ ...base(), minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', cert: id.certChainPem, key: id.keyPem as string });
    assert.equal(r.secured, false);
    const mapped = mapConnectionError(r.error, 'broker');
    assert.ok(mapped instanceof PeerIncompatible && /protocol_version/.test(mapped.message), String(r.error));
  });

  describe('topic rules (dynamic-security plugin)', () => {
    const clients: MqttClient[] = [];
    const mqttClient = async (id: IssuedIdentity, clientId: string) => {
      const c = await connectAsync({
        protocol: 'mqtts', host: rig.broker.host, port: rig.broker.port, protocolVersion: 5, clientId, reconnectPeriod: 0,
        ca: rig.fleet.rootPem, cert: id.certChainPem, key: id.keyPem as string, servername: 'localhost',
      });
      clients.push(c);
      return c;
    };
    after(async () => {
      for (const c of clients) await c.endAsync(true).catch(() => undefined);
    });

    it('a device publishing under another device\'s topic: PUBACK 0x87, and the ingest receives nothing', async () => {
      const ingest = await rig.startIngest('ingest-topics');
      const bed2 = await mqttClient(rig.devices.get('bed-2') as IssuedIdentity, 'bed-2');
      const forged = rig.seal('bed-3', 1);
      await assert.rejects(
        bed2.publishAsync('vitals/bed-3/v1', Buffer.from(forged.payload), { qos: 1, properties: { contentType: 'application/cose; cose-type="cose-encrypt"' } }),
        (e: unknown) => (e as { code?: unknown }).code === 0x87,
      );
      // Its own topic works on the same connection, and that is all the ingest sees.
      await bed2.publishAsync('vitals/bed-2/v1', Buffer.from(rig.seal('bed-2', 1).payload), { qos: 1, properties: { contentType: 'application/cose; cose-type="cose-encrypt"' } });
      await ingest.waitFor(1);
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(ingest.received.map((m) => m.deviceId), ['bed-2']);
    });

    it('a device the broker does not know (valid certificate, no registration): PUBACK 0x87 on its own topic', async () => {
      const u = createMqttsUplink({ deviceId: 'bed-x', host: rig.broker.host, port: rig.broker.port, tls: rig.tlsFor(rig.devices.get('bed-x') as IssuedIdentity) });
      await u.connect();
      await assert.rejects(u.send(rig.seal('bed-x', 1)), (e: unknown) => e instanceof UplinkRejected && e.code === 'forbidden');
      await u.close();
    });

    it('a device joining the ingest\'s shared subscription: SUBACK 0x87 (so it cannot take a share of the stream)', async () => {
      const bed1 = await mqttClient(rig.devices.get('bed-1') as IssuedIdentity, 'bed-1-sub');
      // mqtt.js turns a refused subscription into an error carrying the SUBACK.
      await assert.rejects(bed1.subscribeAsync({ '$share/vitalseal/vitals/+/v1': { qos: 1 }, 'vitals/#': { qos: 1 } }), (e: unknown) => {
        assert.deepEqual((e as { packet?: { granted?: unknown } }).packet?.granted, [0x87, 0x87]);
        return true;
      });
    });
  });
});

describe('the device refuses', () => {
  let fleet: TestFleet;
  let device: IssuedIdentity;
  const servers: Server[] = [];

  /** A TLS server that accepts anything and answers a CONNECT with a CONNACK. */
  async function server(identity: IssuedIdentity, opts: { maxVersion?: 'TLSv1.2'; ecdhCurve?: string } = {}): Promise<number> {
    const port = await freePort();
    const srv = createServer({ cert: identity.certChainPem, key: identity.keyPem as string, minVersion: 'TLSv1.2', ...opts }, (s) => {
      s.on('error', () => undefined);
      s.once('data', () => s.write(Buffer.from([0x20, 0x03, 0x00, 0x00, 0x00])));
    });
    srv.on('tlsClientError', () => undefined);
    await new Promise<void>((r) => srv.listen(port, '127.0.0.1', () => r()));
    servers.push(srv);
    return port;
  }

  before(async () => {
    fleet = await createTestFleet('Device Check Fleet');
    device = await fleet.device('bed-9');
  });

  after(async () => {
    for (const s of servers) await new Promise((r) => s.close(() => r(undefined)));
  });

  const uplinkTo = (port: number, o: { serverName?: string; pins?: Uint8Array[] } = {}) => createMqttsUplink({
    deviceId: 'bed-9', host: '127.0.0.1', port, ...(o.serverName === undefined ? {} : { serverName: o.serverName }),
    tls: inProcessTls({ certChainPem: device.certChainPem, privateKey: device.key as never, trust: trustFromPem(fleet.rootPem, o.pins === undefined ? {} : { spkiPins: o.pins }) }),
    connectTimeoutMs: 5000,
  });

  it('accepts the right broker (the test server is good), by IP and by DNS name, with and without a matching pin', async () => {
    const brokerId = await fleet.service({ dnsNames: ['broker.ward7.test'], ipAddresses: ['127.0.0.1'] });
    const port = await server(brokerId);
    for (const u of [uplinkTo(port), uplinkTo(port, { serverName: 'broker.ward7.test' }), uplinkTo(port, { pins: [spkiSha256(brokerId.cert.spki.der)] }), uplinkTo(port, { pins: [spkiSha256(fleet.issuing.spki.der)] })]) {
      await u.connect();
      await u.close();
    }
  });

  it('a broker certificate for another name: CertificateError name-mismatch', async () => {
    const port = await server(await fleet.service({ dnsNames: ['broker.ward7.test'] }));
    const u = uplinkTo(port, { serverName: 'broker.ward8.test' });
    await assert.rejects(u.connect(), (e: unknown) => e instanceof CertificateError && e.code === 'name-mismatch');
    await u.close();
  });

  it('an SPKI pin that matches nothing on the path: CertificateError pin-mismatch', async () => {
    const port = await server(await fleet.service({ ipAddresses: ['127.0.0.1'] }));
    const stranger = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'der', type: 'spki' });
    const u = uplinkTo(port, { pins: [spkiSha256(new Uint8Array(stranger))] });
    await assert.rejects(u.connect(), (e: unknown) => e instanceof CertificateError && e.code === 'pin-mismatch');
    await u.close();
  });

  it('a broker certificate from another CA: CertificateError unknown-issuer', async () => {
    const impostor = await createTestFleet('Impostor Broker Fleet');
    const port = await server(await impostor.service({ ipAddresses: ['127.0.0.1'] }));
    const u = uplinkTo(port);
    await assert.rejects(u.connect(), (e: unknown) => e instanceof CertificateError && e.code === 'unknown-issuer');
    await u.close();
  });

  it('a TLS 1.2-only server: PeerIncompatible', async () => {
    const port = await server(await fleet.service({ ipAddresses: ['127.0.0.1'] }), { maxVersion: 'TLSv1.2' });
    const u = uplinkTo(port);
    await assert.rejects(u.connect(), (e: unknown) => e instanceof PeerIncompatible);
    await u.close();
  });

  it('a server without X25519 (P-256 only): PeerIncompatible', async () => {
    const port = await server(await fleet.service({ ipAddresses: ['127.0.0.1'] }), { ecdhCurve: 'P-256' });
    const u = uplinkTo(port);
    await assert.rejects(u.connect(), (e: unknown) => e instanceof PeerIncompatible);
    await u.close();
  });

  it('nothing listening: TransportError connection-refused', async () => {
    const u = uplinkTo(await freePort());
    await assert.rejects(u.connect(), (e: unknown) => e instanceof TransportError && e.code === 'connection-refused');
    await u.close();
  });
});
