/**
 * Independent peer checks with the openssl command: OpenSSL accepts what we issue (certificates,
 * CSRs, CRLs, encrypted key files), and we accept what OpenSSL issues (a chain made with
 * `openssl req`/`openssl x509`, a CRL made with `openssl ca -gencrl`).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseCertificate, type Certificate } from '../../src/pki/certificate.ts';
import { createCrl, parseCrl } from '../../src/pki/crl.ts';
import { createCsr, parseCsr } from '../../src/pki/csr.ts';
import { issueDeviceCertificate, issueServiceCertificate } from '../../src/pki/issue.ts';
import { encryptPrivateKey } from '../../src/pki/key-file.ts';
import { pemDecode, pemEncode } from '../../src/pki/pem.ts';
import { DAY_MS } from '../../src/pki/policy.ts';
import { validateChain } from '../../src/pki/validate.ts';
import { CertificateError } from '../../src/util/errors.ts';
import { makePki, p256Signer, T0, type TestPki } from './fixtures.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-pki-openssl-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function openssl(args: string[], input?: string) {
  const r = spawnSync('openssl', args, { cwd: dir, input, encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

function write(name: string, text: string): string {
  writeFileSync(join(dir, name), text);
  return name;
}

/** `-attime` in seconds: openssl checks validity at our fixed test time, not the machine's. */
const AT = ['-attime', String(Math.floor((T0 + DAY_MS) / 1000))];

