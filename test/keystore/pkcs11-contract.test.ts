/**
 * The KeyStore contract against a real PKCS#11 token: SoftHSM2, started in a temp directory with a
 * token initialised by softhsm2-util and PINs generated for this run.
 */
import { openPkcs11KeyStore } from '../../src/keystore/pkcs11/index.ts';
import { startSoftHsm } from '../../scripts/lib/softhsm.ts';
import { runKeyStoreContract } from './contract.ts';

runKeyStoreContract('pkcs11 (SoftHSM2)', async () => {
  const hsm = await startSoftHsm();
  try {
    const token = await hsm.addToken('vitalseal-contract');
    return {
      open: (events) => openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } }, events === undefined ? {} : { events }),
      cleanup: () => hsm.stop(),
    };
  } catch (err) {
    await hsm.stop();
    throw err;
  }
});
