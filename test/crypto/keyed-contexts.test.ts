/**
 * Keyed AEAD and record-mask contexts (src/crypto/keyed.ts): the libcrypto implementation (its
 * per-message calls made by the record_cipher addon, and made through koffi with the addon
 * switched off) and the node:crypto per-call reference must give the same answers, fail the same
 * way, and refuse use after destroy().
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { getProvider, type AeadId } from '../../src/crypto/index.ts';
import { aeadOpenContext, aeadSealContext, keyedContextStatus, recordMaskContext, setKeyedContextDefault, type KeyedOptions } from '../../src/crypto/keyed.ts';
import { LIBCRYPTO_ADDON_ENV } from '../../src/crypto/libcrypto/addon.ts';
import { LIBCRYPTO_ENV } from '../../src/crypto/libcrypto/native.ts';
import { runSelfTest } from '../../src/crypto/selftest.ts';
import { AEAD_SUITES } from '../../src/crypto/suites.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { ApiMisuse, CryptoError, Unsupported } from '../../src/util/errors.ts';
import { withEnv } from '../support/env.ts';
import { loadVectors } from '../support/vectors.ts';

const node = getProvider('node');
type Impl = 'libcrypto' | 'per-call';
/** `addonOff`: contexts made while VITALSEAL_LIBCRYPTO_ADDON=off make each EVP call through koffi. */
const IMPLEMENTATIONS: readonly { readonly name: string; readonly impl: Impl; readonly addonOff: boolean }[] = [
  { name: 'libcrypto, record_cipher addon', impl: 'libcrypto', addonOff: false },
  { name: 'libcrypto, koffi calls', impl: 'libcrypto', addonOff: true },
  { name: 'per-call', impl: 'per-call', addonOff: false },
];

interface AeadVector {
  id: string; key: string; nonce?: string; iv?: string; aad: string; plaintext: string; ciphertext: string; tag: string;
  tag_length?: number; result?: string;
}

const vectorSets: { id: (v: AeadVector) => AeadId | undefined; file: string }[] = [
  { file: 'chacha20poly1305.json', id: () => 'chacha20-poly1305' },
  { file: 'aes-gcm.json', id: (v) => (v.key.length === 32 ? 'aes-128-gcm' : 'aes-256-gcm') },
  { file: 'aes-ccm.json', id: (v) => (v.tag_length === 8 ? 'aes-128-ccm-8' : v.tag_length === 16 ? 'aes-128-ccm-16' : undefined) },
];

function seal(impl: Impl, id: AeadId, key: Uint8Array, nonce: Uint8Array, pt: Uint8Array, aad: Uint8Array): Uint8Array {
  const ctx = aeadSealContext(node, id, key, { nonceLength: nonce.length, implementation: impl });
  try {
    const out = new Uint8Array(pt.length + ctx.tagLength);
    ctx.sealInto(nonce, pt, aad, out, 0);
    return out;
  } finally {
    ctx.destroy();
  }
}

