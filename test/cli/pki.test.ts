import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startSoftHsm } from '../../scripts/lib/softhsm.ts';
import { startSwtpm } from '../../scripts/lib/swtpm.ts';
import { parseCertificate } from '../../src/pki/certificate.ts';
import { parseCrl } from '../../src/pki/crl.ts';
import { pemDecode } from '../../src/pki/pem.ts';
import { validateChain } from '../../src/pki/validate.ts';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vitalseal-cli-pki-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const CA_PASS = 'ca passphrase for the cli test';
const KEY_PASS = 'device key passphrase for the cli test';

function vitalseal(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: dir, env: { ...process.env, VITALSEAL_PKI_PASSPHRASE: '', ...env }, encoding: 'utf8' });
  const out = { code: r.status, stdout: r.stdout, stderr: r.stderr };
  // Secrets never reach the terminal.
  assert.doesNotMatch(r.stdout + r.stderr, new RegExp(`${CA_PASS}|${KEY_PASS}|BEGIN (ENCRYPTED )?PRIVATE KEY`));
  return out;
}
const withCa = { VITALSEAL_PKI_PASSPHRASE: CA_PASS };

function openssl(args: string[]) {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  return { code: r.status, out: r.stdout + r.stderr };
}

function certs(path: string) {
  return pemDecode(readFileSync(join(dir, path), 'utf8'), 'CERTIFICATE').map((b) => parseCertificate(b.der));
}

