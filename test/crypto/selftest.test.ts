/**
 * The power-on self-test: passes on the real providers, agrees with the vector files, and refuses
 * to pass when any one primitive is broken (each broken on purpose through an injected provider).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { p256 } from '@noble/curves/nist.js';
import { gcm } from '@noble/ciphers/aes.js';
import { getProvider } from '../../src/crypto/registry.ts';
import type { CryptoProvider } from '../../src/crypto/provider.ts';
import { nodeEcdsaP256, runSelfTest, SELF_TEST_VECTORS, SelfTestFailure, type EcdsaP256, type SelfTestPrimitive } from '../../src/crypto/selftest.ts';
import { AEAD_IDS, type AeadId } from '../../src/crypto/suites.ts';
import { fromHex, toHex, utf8 } from '../../src/util/bytes.ts';
import { loadVectors } from '../support/vectors.ts';

const node = getProvider('node');

/** The node provider with one method replaced. */
function broken(patch: Partial<CryptoProvider>): CryptoProvider {
  return Object.freeze({ ...bind(node), ...patch });
}

function bind(p: CryptoProvider): CryptoProvider {
  return {
    name: p.name,
    supportsAead: (id) => p.supportsAead(id),
    aeadSeal: (...a) => p.aeadSeal(...a),
    aeadSealInto: (...a) => p.aeadSealInto(...a),
    aeadOpen: (...a) => p.aeadOpen(...a),
    x25519Generate: () => p.x25519Generate(),
    x25519PublicKey: (k) => p.x25519PublicKey(k),
    x25519: (k, u) => p.x25519(k, u),
    sha256: (d) => p.sha256(d),
    hmacSha256: (k, d) => p.hmacSha256(k, d),
    randomBytes: (n) => p.randomBytes(n),
    aesEcbBlock: (k, b) => p.aesEcbBlock(k, b),
    chacha20: (k, n, c, d) => p.chacha20(k, n, c, d),
  };
}

function failsOn(primitive: SelfTestPrimitive, run: () => unknown): void {
  assert.throws(run, (e) => {
    assert.ok(e instanceof SelfTestFailure, `expected SelfTestFailure, got ${String(e)}`);
    assert.equal(e.primitive, primitive);
    assert.equal(e.code, 'self-test-failed');
    assert.match(e.message, new RegExp(primitive.replace(/[-:]/g, (c) => `\\${c}`)));
    return true;
  });
}

const nobleEcdsa: EcdsaP256 = {
  name: 'noble',
  verify: (pub, msg, sig) => p256.verify(sig, msg, pub, { lowS: false }),
  generate() {
    const { secretKey } = p256.keygen();
    return {
      publicKey: p256.getPublicKey(secretKey, false),
      sign: (m) => p256.sign(m, secretKey, { lowS: false }),
      destroy: () => secretKey.fill(0),
    };
  },
};

