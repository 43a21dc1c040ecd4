/**
 * The default PeerCertificateVerifier (node:crypto X509Certificate): chains to pinned roots,
 * validity at the injected time, EKU, names, SPKI pins, and the validated-chain cache.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { CertificateRejected } from '../../src/dtls/errors.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { issueLeaf, makeCa, makeIntermediate, type TestCa } from './support/pki.ts';

const NOW = Date.now();
const DAY = 86_400_000;
let ca: TestCa;

before(async () => {
  ca = await makeCa('verifier root');
});

async function rejects(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof CertificateRejected && e.code === code);
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
    await rejects(v.verify([viaMid.der], NOW), 'unknown-ca');
  });

  it('refuses unknown roots, expired and not-yet-valid certificates (at the injected time)', async () => {
    const leaf = await issueLeaf(ca, 'device-3', { eku: 'client' });
    const other = await makeCa('other root');
    await rejects(new X509PeerVerifier({ roots: [other.pem], purpose: 'client' }).verify([leaf.der], NOW), 'unknown-ca');
    const v = new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' });
    await rejects(v.verify([leaf.der], NOW + 3 * DAY), 'certificate-expired');
    await rejects(v.verify([leaf.der], NOW - 3 * DAY), 'certificate-not-yet-valid');
  });

  it('checks the extended key usage, the name, the SPKI pin, and refuses a CA as the leaf', async () => {
    const server = await issueLeaf(ca, 'ingest', { eku: 'server', dnsName: 'ingest.example', ip: '10.0.0.5' });
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([server.der], NOW), 'certificate-purpose');
    const sv = new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: 'ingest.example' });
    const id = await sv.verify([server.der], NOW);
    assert.equal((await new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: '10.0.0.5' }).verify([server.der], NOW)).commonName, 'ingest');
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: 'evil.example' }).verify([server.der], NOW), 'certificate-name-mismatch');
    assert.ok(await new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', spkiPins: [id.spkiSha256.toUpperCase()] }).verify([server.der], NOW));
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', spkiPins: ['00'.repeat(32)] }).verify([server.der], NOW), 'certificate-pin-mismatch');
    const noEku = await issueLeaf(ca, 'legacy', { eku: 'none' });
    assert.ok(await new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([noEku.der], NOW), 'no EKU: any purpose (RFC 5280)');
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([ca.der], NOW), 'bad-certificate');
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([], NOW), 'empty-certificate');
    await rejects(new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }).verify([new Uint8Array([0x30, 0x03, 1, 2, 3])], NOW), 'bad-certificate');
  });

  it('the cache returns the same identity and still checks the validity window at each use', async () => {
    const leaf = await issueLeaf(ca, 'device-4', { eku: 'client' });
    const v = new X509PeerVerifier({ roots: [ca.pem], purpose: 'client', cacheSize: 2 });
    const a = await v.verify([leaf.der], NOW);
    const b = await v.verify([leaf.der], NOW + 1000);
    assert.equal(a, b, 'served from the cache');
    await rejects(v.verify([leaf.der], NOW + 3 * DAY), 'certificate-expired');
    const tampered = Uint8Array.from(leaf.der);
    tampered[tampered.length - 5] = (tampered[tampered.length - 5] as number) ^ 1;
    await assert.rejects(v.verify([tampered], NOW), (e: unknown) => e instanceof CertificateRejected, 'other bytes are validated afresh');
  });
});