describe('vitalseal pki (through the real bin)', () => {
  before(() => {
    assert.equal(openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'bed-7.key', '-subj', '/CN=bed-7', '-out', 'bed-7.csr']).code, 0);
    assert.equal(openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'broker.key', '-subj', '/CN=broker', '-out', 'broker.csr']).code, 0);
  });

  it('init refuses to run without a passphrase unless asked for unencrypted development keys', () => {
    const r = vitalseal(['pki', 'init', '--dir', 'ca-x', '--org', 'Example Fleet']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /no passphrase for the CA keys.*--unencrypted-dev-keys/);
    assert.equal(existsSync(join(dir, 'ca-x')), false);
    const dev = vitalseal(['pki', 'init', '--dir', 'ca-dev', '--org', 'Dev Fleet', '--unencrypted-dev-keys']);
    assert.equal(dev.code, 0, dev.stderr);
    assert.match(dev.stderr, /NOT encrypted \(development only\)/);
  });

  it('init creates an encrypted CA; the root key can go elsewhere', () => {
    const r = vitalseal(['pki', 'init', '--dir', 'ca', '--org', 'Example Fleet', '--device-days', '365', '--root-key-out', 'offline-root.key'], withCa);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /root CA {6}O=Example Fleet,CN=Example Fleet Root CA {2}\(pin sha256\//);
    assert.match(r.stderr, /keep it offline/);
    assert.equal(existsSync(join(dir, 'ca', 'root-ca.key')), false);
    assert.equal(statSync(join(dir, 'offline-root.key')).mode & 0o777, 0o600);
    assert.equal(JSON.parse(readFileSync(join(dir, 'ca', 'pki.json'), 'utf8')).policy.deviceDays, 365);
    assert.equal(vitalseal(['pki', 'init', '--dir', 'ca', '--org', 'Again'], withCa).code, 1);
  });

  it('issue: a device certificate from an openssl CSR, which openssl verifies; refuses overwrite and bad ids', () => {
    const r = vitalseal(['pki', 'issue', '--dir', 'ca', '--csr', 'bed-7.csr', '--device-id', 'bed-7', '--out', 'bed-7.pem'], withCa);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /issued O=Example Fleet,CN=bed-7 serial [0-9a-f]{32}/);
    const v = openssl(['verify', '-CAfile', 'ca/root-ca.pem', '-untrusted', 'ca/issuing-ca.pem', '-purpose', 'sslclient', 'bed-7.pem']);
    assert.equal(v.code, 0, v.out);
    const [leaf] = certs('bed-7.pem');
    const [root] = certs('ca/root-ca.pem');
    const [issuing] = certs('ca/issuing-ca.pem');
    assert.equal(validateChain([leaf!.der, issuing!.der], { roots: [root!], now: Date.now(), purpose: 'client' }).deviceId, 'bed-7');
    assert.equal(vitalseal(['pki', 'issue', '--dir', 'ca', '--csr', 'bed-7.csr', '--device-id', 'bed-7', '--out', 'bed-7.pem'], withCa).code, 2);
    assert.equal(vitalseal(['pki', 'issue', '--dir', 'ca', '--csr', 'bed-7.csr', '--device-id', 'bed/7'], withCa).code, 2);
    const mismatch = vitalseal(['pki', 'issue', '--dir', 'ca', '--csr', 'bed-7.csr', '--device-id', 'bed-8'], withCa);
    assert.equal(mismatch.code, 1);
    assert.match(mismatch.stderr, /\[device-id-mismatch\]/);
    const noPass = vitalseal(['pki', 'issue', '--dir', 'ca', '--csr', 'bed-7.csr', '--device-id', 'bed-7']);
    assert.equal(noPass.code, 2);
    assert.match(noPass.stderr, /encrypted: set VITALSEAL_PKI_PASSPHRASE/);
    const wrong = vitalseal(['pki', 'issue', '--dir', 'ca', '--csr', 'bed-7.csr', '--device-id', 'bed-7'], { VITALSEAL_PKI_PASSPHRASE: 'wrong' });
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /\[bad-passphrase\]/);
  });

  it('issue --server: DNS and IP SANs, serverAuth (+clientAuth), --chain on stdout; passphrase from a 0600 file', () => {
    writeFileSync(join(dir, 'pass.txt'), `${CA_PASS}\n`, { mode: 0o600 });
    const r = vitalseal(['pki', 'issue', '--dir', 'ca', '--csr', 'broker.csr', '--server', 'broker.example.org', '--server', '127.0.0.1', '--client-auth', '--chain', '--passphrase-file', 'pass.txt']);
    assert.equal(r.code, 0, r.stderr);
    const chain = pemDecode(r.stdout, 'CERTIFICATE').map((b) => parseCertificate(b.der));
    assert.equal(chain.length, 2);
    assert.deepEqual(chain[0]?.extensions.subjectAltName?.dns, ['broker.example.org']);
    assert.deepEqual(chain[0]?.extensions.subjectAltName?.ips, ['127.0.0.1']);
    writeFileSync(join(dir, 'broker-chain.pem'), r.stdout);
    assert.equal(openssl(['verify', '-CAfile', 'ca/root-ca.pem', '-untrusted', 'broker-chain.pem', '-purpose', 'sslserver', '-verify_ip', '127.0.0.1', 'broker-chain.pem']).code, 0);
    writeFileSync(join(dir, 'open-pass.txt'), CA_PASS, { mode: 0o644 });
    const loose = vitalseal(['pki', 'issue', '--dir', 'ca', '--csr', 'broker.csr', '--server', 'b', '--passphrase-file', 'open-pass.txt']);
    assert.equal(loose.code, 1);
    assert.match(loose.stderr, /chmod 600 .*\[insecure-permissions\]/);
  });

  it('revoke writes a CRL that lists the certificate; openssl -crl_check then refuses it; crl bumps the number', () => {
    const r = vitalseal(['pki', 'revoke', '--dir', 'ca', '--cert', 'bed-7.pem', '--reason', 'keyCompromise'], withCa);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /CRL number 2/);
    const [leaf] = certs('bed-7.pem');
    const crl = parseCrl((pemDecode(readFileSync(join(dir, 'ca', 'crl.pem'), 'utf8'), 'X509 CRL')[0] as { der: Uint8Array }).der);
    assert.equal(crl.revoked.get(leaf!.serialHex)?.reason, 'keyCompromise');
    const v = openssl(['verify', '-crl_check', '-CAfile', 'ca/ca-chain.pem', '-CRLfile', 'ca/crl.pem', 'bed-7.pem']);
    assert.notEqual(v.code, 0);
    assert.match(v.out, /certificate revoked/);
    const again = vitalseal(['pki', 'revoke', '--dir', 'ca', '--serial', leaf!.serialHex], withCa);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already revoked/);
    assert.equal(vitalseal(['pki', 'revoke', '--dir', 'ca', '--serial', '00zz'], withCa).code, 2);
    assert.equal(vitalseal(['pki', 'revoke', '--dir', 'ca', '--cert', 'bed-7.pem', '--reason', 'boredom'], withCa).code, 2);
    const c = vitalseal(['pki', 'crl', '--dir', 'ca', '--out', 'crl-copy.pem'], withCa);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stderr, /CRL number 3, 1 revoked/);
    assert.equal(openssl(['crl', '-in', 'crl-copy.pem', '-CAfile', 'ca/issuing-ca.pem', '-noout']).code, 0);
  });

  it('inspect: certificates, chains, CSRs, CRLs, text or JSON; garbage is a typed error; keys are never shown', () => {
    const t = vitalseal(['pki', 'inspect', 'bed-7.pem']);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /deviceId\s+bed-7/);
    assert.match(t.stdout, /extKeyUsage\s+\["clientAuth"\]/);
    const j = JSON.parse(vitalseal(['pki', 'inspect', 'broker-chain.pem', '--json']).stdout) as { type: string; subject: string }[];
    assert.deepEqual(j.map((x) => x.type), ['certificate', 'certificate']);
    assert.equal(JSON.parse(vitalseal(['pki', 'inspect', 'bed-7.csr', '--json']).stdout).signature, 'valid (proof of possession)');
    const crl = JSON.parse(vitalseal(['pki', 'inspect', 'ca/crl.pem', '--json']).stdout) as { crlNumber: string; revoked: unknown[] };
    assert.equal(crl.crlNumber, '3');
    assert.equal(crl.revoked.length, 1);
    const der = Buffer.from(pemDecode(readFileSync(join(dir, 'bed-7.pem'), 'utf8'))[0]!.der);
    writeFileSync(join(dir, 'bed-7.der'), der);
    assert.equal(JSON.parse(vitalseal(['pki', 'inspect', 'bed-7.der', '--json']).stdout).deviceId, 'bed-7');
    writeFileSync(join(dir, 'cut.der'), der.subarray(0, 100));
    const bad = vitalseal(['pki', 'inspect', 'cut.der']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /\[malformed\]/);
    const key = vitalseal(['pki', 'inspect', 'bed-7.key']);
    assert.equal(key.code, 0);
    assert.match(key.stdout, /not inspected/);
  });
});

