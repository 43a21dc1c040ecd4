/**
 * The PeerCertificateVerifier on src/pki's validateChain: chains to pinned roots, validity at the
 * injected time, EKU, names, SPKI pins, device ids, revocation; and the alert each refusal maps to.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { alertFor, CertificateRejected } from '../../src/dtls/errors.ts';
import { CertificateError } from '../../src/util/errors.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { issueLeaf, makeCa, makeIntermediate, type TestCa } from './support/pki.ts';

const NOW = Date.now();
const DAY = 86_400_000;
let ca: TestCa;

before(async () => {
  ca = await makeCa('verifier root');
});

/** Refused by the PKI with `code`, and the DTLS layer answers with `alert`. */
async function rejects(p: Promise<unknown>, code: string, alert: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof CertificateError || e instanceof CertificateRejected, String(e));
    assert.equal(e.code, code, e.message);
    assert.equal(alertFor(e), alert);
    return true;
  });
}

describe('X509PeerVerifier', () => {
  it('accepts a leaf from the root and through an intermediate, and reports the identity', async () => {
    const direct = await issueLeaf(ca, 'device-1', { eku: 'client' });
    const v = new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' });
    const id = await v.verify([direct.der], NOW);
    assert.equal(id.commonName, 'device-1');
    assert.equal(id.spkiSha256.length, 64);
    const mid = await makeIntermediate(ca, 'verifier issuing CA');
    const viaMid = await issueLeaf(mid, 'device-2', { eku: 'client' });
    assert.equal((await v.verify([viaMid.der, mid.der], NOW)).commonName, 'device-2');
    await rejects(v.verify([viaMid.der], NOW), 'unknown-issuer', 'unknown_ca');
  });

  it('refuses unknown roots, expired and not-yet-valid certificates (at the injected time)', async () => {
    const leaf = await issueLeaf(ca, 'device-3', { eku: 'client' });
    const other = await makeCa('other root');
    await rejects(new X509PeerVerifier({ roots: [other.pem], purpose: 'client' }).verify([leaf.der], NOW), 'unknown-issuer', 'unknown_ca');
    const v = new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' });
    await rejects(v.verify([leaf.der], NOW + 3 * DAY), 'expired', 'certificate_expired');
    await rejects(v.verify([leaf.der], NOW - 3 * DAY), 'not-yet-valid', 'certificate_expired');
  });

  it('checks the extended key usage, the name, the SPKI pin, and refuses a CA as the leaf', async () => {
    const server = await issueLeaf(ca, 'ingest', { eku: 'server', dnsName: 'ingest.example', ip: '10.0.0.5' });
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([server.der], NOW), 'wrong-purpose', 'unsupported_certificate');
    const sv = new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: 'ingest.example' });
    const id = await sv.verify([server.der], NOW);
    assert.equal((await new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: '10.0.0.5' }).verify([server.der], NOW)).commonName, 'ingest');
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: 'evil.example' }).verify([server.der], NOW), 'name-mismatch', 'bad_certificate');
    assert.ok(await new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', spkiPins: [id.spkiSha256.toUpperCase()] }).verify([server.der], NOW));
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', spkiPins: ['00'.repeat(32)] }).verify([server.der], NOW), 'pin-mismatch', 'bad_certificate');
    const noEku = await issueLeaf(ca, 'legacy', { eku: 'none' });
    // RFC 5280 lets a certificate without EKU serve any purpose; the fleet PKI requires the EKU (docs/pki.md).
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([noEku.der], NOW), 'wrong-purpose', 'unsupported_certificate');
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([ca.der], NOW), 'wrong-purpose', 'unsupported_certificate');
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([], NOW), 'empty-certificate', 'decode_error');
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([new Uint8Array([0x30, 0x03, 1, 2, 3])], NOW), 'malformed', 'bad_certificate');
  });

  it('requires a device id when asked, and consults revocation on every use', async () => {
    const leaf = await issueLeaf(ca, 'device-4', { eku: 'client' });
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client', requireDeviceId: true }).verify([leaf.der], NOW), 'device-id-missing', 'bad_certificate');
    let revoked = false;
    const v = new X509PeerVerifier({ roots: [ca.pem], purpose: 'client', revocation: { registry: () => (revoked ? 'revoked' : 'good') } });
    assert.ok(await v.verify([leaf.der], NOW));
    revoked = true;
    await rejects(v.verify([leaf.der], NOW), 'revoked', 'certificate_revoked');
    const tampered = Uint8Array.from(leaf.der);
    tampered[tampered.length - 5] = (tampered[tampered.length - 5] as number) ^ 1;
    await assert.rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([tampered], NOW), (e: unknown) => e instanceof CertificateError);
  });
});
