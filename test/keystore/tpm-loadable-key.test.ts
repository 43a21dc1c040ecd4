/**
 * The TSS2 PRIVATE KEY form of a TPM store key (loadable-key.ts): its DER structure checked with
 * `openssl asn1parse`, strict decoding (every prefix refused, mutations never crash), and with a
 * real TPM (swtpm behind tpm2-abrmd): OpenSSL's tpm2 provider loads the PEM the store made from
 * its FAPI key, derives the same public key, and signs inside the TPM with it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createPublicKey, verify } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { decodeLoadableKey, encodeLoadableKey, loadableKeyPem, openTpmKeyStore, type TpmKeyStore } from '../../src/keystore/tpm/index.ts';
import { findTpm2Provider, tpm2OpensslConfig } from '../../src/transport/mqtts/tpm2-provider.ts';
import { DecodeError, KeyStoreError } from '../../src/util/errors.ts';

function tpm2b(n: number, fill: number): Uint8Array {
  const b = new Uint8Array(n + 2);
  b[0] = n >> 8;
  b[1] = n & 0xff;
  b.fill(fill, 2);
  return b;
}

const sample = { parent: 0x81000001, emptyAuth: true, tpm2bPublic: tpm2b(86, 0xaa), tpm2bPrivate: tpm2b(126, 0xbb) };

describe('TSS2 PRIVATE KEY encoding', () => {
  it('is the TPMKey SEQUENCE of the TPM 2.0 key file format, as openssl asn1parse reads it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vitalseal-tss2-'));
    try {
      writeFileSync(join(dir, 'k.pem'), loadableKeyPem(encodeLoadableKey(sample)));
      const r = spawnSync('openssl', ['asn1parse', '-in', join(dir, 'k.pem')], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const lines = r.stdout.trim().split('\n').map((l) => l.replace(/^\s*\d+:d=\d+\s+hl=\d+\s+l=\s*\d+\s+/, '').replace(/\s+/g, ' ').trim());
      assert.deepEqual(lines.map((l) => l.replace(/\[HEX DUMP\]:[0-9A-F]+/, 'HEX')), [
        'cons: SEQUENCE',
        'prim: OBJECT :2.23.133.10.1.3',
        'cons: cont [ 0 ]',
        'prim: BOOLEAN :255',
        'prim: INTEGER :81000001',
        'prim: OCTET STRING HEX',
        'prim: OCTET STRING HEX',
      ]);
      assert.match(readFileSync(join(dir, 'k.pem'), 'utf8'), /^-----BEGIN TSS2 PRIVATE KEY-----\n/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('round-trips; small handles are minimal INTEGERs; emptyAuth FALSE is left out', () => {
    assert.deepEqual(decodeLoadableKey(encodeLoadableKey(sample)), sample);
    const owner = { ...sample, parent: 0x40000001, emptyAuth: false };
    const der = encodeLoadableKey(owner);
    assert.deepEqual(decodeLoadableKey(der), owner);
    assert.equal(der.includes(0xa0), false);
  });

  it('refuses blobs that are not marshalled TPM2Bs and handles that are not 32-bit', () => {
    assert.throws(() => encodeLoadableKey({ ...sample, tpm2bPublic: Uint8Array.of(0, 5, 1) }), RangeError);
    assert.throws(() => encodeLoadableKey({ ...sample, parent: 2 ** 32 }), RangeError);
  });

  it('every prefix is refused; random mutations never raise anything but DecodeError', () => {
    const der = encodeLoadableKey(sample);
    for (let n = 0; n < der.length; n++) assert.throws(() => decodeLoadableKey(der.subarray(0, n)), DecodeError, `prefix ${n}`);
    assert.throws(() => decodeLoadableKey(Uint8Array.of(...der, 0)), DecodeError, 'trailing byte');
    fc.assert(fc.property(fc.nat(der.length - 1), fc.integer({ min: 1, max: 255 }), (at, x) => {
      const m = Uint8Array.from(der);
      m[at] = (m[at] as number) ^ x;
      try {
        decodeLoadableKey(m);
      } catch (e) {
        assert.ok(e instanceof DecodeError, String(e));
      }
    }), { numRuns: 3000 });
  });
});

describe('a TPM store key through OpenSSL\'s tpm2 provider', () => {
  let tpm: Swtpm;
  let store: TpmKeyStore;
  let dir: string;

  before(async () => {
    tpm = await startSwtpm({ resourceManager: true });
    Object.assign(process.env, tpm.env);
    dir = mkdtempSync(join(tmpdir(), 'vitalseal-tss2-tpm-'));
    store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir: join(dir, 'tpm') });
    writeFileSync(join(dir, 'openssl.cnf'), tpm2OpensslConfig(findTpm2Provider()));
  });

  after(async () => {
    await store?.close();
    await tpm?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const openssl = (args: string[], input?: Buffer) => spawnSync('openssl', args, {
    env: { ...process.env, ...tpm.env, OPENSSL_CONF: join(dir, 'openssl.cnf'), TPM2OPENSSL_TCTI: tpm.tcti, TSS2_LOG: 'all+NONE' },
    ...(input === undefined ? {} : { input }),
  });

  it('OpenSSL loads the PEM and derives the store\'s public key; it signs inside the TPM and the signature verifies', async () => {
    await store.createSigningKey('device-identity');
    const key = await store.loadableKey('device-identity');
    assert.equal(key.parent, 0x81000001);
    assert.equal(key.tcti, tpm.tcti);
    const decoded = decodeLoadableKey(new Uint8Array(Buffer.from(key.pem.replace(/-----[^-]+-----|\s/g, ''), 'base64')));
    assert.equal(decoded.emptyAuth, true);
    writeFileSync(join(dir, 'key.pem'), key.pem);
    const pub = openssl(['pkey', '-in', join(dir, 'key.pem'), '-pubout']);
    assert.equal(pub.status, 0, pub.stderr.toString());
    assert.equal(pub.stdout.toString(), await store.publicKeyPem('device-identity'));
    const message = Buffer.from('CertificateVerify stand-in');
    const sig = openssl(['dgst', '-sha256', '-sign', join(dir, 'key.pem')], message);
    assert.equal(sig.status, 0, sig.stderr.toString());
    assert.ok(verify('sha256', message, createPublicKey(await store.publicKeyPem('device-identity')), sig.stdout));
  });

  it('only signing keys: a sealed object or a missing name is refused', async () => {
    await store.seal('not-a-key', Uint8Array.of(1, 2, 3));
    await assert.rejects(store.loadableKey('not-a-key'), (e: unknown) => e instanceof KeyStoreError && e.code === 'wrong-type');
    await assert.rejects(store.loadableKey('absent'), (e: unknown) => e instanceof KeyStoreError && e.code === 'not-found');
  });
});
