/**
 * What the store leaves on the token, read back through a separate PKCS#11 session that does not go
 * through vitalseal's code: key values are refused (CKR_ATTRIBUTE_SENSITIVE), cannot be wrapped out
 * (CKR_KEY_UNEXTRACTABLE), and carry the attributes that say so; sealed data objects hold ciphertext.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { after, before, describe, it } from 'node:test';
import * as ck from '../../src/keystore/pkcs11/constants.ts';
import { openPkcs11KeyStore, SEAL_KEY_LABEL, SEALED_APPLICATION } from '../../src/keystore/pkcs11/index.ts';
import { startSoftHsm, type SoftHsm, type SoftHsmToken } from '../../scripts/lib/softhsm.ts';

const require = createRequire(import.meta.url);
const pkcs11js = require('pkcs11js') as typeof import('pkcs11js');

describe('pkcs11 objects, inspected through an independent session', () => {
  let hsm: SoftHsm;
  let token: SoftHsmToken;
  const secret = randomBytes(40);
  let p11: InstanceType<typeof pkcs11js.PKCS11>;
  let session: Buffer;

  before(async () => {
    hsm = await startSoftHsm();
    token = await hsm.addToken('inspect');
    const store = await openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } });
    await store.createSigningKey('inspect-sign');
    await store.wrapKey('inspect-kek', randomBytes(32));
    await store.seal('inspect-sealed', secret);
    await store.close(); // the module is finalised: the session below is the only user
    p11 = new pkcs11js.PKCS11();
    p11.load(hsm.module);
    p11.C_Initialize();
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === 'inspect');
    assert.ok(slot);
    session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    p11.C_Login(session, pkcs11js.CKU_USER, token.userPin);
  });
  after(async () => {
    try { p11?.C_Logout(session); p11?.C_CloseSession(session); p11?.C_Finalize(); p11?.close(); } catch { /* reported by the tests */ }
    await hsm?.stop();
  });

  function one(cls: number, label: string): Buffer {
    p11.C_FindObjectsInit(session, [{ type: ck.CKA_CLASS, value: cls }, { type: ck.CKA_LABEL, value: label }]);
    const found = p11.C_FindObjects(session, 10);
    p11.C_FindObjectsFinal(session);
    assert.equal(found.length, 1, `${label}: one object of class ${cls}`);
    return found[0] as Buffer;
  }
  function bools(h: Buffer, types: number[]): Record<number, boolean> {
    const out: Record<number, boolean> = {};
    for (const a of p11.C_GetAttributeValue(session, h, types.map((type) => ({ type })))) out[a.type] = a.value[0] !== 0;
    return out;
  }
  function valueRefused(h: Buffer): void {
    assert.throws(() => p11.C_GetAttributeValue(session, h, [{ type: ck.CKA_VALUE }]),
      (e: unknown) => (e as { code?: number }).code === pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
  }
  function wrapRefused(h: Buffer): void {
    const wrapper = p11.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
      { type: ck.CKA_CLASS, value: ck.CKO_SECRET_KEY }, { type: ck.CKA_KEY_TYPE, value: ck.CKK_AES }, { type: ck.CKA_VALUE_LEN, value: 32 },
      { type: ck.CKA_TOKEN, value: false }, { type: ck.CKA_WRAP, value: true },
    ]);
    assert.throws(() => p11.C_WrapKey(session, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, wrapper, h, Buffer.alloc(4096)),
      (e: unknown) => (e as { code?: number }).code === pkcs11js.CKR_KEY_UNEXTRACTABLE);
  }

  it('the private signing key: value refused, not wrappable, sensitive and never extractable, sign only', () => {
    const h = one(ck.CKO_PRIVATE_KEY, 'inspect-sign');
    valueRefused(h);
    wrapRefused(h);
    const a = bools(h, [ck.CKA_TOKEN, ck.CKA_PRIVATE, ck.CKA_SENSITIVE, ck.CKA_EXTRACTABLE, ck.CKA_NEVER_EXTRACTABLE, ck.CKA_ALWAYS_SENSITIVE,
      ck.CKA_LOCAL, ck.CKA_SIGN, ck.CKA_DECRYPT, ck.CKA_UNWRAP, ck.CKA_DERIVE, ck.CKA_MODIFIABLE]);
    assert.deepEqual(a, {
      [ck.CKA_TOKEN]: true, [ck.CKA_PRIVATE]: true, [ck.CKA_SENSITIVE]: true, [ck.CKA_EXTRACTABLE]: false, [ck.CKA_NEVER_EXTRACTABLE]: true,
      [ck.CKA_ALWAYS_SENSITIVE]: true, [ck.CKA_LOCAL]: true, [ck.CKA_SIGN]: true, [ck.CKA_DECRYPT]: false, [ck.CKA_UNWRAP]: false,
      [ck.CKA_DERIVE]: false, [ck.CKA_MODIFIABLE]: false,
    });
    const pub = one(ck.CKO_PUBLIC_KEY, 'inspect-sign');
    assert.equal(bools(pub, [ck.CKA_PRIVATE])[ck.CKA_PRIVATE], false, 'the public half is readable without login');
  });

  for (const label of ['inspect-kek', SEAL_KEY_LABEL]) {
    it(`the AES key "${label}": value refused, not wrappable, encrypt/decrypt only`, () => {
      const h = one(ck.CKO_SECRET_KEY, label);
      valueRefused(h);
      wrapRefused(h);
      const a = bools(h, [ck.CKA_PRIVATE, ck.CKA_SENSITIVE, ck.CKA_EXTRACTABLE, ck.CKA_NEVER_EXTRACTABLE, ck.CKA_ALWAYS_SENSITIVE, ck.CKA_LOCAL,
        ck.CKA_ENCRYPT, ck.CKA_DECRYPT, ck.CKA_WRAP, ck.CKA_UNWRAP, ck.CKA_SIGN, ck.CKA_DERIVE]);
      assert.deepEqual(a, {
        [ck.CKA_PRIVATE]: true, [ck.CKA_SENSITIVE]: true, [ck.CKA_EXTRACTABLE]: false, [ck.CKA_NEVER_EXTRACTABLE]: true,
        [ck.CKA_ALWAYS_SENSITIVE]: true, [ck.CKA_LOCAL]: true, [ck.CKA_ENCRYPT]: true, [ck.CKA_DECRYPT]: true, [ck.CKA_WRAP]: false,
        [ck.CKA_UNWRAP]: false, [ck.CKA_SIGN]: false, [ck.CKA_DERIVE]: false,
      });
      const len = p11.C_GetAttributeValue(session, h, [{ type: ck.CKA_VALUE_LEN }])[0]?.value;
      assert.equal(len?.readUInt32LE(0), 32, 'AES-256');
    });
  }

  it('the sealed secret: a private data object holding ciphertext, not the secret', () => {
    const h = one(ck.CKO_DATA, 'inspect-sealed');
    assert.equal(bools(h, [ck.CKA_PRIVATE])[ck.CKA_PRIVATE], true);
    const [value, app] = p11.C_GetAttributeValue(session, h, [{ type: ck.CKA_VALUE }, { type: ck.CKA_APPLICATION }]).map((x) => x.value);
    assert.equal(app?.toString(), SEALED_APPLICATION);
    assert.equal(value?.length, 1 + 12 + secret.length + 16, 'version, IV, ciphertext, tag');
    assert.equal(value?.[0], 1);
    assert.equal(value?.indexOf(secret.subarray(0, 8)), -1, 'the secret is not in clear');
  });
});
