/**
 * The record_cipher addon's own boundary (src/crypto/libcrypto/addon/record_cipher.c), called
 * directly, below the checks contexts.ts makes first: every malformed argument gets the failure
 * value and nothing is read or written out of range. Its answers are compared with the koffi path
 * and node:crypto in keyed-contexts.test.ts.
 */
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { loadRecordCipherAddon, type RecordCipherAddon } from '../../src/crypto/libcrypto/addon.ts';
import { loadLibcrypto, type CPointer, type LibcryptoBindings } from '../../src/crypto/libcrypto/native.ts';

const lib = loadLibcrypto().bindings as LibcryptoBindings;
const loaded = loadRecordCipherAddon(lib.versionNumber);
const addon = loaded.bindings as RecordCipherAddon;

/** A keyed AES-128-GCM context straight from libcrypto (as contexts.ts makes them), freed by the caller. */
function gcm(key: Uint8Array, enc: 0 | 1): CPointer {
  const ctx = lib.ctxNew();
  assert.ok(ctx !== null);
  assert.equal(lib.init(ctx, lib.cipher('aes-128-gcm'), key, null, enc), 1);
  return ctx;
}

function referenceSeal(key: Uint8Array, nonce: Uint8Array, pt: Uint8Array, aad: Uint8Array): Uint8Array {
  const c = createCipheriv('aes-128-gcm', key, nonce);
  c.setAAD(aad);
  return Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
}

