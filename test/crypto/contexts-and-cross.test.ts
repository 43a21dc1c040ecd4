import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CounterSealer, getProvider, hkdf, OneShotSealer, Opener, xorCounterIntoIv, type AeadId } from '../../src/crypto/index.ts';
import { toHex } from '../../src/util/bytes.ts';
import { ApiMisuse, CryptoError } from '../../src/util/errors.ts';

const node = getProvider('node');
const noble = getProvider('noble');

describe('nonce discipline', () => {
  it('RFC 8446 §5.3 nonce construction XORs the counter into the low bytes', () => {
    const iv = Uint8Array.from({ length: 12 }, (_, i) => i);
    assert.equal(toHex(xorCounterIntoIv(iv, 0)), '000102030405060708090a0b');
    assert.equal(toHex(xorCounterIntoIv(iv, 1)), '000102030405060708090a0a');
    assert.equal(toHex(xorCounterIntoIv(iv, 0x0102)), '000102030405060708090b09');
    assert.equal(toHex(xorCounterIntoIv(iv, 2 ** 40)), '000102030405070708090a0b');
    // Into a caller's buffer: the same bytes, whatever the buffer held before.
    const out = new Uint8Array(12).fill(0xff);
    assert.equal(xorCounterIntoIv(iv, 0x0102, out), out);
    assert.equal(toHex(out), '000102030405060708090b09');
    assert.throws(() => xorCounterIntoIv(iv, 1, new Uint8Array(13)), RangeError);
  });

  it('CounterSealer.sealInto shares the counter with seal, writes only its range, and stops at the limit', () => {
    const key = node.randomBytes(16), iv = node.randomBytes(12);
    const sealer = new CounterSealer(node, 'aes-128-gcm', key, iv, 4);
    const opener = new Opener(node, 'aes-128-gcm', key);
    const aad = Uint8Array.of(1, 2, 3);
    assert.equal(sealer.seal(Uint8Array.of(0), aad).counter, 0);
    const out = new Uint8Array(3 + 5 + 16 + 2).fill(0xee);
    assert.equal(sealer.sealInto(Uint8Array.of(1, 2, 3, 4, 5), aad, out, 3), 1);
    assert.deepEqual([...out.subarray(0, 3), ...out.subarray(24)], [0xee, 0xee, 0xee, 0xee, 0xee]);
    assert.deepEqual(opener.open(xorCounterIntoIv(iv, 1), out.subarray(3, 24), aad), Uint8Array.of(1, 2, 3, 4, 5));
    // The next counter is 2: a record sealed into a buffer never reuses a nonce seal() took.
    assert.equal(sealer.seal(Uint8Array.of(2), aad).counter, 2);
    // Too little room is refused; the counter it took is not handed out again.
    assert.throws(() => sealer.sealInto(Uint8Array.of(1), aad, new Uint8Array(16), 0), RangeError);
    assert.equal(sealer.exhausted, true);
    assert.throws(() => sealer.sealInto(Uint8Array.of(1), aad, new Uint8Array(17), 0), (e) => e instanceof ApiMisuse && e.code === 'aead-limit-reached');
  });

  it('CounterSealer never repeats a nonce and opens with an Opener', () => {
    const key = node.randomBytes(32), iv = node.randomBytes(12);
    const sealer = new CounterSealer(node, 'chacha20-poly1305', key, iv);
    const opener = new Opener(node, 'chacha20-poly1305', key);
    const seen = new Set<string>();
    for (let i = 0; i < 500; i++) {
      const r = sealer.seal(Uint8Array.of(i & 0xff), Uint8Array.of(9));
      assert.equal(r.counter, i);
      assert.ok(!seen.has(toHex(r.nonce)));
      seen.add(toHex(r.nonce));
      assert.deepEqual(opener.open(r.nonce, r.sealed, Uint8Array.of(9)), Uint8Array.of(i & 0xff));
    }
    assert.equal(sealer.count, 500);
  });

  it('CounterSealer refuses to seal past its limit and after destroy', () => {
    const sealer = new CounterSealer(node, 'aes-128-gcm', node.randomBytes(16), node.randomBytes(12), 2);
    sealer.seal(new Uint8Array(1), new Uint8Array());
    sealer.seal(new Uint8Array(1), new Uint8Array());
    assert.equal(sealer.exhausted, true);
    assert.throws(() => sealer.seal(new Uint8Array(1), new Uint8Array()), (e) => e instanceof ApiMisuse && e.code === 'aead-limit-reached');
    sealer.destroy();
    assert.throws(() => sealer.seal(new Uint8Array(1), new Uint8Array()), (e) => e instanceof ApiMisuse && e.code === 'aead-destroyed');
  });

  it('CounterSealer copies the key it is given (the caller may wipe theirs)', () => {
    const key = node.randomBytes(16);
    const sealer = new CounterSealer(node, 'aes-128-gcm', key, new Uint8Array(12));
    const keyCopy = Uint8Array.from(key);
    key.fill(0);
    const r = sealer.seal(Uint8Array.of(1), new Uint8Array());
    assert.deepEqual(node.aeadOpen('aes-128-gcm', keyCopy, r.nonce, r.sealed, new Uint8Array()), Uint8Array.of(1));
  });

  it('OneShotSealer refuses a nonce it has used', () => {
    const s = new OneShotSealer(node, 'aes-128-ccm-8', node.randomBytes(16));
    const nonce = node.randomBytes(13);
    s.seal(nonce, Uint8Array.of(1), new Uint8Array());
    assert.throws(() => s.seal(nonce, Uint8Array.of(2), new Uint8Array()), (e) => e instanceof ApiMisuse && e.code === 'nonce-reuse');
    s.seal(node.randomBytes(13), Uint8Array.of(2), new Uint8Array());
  });

  it('Opener counts failures against the integrity limit (CCM_8: 2^7)', () => {
    const key = node.randomBytes(16);
    const opener = new Opener(node, 'aes-128-ccm-8', key);
    const nonce = node.randomBytes(12);
    for (let i = 0; i < 128; i++) assert.throws(() => opener.open(nonce, new Uint8Array(9), new Uint8Array()), CryptoError);
    assert.equal(opener.failures, 128);
    assert.throws(() => opener.open(nonce, new Uint8Array(9), new Uint8Array()), (e) => e instanceof ApiMisuse && e.code === 'aead-integrity-limit');
  });
});

