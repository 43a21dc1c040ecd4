import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { getProvider, PROVIDER_NAMES, type AeadId } from '../../src/crypto/index.ts';
import { concatBytes, fromHex, toHex } from '../../src/util/bytes.ts';
import { CryptoError, Unsupported } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';

interface AeadVector {
  id: string; key: string; nonce: string; aad: string; plaintext: string; ciphertext: string; tag: string;
  tag_length?: number; nonce_length?: number; result?: string; flags?: string[];
}

const chacha = loadVectors<AeadVector>('chacha20poly1305.json');
const ccm = loadVectors<AeadVector>('aes-ccm.json');

function ccmId(tagLength: number): AeadId | undefined {
  return tagLength === 8 ? 'aes-128-ccm-8' : tagLength === 16 ? 'aes-128-ccm-16' : undefined;
}

for (const name of PROVIDER_NAMES) {
  const p = getProvider(name);
  describe(`AEAD known answers (${name} provider)`, () => {
    it(`ChaCha20-Poly1305: ${chacha.source.slice(0, 40)}…`, () => {
      for (const v of chacha.vectors) {
        const key = fromHex(v.key), nonce = fromHex(v.nonce), aad = fromHex(v.aad), pt = fromHex(v.plaintext);
        const sealed = p.aeadSeal('chacha20-poly1305', key, nonce, pt, aad);
        assert.equal(toHex(sealed), v.ciphertext + v.tag, v.id);
        assert.equal(toHex(p.aeadOpen('chacha20-poly1305', key, nonce, sealed, aad)), v.plaintext, v.id);
      }
    });

    it('AES-128-CCM: RFC 3610 and Wycheproof (valid must match, invalid must throw)', (t) => {
      if (!p.supportsAead('aes-128-ccm-8')) {
        assert.throws(() => p.aeadSeal('aes-128-ccm-8', new Uint8Array(16), new Uint8Array(13), new Uint8Array(), new Uint8Array()), Unsupported);
        t.skip(`${name} provider has no AES-CCM (it says so with Unsupported; the registry falls back)`);
        return;
      }
      let valid = 0, invalid = 0;
      for (const v of ccm.vectors) {
        const key = fromHex(v.key), nonce = fromHex(v.nonce), aad = fromHex(v.aad), pt = fromHex(v.plaintext);
        const sealedExpected = fromHex(v.ciphertext + v.tag);
        const id = ccmId(v.tag_length ?? -1);
        if (v.result === 'valid') {
          assert.ok(id, `${v.id}: valid vector with unsupported tag length`);
          assert.equal(toHex(p.aeadSeal(id, key, nonce, pt, aad)), v.ciphertext + v.tag, v.id);
          assert.equal(toHex(p.aeadOpen(id, key, nonce, sealedExpected, aad)), v.plaintext, v.id);
          valid++;
        } else {
          // Invalid: a modified tag must fail authentication; a wrong nonce or tag size must be refused.
          const tryId = id ?? 'aes-128-ccm-16';
          assert.throws(() => p.aeadOpen(tryId, key, nonce, sealedExpected, aad), (e) => e instanceof CryptoError || e instanceof RangeError, v.id);
          invalid++;
        }
      }
      assert.equal(valid, 34);
      assert.equal(invalid, 13);
    });

    it('rejects tampered, truncated and wrong-key input for every suite it has', () => {
      for (const id of ['chacha20-poly1305', 'aes-128-ccm-8', 'aes-128-ccm-16', 'aes-128-gcm', 'aes-256-gcm'] as const) {
        if (!p.supportsAead(id)) continue;
        const keyLength = id === 'chacha20-poly1305' || id === 'aes-256-gcm' ? 32 : 16;
        const key = p.randomBytes(keyLength), nonce = p.randomBytes(12), aad = Uint8Array.of(1, 2, 3);
        const pt = p.randomBytes(100);
        const sealed = p.aeadSeal(id, key, nonce, pt, aad);
        assert.deepEqual(p.aeadOpen(id, key, nonce, sealed, aad), pt);
        for (let i = 0; i < sealed.length; i += 7) {
          const bad = Uint8Array.from(sealed);
          bad[i] = (bad[i] as number) ^ 0x01;
          assert.throws(() => p.aeadOpen(id, key, nonce, bad, aad), CryptoError, `${id} flip ${i}`);
        }
        assert.throws(() => p.aeadOpen(id, key, nonce, sealed.subarray(0, sealed.length - 1), aad), CryptoError);
        assert.throws(() => p.aeadOpen(id, key, nonce, sealed.subarray(0, 3), aad), CryptoError);
        assert.throws(() => p.aeadOpen(id, p.randomBytes(keyLength), nonce, sealed, aad), CryptoError);
        assert.throws(() => p.aeadOpen(id, key, nonce, sealed, Uint8Array.of(1, 2, 4)), CryptoError);
        assert.throws(() => p.aeadSeal(id, key.subarray(1), nonce, pt, aad), RangeError);
        assert.throws(() => p.aeadSeal(id, key, new Uint8Array(11), pt, aad), RangeError);
        assert.throws(() => p.aeadSeal(id, 'key' as unknown as Uint8Array, nonce, pt, aad), TypeError);
      }
    });
  });
}

it('ChaCha20 raw keystream: RFC 8439 §2.4.2 (counter 1), both providers agree', () => {
  const key = fromHex('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
  const nonce = fromHex('000000000000004a00000000');
  const pt = new TextEncoder().encode(
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.");
  const expectedPrefix = '6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab77937365af90bbf74a35be6b40b8eedf2785e42874d';
  for (const name of PROVIDER_NAMES) {
    assert.equal(toHex(getProvider(name).chacha20(key, nonce, 1, pt)), expectedPrefix, name);
  }
});

it('AES-ECB single block: FIPS-197 Appendix C.1 (AES-128)', () => {
  const key = fromHex('000102030405060708090a0b0c0d0e0f');
  const block = fromHex('00112233445566778899aabbccddeeff');
  for (const name of PROVIDER_NAMES) {
    assert.equal(toHex(getProvider(name).aesEcbBlock(key, block)), '69c4e0d86a7b0430d8cdb78070b4c55a', name);
  }
});

it('registry falls back from noble to node for CCM', async () => {
  const { providerForAead } = await import('../../src/crypto/index.ts');
  assert.equal(providerForAead('aes-128-ccm-8', 'noble').name, 'node');
  assert.equal(providerForAead('chacha20-poly1305', 'noble').name, 'noble');
  assert.equal(concatBytes().length, 0);
});
