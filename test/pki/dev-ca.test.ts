import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseCertificate } from '../../src/pki/certificate.ts';
import { parseCrl } from '../../src/pki/crl.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa, openDevCa } from '../../src/pki/dev-ca.ts';
import { DEV_KEY_BANNER, readKeyFile } from '../../src/pki/key-file.ts';
import { pemDecode } from '../../src/pki/pem.ts';
import { DAY_MS } from '../../src/pki/policy.ts';
import { validateChain } from '../../src/pki/validate.ts';
import { ApiMisuse, CertificateError, KeyStoreError } from '../../src/util/errors.ts';
import { p256Signer, T0 } from './fixtures.ts';

const tmp = mkdtempSync(join(tmpdir(), 'vitalseal-devca-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const passphrase = Buffer.from('a passphrase long enough for a test');

function code(c: string) {
  return (e: unknown) => e instanceof Error && (e as { code?: string }).code === c;
}

describe('development CA directory', () => {
  it('init writes the layout with private modes and an initial CRL; keys are scrypt-encrypted', async () => {
    const dir = join(tmp, 'ca1');
    const ca = await initDevCa({ dir, organization: 'Example Fleet', now: T0, passphrase });
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    for (const f of ['root-ca.key', 'issuing-ca.key']) {
      assert.equal(statSync(join(dir, f)).mode & 0o777, 0o600, f);
      assert.match(readFileSync(join(dir, f), 'utf8'), /^-----BEGIN ENCRYPTED PRIVATE KEY-----/);
    }
    const meta = JSON.parse(readFileSync(join(dir, 'pki.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(meta['keyProtection'], 'scrypt-aes-256-cbc');
    assert.equal(meta['crlNumber'], 1);
    assert.equal(ca.root.subject.text, 'O=Example Fleet,CN=Example Fleet Root CA');
    assert.equal(ca.issuing.subject.text, 'O=Example Fleet,CN=Example Fleet Issuing CA 1');
    const chain = pemDecode(readFileSync(join(dir, 'ca-chain.pem'), 'utf8'), 'CERTIFICATE').map((b) => parseCertificate(b.der));
    assert.deepEqual(chain.map((c) => c.subject.text), [ca.issuing.subject.text, ca.root.subject.text]);
    const crl = parseCrl((pemDecode(readFileSync(join(dir, 'crl.pem'), 'utf8'), 'X509 CRL')[0] as { der: Uint8Array }).der);
    assert.equal(crl.crlNumber, 1n);
    assert.equal(crl.nextUpdate, T0 + 7 * DAY_MS);
    assert.equal(crl.revoked.size, 0);
    // The CA key decrypts only with the passphrase; openssl reads it too.
    assert.throws(() => readKeyFile(join(dir, 'issuing-ca.key'), Buffer.from('wrong')), code('bad-passphrase'));
    const r = spawnSync('openssl', ['pkey', '-in', join(dir, 'root-ca.key'), '-passin', `pass:${passphrase.toString()}`, '-noout'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    await assert.rejects(initDevCa({ dir, organization: 'Again', now: T0, passphrase }), (e: unknown) => e instanceof ApiMisuse && e.code === 'exists');
  });

  it('issues, records, revokes and lists; the CRL numbers grow and the chain validates against them', async () => {
    const dir = join(tmp, 'ca2');
    await initDevCa({ dir, organization: 'Example Fleet', now: T0, passphrase });
    const ca = openDevCa(dir, { passphrase });
    const csr = await createCsr({ signer: p256Signer(), subject: { commonName: 'bed-7' } });
    const cert = await ca.issueDevice(csr, 'bed-7', T0 + 1000);
    assert.ok(existsSync(join(dir, 'issued', `${cert.serialHex}.pem`)));
    assert.deepEqual(ca.issued(cert.serialHex)?.der, cert.der);
    const svc = await ca.issueService(await createCsr({ signer: p256Signer(), subject: {} }), { dnsNames: ['broker.local'] }, T0);
    assert.deepEqual(svc.extensions.subjectAltName?.dns, ['broker.local']);

    const loadCrl = () => parseCrl((pemDecode(readFileSync(ca.paths.crl, 'utf8'), 'X509 CRL')[0] as { der: Uint8Array }).der);
    validateChain([cert.der, ca.issuing.der], { roots: [ca.root], now: T0 + DAY_MS, purpose: 'client', revocation: { crls: [loadCrl()] } });
    assert.deepEqual(await ca.revoke(cert.serialHex, 'keyCompromise', T0 + 2000), { crlNumber: 2 });
    const crl = loadCrl();
    assert.equal(crl.crlNumber, 2n);
    assert.equal(crl.revoked.get(cert.serialHex)?.reason, 'keyCompromise');
    assert.throws(() => validateChain([cert.der, ca.issuing.der], { roots: [ca.root], now: T0 + DAY_MS, purpose: 'client', revocation: { crls: [crl] } }),
      (e: unknown) => e instanceof CertificateError && e.code === 'revoked');
    assert.deepEqual(ca.revokedList().map((r) => [r.serialHex, r.subject, r.reason]), [[cert.serialHex, 'O=Example Fleet,CN=bed-7', 'keyCompromise']]);
    await assert.rejects(ca.revoke(cert.serialHex, undefined, T0), (e: unknown) => e instanceof ApiMisuse && e.code === 'exists');
    await assert.rejects(ca.revoke('7f00', undefined, T0), (e: unknown) => e instanceof ApiMisuse && e.code === 'not-found');
    assert.deepEqual(await ca.writeCrl(T0 + 3000), { crlNumber: 3 });
    assert.equal(loadCrl().revoked.size, 1, 'a new CRL keeps the revoked serials');
    // Another opener sees the same state.
    assert.equal(openDevCa(dir, { passphrase }).metadata.crlNumber, 3);
  });

  it('keeps the root key offline when asked, refuses wide key permissions, a wrong passphrase and a held lock', async () => {
    const dir = join(tmp, 'ca3');
    const offline = join(tmp, 'offline-root.key');
    await initDevCa({ dir, organization: 'Example Fleet', now: T0, passphrase, rootKeyPath: offline });
    assert.equal(existsSync(join(dir, 'root-ca.key')), false);
    assert.equal(statSync(offline).mode & 0o777, 0o600);
    assert.equal(readKeyFile(offline, passphrase).asymmetricKeyType, 'ec');
    const csr = await createCsr({ signer: p256Signer(), subject: {} });
    // Issuing needs only the issuing key.
    await openDevCa(dir, { passphrase }).issueDevice(csr, 'bed-1', T0);
    await assert.rejects(openDevCa(dir, { passphrase: Buffer.from('nope') }).issueDevice(csr, 'bed-2', T0), (e: unknown) => e instanceof KeyStoreError && e.code === 'bad-passphrase');
    await assert.rejects(openDevCa(dir).issueDevice(csr, 'bed-2', T0), (e: unknown) => e instanceof KeyStoreError && e.code === 'passphrase-required');
    chmodSync(join(dir, 'issuing-ca.key'), 0o644);
    await assert.rejects(openDevCa(dir, { passphrase }).issueDevice(csr, 'bed-3', T0), (e: unknown) => e instanceof KeyStoreError && e.code === 'insecure-permissions');
    chmodSync(join(dir, 'issuing-ca.key'), 0o600);
    writeFileSync(join(dir, '.lock'), '');
    await assert.rejects(openDevCa(dir, { passphrase }).writeCrl(T0), (e: unknown) => e instanceof ApiMisuse && e.code === 'locked');
    rmSync(join(dir, '.lock'));
    assert.throws(() => openDevCa(join(tmp, 'nowhere')), (e: unknown) => e instanceof ApiMisuse && e.code === 'not-a-ca-directory');
  });

  it('without a passphrase, keys are written in clear under a DEVELOPMENT ONLY banner, and still 0600', async () => {
    const dir = join(tmp, 'ca4');
    const ca = await initDevCa({ dir, organization: 'Dev Fleet', now: T0 });
    const text = readFileSync(join(dir, 'issuing-ca.key'), 'utf8');
    assert.ok(text.startsWith(`${DEV_KEY_BANNER}\n-----BEGIN PRIVATE KEY-----`));
    assert.equal(statSync(join(dir, 'issuing-ca.key')).mode & 0o777, 0o600);
    assert.equal(ca.metadata.keyProtection, 'none (development only)');
    // OpenSSL ignores the banner line.
    assert.equal(spawnSync('openssl', ['pkey', '-in', join(dir, 'issuing-ca.key'), '-noout']).status, 0);
    await ca.issueDevice(await createCsr({ signer: p256Signer(), subject: {} }), 'bed-1', T0);
  });
});