describe('vitalseal provision (through the real bin)', () => {
  before(() => {
    const r = vitalseal(['pki', 'init', '--dir', 'fleet', '--org', 'Example Fleet'], withCa);
    assert.equal(r.code, 0, r.stderr);
  });

  it('--help says where keys go and names both issuers', () => {
    const r = vitalseal(['provision', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /dev-pem/);
    assert.match(r.stdout, /--enrol URL {4}the ingest service's enrolment endpoint/);
    assert.match(r.stdout, /--pki DIR {6}a local development CA/);
  });

  it('dev-pem with a key passphrase: key 0600 and encrypted, chain verified by openssl, the key matches the certificate', () => {
    const r = vitalseal(['provision', '--device-id', 'bed-7', '--pki', 'fleet', '--out', 'bed-7-id', '--key-passphrase-env', 'DEVKEY'], { ...withCa, DEVKEY: KEY_PASS });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /provisioned device bed-7/);
    assert.match(r.stderr, /scrypt-encrypted key file/);
    const out = join(dir, 'bed-7-id');
    assert.equal(statSync(out).mode & 0o777, 0o700);
    assert.equal(statSync(join(out, 'device-identity.key')).mode & 0o777, 0o600);
    assert.match(readFileSync(join(out, 'device-identity.key'), 'utf8'), /^-----BEGIN ENCRYPTED PRIVATE KEY-----/);
    const v = openssl(['verify', '-CAfile', 'bed-7-id/root-ca.pem', '-untrusted', 'bed-7-id/chain.pem', '-purpose', 'sslclient', 'bed-7-id/device.pem']);
    assert.equal(v.code, 0, v.out);
    const pub = openssl(['pkey', '-in', 'bed-7-id/device-identity.key', '-passin', `pass:${KEY_PASS}`, '-pubout']);
    const certPub = openssl(['x509', '-in', 'bed-7-id/device.pem', '-noout', '-pubkey']);
    assert.equal(pub.out, certPub.out);
    assert.equal(openssl(['req', '-verify', '-in', 'bed-7-id/device.csr', '-noout']).code, 0);
    const id = JSON.parse(readFileSync(join(out, 'identity.json'), 'utf8')) as Record<string, string>;
    assert.equal(id['deviceId'], 'bed-7');
    assert.equal(id['store'], 'dev-pem');
    assert.match(id['spkiPin'] as string, /^sha256\//);
    assert.equal(vitalseal(['provision', '--device-id', 'bed-7', '--pki', 'fleet', '--out', 'bed-7-id', '--unencrypted-dev-keys'], withCa).code, 2);
  });

  it('dev-pem needs a key passphrase or --unencrypted-dev-keys, and refuses store options', () => {
    const r = vitalseal(['provision', '--device-id', 'bed-8', '--pki', 'fleet', '--out', 'bed-8-id'], withCa);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--unencrypted-dev-keys/);
    const foreign = vitalseal(['provision', '--device-id', 'bed-8', '--pki', 'fleet', '--out', 'bed-8-id', '--unencrypted-dev-keys', '--tcti', 'device:/dev/tpmrm0'], withCa);
    assert.equal(foreign.code, 2);
    assert.match(foreign.stderr, /--tcti does not apply to --store dev-pem/);
    assert.equal(vitalseal(['provision', '--device-id', 'bed-8', '--pki', 'fleet', '--out', 'bed-8-id', '--store', 'floppy'], withCa).code, 2);
    assert.equal(existsSync(join(dir, 'bed-8-id')), false);
  });

  it('a TPM-held identity (swtpm): the certificate carries the key the TPM holds, and openssl verifies the chain', async () => {
    const tpm = await startSwtpm();
    try {
      const store = ['--store', 'tpm', '--tcti', tpm.tcti, '--dir', join(dir, 'tpm-store')];
      const r = vitalseal(['provision', '--device-id', 'bed-tpm', '--pki', 'fleet', '--out', 'bed-tpm-id', ...store], withCa);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /key {10}device-identity in tpm/);
      const pub = vitalseal(['keys', 'pubkey', 'device-identity', ...store]);
      assert.equal(pub.code, 0, pub.stderr);
      const certPub = openssl(['x509', '-in', 'bed-tpm-id/device.pem', '-noout', '-pubkey']);
      assert.equal(certPub.out, pub.stdout);
      const v = openssl(['verify', '-CAfile', 'bed-tpm-id/root-ca.pem', '-untrusted', 'bed-tpm-id/chain.pem', '-purpose', 'sslclient', 'bed-tpm-id/device.pem']);
      assert.equal(v.code, 0, v.out);
      assert.equal(existsSync(join(dir, 'bed-tpm-id', 'device-identity.key')), false, 'no key file: the key stays in the TPM');
    } finally {
      await tpm.stop();
    }
  });

  it('a token-held identity (SoftHSM2), and a CA failure leaves no key behind on the token', async () => {
    const hsm = await startSoftHsm();
    try {
      const token = await hsm.addToken('provision');
      const store = ['--store', 'pkcs11', '--module', hsm.module, '--token', token.uri, '--pin-file', token.pinFile];
      const env = { ...withCa, SOFTHSM2_CONF: hsm.conf };
      const wrongCa = vitalseal(['provision', '--device-id', 'bed-p11', '--pki', 'fleet', '--out', 'bed-p11-id', ...store], { ...env, VITALSEAL_PKI_PASSPHRASE: 'wrong' });
      assert.equal(wrongCa.code, 1);
      assert.equal(vitalseal(['keys', 'list', ...store], env).stdout, '', 'nothing was created on the token');
      const r = vitalseal(['provision', '--device-id', 'bed-p11', '--pki', 'fleet', '--out', 'bed-p11-id', ...store], env);
      assert.equal(r.code, 0, r.stderr);
      const pub = vitalseal(['keys', 'pubkey', 'device-identity', ...store], env);
      assert.equal(openssl(['x509', '-in', 'bed-p11-id/device.pem', '-noout', '-pubkey']).out, pub.stdout);
      const id = JSON.parse(readFileSync(join(dir, 'bed-p11-id', 'identity.json'), 'utf8')) as Record<string, string>;
      assert.equal(id['store'], 'pkcs11');
      assert.match(id['keyStore'] as string, /^pkcs11 \(/);
    } finally {
      await hsm.stop();
    }
  });

  it('a wrong CA passphrase fails before any key is created', () => {
    const r = vitalseal(['provision', '--device-id', 'bed-9', '--pki', 'fleet', '--out', 'bed-9-id', '--unencrypted-dev-keys'], { VITALSEAL_PKI_PASSPHRASE: 'wrong' });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /\[bad-passphrase\]/);
    assert.equal(existsSync(join(dir, 'bed-9-id')), false);
  });
});
