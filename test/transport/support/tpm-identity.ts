/**
 * A device identity held in a TPM for the MQTTS tests: swtpm (behind tpm2-abrmd unless `direct`),
 * a TPM key store in a temporary directory, its identity key, and a certificate for it from the
 * rig's fleet. `stopTpmIdentity` undoes all of it.
 *
 * @example
 *   const t = await tpmIdentity(rig, 'bed-1');
 *   const tls = opensslTpmTls({ certChainPem: t.identity.certChainPem, key: await t.store.loadableKey('device-identity'), trust: rig.trust, env: t.tpm.env });
 *   await stopTpmIdentity(t);
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttRig } from '../../../scripts/lib/mqtt-rig.ts';
import { startSwtpm, type Swtpm } from '../../../scripts/lib/swtpm.ts';
import type { IssuedIdentity } from '../../../scripts/lib/test-fleet.ts';
import { openTpmKeyStore, type TpmKeyStore } from '../../../src/keystore/tpm/index.ts';

export interface TpmIdentity {
  tpm: Swtpm;
  store: TpmKeyStore;
  dir: string;
  identity: IssuedIdentity;
}

export interface TpmIdentityOptions {
  /**
   * The store talks to swtpm without the resource manager: one process can reach only one
   * tpm2-abrmd session bus (GDBus keeps the first), so a second TPM in a process is reached directly.
   */
  readonly direct?: boolean;
  /** tpm2-abrmd's --max-transients (scripts/lib/swtpm.ts); its own default when absent. */
  readonly maxTransients?: number;
}

export async function tpmIdentity(rig: MqttRig, deviceId: string, o: TpmIdentityOptions = {}): Promise<TpmIdentity> {
  const direct = o.direct === true;
  const tpm = await startSwtpm({ resourceManager: !direct, ...(o.maxTransients === undefined ? {} : { maxTransients: o.maxTransients }) });
  if (!direct) Object.assign(process.env, tpm.env);
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-mqtts-tpm-'));
  const store = await openTpmKeyStore({ kind: 'tpm', tcti: direct ? tpm.directTcti : tpm.tcti, dir });
  const signer = await store.createSigningKey('device-identity');
  const identity = await rig.fleet.device(deviceId, { signer });
  return { tpm, store, dir, identity };
}

export async function stopTpmIdentity(t: TpmIdentity | undefined): Promise<void> {
  await t?.store.close().catch(() => undefined);
  await t?.tpm.stop();
  if (t !== undefined) rmSync(t.dir, { recursive: true, force: true });
}