describe('power-on self-test', () => {
  it('passes on the node provider for every suite and names what it tested', () => {
    const r = runSelfTest();
    const names = r.results.map((x) => x.primitive);
    for (const id of AEAD_IDS) assert.ok(names.includes(`aead:${id}`), id);
    for (const p of ['x25519', 'hkdf-sha256', 'sha256', 'ecdsa-p256-verify', 'ecdsa-p256-sign-verify'] as const) assert.ok(names.includes(p), p);
  });

  it('passes on the noble provider for the suites it has, and with noble ECDSA', () => {
    const noble = getProvider('noble');
    const aeads = AEAD_IDS.filter((id) => noble.supportsAead(id));
    assert.ok(aeads.length >= 3);
    runSelfTest({ provider: noble, aeads, ecdsa: nobleEcdsa });
  });

  it('reports a suite the chosen provider lacks as a failure, not a pass', () => {
    failsOn('aead:aes-128-ccm-8', () => runSelfTest({ provider: getProvider('noble'), aeads: ['aes-128-ccm-8'], ecdsa: false }));
  });

  for (const id of AEAD_IDS) {
    it(`refuses to pass when ${id} seals wrongly (either way), or opens a forgery`, () => {
      failsOn(`aead:${id}`, () => runSelfTest({
        aeads: [id], ecdsa: false,
        provider: broken({ aeadSeal: (a, k, n, p, d) => { const s = node.aeadSeal(a, k, n, p, d); if (a === id) s[0] = (s[0] as number) ^ 1; return s; } }),
      }));
      failsOn(`aead:${id}`, () => runSelfTest({
        aeads: [id], ecdsa: false,
        provider: broken({ aeadOpen: (a, k, n, s, d) => (a === id ? s.subarray(0, s.length - (a === 'aes-128-ccm-8' ? 8 : 16)) : node.aeadOpen(a, k, n, s, d)) }),
      }));
      failsOn(`aead:${id}`, () => runSelfTest({
        aeads: [id], ecdsa: false,
        provider: broken({ aeadSealInto: (a, k, n, p, d, out, at) => { node.aeadSealInto(a, k, n, p, d, out, at); if (a === id) out[at + 1] = (out[at + 1] as number) ^ 1; } }),
      }));
    });
  }

  it('refuses to pass when X25519 is wrong or accepts a low-order point', () => {
    failsOn('x25519', () => runSelfTest({ aeads: ['chacha20-poly1305'], ecdsa: false, provider: broken({ x25519: () => new Uint8Array(32).fill(7) }) }));
    failsOn('x25519', () => runSelfTest({ aeads: ['chacha20-poly1305'], ecdsa: false, provider: broken({ x25519: (k, u) => (u.every((b) => b === 0) ? new Uint8Array(32) : node.x25519(k, u)) }) }));
  });

  it('refuses to pass when SHA-256 or HMAC (so HKDF) is wrong', () => {
    failsOn('sha256', () => runSelfTest({ aeads: ['chacha20-poly1305'], ecdsa: false, provider: broken({ sha256: (d) => node.sha256(utf8(`${d.length}`)) }) }));
    failsOn('hkdf-sha256', () => runSelfTest({ aeads: ['chacha20-poly1305'], ecdsa: false, provider: broken({ hmacSha256: (k, d) => node.hmacSha256(d, k) }) }));
  });

  it('refuses to pass when ECDSA verify accepts anything, rejects everything, or signing is broken', () => {
    const always: EcdsaP256 = { ...nodeEcdsaP256, name: 'always-true', verify: () => true };
    failsOn('ecdsa-p256-verify', () => runSelfTest({ aeads: [], ecdsa: always }));
    const never: EcdsaP256 = { ...nodeEcdsaP256, name: 'always-false', verify: () => false };
    failsOn('ecdsa-p256-verify', () => runSelfTest({ aeads: [], ecdsa: never }));
    const badSign: EcdsaP256 = {
      name: 'bad-sign', verify: (...a) => nodeEcdsaP256.verify(...a),
      generate() {
        const k = nodeEcdsaP256.generate();
        return { publicKey: k.publicKey, sign: (m) => { const s = k.sign(m); s[10] = (s[10] as number) ^ 1; return s; }, destroy: () => k.destroy() };
      },
    };
    failsOn('ecdsa-p256-sign-verify', () => runSelfTest({ aeads: [], ecdsa: badSign }));
  });

  it('a provider that throws becomes a failure naming the primitive, not an unhandled error', () => {
    failsOn('sha256', () => runSelfTest({ aeads: [], ecdsa: false, provider: broken({ sha256: () => { throw new Error('engine gone'); } }) }));
  });
});

