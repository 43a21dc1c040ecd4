/**
 * MQTTS with the device key in the TPM (swtpm behind tpm2-abrmd), TLS run by `openssl s_client`
 * with the `tpm2` provider, the key read with tpm2-tools (no FAPI in this path). The same Uplink
 * contract as every transport, plus: the broker authenticated the TPM key, a key blob from another
 * TPM and a certificate for another key are refused (typed), a broker outside the pins is refused
 * before any MQTT byte, and a TPM that goes away and comes back is used again.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type IngestInstance, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { spkiSha256 } from '../../src/pki/certificate.ts';
import { readLoadableKeyWithTools } from '../../src/keystore/tpm/tools-key.ts';
import { opensslTpmTls } from '../../src/transport/mqtts/openssl-tpm-tls.ts';
import { trustFromPem } from '../../src/transport/mqtts/tls.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';
import { CertificateError, KeyStoreError } from '../../src/util/errors.ts';
import { until, uplinkContract } from './contract.ts';
import { mqttsContractFixture } from './support/mqtts-fixture.ts';
import { stopTpmIdentity, tpmIdentity, type TpmIdentity } from './support/tpm-identity.ts';

const DEVICE = 'tpm-ossl-1';

function config(t: TpmIdentity) {
  return { kind: 'tpm' as const, tcti: t.tpm.tcti, dir: t.dir };
}

let contractTpm: TpmIdentity | undefined;
uplinkContract('MQTTS, device key in the TPM (TLS in openssl s_client)', async () => {
  const rig = await startMqttRig({ devices: [DEVICE] });
  contractTpm = await tpmIdentity(rig, DEVICE);
  const t = contractTpm;
  const key = await readLoadableKeyWithTools(config(t), 'device-identity');
  const ingest = await rig.startIngest('ingest-tpm-ossl-contract');
  // The uplink closes its connector when it is closed: one each.
  const uplink = () => createMqttsUplink({
    deviceId: DEVICE, host: rig.broker.host, port: rig.broker.port, serverName: 'localhost',
    tls: opensslTpmTls({ certChainPem: t.identity.certChainPem, key, trust: rig.trust, env: t.tpm.env }),
  });
  return mqttsContractFixture(rig, ingest, DEVICE, uplink, async () => {
    await rig.stop();
    await stopTpmIdentity(contractTpm);
  });
});

describe('MQTTS with a TPM key through openssl s_client', () => {
  let rig: MqttRig;
  let a: TpmIdentity;
  let b: TpmIdentity | undefined;
  let ingest: IngestInstance;

  before(async () => {
    rig = await startMqttRig({ devices: ['ossl-a', 'ossl-b'] });
    a = await tpmIdentity(rig, 'ossl-a');
    ingest = await rig.startIngest('ingest-ossl-a');
  });

  after(async () => {
    await rig?.stop();
    await stopTpmIdentity(a);
    await stopTpmIdentity(b);
  });

  it('tpm2-tools reads the same loadable key and public key as the store', async () => {
    const viaTools = await readLoadableKeyWithTools(config(a), 'device-identity');
    const viaStore = await a.store.loadableKey('device-identity');
    assert.equal(viaTools.pem, viaStore.pem);
    assert.equal(viaTools.parent, viaStore.parent);
    assert.deepEqual(Buffer.from(viaTools.spki), Buffer.from(a.identity.cert.spki.der));
    await assert.rejects(readLoadableKeyWithTools(config(a), 'no-such-key'), (e: unknown) => e instanceof KeyStoreError && e.code === 'not-found');
  });

  it('the broker authenticated the TPM key; the session reports TLS 1.3, the suite and X25519', async () => {
    const key = await readLoadableKeyWithTools(config(a), 'device-identity');
    const tls = opensslTpmTls({ certChainPem: a.identity.certChainPem, key, trust: rig.trust, env: a.tpm.env });
    const u = createMqttsUplink({ deviceId: 'ossl-a', host: rig.broker.host, port: rig.broker.port, tls });
    await u.connect();
    const session = u.session;
    assert.ok(session !== undefined);
    assert.equal(session.protocol, 'TLSv1.3');
    assert.match(session.suite, /^TLS_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$/);
    assert.equal(session.group, 'x25519');
    await u.send(rig.seal('ossl-a', 7));
    await until(() => ingest.received.some((r) => r.deviceId === 'ossl-a' && r.seq === 7));
    assert.deepEqual(Buffer.from(spkiSha256(a.identity.cert.spki.der)), Buffer.from(spkiSha256(key.spki)));
    assert.ok(await rig.broker.waitForLog(/New client connected .* as ossl-a .*u'ossl-a'/), 'the broker names the certificate CN as the user');
    await u.close();
    await tls.close();
  });

  it('a broker key outside the SPKI pins is refused after OpenSSL accepted the chain, before any MQTT byte', async () => {
    const key = await readLoadableKeyWithTools(config(a), 'device-identity');
    const pinned = trustFromPem(rig.fleet.rootPem, { spkiPins: [new Uint8Array(32)] });
    const tls = opensslTpmTls({ certChainPem: a.identity.certChainPem, key, trust: pinned, env: a.tpm.env });
    const u = createMqttsUplink({ deviceId: 'ossl-a', host: rig.broker.host, port: rig.broker.port, tls });
    await assert.rejects(u.connect(), (e: unknown) => e instanceof CertificateError);
    await u.close();
    await tls.close();
  });

  it('a broker name the certificate does not carry is refused by OpenSSL, typed', async () => {
    const key = await readLoadableKeyWithTools(config(a), 'device-identity');
    const tls = opensslTpmTls({ certChainPem: a.identity.certChainPem, key, trust: rig.trust, env: a.tpm.env });
    const u = createMqttsUplink({ deviceId: 'ossl-a', host: rig.broker.host, port: rig.broker.port, serverName: 'broker.elsewhere.example', tls });
    await assert.rejects(u.connect(), (e: unknown) => e instanceof CertificateError && e.code === 'name-mismatch');
    await u.close();
    await tls.close();
  });

  it('a key blob from another TPM does not load, and a certificate for another key is refused: typed, no connection', async () => {
    b = await tpmIdentity(rig, 'ossl-b', { direct: true });
    const foreign = await b.store.loadableKey('device-identity');
    const tls1 = opensslTpmTls({ certChainPem: b.identity.certChainPem, key: { ...foreign, tcti: a.tpm.tcti }, trust: rig.trust, env: a.tpm.env });
    const u1 = createMqttsUplink({ deviceId: 'ossl-b', host: rig.broker.host, port: rig.broker.port, tls: tls1 });
    await assert.rejects(u1.connect(), (e: unknown) => e instanceof KeyStoreError && e.code === 'tpm-tls-unavailable');
    await u1.close();
    await tls1.close();
    const key = await readLoadableKeyWithTools(config(a), 'device-identity');
    const tls2 = opensslTpmTls({ certChainPem: b.identity.certChainPem, key, trust: rig.trust, env: a.tpm.env });
    const u2 = createMqttsUplink({ deviceId: 'ossl-b', host: rig.broker.host, port: rig.broker.port, tls: tls2 });
    await assert.rejects(u2.connect(), (e: unknown) => e instanceof KeyStoreError && e.code === 'tpm-tls-unavailable' && /key values mismatch/i.test(e.message));
    await u2.close();
    await tls2.close();
  });

  it('the TPM (and its resource manager) goes away and comes back: the next connection signs again', async () => {
    const key = await readLoadableKeyWithTools(config(a), 'device-identity');
    const tls = opensslTpmTls({ certChainPem: a.identity.certChainPem, key, trust: rig.trust, env: a.tpm.env });
    const u = createMqttsUplink({ deviceId: 'ossl-a', host: rig.broker.host, port: rig.broker.port, tls });
    await u.connect();
    await u.send(rig.seal('ossl-a', 21));
    await u.disconnect?.();
    await a.tpm.down();
    await assert.rejects(u.connect(), (e: unknown) => e instanceof KeyStoreError && e.code === 'tpm-tls-unavailable');
    await a.tpm.up();
    await u.connect();
    await u.send(rig.seal('ossl-a', 22));
    await until(() => ingest.received.some((r) => r.deviceId === 'ossl-a' && r.seq === 22));
    await u.close();
    await tls.close();
  });
});
