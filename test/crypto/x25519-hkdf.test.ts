import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { getProvider, hkdf, hkdfExpand, hkdfExtract, PROVIDER_NAMES } from '../../src/crypto/index.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { CryptoError } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';

interface X25519Vector {
  kind: string; id: string; result?: string; flags?: string[];
  scalar?: string; u?: string; output?: string;
  private?: string; public?: string; shared?: string;
  initial_k?: string; initial_u?: string; iterations?: string; k?: string;
  alice_private?: string; alice_public?: string; bob_private?: string; bob_public?: string; shared_secret?: string;
  [key: string]: unknown;
}
interface HkdfVector { id: string; ikm: string; salt: string; info: string; length: number; prk: string; okm: string }

const x = loadVectors<X25519Vector>('x25519.json');
const h = loadVectors<HkdfVector>('hkdf-sha256.json');

function field(v: X25519Vector, ...names: string[]): string {
  for (const n of names) {
    const value = v[n];
    if (typeof value === 'string') return value;
  }
  throw new Error(`${v.id}: none of ${names.join(', ')} in vector`);
}

for (const name of PROVIDER_NAMES) {
  const p = getProvider(name);
  describe(`X25519 known answers (${name} provider)`, () => {
    it('RFC 7748 §5.2 scalar multiplication and iterations (1 and 1,000)', (t) => {
      let done = 0;
      for (const v of x.vectors) {
        if (v.kind === 'scalar_mult') {
          assert.equal(toHex(p.x25519(fromHex(field(v, 'scalar')), fromHex(field(v, 'u', 'u_coordinate')))), field(v, 'output', 'result_u', 'expected'), v.id);
          done++;
        } else if (v.kind === 'iterated') {
          const n = Number(v.iterations);
          if (n > 1000) {
            t.diagnostic(`${v.id}: ${n} iterations skipped (minutes of CPU; 1 and 1,000 cover the same code)`);
            continue;
          }
          let k = fromHex(field(v, 'initial_k')), u = fromHex(field(v, 'initial_u'));
          for (let i = 0; i < n; i++) {
            const next = p.x25519(k, u);
            u = k;
            k = next;
          }
          assert.equal(toHex(k), field(v, 'k'), v.id);
          done++;
        }
      }
      assert.ok(done >= 4);
    });

    it('RFC 7748 §6.1 Diffie-Hellman: both sides derive the same secret', () => {
      const v = x.vectors.find((e) => e.kind === 'diffie_hellman');
      assert.ok(v);
      const alicePriv = fromHex(field(v, 'alice_private', 'alice_private_key'));
      const bobPriv = fromHex(field(v, 'bob_private', 'bob_private_key'));
      assert.equal(toHex(p.x25519PublicKey(alicePriv)), field(v, 'alice_public', 'alice_public_key'));
      assert.equal(toHex(p.x25519PublicKey(bobPriv)), field(v, 'bob_public', 'bob_public_key'));
      const shared = field(v, 'shared_secret', 'shared', 'k');
      assert.equal(toHex(p.x25519(alicePriv, fromHex(field(v, 'bob_public', 'bob_public_key')))), shared);
      assert.equal(toHex(p.x25519(bobPriv, fromHex(field(v, 'alice_public', 'alice_public_key')))), shared);
    });

    it('Wycheproof: valid computes, zero shared secrets are rejected, other acceptable cases compute', () => {
      let rejected = 0;
      for (const v of x.vectors.filter((e) => e.kind === 'wycheproof_xdh_comp')) {
        const priv = fromHex(field(v, 'private')), pub = fromHex(field(v, 'public'));
        if (v.flags?.includes('ZeroSharedSecret')) {
          assert.throws(() => p.x25519(priv, pub), (e) => e instanceof CryptoError && e.code === 'x25519-low-order', v.id);
          rejected++;
        } else {
          assert.equal(toHex(p.x25519(priv, pub)), field(v, 'shared'), v.id);
        }
      }
      assert.ok(rejected >= 10, `expected the low-order cases, saw ${rejected}`);
    });

    it('generated pairs agree and reject bad lengths', () => {
      const a = p.x25519Generate(), b = p.x25519Generate();
      assert.deepEqual(p.x25519(a.privateKey, b.publicKey), p.x25519(b.privateKey, a.publicKey));
      assert.throws(() => p.x25519(a.privateKey.subarray(1), b.publicKey), RangeError);
      assert.throws(() => p.x25519(a.privateKey, new Uint8Array(31)), RangeError);
    });
  });

  describe(`HKDF-SHA256 known answers (${name} provider)`, () => {
    it('RFC 5869 Appendix A.1-A.3', () => {
      for (const v of h.vectors) {
        const prk = hkdfExtract(p, fromHex(v.salt), fromHex(v.ikm));
        assert.equal(toHex(prk), v.prk, v.id);
        assert.equal(toHex(hkdfExpand(p, prk, fromHex(v.info), v.length)), v.okm, v.id);
        assert.equal(toHex(hkdf(p, fromHex(v.salt), fromHex(v.ikm), fromHex(v.info), v.length)), v.okm, v.id);
      }
    });
    it('refuses lengths beyond 255 * HashLen', () => {
      assert.throws(() => hkdfExpand(p, new Uint8Array(32), new Uint8Array(), 255 * 32 + 1), RangeError);
    });
    it('SHA-256 of "abc" (FIPS 180-2 B.1) and HMAC RFC 4231 case 2', () => {
      assert.equal(toHex(p.sha256(new TextEncoder().encode('abc'))), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
      assert.equal(
        toHex(p.hmacSha256(new TextEncoder().encode('Jefe'), new TextEncoder().encode('what do ya want for nothing?'))),
        '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843');
    });
  });
}