describe('record_cipher addon: the boundary in C', () => {
  it('loads, and binds the OpenSSL koffi binds', () => {
    assert.ok(addon !== undefined, loaded.reason);
    assert.equal(addon.opensslVersion(), lib.versionNumber);
  });

  it('seals and opens exactly as node:crypto does, in place and out of place', () => {
    const key = randomBytes(16), nonce = randomBytes(12), aad = randomBytes(7);
    const tx = gcm(key, 1), rx = gcm(key, 0);
    try {
      for (const n of [0, 1, 15, 16, 17, 1024, 1500]) {
        const pt = randomBytes(n);
        const expected = referenceSeal(key, nonce, pt, aad);
        const out = new Uint8Array(n + 16 + 5);
        assert.equal(addon.seal(tx, false, nonce, pt, aad, out, 5, 16), true);
        assert.deepEqual(out.subarray(5), new Uint8Array(expected));
        const inPlace = new Uint8Array(n + 16);
        inPlace.set(pt);
        assert.equal(addon.seal(tx, false, nonce, inPlace.subarray(0, n), aad, inPlace, 0, 16), true);
        assert.deepEqual(inPlace, new Uint8Array(expected));
        const back = new Uint8Array(n + 3);
        assert.equal(addon.open(rx, false, nonce, new Uint8Array(expected), aad, back, 3, 16), n);
        assert.deepEqual(back.subarray(3), new Uint8Array(pt));
        // Opening in place: the plaintext replaces the ciphertext, the tag after it is left alone.
        const sealed = new Uint8Array(expected);
        assert.equal(addon.open(rx, false, nonce, sealed, aad, sealed, 0, 16), n);
        assert.deepEqual(sealed.subarray(0, n), new Uint8Array(pt));
      }
    } finally {
      lib.ctxFree(tx);
      lib.ctxFree(rx);
    }
  });

  it('a forged record gives -1 and leaves zeros where plaintext would have gone, also in place', () => {
    const key = randomBytes(16), nonce = randomBytes(12), aad = randomBytes(5), pt = randomBytes(300);
    const rx = gcm(key, 0);
    try {
      const sealed = new Uint8Array(referenceSeal(key, nonce, pt, aad));
      sealed[sealed.length - 1] = (sealed[sealed.length - 1] as number) ^ 1;
      const out = new Uint8Array(300).fill(0xee);
      assert.equal(addon.open(rx, false, nonce, sealed, aad, out, 0, 16), -1);
      assert.ok(out.every((b) => b === 0));
      assert.equal(addon.open(rx, false, nonce, sealed, aad, sealed, 0, 16), -1);
      assert.ok(sealed.subarray(0, 300).every((b) => b === 0));
      // The context opens a good record right after.
      const good = new Uint8Array(referenceSeal(key, nonce, pt, aad));
      assert.equal(addon.open(rx, false, nonce, good, aad, new Uint8Array(300), 0, 16), 300);
    } finally {
      lib.ctxFree(rx);
    }
  });

  it('refuses malformed arguments with the failure value, touching nothing', () => {
    const key = randomBytes(16);
    const tx = gcm(key, 1), rx = gcm(key, 0);
    const nonce = new Uint8Array(12), pt = new Uint8Array(32).fill(7), aad = new Uint8Array(3);
    const call = (args: unknown[]) => (addon.seal as (...a: unknown[]) => boolean)(...args);
    const callOpen = (args: unknown[]) => (addon.open as (...a: unknown[]) => number)(...args);
    try {
      const out = new Uint8Array(48).fill(0xaa);
      const untouched = () => assert.ok(out.every((b) => b === 0xaa), 'output touched');
      const good = [tx, false, nonce, pt, aad, out, 0, 16];
      const bad: [string, unknown[]][] = [
        ['too few arguments', good.slice(0, 7)],
        ['context not a BigInt', [1, ...good.slice(1)]],
        ['NULL context', [0n, ...good.slice(1)]],
        ['context wider than 64 bits', [1n << 70n, ...good.slice(1)]],
        ['ccm not a boolean', [tx, 0, ...good.slice(2)]],
        ['nonce a Uint16Array', [tx, false, new Uint16Array(6), ...good.slice(3)]],
        ['empty nonce', [tx, false, new Uint8Array(0), ...good.slice(3)]],
        ["nonce shorter than the context's IV length (it would be over-read)", [tx, false, new Uint8Array(11), ...good.slice(3)]],
        ["nonce longer than the context's IV length", [tx, false, new Uint8Array(13), ...good.slice(3)]],
        ['plaintext a DataView', [tx, false, nonce, new DataView(pt.buffer), ...good.slice(4)]],
        ['aad a string', [tx, false, nonce, pt, 'aad', ...good.slice(5)]],
        ['output one byte short', [tx, false, nonce, pt, aad, out, 1, 16]],
        ['offset past the output', [tx, false, nonce, pt, aad, out, 49, 16]],
        ['negative offset', [tx, false, nonce, pt, aad, out, -1, 16]],
        ['offset not an integer', [tx, false, nonce, pt, aad, out, 'x', 16]],
        ['tag longer than 16', [tx, false, nonce, pt, aad, out, 0, 17]],
        ['tag shorter than 4', [tx, false, nonce, pt, aad, out, 0, 3]],
        ['plaintext overlapping the output at another place', [tx, false, nonce, out.subarray(1, 33), aad, out, 0, 16]],
      ];
      for (const [what, args] of bad) {
        assert.equal(call(args), false, what);
        untouched();
      }
      const sealed = new Uint8Array(48).fill(0xbb);
      const openBad: [string, unknown[]][] = [
        ['shorter than the tag', [rx, false, nonce, new Uint8Array(15), aad, out, 0, 16]],
        ['output too small', [rx, false, nonce, sealed, aad, new Uint8Array(31), 0, 16]],
        ['ciphertext overlapping the output at another place', [rx, false, nonce, out.subarray(2, 50 - 2), aad, out, 0, 16]],
        ['NULL context', [0n, false, nonce, sealed, aad, out, 0, 16]],
        ['nonce shorter than the IV length', [rx, false, new Uint8Array(8), sealed, aad, out, 0, 16]],
      ];
      for (const [what, args] of openBad) assert.equal(callOpen(args), -1, what);
      untouched();
      // Still usable after all of that.
      assert.equal(call(good), true);
    } finally {
      lib.ctxFree(tx);
      lib.ctxFree(rx);
    }
  });

  it('record masks: FIPS-197 C.1 through AES-ECB; bad samples and overlapping outputs are refused', () => {
    const ctx = lib.ctxNew();
    assert.ok(ctx !== null);
    try {
      assert.equal(lib.init(ctx, lib.cipher('aes-128-ecb'), Uint8Array.from(Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex')), null, 1), 1);
      assert.equal(lib.setPadding(ctx, 0), 1);
      const out = new Uint8Array(16);
      assert.equal(addon.mask(ctx, false, Uint8Array.from(Buffer.from('00112233445566778899aabbccddeeff', 'hex')), out), true);
      assert.equal(Buffer.from(out).toString('hex'), '69c4e0d86a7b0430d8cdb78070b4c55a');
      const both = new Uint8Array(24);
      assert.equal(addon.mask(ctx, false, both.subarray(0, 16), both.subarray(8, 24)), false);
      assert.equal(addon.mask(ctx, false, new Uint8Array(15), out), false);
      assert.equal(addon.mask(ctx, false, new Uint8Array(16), new Uint8Array(15)), false);
    } finally {
      lib.ctxFree(ctx);
    }
  });
});