function open(impl: Impl, id: AeadId, key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Uint8Array {
  const ctx = aeadOpenContext(node, id, key, { nonceLength: nonce.length, implementation: impl });
  try {
    const out = new Uint8Array(Math.max(0, sealed.length - ctx.tagLength));
    const n = ctx.openInto(nonce, sealed, aad, out, 0);
    return out.subarray(0, n);
  } finally {
    ctx.destroy();
  }
}

it("the contexts run on Node's own OpenSSL (the version node:crypto reports), and koffi keeps the async stack the TPM store needs", () => {
  const s = keyedContextStatus();
  assert.equal(s.backend, 'libcrypto', s.reason);
  const version = /^\d+\.\d+\.\d+/.exec(process.versions.openssl ?? '')?.[0] ?? 'none';
  assert.ok((s.library ?? '').startsWith(`Node's own OpenSSL (OpenSSL ${version} `), s.library);
  // Loading libcrypto first froze koffi's process-wide settings: FAPI's 1 MiB async stack must be in them.
  const koffi = createRequire(import.meta.url)('koffi') as { config(): { async_stack_size: number } };
  assert.equal(koffi.config().async_stack_size, 1 << 20);
});

it('the per-message calls run in the record_cipher addon (built by scripts/setup), and through koffi when it is switched off', () => {
  const s = keyedContextStatus();
  assert.equal(s.calls, 'addon', s.addonReason);
  const off = withEnv(LIBCRYPTO_ADDON_ENV, 'off', () => keyedContextStatus());
  assert.equal(off.backend, 'libcrypto');
  assert.equal(off.calls, 'koffi');
  assert.equal(off.addonReason, `disabled by ${LIBCRYPTO_ADDON_ENV}=off`);
});

for (const { name, impl, addonOff } of IMPLEMENTATIONS) {
  describe(`keyed AEAD contexts: known answers (${name})`, () => {
    // Contexts pick the addon when they are made: every context of this block is made with it off.
    let saved: string | undefined;
    if (addonOff) {
      before(() => {
        saved = process.env[LIBCRYPTO_ADDON_ENV];
        process.env[LIBCRYPTO_ADDON_ENV] = 'off';
      });
      after(() => {
        if (saved === undefined) delete process.env[LIBCRYPTO_ADDON_ENV];
        else process.env[LIBCRYPTO_ADDON_ENV] = saved;
      });
    }
    it('contexts of this block use the calls it names', () => {
      assert.equal(keyedContextStatus().calls, addonOff ? 'koffi' : 'addon');
    });
    for (const set of vectorSets) {
      it(`${set.file}: valid vectors match, invalid ones are refused`, () => {
        const { vectors } = loadVectors<AeadVector>(set.file);
        let valid = 0;
        for (const v of vectors) {
          const id = set.id(v);
          const key = fromHex(v.key), nonce = fromHex(v.nonce ?? v.iv ?? ''), aad = fromHex(v.aad), pt = fromHex(v.plaintext);
          const sealed = fromHex(v.ciphertext + v.tag);
          if (v.result !== undefined && v.result !== 'valid') {
            // Wycheproof invalid cases: a modified tag fails; unsupported sizes are refused up front.
            assert.throws(() => open(impl, id ?? 'aes-128-ccm-16', key, nonce, sealed, aad), (e) => e instanceof CryptoError || e instanceof RangeError, v.id);
            continue;
          }
          assert.ok(id, v.id);
          assert.equal(toHex(seal(impl, id, key, nonce, pt, aad)), v.ciphertext + v.tag, v.id);
          assert.equal(toHex(open(impl, id, key, nonce, sealed, aad)), v.plaintext, v.id);
          valid++;
        }
        assert.ok(valid >= 2);
      });
    }

    it('tampered tag, ciphertext, AAD, nonce, truncation and wrong key fail with CryptoError(aead-auth-failed), output zeroed', () => {
      for (const id of Object.keys(AEAD_SUITES) as AeadId[]) {
        const suite = AEAD_SUITES[id];
        const key = node.randomBytes(suite.keyLength), nonce = node.randomBytes(12), aad = Uint8Array.of(1, 2, 3);
        const pt = node.randomBytes(100);
        const sealed = seal(impl, id, key, nonce, pt, aad);
        const rx = aeadOpenContext(node, id, key, { implementation: impl });
        const failsCleanly = (n: Uint8Array, s: Uint8Array, a: Uint8Array, what: string, ctx = rx) => {
          const out = new Uint8Array(Math.max(0, s.length - suite.tagLength)).fill(0xee);
          assert.throws(() => ctx.openInto(n, s, a, out, 0), (e: unknown) => e instanceof CryptoError && e.code === 'aead-auth-failed' && !e.message.includes(toHex(key)), `${impl} ${id} ${what}`);
          assert.ok(out.every((b) => b === 0), `${impl} ${id} ${what}: output not wiped`);
        };
        for (const at of [0, 50, sealed.length - suite.tagLength, sealed.length - 1]) {
          const bad = Uint8Array.from(sealed);
          bad[at] = (bad[at] as number) ^ 0x01;
          failsCleanly(nonce, bad, aad, `flip ${at}`);
        }
        failsCleanly(nonce, sealed, Uint8Array.of(1, 2, 4), 'aad');
        failsCleanly(nonce, sealed, new Uint8Array(0), 'aad dropped');
        const otherNonce = Uint8Array.from(nonce);
        otherNonce[11] = (otherNonce[11] as number) ^ 1;
        failsCleanly(otherNonce, sealed, aad, 'nonce');
        failsCleanly(nonce, sealed.subarray(0, sealed.length - 1), aad, 'truncated by one');
        assert.throws(() => rx.openInto(nonce, sealed.subarray(0, suite.tagLength - 1), aad, new Uint8Array(16), 0), (e: unknown) => e instanceof CryptoError && e.code === 'aead-auth-failed');
        const wrong = aeadOpenContext(node, id, node.randomBytes(suite.keyLength), { implementation: impl });
        failsCleanly(nonce, sealed, aad, 'wrong key', wrong);
        // After any number of failures the context still opens good records.
        assert.deepEqual(open(impl, id, key, nonce, sealed, aad), pt);
        const out = new Uint8Array(pt.length);
        assert.equal(rx.openInto(nonce, sealed, aad, out, 0), pt.length);
        assert.deepEqual(out, pt);
        wrong.destroy();
        rx.destroy();
      }
    });

    it('one context over many nonces equals a fresh one-shot seal each time; in place equals out of place', () => {
      for (const id of Object.keys(AEAD_SUITES) as AeadId[]) {
        const suite = AEAD_SUITES[id];
        const key = node.randomBytes(suite.keyLength);
        const tx = aeadSealContext(node, id, key, { implementation: impl });
        const rx = aeadOpenContext(node, id, key, { implementation: impl });
        const iv = node.randomBytes(12);
        for (let i = 0; i < 300; i++) {
          const nonce = Uint8Array.from(iv);
          nonce[11] = (nonce[11] as number) ^ (i & 0xff);
          nonce[10] = (nonce[10] as number) ^ (i >> 8);
          const pt = node.randomBytes(i % 40 === 0 ? 0 : (i * 7) % 1500);
          const aad = node.randomBytes(i % 3 === 0 ? 0 : 13);
          const expected = node.aeadSeal(id, key, nonce, pt, aad);
          const out = new Uint8Array(pt.length + suite.tagLength + 9);
          tx.sealInto(nonce, pt, aad, out, 4);
          assert.equal(toHex(out.subarray(4, 4 + expected.length)), toHex(expected), `${id} #${i}`);
          const inPlace = new Uint8Array(pt.length + suite.tagLength + 3);
          inPlace.set(pt, 3);
          tx.sealInto(nonce, inPlace.subarray(3, 3 + pt.length), aad, inPlace, 3);
          assert.equal(toHex(inPlace.subarray(3)), toHex(expected), `${id} #${i} in place`);
          const back = new Uint8Array(pt.length + 2);
          assert.equal(rx.openInto(nonce, expected, aad, back, 2), pt.length);
          assert.equal(toHex(back.subarray(2)), toHex(pt));
        }
        tx.destroy();
        rx.destroy();
      }
    });

    it('destroy() wipes, is idempotent, and any later use throws ApiMisuse(aead-destroyed)', () => {
      const destroyed = (e: unknown) => e instanceof ApiMisuse && e.code === 'aead-destroyed';
      const tx = aeadSealContext(node, 'aes-128-gcm', new Uint8Array(16), { implementation: impl });
      const rx = aeadOpenContext(node, 'aes-128-gcm', new Uint8Array(16), { implementation: impl });
      const mask = recordMaskContext(node, 'aes-ecb', new Uint8Array(16), { implementation: impl });
      tx.destroy();
      tx.destroy();
      rx.destroy();
      mask.destroy();
      assert.throws(() => tx.sealInto(new Uint8Array(12), new Uint8Array(1), new Uint8Array(0), new Uint8Array(17), 0), destroyed);
      assert.throws(() => rx.openInto(new Uint8Array(12), new Uint8Array(17), new Uint8Array(0), new Uint8Array(1), 0), destroyed);
      assert.throws(() => mask.mask(new Uint8Array(16)), destroyed);
    });

    it('validates at the boundary: nonce length, output range, key length', () => {
      const tx = aeadSealContext(node, 'aes-128-gcm', new Uint8Array(16), { implementation: impl });
      assert.throws(() => tx.sealInto(new Uint8Array(11), new Uint8Array(1), new Uint8Array(0), new Uint8Array(17), 0), RangeError);
      assert.throws(() => tx.sealInto(new Uint8Array(12), new Uint8Array(1), new Uint8Array(0), new Uint8Array(16), 0), RangeError);
      assert.throws(() => tx.sealInto(new Uint8Array(12), new Uint8Array(1), new Uint8Array(0), new Uint8Array(17), 1), RangeError);
      assert.throws(() => aeadSealContext(node, 'aes-128-gcm', new Uint8Array(15), { implementation: impl }), RangeError);
      assert.throws(() => aeadSealContext(node, 'aes-128-gcm', new Uint8Array(16), { implementation: impl, nonceLength: 13 }), RangeError);
      tx.destroy();
    });

    it('record-number masks: RFC 9001 A.2 (AES-ECB), A.5 (ChaCha20), FIPS-197 C.1, reused across samples', () => {
      const ecb = recordMaskContext(node, 'aes-ecb', fromHex('9f50449e04a0e810283a1e9933adedd2'), { implementation: impl });
      assert.equal(toHex(ecb.mask(fromHex('d1b1c98dd7689fb8ec11d242b123dc9b')).subarray(0, 5)), '437b9aec36');
      const fips = recordMaskContext(node, 'aes-ecb', fromHex('000102030405060708090a0b0c0d0e0f'), { implementation: impl });
      assert.equal(toHex(fips.mask(fromHex('00112233445566778899aabbccddeeff'))), '69c4e0d86a7b0430d8cdb78070b4c55a');
      const chacha = recordMaskContext(node, 'chacha20', fromHex('25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4'), { implementation: impl });
      assert.equal(toHex(chacha.mask(fromHex('5e5cd55c41f69080575d7999c25a5bfb')).subarray(0, 5)), 'aefefe7d03');
      // Reuse: the same sample after others gives the same mask.
      for (let i = 0; i < 20; i++) chacha.mask(node.randomBytes(16));
      assert.equal(toHex(chacha.mask(fromHex('5e5cd55c41f69080575d7999c25a5bfb')).subarray(0, 5)), 'aefefe7d03');
      assert.throws(() => ecb.mask(new Uint8Array(15)), RangeError);
      for (const c of [ecb, fips, chacha]) c.destroy();
    });
  });
}

describe('keyed AEAD contexts: libcrypto (addon and koffi calls) agrees with node:crypto', () => {
  it('seal and open agree on random keys, nonces, AAD and plaintexts, both ways (fast-check)', () => {
    const ids = Object.keys(AEAD_SUITES) as AeadId[];
    fc.assert(fc.property(
      fc.constantFrom(...ids), fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ minLength: 13, maxLength: 13 }),
      fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 2100 }), fc.boolean(),
      (id, keyBytes, nonceBytes, aad, pt, cose) => {
        const suite = AEAD_SUITES[id];
        const key = keyBytes.subarray(0, suite.keyLength);
        const nonce = nonceBytes.subarray(0, cose && suite.nonceLengths.includes(13) ? 13 : 12);
        const a = seal('libcrypto', id, key, nonce, pt, aad);
        const b = seal('per-call', id, key, nonce, pt, aad);
        const c = withEnv(LIBCRYPTO_ADDON_ENV, 'off', () => seal('libcrypto', id, key, nonce, pt, aad));
        assert.equal(toHex(a), toHex(b));
        assert.equal(toHex(c), toHex(b));
        assert.equal(toHex(open('per-call', id, key, nonce, a, aad)), toHex(pt));
        assert.equal(toHex(open('libcrypto', id, key, nonce, b, aad)), toHex(pt));
        assert.equal(toHex(withEnv(LIBCRYPTO_ADDON_ENV, 'off', () => open('libcrypto', id, key, nonce, b, aad))), toHex(pt));
      }), { seed: 4, numRuns: 400 });
  });

  it('record masks agree for both kinds on random samples', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.array(fc.uint8Array({ minLength: 16, maxLength: 16 }), { minLength: 1, maxLength: 8 }), fc.constantFrom(16, 32), (key, samples, aesKeyLength) => {
      for (const kind of ['aes-ecb', 'chacha20'] as const) {
        const k = kind === 'aes-ecb' ? key.subarray(0, aesKeyLength) : key;
        const a = recordMaskContext(node, kind, k, { implementation: 'libcrypto' });
        const b = recordMaskContext(node, kind, k, { implementation: 'per-call' });
        const c = withEnv(LIBCRYPTO_ADDON_ENV, 'off', () => recordMaskContext(node, kind, k, { implementation: 'libcrypto' }));
        for (const s of samples) {
          assert.equal(toHex(a.mask(s)), toHex(b.mask(s)), kind);
          assert.equal(toHex(c.mask(s)), toHex(b.mask(s)), kind);
        }
        for (const x of [a, b, c]) x.destroy();
      }
    }), { seed: 5, numRuns: 100 });
  });

  it('the noble provider gets per-call contexts (no libcrypto), with the same answers', () => {
    const noble = getProvider('noble');
    const key = node.randomBytes(32), nonce = node.randomBytes(12), pt = node.randomBytes(300), aad = node.randomBytes(5);
    const tx = aeadSealContext(noble, 'chacha20-poly1305', key);
    assert.equal(tx.backend, 'noble');
    const out = new Uint8Array(316);
    tx.sealInto(nonce, pt, aad, out, 0);
    assert.equal(toHex(out), toHex(seal('libcrypto', 'chacha20-poly1305', key, nonce, pt, aad)));
    assert.throws(() => aeadSealContext(noble, 'aes-128-ccm-8', new Uint8Array(16)), Unsupported);
    tx.destroy();
  });
});

