import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vitalseal-cli-cose-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function vitalseal(args: string[], input?: Uint8Array) {
  const r = spawnSync(process.execPath, [bin, ...args], { input, cwd: dir, maxBuffer: 1 << 24 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

describe('vitalseal cose (through the real bin)', () => {
  const plaintext = Buffer.from('{"hr":72,"spo2":97} and some more bytes to seal');

  it('keygen writes a PKCS#8 key (0600) and an SPKI public key, and refuses to overwrite', () => {
    const r = vitalseal(['cose', 'keygen', '--out', join(dir, 'ingest')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(readFileSync(join(dir, 'ingest.key'), 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
    assert.match(readFileSync(join(dir, 'ingest.pub'), 'utf8'), /^-----BEGIN PUBLIC KEY-----/);
    assert.equal(statSync(join(dir, 'ingest.key')).mode & 0o777, 0o600);
    const again = vitalseal(['cose', 'keygen', '--out', join(dir, 'ingest')]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /refusing to overwrite/);
  });

  for (const alg of ['chacha20-poly1305', 'aes-ccm-16-64-128', 'aes-ccm-16-128-128', 'a128gcm']) {
    it(`seal --alg ${alg} then open gives the plaintext back`, () => {
      const sealed = vitalseal(['cose', 'seal', '--to', join(dir, 'ingest.pub'), '--alg', alg], plaintext);
      assert.equal(sealed.code, 0, sealed.stderr);
      assert.equal(sealed.stdout[0], 0xd8, 'tagged COSE_Encrypt (96)');
      assert.equal(sealed.stdout[1], 0x60);
      const opened = vitalseal(['cose', 'open', '--key', join(dir, 'ingest.key')], sealed.stdout);
      assert.equal(opened.code, 0, opened.stderr);
      assert.deepEqual(opened.stdout, plaintext);
    });
  }

  it('works with a key pair made by openssl genpkey -algorithm X25519', () => {
    const key = join(dir, 'ossl.key');
    const pub = join(dir, 'ossl.pub');
    assert.equal(spawnSync('openssl', ['genpkey', '-algorithm', 'X25519', '-out', key]).status, 0);
    assert.equal(spawnSync('openssl', ['pkey', '-in', key, '-pubout', '-out', pub]).status, 0);
    const sealed = vitalseal(['cose', 'seal', '--to', pub], plaintext);
    assert.equal(sealed.code, 0, sealed.stderr);
    const opened = vitalseal(['cose', 'open', '--key', key], sealed.stdout);
    assert.deepEqual(opened.stdout, plaintext);
  });

  it('fails with a clear message and a non-zero exit on tampering, truncation or the wrong key', () => {
    const sealed = vitalseal(['cose', 'seal', '--to', join(dir, 'ingest.pub')], plaintext).stdout;
    const flipped = Buffer.from(sealed);
    flipped[flipped.length - 60] = (flipped[flipped.length - 60] as number) ^ 1;
    const bad = vitalseal(['cose', 'open', '--key', join(dir, 'ingest.key')], flipped);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /decryption failed|COSE/);
    assert.equal(bad.stdout.length, 0, 'nothing written on failure');
    const cut = vitalseal(['cose', 'open', '--key', join(dir, 'ingest.key')], sealed.subarray(0, sealed.length - 3));
    assert.equal(cut.code, 1);
    assert.match(cut.stderr, /CBOR|COSE/);
    vitalseal(['cose', 'keygen', '--out', join(dir, 'other')]);
    const wrong = vitalseal(['cose', 'open', '--key', join(dir, 'other.key')], sealed);
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /decryption failed/);
  });

  it('usage errors exit 2 and never echo key material', () => {
    const r = vitalseal(['cose', 'seal', '--to', join(dir, 'ingest.pub'), '--alg', 'rot13'], plaintext);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown --alg/);
    const r2 = vitalseal(['cose', 'open', '--key', join(dir, 'ingest.pub')], plaintext);
    assert.equal(r2.code, 1);
    assert.doesNotMatch(r2.stderr, /BEGIN/);
  });
});