describe('self-test vectors agree with test/vectors/ and with independent implementations', () => {
  const aeadFiles: Record<AeadId, () => { key: string; nonce: string; aad: string; plaintext: string; sealed: string }> = {
    'chacha20-poly1305': () => {
      const v = loadVectors<Record<string, string>>('chacha20poly1305.json').vectors.find((x) => x['id'] === 'rfc8439-2.8.2') as Record<string, string>;
      return { key: v['key'] as string, nonce: v['nonce'] as string, aad: v['aad'] as string, plaintext: v['plaintext'] as string, sealed: `${v['ciphertext']}${v['tag']}` };
    },
    'aes-128-ccm-8': () => ccm('rfc3610-packet-vector-1'),
    'aes-128-ccm-16': () => ccm('wycheproof-aes_ccm-tc267'),
    'aes-128-gcm': () => gcmVec('gcm-tc4'),
    'aes-256-gcm': () => gcmVec('gcm-tc16'),
  };
  function ccm(id: string) {
    const v = loadVectors<Record<string, string>>('aes-ccm.json').vectors.find((x) => x['id'] === id) as Record<string, string>;
    return { key: v['key'] as string, nonce: v['nonce'] as string, aad: v['aad'] as string, plaintext: v['plaintext'] as string, sealed: `${v['ciphertext']}${v['tag']}` };
  }
  function gcmVec(id: string) {
    const v = loadVectors<Record<string, string>>('aes-gcm.json').vectors.find((x) => x['id'] === id) as Record<string, string>;
    return { key: v['key'] as string, nonce: v['iv'] as string, aad: v['aad'] as string, plaintext: v['plaintext'] as string, sealed: `${v['ciphertext']}${v['tag']}` };
  }

  for (const id of AEAD_IDS) {
    it(`${id}: the embedded KAT is the vector file's`, () => {
      const e = SELF_TEST_VECTORS.aead[id];
      assert.deepEqual({ key: e.key, nonce: e.nonce, aad: e.aad, plaintext: e.plaintext, sealed: e.sealed }, aeadFiles[id]());
    });
  }

  it('AES-GCM vectors: node:crypto and @noble/ciphers both reproduce every one', () => {
    for (const v of loadVectors<Record<string, string>>('aes-gcm.json').vectors) {
      const [key, iv, aad, pt] = [v['key'], v['iv'], v['aad'], v['plaintext']].map((h) => fromHex(h as string)) as [Uint8Array, Uint8Array, Uint8Array, Uint8Array];
      const want = `${v['ciphertext']}${v['tag']}`;
      assert.equal(toHex(node.aeadSeal(v['suite'] as AeadId, key, iv, pt, aad)), want, v['id']);
      assert.equal(toHex(gcm(key, iv, aad).encrypt(pt)), want, v['id']);
    }
  });

  it('ECDSA vectors: both signatures verify under node and noble; the embedded one is the file\'s', () => {
    const f = loadVectors<Record<string, string>>('ecdsa-p256-rfc6979.json') as unknown as { public_key: string; private_key: string; vectors: Record<string, string>[] };
    assert.equal(SELF_TEST_VECTORS.ecdsa.publicKey, f.public_key);
    assert.equal(toHex(p256.getPublicKey(fromHex(f.private_key), false)), f.public_key, 'public key is the private key times G');
    for (const v of f.vectors) {
      const [msg, sig] = [utf8(v['message'] as string), fromHex(v['signature'] as string)];
      assert.ok(nodeEcdsaP256.verify(fromHex(f.public_key), msg, sig), v['id']);
      assert.ok(nobleEcdsa.verify(fromHex(f.public_key), msg, sig), v['id']);
      // RFC 6979 is deterministic: noble's signer must reproduce the published signature exactly.
      assert.equal(toHex(p256.sign(msg, fromHex(f.private_key), { lowS: false })), v['signature'], v['id']);
    }
    const sample = f.vectors.find((v) => v['message'] === 'sample') as Record<string, string>;
    assert.equal(SELF_TEST_VECTORS.ecdsa.signature, sample['signature']);
  });

  it('SHA-256, X25519 and HKDF: the embedded KATs are the vector files\'', () => {
    const sha = loadVectors<Record<string, string>>('sha256.json').vectors;
    assert.equal(SELF_TEST_VECTORS.sha256.digest, sha[0]?.['digest']);
    for (const v of sha) assert.equal(toHex(node.sha256(utf8(v['message_ascii'] as string))), v['digest']);
    const x = loadVectors<Record<string, string>>('x25519.json').vectors.find((v) => v['id'] === 'rfc7748-6.1') as Record<string, string>;
    assert.deepEqual(SELF_TEST_VECTORS.x25519, { alicePrivate: x['alice_private'], alicePublic: x['alice_public'], bobPublic: x['bob_public'], shared: x['shared_secret'] });
    const h = loadVectors<Record<string, string>>('hkdf-sha256.json').vectors.find((v) => v['id'] === 'rfc5869-A.1') as Record<string, string>;
    assert.deepEqual(SELF_TEST_VECTORS.hkdf, { ikm: h['ikm'], salt: h['salt'], info: h['info'], okm: h['okm'] });
  });
});
