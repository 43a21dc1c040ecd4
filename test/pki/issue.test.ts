import assert from 'node:assert/strict';
import { X509Certificate as NodeX509, generateKeyPairSync, sign as nodeSign, webcrypto } from 'node:crypto';
import { before, describe, it } from 'node:test';
import * as px509 from '@peculiar/x509';
import { keyObjectSigner, type Signer } from '../../src/keystore/signer.ts';
import { parseCertificate, spkiSha256, type Certificate } from '../../src/pki/certificate.ts';
import { createCrl } from '../../src/pki/crl.ts';
import { createCsr, parseCsr } from '../../src/pki/csr.ts';
import { checkDeviceId, deviceIdOf, isDeviceId } from '../../src/pki/device-id.ts';
import { createIssuingCa, createRootCa, issueDeviceCertificate, issueServiceCertificate } from '../../src/pki/issue.ts';
import { OID } from '../../src/pki/oids.ts';
import { DAY_MS, DEFAULT_VALIDITY_POLICY, validityPolicy } from '../../src/pki/policy.ts';
import { validateChain } from '../../src/pki/validate.ts';
import { isValidDeviceId } from '../../src/codec/vitals.ts';
import { CertificateError, type CertificateErrorCode } from '../../src/util/errors.ts';
import { ed25519Signer, makePki, p256Signer, T0, type TestPki } from './fixtures.ts';

// @peculiar/x509 verifies through WebCrypto; its `Crypto` type comes from the DOM lib, which this project does not load.
(px509.cryptoProvider.set as (crypto: unknown) => unknown).call(px509.cryptoProvider, webcrypto);

