/**
 * A device identity for tests and benchmarks: the key made in the device's own key store (software,
 * TPM, PKCS#11), under the label the agent's configuration names, and a certificate for it from a
 * test fleet, written where the agent's `certFile` points. The key never leaves the store.
 *
 * `env` is applied to this process while the store is open: a TPM behind tpm2-abrmd on a private
 * D-Bus (scripts/lib/swtpm.ts `startSwtpm({ resourceManager: true })`) is reached through
 * `DBUS_SESSION_BUS_ADDRESS`, which the TSS reads from the environment.
 *
 * @example
 *   const tpm = await startSwtpm({ resourceManager: true });
 *   const keystore = { kind: 'tpm', tcti: tpm.tcti, dir: join(site, 'tpm-store') } as const;
 *   await provisionDeviceKey(rig.fleet, 'bed-7', keystore, join(site, 'chain.pem'), tpm.env);
 */
import { writeFileSync } from 'node:fs';
import type { KeyStoreConfig } from '../../src/keystore/config.ts';
import { openKeyStore } from '../../src/keystore/open.ts';
import type { TestFleet } from './test-fleet.ts';

export async function provisionDeviceKey(fleet: TestFleet, id: string, keystore: KeyStoreConfig, certFile: string,
  env: Readonly<Record<string, string>> = {}, label = 'device-identity'): Promise<void> {
  const saved = new Map(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    const store = await openKeyStore(keystore);
    try {
      writeFileSync(certFile, (await fleet.device(id, { signer: await store.createSigningKey(label) })).certChainPem);
    } finally {
      await store.close();
    }
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}
