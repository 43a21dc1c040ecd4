/**
 * MQTTS with the device key in the TPM (swtpm behind tpm2-abrmd): TLS runs in a child process
 * whose OpenSSL signs with the `tpm2` provider. The same Uplink contract as the software key, plus:
 * the key the broker authenticated is the TPM store's identity key, and a key blob from another
 * TPM does not load.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type IngestInstance, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { spkiSha256 } from '../../src/pki/certificate.ts';
import { tpmTls } from '../../src/transport/mqtts/tpm-tunnel.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { until, uplinkContract } from './contract.ts';
import { stopTpmIdentity, tpmIdentity, type TpmIdentity } from './support/tpm-identity.ts';

const DEVICE = 'tpm-bed-1';

let contractTpm: TpmIdentity | undefined;
uplinkContract('MQTTS, device key in the TPM (TLS in a child process)', async () => {
  const rig = await startMqttRig({ devices: [DEVICE] });
  contractTpm = await tpmIdentity(rig, DEVICE);
  const t = contractTpm;
  const key = await t.store.loadableKey('device-identity');
  const ingest: IngestInstance = await rig.startIngest('ingest-tpm-contract');
  return {
    deviceId: DEVICE,
    protocol: 'TLSv1.3',
    kind: 'mqtts',
    uplink: () => createMqttsUplink({
      deviceId: DEVICE, host: rig.broker.host, port: rig.broker.port, serverName: 'localhost',
      tls: tpmTls({ certChainPem: t.identity.certChainPem, key, trust: rig.trust, env: t.tpm.env }),
    }),
    message: (seq) => rig.seal(DEVICE, seq),
    received: () => ingest.received.map((r) => r.payload),
    waitForReceived: (n) => ingest.waitFor(n),
    stopPeer: () => rig.broker.down(),
    async startPeer() {
      const before = ingest.subscriber.counters().connects;
      await rig.broker.up();
      await until(() => ingest.subscriber.counters().connects > before);
    },
    async freezePeer() {
      const thaw = rig.broker.freeze();
      return async () => thaw();
    },
    async teardown() {
      await rig.stop();
      await stopTpmIdentity(contractTpm);
    },
  };
});

describe('MQTTS with a TPM key: what the broker authenticated, and what does not load', () => {
  let rig: MqttRig;
  let a: TpmIdentity;
  let b: TpmIdentity;
  /** The one ingest instance of these cases: a second would take part of the shared stream. */
  let ingest: IngestInstance;

  before(async () => {
    rig = await startMqttRig({ devices: ['tpm-a', 'tpm-b'] });
    a = await tpmIdentity(rig, 'tpm-a');
  });

  after(async () => {
    await rig?.stop();
    await stopTpmIdentity(a);
    await stopTpmIdentity(b);
  });

  it('the certificate the broker accepted carries the TPM key: its SPKI is the store\'s identity key', async () => {
    const spki = Buffer.from((await a.store.publicKeyPem('device-identity')).replace(/-----[^-]+-----|\s/g, ''), 'base64');
    assert.deepEqual(Buffer.from(spkiSha256(a.identity.cert.spki.der)), Buffer.from(spkiSha256(new Uint8Array(spki))));
    ingest = await rig.startIngest('ingest-tpm-a');
    const u = createMqttsUplink({
      deviceId: 'tpm-a', host: rig.broker.host, port: rig.broker.port,
      tls: tpmTls({ certChainPem: a.identity.certChainPem, key: await a.store.loadableKey('device-identity'), trust: rig.trust, env: a.tpm.env }),
    });
    await u.connect();
    await u.send(rig.seal('tpm-a', 7));
    await ingest.waitFor(1);
    assert.equal(ingest.received[0]?.deviceId, 'tpm-a');
    assert.ok(await rig.broker.waitForLog(/New client connected .* as tpm-a .*u'tpm-a'/), 'the broker names the certificate CN as the user');
    await u.close();
  });

  it('a key blob from another TPM does not load: typed KeyStoreError, no connection', async () => {
    b = await tpmIdentity(rig, 'tpm-b', { direct: true });
    const foreign = await b.store.loadableKey('device-identity');
    // TPM b's blob, presented to TPM a (same SRK handle, a different SRK): TPM2_Load refuses it.
    const u = createMqttsUplink({
      deviceId: 'tpm-b', host: rig.broker.host, port: rig.broker.port,
      tls: tpmTls({ certChainPem: b.identity.certChainPem, key: { ...foreign, tcti: a.tpm.tcti }, trust: rig.trust, env: a.tpm.env }),
    });
    await assert.rejects(u.connect(), (e: unknown) => e instanceof KeyStoreError && e.code === 'tpm-tls-unavailable');
    await u.close();
  });

  it('a certificate that does not match the TPM key is refused before anything is sent', async () => {
    // tpm-b's certificate with tpm-a's key: OpenSSL refuses the pair when the context is built.
    const u = createMqttsUplink({
      deviceId: 'tpm-b', host: rig.broker.host, port: rig.broker.port,
      tls: tpmTls({ certChainPem: b.identity.certChainPem, key: await a.store.loadableKey('device-identity'), trust: rig.trust, env: a.tpm.env }),
    });
    await assert.rejects(u.connect(), (e: unknown) => e instanceof KeyStoreError && e.code === 'tpm-tls-unavailable' && /key values mismatch/i.test(e.message));
    await u.close();
  });

  it('the TPM (and its resource manager) goes away and comes back: the TLS process is replaced and the device connects again', async () => {
    const u = createMqttsUplink({
      deviceId: 'tpm-a', host: rig.broker.host, port: rig.broker.port,
      tls: tpmTls({ certChainPem: a.identity.certChainPem, key: await a.store.loadableKey('device-identity'), trust: rig.trust, env: a.tpm.env }),
    });
    await u.connect();
    await u.send(rig.seal('tpm-a', 21));
    await u.disconnect?.();
    await a.tpm.down();
    await a.tpm.up();
    // The child's TPM context died with the resource manager: the first handshake may fail on it,
    // typed, and retires that child; the next connection runs in a new one.
    await u.connect().catch((e: unknown) => {
      assert.ok(e instanceof KeyStoreError && e.code === 'tpm-tls-unavailable' && /the TPM could not sign the TLS handshake/.test(e.message), String(e));
    });
    if (u.session === undefined) await u.connect();
    await u.send(rig.seal('tpm-a', 22));
    await until(() => ingest.received.some((r) => r.deviceId === 'tpm-a' && r.seq === 22));
    assert.deepEqual(ingest.received.filter((r) => r.deviceId === 'tpm-a' && r.seq > 20).map((r) => r.seq).sort((x, y) => x - y), [21, 22]);
    await u.close();
  });
});