function rejects(code: CertificateErrorCode) {
  return (e: unknown) => {
    assert.ok(e instanceof CertificateError, `expected CertificateError(${code}), got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  };
}

function critical(cert: Certificate, oid: string): boolean | undefined {
  return cert.extensions.all.find((e) => e.oid === oid)?.critical;
}

describe('certificate profiles', () => {
  let pki: TestPki;
  let device: Certificate;
  let service: Certificate;

  before(async () => {
    pki = await makePki();
    device = (await pki.device('bed-7')).cert;
    service = (await pki.service({ dnsNames: ['ingest.example.org'], ipAddresses: ['127.0.0.1', '::1'] })).cert;
  });

  it('root CA: self-signed v3, BC critical cA pathLen 1, KU critical keyCertSign+cRLSign, SKI', () => {
    const r = pki.root;
    assert.equal(r.version, 3);
    assert.deepEqual(r.issuer.der, r.subject.der);
    assert.deepEqual(r.extensions.basicConstraints, { ca: true, pathLen: 1 });
    assert.equal(critical(r, OID.basicConstraints), true);
    assert.deepEqual([...(r.extensions.keyUsage ?? [])].sort(), ['cRLSign', 'keyCertSign']);
    assert.equal(critical(r, OID.keyUsage), true);
    assert.equal(r.extensions.subjectKeyId?.length, 20);
    assert.equal(r.extensions.authorityKeyId, undefined);
    assert.equal(r.extensions.extKeyUsage, undefined);
  });

  it('issuing CA: BC pathLen 0, AKI = root SKI', () => {
    const i = pki.issuing;
    assert.deepEqual(i.extensions.basicConstraints, { ca: true, pathLen: 0 });
    assert.deepEqual(i.extensions.authorityKeyId, pki.root.extensions.subjectKeyId);
    assert.deepEqual(i.issuer.der, pki.root.subject.der);
  });

  it('device: CN and URI SAN carry the id, clientAuth only, digitalSignature only, not a CA', () => {
    assert.equal(device.subject.text, 'O=Test Fleet,CN=bed-7');
    assert.deepEqual(device.extensions.subjectAltName?.uris, ['urn:dev:vitalseal:bed-7']);
    assert.deepEqual(device.extensions.extKeyUsage, [OID.clientAuth]);
    assert.deepEqual([...(device.extensions.keyUsage ?? [])], ['digitalSignature']);
    assert.deepEqual(device.extensions.basicConstraints, { ca: false });
    assert.equal(critical(device, OID.basicConstraints), true);
    assert.equal(critical(device, OID.subjectAltName), false);
    assert.deepEqual(device.extensions.authorityKeyId, pki.issuing.extensions.subjectKeyId);
    assert.equal(deviceIdOf(device), 'bed-7');
  });

  it('service: serverAuth, DNS and IP SANs, CN = first name; clientAuth only on request', async () => {
    assert.deepEqual(service.extensions.extKeyUsage, [OID.serverAuth]);
    assert.deepEqual(service.extensions.subjectAltName?.dns, ['ingest.example.org']);
    assert.deepEqual(service.extensions.subjectAltName?.ips, ['127.0.0.1', '::1']);
    assert.equal(service.subject.text, 'O=Test Fleet,CN=ingest.example.org');
    assert.equal(deviceIdOf(service), undefined);
    const both = (await pki.service({ dnsNames: ['ingest.example.org'], clientAuth: true })).cert;
    assert.deepEqual(both.extensions.extKeyUsage, [OID.serverAuth, OID.clientAuth]);
  });

  it('serial numbers: 16 octets, positive, 126 random bits, never repeated', async () => {
    const serials = new Set<string>();
    for (let n = 0; n < 40; n++) {
      const c = (await pki.device(`bed-${n}`)).cert;
      assert.equal(c.serialNumber.length, 16);
      assert.ok((c.serialNumber[0] as number) >= 0x40 && (c.serialNumber[0] as number) <= 0x7f);
      serials.add(c.serialHex);
    }
    assert.equal(serials.size, 40);
  });

  it('validity follows the policy: backdated notBefore, per-kind lifetime, clamped to the issuer', async () => {
    const p = DEFAULT_VALIDITY_POLICY;
    assert.equal(device.notBefore, T0 - p.backdateSeconds * 1000);
    assert.equal(device.notAfter, T0 + p.deviceDays * DAY_MS);
    assert.equal(service.notAfter, T0 + p.serviceDays * DAY_MS);
    assert.equal(pki.issuing.notAfter, T0 + p.issuingCaDays * DAY_MS);
    assert.equal(pki.root.notAfter, T0 + p.rootCaDays * DAY_MS);
    // Issued 100 days before the issuing CA expires: the device certificate ends with the CA.
    const late = (await pki.device('bed-late', { now: pki.issuing.notAfter - 100 * DAY_MS })).cert;
    assert.equal(late.notAfter, pki.issuing.notAfter);
    // A custom policy.
    const short = await makePki({ policy: validityPolicy({ deviceDays: 30, serviceDays: 10, backdateSeconds: 0 }) });
    const d = (await short.device('bed-1')).cert;
    assert.equal(d.notBefore, T0);
    assert.equal(d.notAfter, T0 + 30 * DAY_MS);
  });

  it('validityPolicy refuses nonsense', () => {
    for (const bad of [{ deviceDays: 0 }, { deviceDays: 1.5 }, { issuingCaDays: 99999 }, { backdateSeconds: -1 }, { backdateSeconds: 90000 }, { deviceDays: 5000 }]) {
      assert.throws(() => validityPolicy(bad), RangeError, JSON.stringify(bad));
    }
  });

  it('device ids: the one rule (src/util/device-id.ts) that certificates and SenML base names share', () => {
    for (const id of ['bed-7', 'A', 'a'.repeat(64), 'bed.7_x', '7']) assert.ok(isDeviceId(id) && isValidDeviceId(id), id);
    for (const id of ['a'.repeat(65), '-bed', '.bed', 'bed 7', 'bed/7', '', 'bëd', 'bed\n7', 'bed+7']) assert.ok(!isDeviceId(id) && !isValidDeviceId(id), id);
    assert.throws(() => checkDeviceId('bed/7'), RangeError);
  });
});

describe('independent parsers agree: node:crypto X509Certificate and @peculiar/x509', () => {
  let pki: TestPki;
  let device: Certificate;
  let service: Certificate;

  before(async () => {
    pki = await makePki();
    device = (await pki.device('bed-7')).cert;
    service = (await pki.service({ dnsNames: ['ingest.example.org'], ipAddresses: ['127.0.0.1'] })).cert;
  });

  it('node:crypto reads the same fields and verifies every signature', () => {
    const [root, issuing, dev, svc] = [pki.root, pki.issuing, device, service].map((c) => new NodeX509(c.der)) as [NodeX509, NodeX509, NodeX509, NodeX509];
    assert.ok(root.verify(root.publicKey));
    assert.ok(issuing.verify(root.publicKey));
    assert.ok(dev.verify(issuing.publicKey));
    assert.ok(svc.verify(issuing.publicKey));
    assert.ok(dev.checkIssued(issuing));
    assert.equal(root.ca, true);
    assert.equal(dev.ca, false);
    assert.equal(dev.subject, 'O=Test Fleet\nCN=bed-7');
    assert.equal(dev.serialNumber.toLowerCase(), device.serialHex);
    assert.equal(Date.parse(dev.validTo), device.notAfter);
    assert.equal(Date.parse(dev.validFrom), device.notBefore);
    assert.deepEqual(dev.keyUsage, [OID.clientAuth]);
    assert.equal(dev.subjectAltName, 'URI:urn:dev:vitalseal:bed-7');
    assert.equal(svc.subjectAltName, 'DNS:ingest.example.org, IP Address:127.0.0.1');
    assert.equal(svc.checkHost('ingest.example.org'), 'ingest.example.org');
    assert.equal(svc.checkIP('127.0.0.1'), '127.0.0.1');
  });

  it('@peculiar/x509 verifies the chain, the CSR and the CRL and reads the extensions', async () => {
    const root = new px509.X509Certificate(pki.root.der);
    const issuing = new px509.X509Certificate(pki.issuing.der);
    const dev = new px509.X509Certificate(device.der);
    const date = new Date(T0 + DAY_MS);
    assert.ok(await root.verify({ date }));
    assert.ok(await issuing.verify({ publicKey: root, date }));
    assert.ok(await dev.verify({ publicKey: issuing, date }));
    const bc = root.getExtension(px509.BasicConstraintsExtension);
    assert.equal(bc?.ca, true);
    assert.equal(bc?.pathLength, 1);
    assert.equal(dev.getExtension(px509.KeyUsagesExtension)?.usages, px509.KeyUsageFlags.digitalSignature);
    assert.deepEqual([...(dev.getExtension(px509.ExtendedKeyUsageExtension)?.usages ?? [])], [OID.clientAuth]);
    assert.deepEqual(dev.getExtension(px509.SubjectAlternativeNameExtension)?.names.toJSON(), [{ type: 'url', value: 'urn:dev:vitalseal:bed-7' }]);

    const csr = new px509.Pkcs10CertificateRequest(await createCsr({ signer: p256Signer(), subject: { commonName: 'bed-9' }, deviceId: 'bed-9' }));
    assert.ok(await csr.verify());
    assert.equal(csr.subject, 'CN=bed-9');

    const crl = new px509.X509Crl(await createCrl({ ca: pki.ca, revoked: [{ serialHex: device.serialHex, revokedAt: T0, reason: 'keyCompromise' }], crlNumber: 3, now: T0, nextUpdate: T0 + DAY_MS }));
    assert.ok(await crl.verify({ publicKey: issuing }));
    assert.equal(crl.entries.length, 1);
    assert.equal(crl.entries[0]?.serialNumber.toLowerCase(), device.serialHex);
    assert.equal(crl.entries[0]?.reason, px509.X509CrlReason.keyCompromise);
  });
});

describe('Signers: Ed25519 CA keys, and broken or mismatched signers', () => {
  it('an Ed25519 root and issuing CA issue a P-256 device certificate that validates', async () => {
    const pki = await makePki({ caSigner: ed25519Signer });
    const device = (await pki.device('bed-7')).cert;
    assert.equal(pki.issuing.signatureAlgorithm.oid, OID.ed25519);
    assert.equal(validateChain([device.der, pki.issuing.der], { roots: [pki.root], now: T0, purpose: 'client' }).deviceId, 'bed-7');
    assert.ok(new NodeX509(device.der).verify(new NodeX509(pki.issuing.der).publicKey));
  });

  it('refuses a signer that returns raw r||s, a signer for another key, and an expired or non-CA issuer', async () => {
    const pki = await makePki();
    const csr = await createCsr({ signer: p256Signer(), subject: { commonName: 'bed-7' } });
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const good = keyObjectSigner(privateKey);
    const rawSigner: Signer = { ...good, sign: async (m) => new Uint8Array(nodeSign('sha256', m, { key: privateKey, dsaEncoding: 'ieee-p1363' })) };
    const rawRoot = await createRootCa({ signer: good, subject: { commonName: 'Raw Root' }, now: T0 });
    await assert.rejects(issueDeviceCertificate({ ca: { certificate: rawRoot, signer: rawSigner }, csr, deviceId: 'bed-7', now: T0 }), rejects('bad-signature'));
    await assert.rejects(issueDeviceCertificate({ ca: { certificate: pki.issuing, signer: p256Signer() }, csr, deviceId: 'bed-7', now: T0 }), rejects('bad-signature'));
    await assert.rejects(issueDeviceCertificate({ ca: pki.ca, csr, deviceId: 'bed-7', now: pki.issuing.notAfter + 1 }), rejects('expired'));
    const devSigner = p256Signer();
    const dev = (await pki.device('bed-1', { signer: devSigner })).cert;
    await assert.rejects(issueDeviceCertificate({ ca: { certificate: dev, signer: devSigner }, csr, deviceId: 'bed-7', now: T0 }), rejects('not-a-ca'));
    await assert.rejects(createIssuingCa({ root: { certificate: dev, signer: devSigner }, signer: p256Signer(), subject: { commonName: 'x' }, now: T0 }), rejects('not-a-ca'));
  });

  it('device issuance checks the CSR: proof of possession, the device named, a P-256 key', async () => {
    const pki = await makePki();
    const other = await createCsr({ signer: p256Signer(), subject: { commonName: 'bed-8' } });
    await assert.rejects(issueDeviceCertificate({ ca: pki.ca, csr: other, deviceId: 'bed-7', now: T0 }), rejects('device-id-mismatch'));
    const otherUri = await createCsr({ signer: p256Signer(), subject: {}, deviceId: 'bed-8' });
    await assert.rejects(issueDeviceCertificate({ ca: pki.ca, csr: otherUri, deviceId: 'bed-7', now: T0 }), rejects('device-id-mismatch'));
    const ed = await createCsr({ signer: ed25519Signer(), subject: { commonName: 'bed-7' } });
    await assert.rejects(issueDeviceCertificate({ ca: pki.ca, csr: ed, deviceId: 'bed-7', now: T0 }), rejects('unsupported-algorithm'));
    const good = await createCsr({ signer: p256Signer(), subject: { commonName: 'bed-7' } });
    const tampered = Uint8Array.from(good);
    tampered[tampered.length - 80] = (tampered[tampered.length - 80] as number) ^ 1;
    await assert.rejects(issueDeviceCertificate({ ca: pki.ca, csr: tampered, deviceId: 'bed-7', now: T0 }), CertificateError);
    await assert.rejects(issueDeviceCertificate({ ca: pki.ca, csr: good, deviceId: 'bed/7', now: T0 }), RangeError);
    await assert.rejects(issueServiceCertificate({ ca: pki.ca, csr: good, now: T0 }), RangeError);
    // A CSR with no CN is fine: the CA decides the subject.
    const noCn = await createCsr({ signer: p256Signer(), subject: {} });
    const cert = await issueDeviceCertificate({ ca: pki.ca, csr: noCn, deviceId: 'bed-7', now: T0 });
    assert.equal(cert.subject.text, 'O=Test Fleet,CN=bed-7');
  });

  it('CSR: subject, key and requested SAN round-trip; the CSR key is what gets certified', async () => {
    const signer = p256Signer();
    const der = await createCsr({ signer, subject: { organization: 'Maker', commonName: 'bed-7' }, deviceId: 'bed-7', dnsNames: ['bed-7.local'] });
    const csr = parseCsr(der);
    assert.equal(csr.subject.text, 'O=Maker,CN=bed-7');
    assert.deepEqual(csr.spki.der, await signer.publicKeySpki());
    assert.deepEqual(csr.requestedExtensions.subjectAltName?.uris, ['urn:dev:vitalseal:bed-7']);
    assert.deepEqual(csr.requestedExtensions.subjectAltName?.dns, ['bed-7.local']);
    const pki = await makePki();
    const cert = await issueDeviceCertificate({ ca: pki.ca, csr, deviceId: 'bed-7', now: T0 });
    assert.deepEqual(spkiSha256(cert.spki.der), spkiSha256(await signer.publicKeySpki()));
    assert.deepEqual(parseCertificate(cert.der).der, cert.der);
  });
});
