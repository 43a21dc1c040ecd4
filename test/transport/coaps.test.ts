/**
 * CoAPS against the real CoAPS server over loopback UDP: the Uplink contract with a software key,
 * with the key in a TPM (swtpm; CertificateVerify signed by TPM2_Sign), and with an external PSK;
 * and a key in a PKCS#11 token (SoftHSM2) signing the handshake.
 * The uplink reaches the server through a UDP relay, which is how the contract's "frozen peer" is
 * made (every datagram dropped while the session stays up).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { startCoapsRig, type CoapsRig } from '../../scripts/lib/coaps-rig.ts';
import { startSoftHsm } from '../../scripts/lib/softhsm.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { startUdpRelay, type UdpRelay } from '../../scripts/lib/udp-relay.ts';
import { openPkcs11KeyStore } from '../../src/keystore/pkcs11/index.ts';
import { openTpmKeyStore, type TpmKeyStore } from '../../src/keystore/tpm/index.ts';
import { spkiSha256 } from '../../src/pki/certificate.ts';
import { createCoapsUplink, type CoapsUplinkOptions } from '../../src/transport/coaps/uplink.ts';
import type { Uplink } from '../../src/transport/types.ts';
import { uplinkContract, type UplinkContractFixture } from './contract.ts';

/** Uplink settings for the contract: a connect to a server that is gone fails within 2 s. */
const QUICK: Partial<CoapsUplinkOptions> = { connectTimeoutMs: 2000 };

async function fixture(rig: CoapsRig, deviceId: string, auth: 'certificate' | 'psk', uplink: (port: number) => Uplink, extraTeardown?: () => Promise<void>): Promise<UplinkContractFixture> {
  const relay: UdpRelay = await startUdpRelay({ target: { host: rig.host, port: rig.port } });
  return {
    deviceId,
    protocol: 'DTLSv1.3',
    kind: 'coaps',
    auth,
    uplink: () => uplink(relay.port),
    message: (seq) => rig.seal(deviceId, seq),
    received: () => rig.received.map((r) => r.payload),
    waitForReceived: (n) => rig.waitFor(n),
    stopPeer: () => rig.stopServer(),
    startPeer: () => rig.startServer(),
    async freezePeer() {
      const thaw = relay.freeze();
      return async () => thaw();
    },
    async teardown() {
      await relay.stop();
      await rig.stop();
      await extraTeardown?.();
    },
  };
}

uplinkContract('CoAPS, software key', async () => {
  const rig = await startCoapsRig({ devices: ['bed-7'] });
  return fixture(rig, 'bed-7', 'certificate', (port) => rig.uplink('bed-7', { ...QUICK, port }));
});

uplinkContract('CoAPS, device key in the TPM (CertificateVerify signed by swtpm)', async () => {
  const rig = await startCoapsRig({ devices: [] });
  const tpm: Swtpm = await startSwtpm();
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-coaps-tpm-'));
  let store: TpmKeyStore | undefined;
  try {
    store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
    const signer = await store.createSigningKey('device-identity');
    const identity = await rig.fleet.device('tpm-bed-1', { signer });
    const s = store;
    return fixture(rig, 'tpm-bed-1', 'certificate', (port) => createCoapsUplink({
      ...QUICK, deviceId: 'tpm-bed-1', host: rig.host, port,
      identity: { kind: 'certificate', certificateChain: [identity.cert.der, rig.fleet.issuing.der], signer },
      verifier: rig.serverVerifier(),
    }), async () => {
      await s.close();
      await tpm.stop();
      rmSync(dir, { recursive: true, force: true });
    });
  } catch (e) {
    await store?.close().catch(() => undefined);
    await tpm.stop();
    rmSync(dir, { recursive: true, force: true });
    await rig.stop();
    throw e;
  }
});

uplinkContract('CoAPS, external PSK (psk_dhe_ke)', async () => {
  const rig = await startCoapsRig({ devices: [] });
  const key = rig.addPsk('pulse-ox-17');
  return fixture(rig, 'pulse-ox-17', 'psk', (port) => rig.pskUplink('pulse-ox-17', key, { ...QUICK, port }));
});

describe('CoAPS with the device key in a PKCS#11 token (SoftHSM2, the TEE path)', () => {
  it('the token signs CertificateVerify; the server authenticates that key and takes the messages', async () => {
    const rig = await startCoapsRig({ devices: [] });
    const hsm = await startSoftHsm();
    try {
      const token = await hsm.addToken('coaps-device');
      const store = await openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } });
      try {
        const signer = await store.createSigningKey('device-identity');
        const identity = await rig.fleet.device('hsm-bed-1', { signer });
        const u = createCoapsUplink({
          deviceId: 'hsm-bed-1', host: rig.host, port: rig.port,
          identity: { kind: 'certificate', certificateChain: [identity.cert.der, rig.fleet.issuing.der], signer },
          verifier: rig.serverVerifier(),
        });
        await u.connect();
        assert.equal((await u.send(rig.seal('hsm-bed-1', 1))).status, 'accepted');
        await rig.waitFor(1);
        const peer = rig.received[0]?.peer;
        assert.ok(peer?.kind === 'certificate');
        assert.equal(peer.deviceId, 'hsm-bed-1');
        assert.equal(peer.spkiSha256, Buffer.from(spkiSha256(await signer.publicKeySpki())).toString('hex'), 'the key the server authenticated is the token\'s');
        await u.close();
      } finally {
        await store.close();
      }
    } finally {
      await hsm.stop();
      await rig.stop();
    }
  });
});