describe('node and noble providers agree on random inputs (fast-check)', () => {
  const suites: AeadId[] = ['chacha20-poly1305', 'aes-128-gcm', 'aes-256-gcm'];
  it('AEAD seal and open', () => {
    fc.assert(fc.property(
      fc.constantFrom(...suites), fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ minLength: 12, maxLength: 12 }),
      fc.uint8Array({ maxLength: 2048 }), fc.uint8Array({ maxLength: 64 }),
      (id, key32, nonce, pt, aad) => {
        const key = id === 'aes-128-gcm' ? key32.subarray(0, 16) : key32;
        const a = node.aeadSeal(id, key, nonce, pt, aad);
        assert.deepEqual(a, noble.aeadSeal(id, key, nonce, pt, aad));
        assert.deepEqual(noble.aeadOpen(id, key, nonce, a, aad), pt);
        for (const p of [node, noble]) {
          const out = new Uint8Array(a.length + 9).fill(0x5a);
          p.aeadSealInto(id, key, nonce, pt, aad, out, 4);
          assert.deepEqual(out.subarray(4, 4 + a.length), a);
          assert.ok(out.subarray(0, 4).every((b) => b === 0x5a) && out.subarray(4 + a.length).every((b) => b === 0x5a));
        }
      }), { numRuns: 300, seed: 20261124 });
  });

  it('aeadSealInto refuses an output range that does not fit, in both providers', () => {
    const key = node.randomBytes(16), nonce = node.randomBytes(12), pt = new Uint8Array(10), aad = new Uint8Array(0);
    for (const p of [node, noble]) {
      assert.throws(() => p.aeadSealInto('aes-128-gcm', key, nonce, pt, aad, new Uint8Array(25), 0), RangeError, p.name);
      assert.throws(() => p.aeadSealInto('aes-128-gcm', key, nonce, pt, aad, new Uint8Array(40), 15), RangeError, p.name);
      assert.throws(() => p.aeadSealInto('aes-128-gcm', key, nonce, pt, aad, new Uint8Array(40), -1), RangeError, p.name);
      assert.throws(() => p.aeadSealInto('aes-128-gcm', key, nonce, pt, aad, new Uint8Array(40), 1.5), TypeError, p.name);
      assert.throws(() => p.aeadSealInto('aes-128-gcm', key, nonce, pt, aad, [] as unknown as Uint8Array, 0), TypeError, p.name);
      assert.throws(() => p.aeadSealInto('aes-128-gcm', key.subarray(1), nonce, pt, aad, new Uint8Array(40), 0), RangeError, p.name);
    }
  });
  it('X25519, HKDF, HMAC, SHA-256, ChaCha20 and AES-ECB', () => {
    fc.assert(fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 200 }), fc.nat({ max: 0xffffffff }),
      (k1, k2, data, len, counter) => {
        const pubN = node.x25519PublicKey(k1);
        assert.deepEqual(pubN, noble.x25519PublicKey(k1));
        let sharedN: Uint8Array | undefined, sharedB: Uint8Array | undefined;
        try { sharedN = node.x25519(k2, pubN); } catch { /* low order: compared below */ }
        try { sharedB = noble.x25519(k2, pubN); } catch { /* same */ }
        assert.deepEqual(sharedN, sharedB);
        assert.deepEqual(node.sha256(data), noble.sha256(data));
        assert.deepEqual(node.hmacSha256(k1, data), noble.hmacSha256(k1, data));
        assert.deepEqual(hkdf(node, k2, k1, data, len), hkdf(noble, k2, k1, data, len));
        assert.deepEqual(node.chacha20(k1, k2.subarray(0, 12), counter, data), noble.chacha20(k1, k2.subarray(0, 12), counter, data));
        assert.deepEqual(node.aesEcbBlock(k1.subarray(0, 16), k2.subarray(0, 16)), noble.aesEcbBlock(k1.subarray(0, 16), k2.subarray(0, 16)));
      }), { numRuns: 200, seed: 20261124 });
  });
});
