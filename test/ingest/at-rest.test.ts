/**
 * Encryption at rest: the row format is checked against an independent AES-256-GCM (@noble/ciphers)
 * with the AAD and nonce built by hand from the documented layout, and every binding is tested by
 * moving a row (another device, another seq, another key version) or flipping a byte.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { gcm } from '@noble/ciphers/aes.js';
import { getProvider } from '../../src/crypto/registry.ts';
import { atRestAad, atRestNonce, openAtRest, sealAtRest } from '../../src/ingest/at-rest.ts';
import { dataKeyId } from '../../src/ingest/data-keys.ts';
import { DataKey } from '../../src/keystore/hierarchy/data-key.ts';
import { KEY_NAME_PATTERN } from '../../src/keystore/types.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { ApiMisuse, CryptoError } from '../../src/util/errors.ts';
import { libcryptoContextsLive } from '../../src/crypto/libcrypto/contexts.ts';

const key = () => new DataKey('dek.bed-7', 3, fromHex('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'));
const pt = new TextEncoder().encode('a SenML pack stands here');

describe('at-rest row encryption (AES-256-GCM)', () => {
  it('nonce and AAD follow the documented layout', () => {
    assert.equal(toHex(atRestNonce(0x0102030405)), '000000000000000102030405');
    const aad = atRestAad('bed-7', 258, 3);
    assert.equal(toHex(aad), `${toHex(new TextEncoder().encode('vitalseal at-rest v1'))}00${toHex(new TextEncoder().encode('bed-7'))}00000000000000010200000003`);
    assert.equal(toHex(atRestNonce(2 ** 53 - 1)), '00000000001fffffffffffff');
    // A name outside the device id rule (never stored, but the function takes any string) is UTF-8.
    assert.equal(toHex(atRestAad('bé', 2 ** 32 + 1, 0xfffffffe)), `${toHex(new TextEncoder().encode('vitalseal at-rest v1'))}0062c3a9000000000100000001fffffffe`);
    for (const bad of [1.5, -1, 2 ** 53, Number.NaN]) {
      assert.throws(() => atRestNonce(bad), RangeError, String(bad));
      assert.throws(() => atRestAad('bed-7', bad, 3), RangeError, String(bad));
    }
  });

  for (const provider of ['node', 'noble'] as const) {
    it(`agrees with an independent AES-256-GCM (provider ${provider})`, () => {
      const p = getProvider(provider);
      const { nonce, ciphertext } = sealAtRest(p, key(), 'bed-7', 42, pt);
      const expected = gcm(key().bytes, atRestNonce(42), atRestAad('bed-7', 42, 3)).encrypt(pt);
      assert.equal(toHex(ciphertext), toHex(expected));
      assert.deepEqual(openAtRest(p, key(), { deviceId: 'bed-7', seq: 42, keyVersion: 3, nonce, ciphertext }), pt);
    });
  }

  it('a row moved to another device, sequence number or key version, or flipped, does not open', () => {
    const p = getProvider();
    const row = { deviceId: 'bed-7', seq: 42, keyVersion: 3, ...sealAtRest(p, key(), 'bed-7', 42, pt) };
    const fails = (r: typeof row, k = key(), code = 'at-rest-open-failed') =>
      assert.throws(() => openAtRest(p, k, r), (e: unknown) => e instanceof CryptoError && e.code === code);
    fails({ ...row, deviceId: 'bed-8' });
    fails({ ...row, seq: 43 });
    fails({ ...row, nonce: atRestNonce(43) });
    fails({ ...row, keyVersion: 4 }, key(), 'at-rest-wrong-key');
    fails(row, new DataKey('dek.bed-7', 3, new Uint8Array(32)));
    for (let i = 0; i < row.ciphertext.length; i++) {
      const c = Uint8Array.from(row.ciphertext);
      c[i] = (c[i] as number) ^ 0x80;
      fails({ ...row, ciphertext: c });
    }
    for (let n = 0; n < row.ciphertext.length; n++) fails({ ...row, ciphertext: row.ciphertext.subarray(0, n) });
  });

  it('data key ids are key names for every device id, and distinct', () => {
    assert.equal(dataKeyId('bed-7'), 'dek.bed-7');
    const long = 'x'.repeat(64);
    const id = dataKeyId(long);
    assert.match(id, /^dek_[0-9a-f]{40}$/);
    assert.ok(KEY_NAME_PATTERN.test(id));
    assert.notEqual(dataKeyId('y'.repeat(64)), id);
    assert.ok(KEY_NAME_PATTERN.test(dataKeyId('a'.repeat(59))));
  });
});

describe('a data key seals through one keyed context', () => {
  it('the context is made once, agrees row after row with an independent AES-256-GCM, and is freed with the key', () => {
    const p = getProvider('node');
    const before = libcryptoContextsLive();
    const dek = key();
    const sealer = dek.sealer(p, 'aes-256-gcm');
    assert.equal(sealer.backend, 'libcrypto');
    for (let seq = 1; seq <= 3; seq++) {
      const { ciphertext } = sealAtRest(p, dek, 'bed-7', seq, pt);
      assert.equal(toHex(ciphertext), toHex(gcm(key().bytes, atRestNonce(seq), atRestAad('bed-7', seq, 3)).encrypt(pt)), `row ${seq}`);
    }
    assert.equal(dek.sealer(p, 'aes-256-gcm'), sealer, 'one context per key');
    assert.equal(libcryptoContextsLive(), before + 1);
    dek.destroy();
    assert.equal(libcryptoContextsLive(), before, 'destroy() frees it');
    assert.throws(() => sealAtRest(p, dek, 'bed-7', 4, pt), (e: unknown) => e instanceof ApiMisuse && e.code === 'key-destroyed');
    assert.throws(() => sealer.sealInto(atRestNonce(4), pt, new Uint8Array(0), new Uint8Array(pt.length + 16), 0), (e: unknown) => e instanceof ApiMisuse && e.code === 'aead-destroyed');
  });
});
