import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { combine } from 'shamir-secret-sharing';
import { combineShares, parseShare, splitSecret } from '../../src/keystore/backup-shares.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';

function code(c: string): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof KeyStoreError, String(e));
    assert.equal(e.code, c, e.message);
    return true;
  };
}

/** GF(2^8) multiplication by shift-and-add with the AES reduction (FIPS-197 §4.2.1): independent of the library's tables. */
function gmul(a: number, b: number): number {
  let p = 0;
  for (let i = 0; i < 8; i++) {
    if (b & 1) p ^= a;
    const hi = a & 0x80;
    a = (a << 1) & 0xff;
    if (hi) a ^= 0x1b;
    b >>= 1;
  }
  return p;
}
function ginv(a: number): number {
  for (let x = 1; x < 256; x++) if (gmul(a, x) === 1) return x;
  throw new Error('no inverse');
}
/** Lagrange interpolation at x = 0 over the raw library shares (y bytes, then x). */
function interpolate(shares: Uint8Array[]): Uint8Array {
  const xs = shares.map((s) => s[s.length - 1] as number);
  const len = (shares[0] as Uint8Array).length - 1;
  const out = new Uint8Array(len);
  for (let k = 0; k < len; k++) {
    let acc = 0;
    for (let i = 0; i < shares.length; i++) {
      let basis = 1;
      for (let j = 0; j < shares.length; j++) {
        if (i === j) continue;
        // l_i(0) = prod x_j / (x_i - x_j); subtraction is XOR in GF(2^8).
        basis = gmul(basis, gmul(xs[j] as number, ginv((xs[i] as number) ^ (xs[j] as number))));
      }
      acc ^= gmul((shares[i] as Uint8Array)[k] as number, basis);
    }
    out[k] = acc;
  }
  return out;
}

describe('Shamir backup shares', () => {
  it('known answers: hand-built GF(2^8) shares combine in the library (FIPS-197 products)', async () => {
    assert.equal(gmul(0x57, 0x83), 0xc1);
    assert.equal(gmul(0x57, 0x13), 0xfe);
    const file = loadVectors<{ threshold: number; secret: string; shares: string[] }>('shamir-gf256.json');
    for (const v of file.vectors) {
      const shares = v.shares.map((h) => new Uint8Array(Buffer.from(h, 'hex')));
      for (let i = 0; i < shares.length; i++) {
        for (let j = i + 1; j < shares.length; j++) {
          const pair = [shares[i] as Uint8Array, shares[j] as Uint8Array];
          assert.equal(Buffer.from(await combine(pair)).toString('hex'), v.secret);
          assert.equal(Buffer.from(interpolate(pair)).toString('hex'), v.secret);
        }
      }
    }
  });

  it('5 shares, threshold 3: every 3 rebuild the secret; the raw shares interpolate (independently) to secret || SHA-256', async () => {
    const secret = new Uint8Array(randomBytes(300));
    const files = await splitSecret(secret, { shares: 5, threshold: 3 });
    assert.equal(files.length, 5);
    assert.match(files[1] as string, /^vitalseal-shamir-share v1\nset: [0-9a-f]{16}\nshare: 2 of 5\nthreshold: 3\ndata: /);
    for (let a = 0; a < 5; a++) for (let b = a + 1; b < 5; b++) for (let c = b + 1; c < 5; c++) {
      assert.deepEqual(await combineShares([files[a], files[b], files[c]] as string[]), secret, `${a}${b}${c}`);
    }
    const raw = [0, 2, 4].map((i) => parseShare(files[i] as string, `f${i}`).data);
    const payload = interpolate(raw);
    assert.deepEqual(payload.subarray(0, 300), secret);
    assert.deepEqual(payload.subarray(300), new Uint8Array(createHash('sha256').update(secret).digest()));
    assert.deepEqual(await combineShares(files), secret, 'all five also work');
  });

  it('refuses too few, mixed, repeated, altered or truncated shares, naming the problem', async () => {
    const secret = new TextEncoder().encode('-----BEGIN PRIVATE KEY----- (a CA key backup)');
    const files = await splitSecret(secret, { shares: 5, threshold: 3 });
    const other = await splitSecret(secret, { shares: 5, threshold: 3 });
    await assert.rejects(combineShares(files.slice(0, 2)), (e: unknown) => code('shares-insufficient')(e) && /3 shares .* needed; 2 given/.test((e as Error).message));
    await assert.rejects(combineShares([files[0], files[1], other[2]] as string[]), code('shares-mismatch'));
    await assert.rejects(combineShares([files[0], files[1], files[1]] as string[]), code('shares-mismatch'));
    const f = files[2] as string;
    const dataLine = /data: (\S+)/.exec(f)?.[1] as string;
    const flipped = Buffer.from(dataLine, 'base64');
    flipped[3] = (flipped[3] as number) ^ 1;
    const mistyped = f.replace(dataLine, flipped.toString('base64'));
    await assert.rejects(combineShares([files[0], files[1], mistyped] as string[]), code('share-invalid'));
    // A forger who also recomputes the check is caught by the checksum inside the secret.
    const body = mistyped.slice(0, mistyped.indexOf('check: '));
    const forged = `${body}check: ${createHash('sha256').update(body).digest('hex').slice(0, 16)}\n`;
    await assert.rejects(combineShares([files[0], files[1], forged] as string[]), code('shares-checksum'));
    for (let n = 0; n < f.length - 1; n++) {
      assert.throws(() => parseShare(f.slice(0, n), 'cut'), code('share-invalid'), `prefix ${n}`);
    }
  });

  it('refuses bad split parameters', async () => {
    await assert.rejects(splitSecret(Uint8Array.of(1), { shares: 5, threshold: 6 }), code('invalid-argument'));
    await assert.rejects(splitSecret(Uint8Array.of(1), { shares: 1, threshold: 1 }), code('invalid-argument'));
    await assert.rejects(splitSecret(new Uint8Array(0), { shares: 3, threshold: 2 }), code('invalid-argument'));
  });
});
