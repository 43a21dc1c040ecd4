/**
 * MQTTS with the device key in the TPM (TLS in openssl s_client, as the agent runs it) behind a
 * resource manager that lets each client hold only three transient objects, as the kernel's does
 * for every open of /dev/tpmrm0. tpm2-abrmd is started with --max-transients=3 for it.
 *
 * During one handshake tpm2-openssl holds more than three: with `?provider=tpm2` preferred, OpenSSL
 * also imports the public keys it verifies into the TPM (TPM2_LoadExternal) and hashes
 * CertificateVerify there (a sequence object), next to the loaded device key; in the rig's ARM VM
 * over /dev/tpmrm0 that was TPM_RC_OBJECT_MEMORY. tpm2-openssl's own INSTALL.md says TLS needs the
 * user-space resource manager. So the product runs tpm2-abrmd on the device (the Raspberry Pi
 * profile, the rig); this file pins down that the limit, when an operator hits it anyway, is a
 * typed error that names the cause, never a crash or a hang, and that the same key and TPM work once
 * the resource manager allows more (tpm2-abrmd's default, 27). Its own file: one process reaches one
 * tpm2-abrmd bus at a time.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { opensslTpmTls } from '../../src/transport/mqtts/openssl-tpm-tls.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { stopTpmIdentity, tpmIdentity, type TpmIdentity } from './support/tpm-identity.ts';

const DEVICE = 'tpm-rm-bed';

describe('MQTTS with a TPM key behind a resource manager that allows three objects per client (as /dev/tpmrm0 does)', () => {
  let rig: MqttRig;
  let t: TpmIdentity;

  before(async () => {
    rig = await startMqttRig({ devices: [DEVICE] });
    t = await tpmIdentity(rig, DEVICE, { maxTransients: 3 });
  });

  after(async () => {
    await rig?.stop();
    await stopTpmIdentity(t);
  });

  it('fails with a typed error, and the same uplink connects once the resource manager allows more', async () => {
    const ingest = await rig.startIngest('ingest-tpm-rm');
    const tls = opensslTpmTls({ certChainPem: t.identity.certChainPem, key: await t.store.loadableKey('device-identity'), trust: rig.trust, env: t.tpm.env });
    const u = createMqttsUplink({ deviceId: DEVICE, host: rig.broker.host, port: rig.broker.port, serverName: 'localhost', tls });
    try {
      await assert.rejects(u.connect(), (e: unknown) => {
        assert.ok(e instanceof KeyStoreError, String(e));
        assert.equal(e.code, 'tpm-tls-unavailable');
        assert.match(e.message, /the TPM could not sign the TLS handshake with the device key/);
        return true;
      });
      assert.equal(ingest.received.length, 0);

      // tpm2-abrmd with its own default limit, as the Raspberry Pi profile runs it. Three sessions,
      // each its own s_client: each handshake verifies the broker's two-certificate chain and its
      // CertificateVerify, and signs ours.
      await t.tpm.restart({ maxTransients: undefined });
      for (let seq = 1; seq <= 3; seq++) {
        await u.connect();
        assert.equal(u.session?.protocol, 'TLSv1.3');
        await u.send(rig.seal(DEVICE, seq));
        await ingest.waitFor(seq);
        await u.disconnect?.();
      }
    } finally {
      await u.close();
    }
    assert.deepEqual(ingest.received.map((r) => r.deviceId), [DEVICE, DEVICE, DEVICE]);
  });
});
