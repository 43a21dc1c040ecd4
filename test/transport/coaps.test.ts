/**
 * CoAPS against the real CoAPS server over loopback UDP: the Uplink contract with a software key,
 * with the key in a TPM (swtpm; CertificateVerify signed by TPM2_Sign), and with an external PSK.
 * The uplink reaches the server through a UDP relay, which is how the contract's "frozen peer" is
 * made (every datagram dropped while the session stays up).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCoapsRig, type CoapsRig } from '../../scripts/lib/coaps-rig.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { startUdpRelay, type UdpRelay } from '../../scripts/lib/udp-relay.ts';
import { openTpmKeyStore, type TpmKeyStore } from '../../src/keystore/tpm/index.ts';
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