describe('openssl accepts what we issue', () => {
  let pki: TestPki;
  let device: Certificate;
  let service: Certificate;

  before(async () => {
    pki = await makePki();
    device = (await pki.device('bed-7')).cert;
    service = (await pki.service({ dnsNames: ['ingest.example.org'], ipAddresses: ['127.0.0.1'] })).cert;
    write('root.pem', pemEncode('CERTIFICATE', pki.root.der));
    write('issuing.pem', pemEncode('CERTIFICATE', pki.issuing.der));
    write('device.pem', pemEncode('CERTIFICATE', device.der));
    write('service.pem', pemEncode('CERTIFICATE', service.der));
    write('cas.pem', pemEncode('CERTIFICATE', pki.issuing.der) + pemEncode('CERTIFICATE', pki.root.der));
  });

  it('openssl verify -x509_strict accepts the device chain for sslclient and the service chain for sslserver', () => {
    const d = openssl(['verify', '-x509_strict', ...AT, '-CAfile', 'root.pem', '-untrusted', 'issuing.pem', '-purpose', 'sslclient', 'device.pem']);
    assert.equal(d.code, 0, d.out);
    assert.match(d.out, /device\.pem: OK/);
    const s = openssl(['verify', '-x509_strict', ...AT, '-CAfile', 'root.pem', '-untrusted', 'issuing.pem', '-purpose', 'sslserver', '-verify_hostname', 'ingest.example.org', 'service.pem']);
    assert.equal(s.code, 0, s.out);
    // And OpenSSL enforces our EKU choices too.
    const wrong = openssl(['verify', ...AT, '-CAfile', 'root.pem', '-untrusted', 'issuing.pem', '-purpose', 'sslserver', 'device.pem']);
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.out, /unsuitable certificate purpose/);
  });

  it('openssl x509 shows the device id in the subject CN and the URI SAN', () => {
    const r = openssl(['x509', '-in', 'device.pem', '-noout', '-subject', '-ext', 'subjectAltName,extendedKeyUsage,keyUsage,basicConstraints']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /subject=O = Test Fleet, CN = bed-7/);
    assert.match(r.out, /URI:urn:dev:vitalseal:bed-7/);
    assert.match(r.out, /TLS Web Client Authentication/);
    assert.match(r.out, /Digital Signature/);
    assert.match(r.out, /CA:FALSE/);
  });

  it('openssl req -verify accepts our CSR (signed through a Signer)', async () => {
    write('device.csr', pemEncode('CERTIFICATE REQUEST', await createCsr({ signer: p256Signer(), subject: { commonName: 'bed-7' }, deviceId: 'bed-7' })));
    const r = openssl(['req', '-verify', '-in', 'device.csr', '-noout', '-text']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /verify OK/i);
    assert.match(r.out, /URI:urn:dev:vitalseal:bed-7/);
  });

  it('openssl crl parses and verifies our CRL; verify -crl_check rejects the revoked device and accepts the other', async () => {
    const other = (await pki.device('bed-8')).cert;
    write('other.pem', pemEncode('CERTIFICATE', other.der));
    const crl = await createCrl({ ca: pki.ca, revoked: [{ serialHex: device.serialHex, revokedAt: T0, reason: 'keyCompromise' }], crlNumber: 42, now: T0, nextUpdate: T0 + 7 * DAY_MS });
    write('crl.pem', pemEncode('X509 CRL', crl));
    const parsed = openssl(['crl', '-in', 'crl.pem', '-CAfile', 'issuing.pem', '-noout', '-text']);
    assert.equal(parsed.code, 0, parsed.out);
    assert.match(parsed.out, /verify OK/);
    assert.match(parsed.out, /CRL Number: \n\s+42/);
    assert.match(parsed.out, new RegExp(`Serial Number: ${device.serialHex.toUpperCase()}`));
    assert.match(parsed.out, /Key Compromise/);
    const revoked = openssl(['verify', '-crl_check', ...AT, '-CAfile', 'cas.pem', '-CRLfile', 'crl.pem', 'device.pem']);
    assert.notEqual(revoked.code, 0);
    assert.match(revoked.out, /certificate revoked/);
    const fine = openssl(['verify', '-crl_check', ...AT, '-CAfile', 'cas.pem', '-CRLfile', 'crl.pem', 'other.pem']);
    assert.equal(fine.code, 0, fine.out);
    // An empty CRL (no revokedCertificates field) is accepted too.
    write('empty.pem', pemEncode('X509 CRL', await createCrl({ ca: pki.ca, revoked: [], crlNumber: 43, now: T0, nextUpdate: T0 + 7 * DAY_MS })));
    const empty = openssl(['verify', '-crl_check', ...AT, '-CAfile', 'cas.pem', '-CRLfile', 'empty.pem', 'device.pem']);
    assert.equal(empty.code, 0, empty.out);
  });

  it('openssl pkey decrypts our scrypt-encrypted PKCS#8 key file, and refuses the wrong passphrase', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    write('ca.key', encryptPrivateKey(privateKey, Buffer.from('correct horse battery')));
    const r = openssl(['pkey', '-in', 'ca.key', '-passin', 'pass:correct horse battery', '-pubout']);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.trim(), publicKey.export({ format: 'pem', type: 'spki' }).toString().trim());
    assert.match(openssl(['asn1parse', '-in', 'ca.key']).out, /:scrypt/);
    assert.notEqual(openssl(['pkey', '-in', 'ca.key', '-passin', 'pass:wrong', '-noout']).code, 0);
  });

  it('a CSR made by openssl req is issued by our CA and then verified by openssl', async () => {
    assert.equal(openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'ossl-dev.key']).code, 0);
    assert.equal(openssl(['req', '-new', '-key', 'ossl-dev.key', '-subj', '/CN=bed-21', '-out', 'ossl-dev.csr']).code, 0);
    const [block] = pemDecode(readFileSync(join(dir, 'ossl-dev.csr'), 'utf8'), 'CERTIFICATE REQUEST');
    const cert = await issueDeviceCertificate({ ca: pki.ca, csr: parseCsr((block as { der: Uint8Array }).der), deviceId: 'bed-21', now: T0 });
    write('ossl-dev.pem', pemEncode('CERTIFICATE', cert.der));
    const r = openssl(['verify', '-x509_strict', ...AT, '-CAfile', 'root.pem', '-untrusted', 'issuing.pem', '-purpose', 'sslclient', 'ossl-dev.pem']);
    assert.equal(r.code, 0, r.out);
    // The certificate holds the key openssl made.
    const pub = openssl(['pkey', '-in', 'ossl-dev.key', '-pubout']);
    assert.equal(pub.code, 0);
    assert.equal(pub.out, pemEncode('PUBLIC KEY', cert.spki.der));
    const rsa = openssl(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'svc.key', '-subj', '/CN=broker', '-out', 'svc.csr']);
    assert.equal(rsa.code, 0, rsa.out);
    const [svcBlock] = pemDecode(readFileSync(join(dir, 'svc.csr'), 'utf8'), 'CERTIFICATE REQUEST');
    const svc = await issueServiceCertificate({ ca: pki.ca, csr: (svcBlock as { der: Uint8Array }).der, dnsNames: ['broker.local'], now: T0 });
    write('svc.pem', pemEncode('CERTIFICATE', svc.der));
    assert.equal(openssl(['verify', '-x509_strict', ...AT, '-CAfile', 'cas.pem', '-purpose', 'sslserver', 'svc.pem']).code, 0);
  });
});

