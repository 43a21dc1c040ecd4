/**
 * A token that lacks a mechanism: SoftHSM2 configured (slots.mechanisms) to offer EC key generation,
 * ECDSA and AES key generation but not AES-GCM. Signing works; sealing and wrapping fail with
 * 'mechanism-invalid' naming the missing mechanism, before anything is created on the token.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { openPkcs11KeyStore, type Pkcs11KeyStore } from '../../src/keystore/pkcs11/index.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { startSoftHsm, type SoftHsm } from '../../scripts/lib/softhsm.ts';

describe('pkcs11 key store on a token without CKM_AES_GCM', () => {
  let hsm: SoftHsm;
  let store: Pkcs11KeyStore;
  before(async () => {
    hsm = await startSoftHsm({ mechanisms: 'CKM_EC_KEY_PAIR_GEN,CKM_ECDSA,CKM_AES_KEY_GEN' });
    const token = await hsm.addToken('no-gcm');
    store = await openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } });
  });
  after(async () => {
    await store?.close();
    await hsm?.stop();
  });

  const missingGcm = (e: unknown): boolean => {
    assert.ok(e instanceof KeyStoreError);
    assert.equal(e.code, 'mechanism-invalid');
    assert.match(e.message, /does not offer CKM_AES_GCM/);
    return true;
  };

  it('still signs', async () => {
    const signer = await store.createSigningKey('id');
    assert.ok((await signer.sign(Uint8Array.of(1))).length > 64);
  });

  it('refuses to seal or wrap, naming CKM_AES_GCM, and leaves nothing behind', async () => {
    await assert.rejects(store.seal('s', Uint8Array.of(1)), missingGcm);
    await assert.rejects(store.wrapKey('k', new Uint8Array(32)), missingGcm);
    assert.deepEqual((await store.list()).map((k) => k.name), ['id']);
  });
});
