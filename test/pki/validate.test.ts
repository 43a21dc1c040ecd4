import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { before, describe, it } from 'node:test';
import fc from 'fast-check';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { parseCertificate, spkiSha256, type Certificate } from '../../src/pki/certificate.ts';
import { createCrl, parseCrl, type Crl } from '../../src/pki/crl.ts';
import { createCsr, parseCsr } from '../../src/pki/csr.ts';
import { bits, explicit, octets, seq, time, uint } from '../../src/pki/der.ts';
import { signatureAlgorithmFor } from '../../src/pki/algorithms.ts';
import { encodeExtension } from '../../src/pki/extensions.ts';
import { OID } from '../../src/pki/oids.ts';
import { pemDecode } from '../../src/pki/pem.ts';
import { DAY_MS } from '../../src/pki/policy.ts';
import { checkPayloadDevice, MAX_CHAIN_CERTIFICATES, signatureCacheStats, validateChain, type ValidationOptions } from '../../src/pki/validate.ts';
import { CertificateError, type CertificateErrorCode } from '../../src/util/errors.ts';
import { deviceExtensions, ext, forge, forgeDer } from './forge.ts';
import { makePki, p256Signer, T0, type TestPki } from './fixtures.ts';

function rejects(code: CertificateErrorCode) {
  return (e: unknown) => {
    assert.ok(e instanceof CertificateError, `expected CertificateError(${code}), got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  };
}

describe('validateChain: fleet chains', () => {
  let pki: TestPki;
  let device: Certificate;
  let service: Certificate;
  let base: ValidationOptions;
  let crl: Crl;

  before(async () => {
    pki = await makePki();
    device = (await pki.device('bed-7')).cert;
    service = (await pki.service({ dnsNames: ['ingest.example.org'], ipAddresses: ['10.0.0.5', 'fd00::5'] })).cert;
    base = { roots: [pki.root], now: T0 + DAY_MS, purpose: 'client' };
    crl = parseCrl(await createCrl({ ca: pki.ca, revoked: [], crlNumber: 1, now: T0, nextUpdate: T0 + 7 * DAY_MS }));
  });

  it('accepts a device chain and returns the bound device id, key and expiry', () => {
    const peer = validateChain([device.der, pki.issuing.der], { ...base, expectedDeviceId: 'bed-7', revocation: { crls: [crl] } });
    assert.equal(peer.deviceId, 'bed-7');
    assert.equal(peer.subject, 'O=Test Fleet,CN=bed-7');
    assert.equal(peer.serialHex, device.serialHex);
    assert.deepEqual(peer.spki, device.spki.der);
    assert.deepEqual(peer.spkiSha256, spkiSha256(device.spki.der));
    assert.equal(peer.publicKey.asymmetricKeyType, 'ec');
    assert.equal(peer.notAfter, device.notAfter);
    assert.deepEqual(peer.path.map((c) => c.subject.text), [device.subject.text, pki.issuing.subject.text, pki.root.subject.text]);
  });

  it('accepts the chain with the root included, intermediates in any order, roots given as DER', () => {
    assert.equal(validateChain([device.der, pki.root.der, pki.issuing.der], { ...base, roots: [pki.root.der] }).deviceId, 'bed-7');
  });

  it('accepts a service chain by DNS name and by IPv4/IPv6 address', () => {
    for (const name of ['ingest.example.org', 'INGEST.example.org.', '10.0.0.5', 'fd00:0:0::5']) {
      const peer = validateChain([service.der, pki.issuing.der], { ...base, purpose: 'server', expectedServerName: name });
      assert.equal(peer.deviceId, undefined);
    }
  });

  it('checkPayloadDevice: the sealed payload must name the authenticated device', () => {
    const peer = validateChain([device.der, pki.issuing.der], base);
    checkPayloadDevice(peer, 'bed-7');
    assert.throws(() => checkPayloadDevice(peer, 'bed-8'), rejects('device-id-mismatch'));
    assert.throws(() => checkPayloadDevice({}, 'bed-7'), rejects('device-id-missing'));
  });

  // ---- one negative test per error code ----

  it('malformed: every prefix of the leaf, and a chain that is too long or empty', () => {
    for (let n = 0; n < device.der.length; n++) {
      assert.throws(() => validateChain([device.der.subarray(0, n), pki.issuing.der], base), rejects('malformed'), `prefix ${n}`);
    }
    assert.throws(() => validateChain([], base), rejects('malformed'));
    assert.throws(() => validateChain(new Array(MAX_CHAIN_CERTIFICATES + 1).fill(device.der), base), rejects('malformed'));
    assert.throws(() => validateChain([Uint8Array.of(...device.der, 0)], base), rejects('malformed'), 'trailing byte');
  });

  it('expired and not-yet-valid, at second granularity, for the leaf and for a CA', () => {
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, now: device.notAfter + 1000 }), rejects('expired'));
    validateChain([device.der, pki.issuing.der], { ...base, now: device.notAfter + 999 }); // still inside the last second
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, now: device.notBefore - 1 }), rejects('not-yet-valid'));
    validateChain([device.der, pki.issuing.der], { ...base, now: device.notBefore });
    // The root's own validity counts too.
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, now: pki.root.notAfter + 1000 }), rejects('expired'));
  });

  it('unknown-issuer: a chain from another fleet, or a missing intermediate', async () => {
    const other = await makePki();
    const foreign = (await other.device('bed-7')).cert;
    assert.throws(() => validateChain([foreign.der, other.issuing.der], base), rejects('unknown-issuer'));
    assert.throws(() => validateChain([device.der], base), rejects('unknown-issuer'));
  });

  it('a signature that verified is remembered; every other check still runs, and a bad signature is checked every time', () => {
    validateChain([device.der, pki.issuing.der], base);
    const before = signatureCacheStats();
    validateChain([device.der, pki.issuing.der], base);
    const after = signatureCacheStats();
    assert.equal(after.verified, before.verified, 'no signature verified again');
    assert.equal(after.remembered - before.remembered, 2, 'leaf and issuing CA from the cache');
    // Remembered signatures do not carry the rest of a past validation with them.
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, now: device.notAfter + 1000 }), rejects('expired'));
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, purpose: 'server' }), rejects('wrong-purpose'));
    const sigAt = device.der.length - 5;
    const flipped = Uint8Array.from(device.der);
    flipped[sigAt] = (flipped[sigAt] as number) ^ 0x01;
    for (let i = 0; i < 2; i++) {
      const n = signatureCacheStats().verified;
      assert.throws(() => validateChain([flipped, pki.issuing.der], base), rejects('bad-signature'));
      assert.ok(signatureCacheStats().verified > n, 'a failed signature is verified again, not remembered');
    }
  });

  it('bad-signature: a flipped signature bit, and an impostor CA with the same name and key id', async () => {
    const sigAt = device.der.length - 5;
    const flipped = Uint8Array.from(device.der);
    flipped[sigAt] = (flipped[sigAt] as number) ^ 0x01;
    assert.throws(() => validateChain([flipped, pki.issuing.der], base), rejects('bad-signature'));
    // A leaf signed by an impostor that took the issuing CA's name (no key identifier to tell them
    // apart): the name matches the real issuing CA, whose key does not verify the signature.
    const impostorSigner = p256Signer();
    const impostor = await forge({ signer: impostorSigner, subject: { organization: 'Test Fleet', commonName: 'Test Fleet Issuing CA 1' }, notBefore: T0, notAfter: T0 + 365 * DAY_MS, extensions: [ext.ca(0)] });
    const leaf = await forge({
      issuer: { certificate: impostor, signer: impostorSigner }, signer: p256Signer(), subject: { commonName: 'bed-7' },
      notBefore: T0, notAfter: T0 + 30 * DAY_MS,
      extensions: [ext.endEntity(), ext.keyUsage('digitalSignature'), ext.eku(OID.clientAuth), ext.san({ uris: ['urn:dev:vitalseal:bed-7'] })],
    });
    assert.throws(() => validateChain([leaf.der, pki.issuing.der], base), rejects('bad-signature'));
  });

  it('unsupported-algorithm: ecdsa-with-SHA1, and an RSA-1024 leaf key', async () => {
    const sha1 = await forgeDer({
      issuer: pki.ca, signer: p256Signer(), subject: { commonName: 'bed-7' }, notBefore: T0, notAfter: T0 + DAY_MS * 30,
      extensions: deviceExtensions(pki.issuing, 'bed-7'), sigAlgOid: '1.2.840.10045.4.1',
    });
    assert.throws(() => validateChain([sha1, pki.issuing.der], base), rejects('unsupported-algorithm'));
    // A signer whose public key is RSA-1024 (the CA certifies it; the key itself never signs here).
    const carrier = keyObjectSigner(generateKeyPairSync('ed25519').privateKey);
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const weakSigner = { ...carrier, publicKeySpki: async () => new Uint8Array(weak.publicKey.export({ format: 'der', type: 'spki' })) };
    const leaf = await forge({ issuer: pki.ca, signer: weakSigner, subject: { commonName: 'bed-7' }, notBefore: T0, notAfter: T0 + DAY_MS * 30, extensions: deviceExtensions(pki.issuing, 'bed-7') });
    assert.throws(() => validateChain([leaf.der, pki.issuing.der], base), rejects('unsupported-algorithm'));
  });

  it('not-a-ca: an end-entity certificate used as an issuer, and a CA without keyCertSign', async () => {
    // A device key signs a certificate for another device: the device certificate is not a CA.
    const devKey = p256Signer();
    const dev2 = (await pki.device('bed-9', { signer: devKey })).cert;
    const grandchild = await forge({
      issuer: { certificate: dev2, signer: devKey }, signer: p256Signer(), subject: { commonName: 'bed-8' },
      notBefore: T0, notAfter: T0 + 30 * DAY_MS, extensions: deviceExtensions(dev2, 'bed-8'),
    });
    assert.throws(() => validateChain([grandchild.der, dev2.der, pki.issuing.der], base), rejects('not-a-ca'));
    // A CA certificate whose key usage lacks keyCertSign.
    const caKey = p256Signer();
    const noSign = await forge({
      issuer: pki.rootCa, signer: caKey, subject: { organization: 'Test Fleet', commonName: 'No Sign CA' },
      notBefore: T0, notAfter: T0 + 365 * DAY_MS, extensions: [ext.ca(0), ext.keyUsage('cRLSign'), await ext.ski(caKey), ext.aki(pki.root)],
    });
    const leaf = await forge({
      issuer: { certificate: noSign, signer: caKey }, signer: p256Signer(), subject: { commonName: 'bed-7' },
      notBefore: T0, notAfter: T0 + 30 * DAY_MS, extensions: deviceExtensions(noSign, 'bed-7'),
    });
    assert.throws(() => validateChain([leaf.der, noSign.der], base), rejects('not-a-ca'));
  });

  it('path-length-exceeded: a sub-CA below the issuing CA (pathLen 0)', async () => {
    const subKey = p256Signer();
    const sub = await forge({
      issuer: pki.ca, signer: subKey, subject: { organization: 'Test Fleet', commonName: 'Sub CA' },
      notBefore: T0, notAfter: T0 + 365 * DAY_MS, extensions: [ext.ca(), ext.keyUsage('keyCertSign', 'cRLSign'), await ext.ski(subKey), ext.aki(pki.issuing)],
    });
    const leaf = await forge({
      issuer: { certificate: sub, signer: subKey }, signer: p256Signer(), subject: { commonName: 'bed-7' },
      notBefore: T0, notAfter: T0 + 30 * DAY_MS, extensions: deviceExtensions(sub, 'bed-7'),
    });
    assert.throws(() => validateChain([leaf.der, sub.der, pki.issuing.der], base), rejects('path-length-exceeded'));
  });

  it('unhandled-critical-extension: a critical nameConstraints or unknown extension on the leaf', async () => {
    for (const [extOid, value] of [[OID.nameConstraints, seq()], ['1.3.6.1.4.1.99999.1', octets(Uint8Array.of(1))]] as const) {
      const leaf = await forge({
        issuer: pki.ca, signer: p256Signer(), subject: { commonName: 'bed-7' }, notBefore: T0, notAfter: T0 + 30 * DAY_MS,
        extensions: [...deviceExtensions(pki.issuing, 'bed-7'), encodeExtension(extOid, true, value)],
      });
      assert.throws(() => validateChain([leaf.der, pki.issuing.der], base), rejects('unhandled-critical-extension'));
    }
    // The same extension, not critical, is ignored.
    const ok = await forge({
      issuer: pki.ca, signer: p256Signer(), subject: { commonName: 'bed-7' }, notBefore: T0, notAfter: T0 + 30 * DAY_MS,
      extensions: [...deviceExtensions(pki.issuing, 'bed-7'), encodeExtension('1.3.6.1.4.1.99999.1', false, octets(Uint8Array.of(1)))],
    });
    assert.equal(validateChain([ok.der, pki.issuing.der], base).deviceId, 'bed-7');
  });

  it('wrong-purpose: device certificate as a server, service as a client, no EKU, a CA as leaf, KU without digitalSignature', async () => {
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, purpose: 'server' }), rejects('wrong-purpose'));
    assert.throws(() => validateChain([service.der, pki.issuing.der], { ...base, requireDeviceId: false }), rejects('wrong-purpose'));
    const mk = (extensions: Uint8Array[]) =>
      forge({ issuer: pki.ca, signer: p256Signer(), subject: { commonName: 'bed-7' }, notBefore: T0, notAfter: T0 + 30 * DAY_MS, extensions });
    const san = ext.san({ uris: ['urn:dev:vitalseal:bed-7'] });
    for (const extensions of [
      [ext.endEntity(), ext.keyUsage('digitalSignature'), san], // no EKU
      [ext.endEntity(), ext.keyUsage('digitalSignature'), ext.eku(OID.anyExtendedKeyUsage), san], // anyEKU is not enough on a leaf
      [ext.ca(), ext.keyUsage('digitalSignature'), ext.eku(OID.clientAuth), san], // a CA
      [ext.endEntity(), ext.keyUsage('keyAgreement'), ext.eku(OID.clientAuth), san], // no digitalSignature
    ]) {
      const leaf = await mk(extensions);
      assert.throws(() => validateChain([leaf.der, pki.issuing.der], base), rejects('wrong-purpose'));
    }
    // A CA whose EKU excludes clientAuth.
    const caKey = p256Signer();
    const serverOnlyCa = await forge({
      issuer: pki.rootCa, signer: caKey, subject: { organization: 'Test Fleet', commonName: 'Server CA' }, notBefore: T0, notAfter: T0 + 365 * DAY_MS,
      extensions: [ext.ca(0), ext.keyUsage('keyCertSign', 'cRLSign'), ext.eku(OID.serverAuth), await ext.ski(caKey), ext.aki(pki.root)],
    });
    const leaf = await forge({
      issuer: { certificate: serverOnlyCa, signer: caKey }, signer: p256Signer(), subject: { commonName: 'bed-7' },
      notBefore: T0, notAfter: T0 + 30 * DAY_MS, extensions: deviceExtensions(serverOnlyCa, 'bed-7'),
    });
    assert.throws(() => validateChain([leaf.der, serverOnlyCa.der], base), rejects('wrong-purpose'));
  });

  it('name-mismatch: another host, a sibling of a wildcard, a CN-only name', async () => {
    for (const name of ['other.example.org', 'example.org', '10.0.0.6', '::1']) {
      assert.throws(() => validateChain([service.der, pki.issuing.der], { ...base, purpose: 'server', expectedServerName: name }), rejects('name-mismatch'));
    }
    const wild = (await pki.service({ dnsNames: ['*.ingest.example.org'] })).cert;
    validateChain([wild.der, pki.issuing.der], { ...base, purpose: 'server', expectedServerName: 'a.ingest.example.org' });
    for (const name of ['ingest.example.org', 'a.b.ingest.example.org']) {
      assert.throws(() => validateChain([wild.der, pki.issuing.der], { ...base, purpose: 'server', expectedServerName: name }), rejects('name-mismatch'));
    }
  });

  it('device-id-missing: a client certificate without a device URI, or expecting an id from a service', async () => {
    const clientService = (await pki.service({ dnsNames: ['ingest.example.org'], clientAuth: true })).cert;
    assert.throws(() => validateChain([clientService.der, pki.issuing.der], base), rejects('device-id-missing'));
    assert.equal(validateChain([clientService.der, pki.issuing.der], { ...base, requireDeviceId: false }).deviceId, undefined);
    assert.throws(() => validateChain([service.der, pki.issuing.der], { ...base, purpose: 'server', expectedDeviceId: 'bed-7' }), rejects('device-id-missing'));
  });

  it('device-id-mismatch: another expected id, CN disagreeing with the URI, two device URIs', async () => {
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, expectedDeviceId: 'bed-8' }), rejects('device-id-mismatch'));
    const mk = (cn: string, uris: string[]) =>
      forge({
        issuer: pki.ca, signer: p256Signer(), subject: { commonName: cn }, notBefore: T0, notAfter: T0 + 30 * DAY_MS,
        extensions: [ext.endEntity(), ext.keyUsage('digitalSignature'), ext.eku(OID.clientAuth), ext.san({ uris })],
      });
    for (const leaf of [
      await mk('bed-8', ['urn:dev:vitalseal:bed-7']),
      await mk('bed-7', ['urn:dev:vitalseal:bed-7', 'urn:dev:vitalseal:bed-8']),
      await mk('bed 7', ['urn:dev:vitalseal:bed 7']),
    ]) assert.throws(() => validateChain([leaf.der, pki.issuing.der], base), rejects('device-id-mismatch'));
  });

  it('pin-mismatch, and pins that match the leaf or a CA on the path', () => {
    const wrong = new Uint8Array(32).fill(7);
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, spkiPins: [wrong] }), rejects('pin-mismatch'));
    validateChain([device.der, pki.issuing.der], { ...base, spkiPins: [wrong, spkiSha256(device.spki.der)] });
    validateChain([device.der, pki.issuing.der], { ...base, spkiPins: [spkiSha256(pki.issuing.spki.der)] });
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, spkiPins: [] }), RangeError);
  });

  it('revoked: listed on the issuer\'s CRL, or by the registry', async () => {
    const revokedCrl = parseCrl(await createCrl({
      ca: pki.ca, revoked: [{ serialHex: device.serialHex, revokedAt: T0, reason: 'keyCompromise' }], crlNumber: 2, now: T0, nextUpdate: T0 + 7 * DAY_MS,
    }));
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, revocation: { crls: [revokedCrl] } }), rejects('revoked'));
    // A serial listed on any current CRL from the issuer is revoked, whatever the other CRLs say.
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, revocation: { crls: [crl, revokedCrl] } }), rejects('revoked'));
    const queries: unknown[] = [];
    const registry = (q: { serialHex: string; deviceId?: string }) => {
      queries.push(q);
      return q.deviceId === 'bed-7' ? 'revoked' as const : 'good' as const;
    };
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, revocation: { registry } }), rejects('revoked'));
    assert.equal((queries[0] as { serialHex: string }).serialHex, device.serialHex);
  });

  it('revocation-unknown: no CRL from the issuer, a stale CRL, a CRL with an unhandled critical extension, an unknown device', async () => {
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, revocation: { crls: [] } }), rejects('revocation-unknown'));
    // A CRL signed by the root does not cover a leaf issued by the issuing CA.
    const rootCrl = parseCrl(await createCrl({ ca: pki.rootCa, revoked: [], crlNumber: 1, now: T0, nextUpdate: T0 + 7 * DAY_MS }));
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, revocation: { crls: [rootCrl] } }), rejects('revocation-unknown'));
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, now: T0 + 8 * DAY_MS, revocation: { crls: [crl] } }), rejects('revocation-unknown'));
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, revocation: { registry: () => 'unknown' } }), rejects('revocation-unknown'));
    // A CRL from the right issuer but tampered: its signature fails, so it is not used.
    const tampered = Uint8Array.from(crl.der);
    tampered[tampered.length - 3] = (tampered[tampered.length - 3] as number) ^ 1;
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, revocation: { crls: [parseCrl(tampered)] } }), rejects('revocation-unknown'));
    // An intermediate revoked on the root's CRL.
    const rootCrlRevoking = parseCrl(await createCrl({ ca: pki.rootCa, revoked: [{ serialHex: pki.issuing.serialHex, revokedAt: T0 }], crlNumber: 2, now: T0, nextUpdate: T0 + 7 * DAY_MS }));
    assert.throws(() => validateChain([device.der, pki.issuing.der], { ...base, revocation: { crls: [crl, rootCrlRevoking] } }), rejects('revoked'));
  });

  it('strict parsing: random mutations of a certificate only ever give CertificateError (fast-check)', () => {
    fc.assert(fc.property(fc.nat(device.der.length - 1), fc.integer({ min: 1, max: 255 }), (pos, x) => {
      const m = Uint8Array.from(device.der);
      m[pos] = (m[pos] as number) ^ x;
      try {
        validateChain([m, pki.issuing.der], base);
        return false; // a single changed byte must never validate
      } catch (e) {
        return e instanceof CertificateError;
      }
    }), { numRuns: 2000, seed: 1234 });
    fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
      try {
        parseCertificate(bytes);
        return false;
      } catch (e) {
        return e instanceof CertificateError;
      }
    }), { numRuns: 1000, seed: 99 });
  });
});

describe('CSR and CRL parsers: truncation and mutation', () => {
  it('every prefix of a CSR and a CRL is refused with a typed error; random flips never crash', async () => {
    const pki = await makePki();
    const device = (await pki.device('bed-7')).cert;
    const csr = await createCsr({ signer: p256Signer(), subject: { commonName: 'bed-7' }, deviceId: 'bed-7' });
    const crl = await createCrl({ ca: pki.ca, revoked: [{ serialHex: device.serialHex, revokedAt: T0, reason: 'superseded' }], crlNumber: 1, now: T0, nextUpdate: T0 + DAY_MS });
    for (const [name, der, parse] of [['CSR', csr, parseCsr], ['CRL', crl, parseCrl]] as const) {
      for (let n = 0; n < der.length; n++) {
        assert.throws(() => parse(der.subarray(0, n)), (e: unknown) => e instanceof CertificateError && e.code === 'malformed', `${name} prefix ${n}`);
      }
      fc.assert(fc.property(fc.nat(der.length - 1), fc.integer({ min: 1, max: 255 }), (pos, x) => {
        const m = Uint8Array.from(der);
        m[pos] = (m[pos] as number) ^ x;
        try {
          parse(m);
          return true; // a CRL mutation inside the signed bytes still parses; only a crash fails here
        } catch (e) {
          return e instanceof CertificateError;
        }
      }), { numRuns: 1000, seed: 7 });
    }
    // A CSR mutated anywhere in its signed part fails its proof of possession.
    const m = Uint8Array.from(csr);
    m[40] = (m[40] as number) ^ 0x20;
    assert.throws(() => parseCsr(m), CertificateError);
  });

  it('CRL: a critical extension we do not process makes the CRL unusable; v1 CRLs carry no extensions', async () => {
    const pki = await makePki();
    const crl = parseCrl(await createCrl({ ca: pki.ca, revoked: [], crlNumber: 5, now: T0, nextUpdate: T0 + DAY_MS }));
    assert.equal(crl.crlNumber, 5n);
    assert.equal(crl.unhandledCritical.length, 0);
    const device = (await pki.device('bed-7')).cert;
    const alg = signatureAlgorithmFor('ecdsa-p256-sha256');
    const sign = async (tbs: Uint8Array) => parseCrl(seq(tbs, alg, bits(await pki.ca.signer.sign(tbs))));
    // RFC 5280 §5.2.5: an issuing distribution point (critical) scopes the CRL; we do not process it.
    const scoped = await sign(seq(uint(1), alg, pki.issuing.subject.der, time(T0), time(T0 + DAY_MS),
      explicit(0, seq(encodeExtension(OID.crlNumber, false, uint(1)), encodeExtension(OID.issuingDistributionPoint, true, seq())))));
    assert.deepEqual(scoped.unhandledCritical, [OID.issuingDistributionPoint]);
    assert.throws(() => validateChain([device.der, pki.issuing.der], { roots: [pki.root], now: T0, purpose: 'client', revocation: { crls: [scoped] } }), rejects('revocation-unknown'));
    // No version field (v1) but extensions: malformed.
    await assert.rejects(sign(seq(alg, pki.issuing.subject.der, time(T0), time(T0 + DAY_MS), explicit(0, seq(encodeExtension(OID.crlNumber, false, uint(1)))))), rejects('malformed'));
    // An empty revokedCertificates list must be absent (RFC 5280 §5.1.2.6).
    await assert.rejects(sign(seq(uint(1), alg, pki.issuing.subject.der, time(T0), time(T0 + DAY_MS), seq())), rejects('malformed'));
  });
});

describe('independent certificates (wolfSSL peers-test, test/vectors/dtls13-wolfssl/c-mutual-ecc.json)', () => {
  const file = JSON.parse(readFileSync(new URL('../vectors/dtls13-wolfssl/c-mutual-ecc.json', import.meta.url), 'utf8')) as Record<string, string>;
  const cas = pemDecode(file['ca_bundle_pem'] as string, 'CERTIFICATE').map((b) => parseCertificate(b.der));
  const server = parseCertificate((pemDecode(file['server-ecc-cert_pem'] as string, 'CERTIFICATE')[0] as { der: Uint8Array }).der);
  const client = parseCertificate((pemDecode(file['client-ecc-cert_pem'] as string, 'CERTIFICATE')[0] as { der: Uint8Array }).der);
  const now = Date.UTC(2030, 0, 1);

  it('parses the RSA, ECDSA and Ed25519 CA certificates as OpenSSL wrote them', () => {
    assert.ok(typeof file['source'] === 'string' && file['source'].length > 0);
    assert.deepEqual(cas.map((c) => c.subject.text), ['C=US,O=peers-test,CN=peers-test CA rsa', 'C=US,O=peers-test,CN=peers-test CA ecc', 'C=US,O=peers-test,CN=peers-test CA ed25519']);
    assert.deepEqual(cas.map((c) => c.signatureAlgorithm.keyType), ['rsa', 'ec', 'ed25519']);
    for (const c of cas) assert.equal(c.extensions.basicConstraints?.ca, true);
    assert.deepEqual(server.extensions.subjectAltName?.dns, ['localhost']);
    assert.deepEqual(server.extensions.subjectAltName?.ips, ['127.0.0.1']);
    assert.deepEqual([...(server.extensions.keyUsage ?? [])], ['digitalSignature']);
  });

  it('validates the server chain for localhost/127.0.0.1 and the client chain for clientAuth', () => {
    const peer = validateChain([server.der], { roots: cas, now, purpose: 'server', expectedServerName: 'localhost' });
    assert.equal(peer.path[1]?.subject.text, 'C=US,O=peers-test,CN=peers-test CA ecc');
    validateChain([server.der], { roots: cas, now, purpose: 'server', expectedServerName: '127.0.0.1' });
    validateChain([client.der], { roots: cas, now, purpose: 'client', requireDeviceId: false });
    assert.throws(() => validateChain([client.der], { roots: cas, now, purpose: 'client' }), rejects('device-id-missing'));
    assert.throws(() => validateChain([server.der], { roots: cas, now, purpose: 'client', requireDeviceId: false }), rejects('wrong-purpose'));
    assert.throws(() => validateChain([server.der], { roots: [cas[0] as Certificate], now, purpose: 'server' }), rejects('unknown-issuer'));
  });
});