describe('our validator accepts what openssl issues', () => {
  // A root, an issuing CA and a device certificate made entirely by openssl, following our profile.
  const ext = `
[root]
basicConstraints = critical, CA:true, pathlen:1
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[issuing]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[device]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:urn:dev:vitalseal:bed-42
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:broker.example.org, IP:127.0.0.1
authorityKeyIdentifier = keyid:always
`;
  const ca = `
[ca]
default_ca = ossl
[ossl]
database = index.txt
crlnumber = crlnumber
default_md = sha256
default_crl_days = 7
crl_extensions = crl_ext
[crl_ext]
authorityKeyIdentifier = keyid:always
`;
  let root: Certificate;
  let issuing: Certificate;
  let device: Certificate;
  let server: Certificate;
  const key = (name: string) => assert.equal(openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', name]).code, 0);
  const read = (name: string) => parseCertificate((pemDecode(readFileSync(join(dir, name), 'utf8'), 'CERTIFICATE')[0] as { der: Uint8Array }).der);

  before(() => {
    write('ext.cnf', ext);
    write('ca.cnf', ca);
    write('index.txt', '');
    write('crlnumber', '1000\n');
    key('o-root.key');
    key('o-issuing.key');
    key('o-device.key');
    key('o-server.key');
    const steps: string[][] = [
      ['req', '-x509', '-new', '-key', 'o-root.key', '-subj', '/O=Other Fleet/CN=Other Root', '-days', '3650', '-config', 'ext.cnf', '-extensions', 'root', '-out', 'o-root.pem'],
      ['req', '-new', '-key', 'o-issuing.key', '-subj', '/O=Other Fleet/CN=Other Issuing', '-out', 'o-issuing.csr'],
      ['x509', '-req', '-in', 'o-issuing.csr', '-CA', 'o-root.pem', '-CAkey', 'o-root.key', '-CAcreateserial', '-days', '1825', '-extfile', 'ext.cnf', '-extensions', 'issuing', '-out', 'o-issuing.pem'],
      ['req', '-new', '-key', 'o-device.key', '-subj', '/O=Other Fleet/CN=bed-42', '-out', 'o-device.csr'],
      ['x509', '-req', '-in', 'o-device.csr', '-CA', 'o-issuing.pem', '-CAkey', 'o-issuing.key', '-CAcreateserial', '-days', '365', '-extfile', 'ext.cnf', '-extensions', 'device', '-out', 'o-device.pem'],
      ['req', '-new', '-key', 'o-server.key', '-subj', '/CN=broker.example.org', '-out', 'o-server.csr'],
      ['x509', '-req', '-in', 'o-server.csr', '-CA', 'o-issuing.pem', '-CAkey', 'o-issuing.key', '-CAcreateserial', '-days', '365', '-extfile', 'ext.cnf', '-extensions', 'server', '-out', 'o-server.pem'],
    ];
    for (const s of steps) {
      const r = openssl(s);
      assert.equal(r.code, 0, `openssl ${s.join(' ')}: ${r.out}`);
    }
    root = read('o-root.pem');
    issuing = read('o-issuing.pem');
    device = read('o-device.pem');
    server = read('o-server.pem');
  });

  it('validates the openssl-made device and server chains (machine time: openssl used it)', () => {
    const now = Date.now();
    const peer = validateChain([device.der, issuing.der], { roots: [root], now, purpose: 'client', expectedDeviceId: 'bed-42' });
    assert.equal(peer.deviceId, 'bed-42');
    // OpenSSL's subjectKeyIdentifier=hash is SHA-1 based; the AKI/SKI match is by value, whatever the method.
    assert.deepEqual(device.extensions.authorityKeyId, issuing.extensions.subjectKeyId);
    validateChain([server.der, issuing.der], { roots: [root], now, purpose: 'server', expectedServerName: 'broker.example.org' });
    validateChain([server.der, issuing.der], { roots: [root], now, purpose: 'server', expectedServerName: '127.0.0.1' });
    assert.throws(() => validateChain([server.der, issuing.der], { roots: [root], now, purpose: 'client', requireDeviceId: false }),
      (e: unknown) => e instanceof CertificateError && e.code === 'wrong-purpose');
  });

  it('reads a CRL made by openssl ca -gencrl, before and after openssl ca -revoke', () => {
    const base = ['ca', '-config', 'ca.cnf', '-cert', 'o-issuing.pem', '-keyfile', 'o-issuing.key'];
    assert.equal(openssl([...base, '-gencrl', '-out', 'o-crl0.pem']).code, 0);
    const r = openssl([...base, '-revoke', 'o-device.pem', '-crl_reason', 'superseded']);
    assert.equal(r.code, 0, r.out);
    assert.equal(openssl([...base, '-gencrl', '-out', 'o-crl1.pem']).code, 0);
    const load = (name: string) => parseCrl((pemDecode(readFileSync(join(dir, name), 'utf8'), 'X509 CRL')[0] as { der: Uint8Array }).der);
    const crl0 = load('o-crl0.pem');
    const crl1 = load('o-crl1.pem');
    assert.equal(crl0.crlNumber, 0x1000n);
    assert.equal(crl1.crlNumber, 0x1001n);
    assert.equal(crl1.revoked.get(device.serialHex)?.reason, 'superseded');
    const now = Date.now();
    validateChain([device.der, issuing.der], { roots: [root], now, purpose: 'client', revocation: { crls: [crl0] } });
    assert.throws(() => validateChain([device.der, issuing.der], { roots: [root], now, purpose: 'client', revocation: { crls: [crl1] } }),
      (e: unknown) => e instanceof CertificateError && e.code === 'revoked');
  });
});
