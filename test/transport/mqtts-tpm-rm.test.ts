/**
 * MQTTS with the device key in the TPM behind a resource manager that lets each client hold only
 * three transient objects, as the kernel's does for every open of /dev/tpmrm0 (the device's TCTI
 * on a Raspberry Pi and in the rig's ARM VM). tpm2-abrmd is started with --max-transients=3 for it.
 *
 * In the rig's ARM VM the handshake failed with TPM_RC_OBJECT_MEMORY ("out of memory for object
 * contexts"): with `?provider=tpm2` preferred, OpenSSL also imports the public keys it verifies
 * into the TPM (TPM2_LoadExternal) and hashes CertificateVerify there (a sequence object), next to
 * the loaded device key. Preferring the default provider instead leaves signing to software (which
 * refuses: no private key), and skipping OpenSSL's chain check still leaves the hash sequence and
 * the broker's key. Its own file: one process reaches one tpm2-abrmd bus.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { openTpmKeyStore, type TpmKeyStore } from '../../src/keystore/tpm/index.ts';
import { tpmTls } from '../../src/transport/mqtts/tpm-tunnel.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';

const DEVICE = 'tpm-rm-bed';

describe('MQTTS with a TPM key, three transient objects per TPM client (as /dev/tpmrm0 allows)', () => {
  let rig: MqttRig;
  let tpm: Swtpm;
  let store: TpmKeyStore;
  let dir: string;

  before(async () => {
    rig = await startMqttRig({ devices: [DEVICE] });
    tpm = await startSwtpm({ resourceManager: true, maxTransients: 3 });
    Object.assign(process.env, tpm.env);
    dir = mkdtempSync(join(tmpdir(), 'vitalseal-mqtts-tpm-rm-'));
    store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
  });

  after(async () => {
    await rig?.stop();
    await store?.close().catch(() => undefined);
    await tpm?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  // Fails today (hence todo: reported, not counted): the child's tpm2-openssl holds more transient
  // objects than three (the device key, TPM hash sequences, public keys it imports to verify);
  // with --max-transients=6 it passes. docs/hardware.md "Limits" and docs/transport-mqtts.md.
  it('connects, delivers and reconnects', { todo: 'tpm2-openssl needs more than 3 transient objects per TPM client' }, async () => {
    const identity = await rig.fleet.device(DEVICE, { signer: await store.createSigningKey('device-identity') });
    const ingest = await rig.startIngest('ingest-tpm-rm');
    const tls = tpmTls({ certChainPem: identity.certChainPem, key: await store.loadableKey('device-identity'), trust: rig.trust, env: tpm.env });
    // Three sessions through one child: each handshake verifies the broker's two-certificate chain
    // and its CertificateVerify, and signs ours.
    const u = createMqttsUplink({ deviceId: DEVICE, host: rig.broker.host, port: rig.broker.port, serverName: 'localhost', tls });
    try {
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