describe('keyed AEAD contexts: fallback when libcrypto cannot be loaded', () => {
  const withLibrary = <T>(value: string, fn: () => T): T => withEnv(LIBCRYPTO_ENV, value, fn);

  it('switched off: node:crypto per call, a one-line reason, and the same answers', () => {
    const key = node.randomBytes(16), nonce = node.randomBytes(12), pt = node.randomBytes(64), aad = new Uint8Array(0);
    const expected = toHex(node.aeadSeal('aes-128-gcm', key, nonce, pt, aad));
    withLibrary('off', () => {
      const s = keyedContextStatus();
      assert.equal(s.backend, 'node');
      assert.equal(s.reason, `disabled by ${LIBCRYPTO_ENV}=off`);
      const tx = aeadSealContext(node, 'aes-128-gcm', key);
      assert.equal(tx.backend, 'node');
      const out = new Uint8Array(80);
      tx.sealInto(nonce, pt, aad, out, 0);
      assert.equal(toHex(out), expected);
      tx.destroy();
      assert.throws(() => aeadSealContext(node, 'aes-128-gcm', key, { implementation: 'libcrypto' } satisfies KeyedOptions),
        (e: unknown) => e instanceof Unsupported && e.code === 'libcrypto-unavailable');
      // The self-test reports what it tested: node:crypto only, and why.
      const report = runSelfTest({ aeads: ['aes-128-gcm'], ecdsa: false });
      assert.equal(report.keyedContexts.backend, 'node');
      assert.ok(report.results.every((r) => r.provider !== 'libcrypto'));
    });
    assert.equal(keyedContextStatus().backend, 'libcrypto');
  });
});

