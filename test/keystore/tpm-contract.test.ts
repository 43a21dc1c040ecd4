/**
 * The KeyStore contract against a real TPM: swtpm started by this test on free loopback ports,
 * the store talking to it directly (swtpm's own TCTI, one client: the contract opens one store at a
 * time). The store writes its own FAPI config and keystore under a temp dir.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSwtpm } from '../../scripts/lib/swtpm.ts';
import { openTpmKeyStore } from '../../src/keystore/tpm/index.ts';
import { runKeyStoreContract } from './contract.ts';

runKeyStoreContract('tpm (swtpm, FAPI through koffi)', async () => {
  const tpm = await startSwtpm();
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-tpm-store-'));
  return {
    open: (events) => openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir }, events === undefined ? {} : { events }),
    async cleanup() {
      await tpm.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});