describe("keyed AEAD contexts share Node's OpenSSL without disturbing node:crypto", () => {
  it('a record that fails authentication leaves no error behind for the next node:crypto call', () => {
    for (const id of Object.keys(AEAD_SUITES) as AeadId[]) {
      const key = node.randomBytes(AEAD_SUITES[id].keyLength), nonce = node.randomBytes(12), pt = node.randomBytes(40), aad = node.randomBytes(13);
      const sealed = seal('libcrypto', id, key, nonce, pt, aad);
      sealed[0] = (sealed[0] as number) ^ 1;
      assert.throws(() => open('libcrypto', id, key, nonce, sealed, aad), (e: unknown) => e instanceof CryptoError && e.code === 'aead-auth-failed');
      // node:crypto operations that report any queued OpenSSL error as their own failure.
      const pair = generateKeyPairSync('x25519');
      assert.equal(createPublicKey(pair.privateKey).asymmetricKeyType, 'x25519', id);
      assert.equal(toHex(node.aeadOpen(id, key, nonce, seal('libcrypto', id, key, nonce, pt, aad), aad)), toHex(pt), id);
    }
    const report = runSelfTest({ ecdsa: false });
    assert.equal(report.keyedContexts.backend, 'libcrypto');
  });
});

describe('self-test covers the libcrypto path when it is in use', () => {
  it('every AEAD and both masks run through libcrypto', () => {
    const report = runSelfTest({ ecdsa: false });
    assert.equal(report.keyedContexts.backend, 'libcrypto');
    const lib = report.results.filter((r) => r.provider === 'libcrypto').map((r) => r.primitive);
    assert.deepEqual(lib.sort(), [...(Object.keys(AEAD_SUITES) as AeadId[]).map((id) => `aead:${id}`), 'record-mask:aes-ecb', 'record-mask:chacha20'].sort());
  });

  it('a self-test through the noble provider does not claim libcrypto', () => {
    const report = runSelfTest({ provider: getProvider('noble'), aeads: ['chacha20-poly1305'], ecdsa: false });
    assert.ok(report.results.every((r) => r.provider === 'noble'));
  });
});

describe('a process may choose per-call contexts by default', () => {
  it('per-call by default (the agent), libcrypto still on request, and back to auto', () => {
    const key = node.randomBytes(16);
    try {
      setKeyedContextDefault('per-call', 'one message a second');
      assert.deepEqual(keyedContextStatus(), { backend: 'node', reason: 'one message a second' });
      const a = aeadSealContext(node, 'aes-128-gcm', key);
      assert.equal(a.backend, 'node');
      a.destroy();
      const b = aeadSealContext(node, 'aes-128-gcm', key, { implementation: 'libcrypto' });
      assert.equal(b.backend, 'libcrypto');
      b.destroy();
      assert.equal(runSelfTest({ aeads: ['aes-128-gcm'], ecdsa: false }).keyedContexts.backend, 'node');
    } finally {
      setKeyedContextDefault('auto');
    }
    assert.equal(keyedContextStatus().backend, 'libcrypto');
    const c = aeadSealContext(node, 'aes-128-gcm', key);
    assert.equal(c.backend, 'libcrypto');
    c.destroy();
  });
});
