/**
 * The device side of enrolment (src/pki/est-client.ts) against the real ingest HTTPS server
 * (TLS 1.3, SQLite, the test fleet CA as issuer): enrolment with a one-time token, renewal over
 * mutual TLS, and every refusal the endpoint gives, each as its own typed error. Answers the real
 * service never gives (another key's chain, truncated, oversized, the wrong media type) come from a
 * deliberately broken HTTPS server. No error message ever quotes the token.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { startIngestHttp, type IngestHttp } from '../../src/ingest/http/server.ts';
import { createEnrolToken } from '../../src/ingest/tokens.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { createCsr } from '../../src/pki/csr.ts';
import {
  chainFromReply, chainPem, checkEnrolToken, checkIssuedChain, enrol, parseEstUrl, postCsr, reenrol, type EstEndpoint,
} from '../../src/pki/est-client.ts';
import { issueServiceCertificate } from '../../src/pki/issue.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { inProcessTls, serverAuthTls } from '../../src/transport/mqtts/connector.ts';
import type { MqttsTrust } from '../../src/transport/mqtts/tls.ts';
import { ApiMisuse, EnrolmentError } from '../../src/util/errors.ts';
import { startHarness, type Harness } from '../ingest/support/harness.ts';
import { pemOf, serverCertificate, testIssuer } from '../ingest/support/https.ts';
import { makePki, type TestPki } from './fixtures.ts';

const p256 = (): KeyObject => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

/** Rejects with an EnrolmentError of `code` whose message does not contain `secret`. */
async function refused(p: Promise<unknown>, code: string, secret?: string): Promise<EnrolmentError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof EnrolmentError, `expected an EnrolmentError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (secret !== undefined) {
      assert.ok(!e.message.includes(secret), 'the token is never quoted');
      assert.ok(!String(e.stack).includes(secret), 'nor in the stack');
    }
    return e;
  }
  assert.fail(`expected ${code}`);
}

describe('EST client against the ingest HTTPS endpoint', () => {
  let h: Harness;
  let http: IngestHttp;
  let endpoint: EstEndpoint;
  let trust: MqttsTrust;
  const token = async (deviceId: string, ttlMs = 3_600_000) => (await createEnrolToken(h.core.storage, { deviceId, now: h.clock.now(), ttlMs })).token;

  before(async () => {
    h = await startHarness('sqlite', undefined, { crl: { revoke: async () => ({ crlNumber: 1 }), crlPath: '/nonexistent/crl.pem' } }, { realTime: true });
    const server = await serverCertificate(h.pki);
    http = await startIngestHttp(h.core, { host: '127.0.0.1', port: 0, certPem: server.certPem, keyPem: server.keyPem, roots: [h.pki.root], issuer: testIssuer(h.pki) });
    endpoint = parseEstUrl(http.url);
    trust = { roots: [h.pki.root] };
  });
  after(async () => {
    await http?.close();
    await h?.close();
  });

  const enrolWith = (deviceId: string, t: string, key = p256(), o: { connector?: ReturnType<typeof serverAuthTls>; at?: EstEndpoint } = {}) =>
    enrol({ endpoint: o.at ?? endpoint, connector: o.connector ?? serverAuthTls({ trust, clock: h.clock }), signer: keyObjectSigner(key), deviceId, token: t, roots: trust.roots, clock: h.clock });

  it('parses only https://HOST[:PORT] URLs', () => {
    assert.deepEqual(parseEstUrl('https://ingest.example:8443'), { host: 'ingest.example', port: 8443, serverName: 'ingest.example', origin: 'https://ingest.example:8443' });
    assert.equal(parseEstUrl('https://[::1]/').host, '::1');
    assert.equal(parseEstUrl('https://ingest.example').port, 443);
    for (const bad of ['http://ingest.example', 'https://user:pw@ingest.example', 'https://ingest.example/est', 'https://ingest.example/?x=1', 'ingest.example:8443', '']) {
      assert.throws(() => parseEstUrl(bad), (e: unknown) => e instanceof ApiMisuse && e.code === 'invalid-url', bad);
    }
  });

  it('enrols: the chain validates for this device and carries this device\'s key', async () => {
    const key = p256();
    const t = await token('bed-est');
    const issued = await enrolWith('bed-est', t, key);
    assert.equal(issued.peer.deviceId, 'bed-est');
    assert.equal(issued.presented.length, 2, 'leaf and issuing CA; the pinned root is left out');
    assert.equal(issued.root.serialHex, h.pki.root.serialHex);
    assert.equal(chainPem(issued), pemEncode('CERTIFICATE', issued.leaf.der) + pemEncode('CERTIFICATE', h.pki.issuing.der));
    assert.equal((await h.core.storage.getDevice('bed-est'))?.certSerial, issued.leaf.serialHex);
    // Single use.
    await refused(enrolWith('bed-est', t, key), 'token-spent', t);
  });

  it('refuses a malformed, unknown, expired or foreign token, each with its own code, never quoting it', async () => {
    assert.throws(() => checkEnrolToken('vse_short'), (e: unknown) => e instanceof EnrolmentError && e.code === 'token-invalid' && !e.message.includes('vse_short'));
    await refused(enrolWith('bed-x', 'not-a-token'), 'token-invalid', 'not-a-token');
    const unknown = `vse_${'A'.repeat(43)}`;
    const e = await refused(enrolWith('bed-x', unknown), 'token-invalid', unknown);
    assert.equal(e.status, 401);
    assert.equal(e.serverCode, 'enrol-token-unknown');
    const late = await token('bed-late', 60_000);
    h.clock.advance(60_001);
    await refused(enrolWith('bed-late', late), 'token-expired', late);
    const other = await token('bed-other');
    const m = await refused(enrolWith('bed-mine', other), 'device-mismatch', other);
    assert.equal(m.status, 403);
    assert.ok(!m.retryable);
  });

  it('refuses enrolment of a revoked device', async () => {
    const first = await enrolWith('bed-gone', await token('bed-gone'));
    assert.equal(first.peer.deviceId, 'bed-gone');
    const t = await token('bed-gone');
    await h.core.registry.setStatus('bed-gone', 'suspended', 'test');
    await refused(enrolWith('bed-gone', t), 'device-not-active', t);
  });

  it('refuses a server certificate from another CA, and one that does not name the host', async () => {
    const t = await token('bed-tls');
    // Another fleet's root pinned: the ingest's certificate does not chain to it.
    const stranger = await makePki({ now: h.clock.now() - 3_600_000 });
    const untrusted = await refused(enrolWith('bed-tls', t, p256(), { connector: serverAuthTls({ trust: { roots: [stranger.root] }, clock: h.clock }) }), 'server-untrusted', t);
    assert.match(untrusted.message, /unknown-issuer/);
    // The right CA, the wrong name: a second server whose certificate names only ingest.example.
    const named = await namedServer(h.pki, ['ingest.example']);
    const other = await startIngestHttp(h.core, { host: '127.0.0.1', port: 0, certPem: named.certPem, keyPem: named.keyPem, roots: [h.pki.root], issuer: testIssuer(h.pki) });
    try {
      const e = await refused(enrolWith('bed-tls', t, p256(), { at: parseEstUrl(other.url) }), 'server-untrusted', t);
      assert.match(e.message, /name-mismatch/);
    } finally {
      await other.close();
    }
    // Neither refusal sent the request: the token is still good.
    assert.equal((await enrolWith('bed-tls', t)).peer.deviceId, 'bed-tls');
  });

  it('nothing listening, and a server that never answers: unavailable, retryable', async () => {
    const closed = await refused(enrolWith('bed-x', `vse_${'C'.repeat(43)}`, p256(), { at: { ...endpoint, port: 1, origin: 'https://127.0.0.1:1' } }), 'unavailable');
    assert.ok(closed.retryable);
    const s = await namedServer(h.pki, ['localhost'], ['127.0.0.1']);
    const quiet = createServer({ cert: s.certPem, key: s.keyPem, minVersion: 'TLSv1.3' }, () => undefined);
    await new Promise<void>((r) => quiet.listen(0, '127.0.0.1', r));
    try {
      const port = (quiet.address() as AddressInfo).port;
      const e = await refused(enrol({
        endpoint: parseEstUrl(`https://127.0.0.1:${port}`), connector: serverAuthTls({ trust, clock: h.clock }), timeoutMs: 300,
        signer: keyObjectSigner(p256()), deviceId: 'bed-x', token: `vse_${'D'.repeat(43)}`, roots: trust.roots, clock: h.clock,
      }), 'unavailable');
      assert.match(e.message, /within 300 ms/);
    } finally {
      quiet.closeAllConnections();
      await new Promise<void>((r) => quiet.close(() => r()));
    }
  });

  it('renews over mutual TLS with the same key; a revoked device is refused', async () => {
    const key = p256();
    const first = await enrolWith('bed-renew', await token('bed-renew'), key);
    const mtls = () => inProcessTls({ certChainPem: chainPem(first), privateKey: key, trust, clock: h.clock });
    h.clock.advance(1000);
    const renewed = await reenrol({ endpoint, connector: mtls(), signer: keyObjectSigner(key), deviceId: 'bed-renew', roots: trust.roots, clock: h.clock, currentNotAfter: first.leaf.notAfter });
    assert.notEqual(renewed.leaf.serialHex, first.leaf.serialHex);
    assert.ok(renewed.leaf.notAfter > first.leaf.notAfter);
    assert.deepEqual(renewed.peer.spki, first.peer.spki, 'the same key: the identity key is re-enrolled');
    // A renewal that would not extend the validity is refused on our side.
    h.clock.advance(1000);
    await refused(reenrol({ endpoint, connector: mtls(), signer: keyObjectSigner(key), deviceId: 'bed-renew', roots: trust.roots, clock: h.clock, currentNotAfter: renewed.leaf.notAfter + 86_400_000 }), 'chain-refused');
    // Without a client certificate, and as a revoked device.
    await refused(reenrol({ endpoint, connector: serverAuthTls({ trust, clock: h.clock }), signer: keyObjectSigner(key), deviceId: 'bed-renew', roots: trust.roots, clock: h.clock }), 'certificate-refused');
    await h.core.registry.setStatus('bed-renew', 'revoked', 'test');
    const e = await refused(reenrol({ endpoint, connector: mtls(), signer: keyObjectSigner(key), deviceId: 'bed-renew', roots: trust.roots, clock: h.clock }), 'certificate-refused');
    assert.equal(e.status, 401);
    assert.match(e.message, /revoked/);
  });

  it('postCsr refuses misuse: enrolment without a token, renewal with one', () => {
    assert.throws(() => postCsr({ endpoint, connector: serverAuthTls({ trust }) }, 'enrol', new Uint8Array(1)), (e: unknown) => e instanceof ApiMisuse);
    assert.throws(() => postCsr({ endpoint, connector: serverAuthTls({ trust }) }, 'renew', new Uint8Array(1), 'vse_x'), (e: unknown) => e instanceof ApiMisuse);
  });
});

async function namedServer(pki: TestPki, dnsNames: string[], ipAddresses: string[] = []): Promise<{ certPem: string; keyPem: string }> {
  const key = p256();
  const csr = await createCsr({ signer: keyObjectSigner(key), subject: { commonName: dnsNames[0] ?? 'server' } });
  const cert = await issueServiceCertificate({ ca: pki.ca, csr, dnsNames, ipAddresses, now: pki.now });
  return { certPem: pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', pki.issuing.der), keyPem: pemOf(key) };
}

describe('EST client: answers the real service never gives, from a broken server', () => {
  let pki: TestPki;
  let server: Server;
  let endpoint: EstEndpoint;
  let trust: MqttsTrust;
  const deviceKey = p256();
  /** What the broken server does with the next request. */
  let answer: (res: import('node:http').ServerResponse) => void = () => undefined;
  let sawToken = false;
  const TOKEN = `vse_${'Q'.repeat(20)}${'z'.repeat(23)}`;

  before(async () => {
    pki = await makePki({ now: Date.now() - 3_600_000 });
    trust = { roots: [pki.root] };
    const s = await namedServer(pki, ['localhost'], ['127.0.0.1']);
    server = createServer({ cert: s.certPem, key: s.keyPem, minVersion: 'TLSv1.3' }, (req, res) => {
      sawToken ||= req.headers.authorization === `Bearer ${TOKEN}`;
      req.resume();
      req.on('end', () => answer(res));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    endpoint = parseEstUrl(`https://127.0.0.1:${(server.address() as AddressInfo).port}`);
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });

  const run = (o: { maxResponseBytes?: number } = {}) => enrol({
    endpoint, connector: serverAuthTls({ trust }), signer: keyObjectSigner(deviceKey), deviceId: 'bed-7', token: TOKEN, roots: trust.roots,
    clock: { now: () => Date.now() }, ...o,
  });
  const pemChain = async (id: string, signerKey: KeyObject) => {
    const { cert } = await pki.device(id, { signer: keyObjectSigner(signerKey), now: Date.now() - 60_000 });
    return pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', pki.issuing.der);
  };
  const chainType = { 'content-type': 'application/pem-certificate-chain' };

  it('a well-formed answer passes (the broken server can also behave)', async () => {
    const good = await pemChain('bed-7', deviceKey);
    answer = (res) => res.writeHead(200, chainType).end(good);
    assert.equal((await run()).peer.deviceId, 'bed-7');
    assert.ok(sawToken, 'the token went out in the Authorization header');
  });

  it('a chain for another key, another device, another CA: chain-refused', async () => {
    const otherKey = await pemChain('bed-7', p256());
    answer = (res) => res.writeHead(200, chainType).end(otherKey);
    assert.match((await refused(run(), 'chain-refused', TOKEN)).message, /another key/);
    const otherDevice = await pemChain('bed-8', deviceKey);
    answer = (res) => res.writeHead(200, chainType).end(otherDevice);
    assert.match((await refused(run(), 'chain-refused', TOKEN)).message, /device-id-mismatch/);
    const foreign = await makePki({ now: Date.now() - 3_600_000 });
    const { cert } = await foreign.device('bed-7', { signer: keyObjectSigner(deviceKey) });
    const foreignChain = pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', foreign.issuing.der);
    answer = (res) => res.writeHead(200, chainType).end(foreignChain);
    assert.match((await refused(run(), 'chain-refused', TOKEN)).message, /unknown-issuer/);
  });

  it('truncated, oversized, the wrong media type, not PEM, a key in the chain: bad-response', async () => {
    const good = await pemChain('bed-7', deviceKey);
    answer = (res) => {
      res.writeHead(200, { ...chainType, 'content-length': String(good.length) });
      res.write(good.slice(0, 300));
      setImmediate(() => res.socket?.destroy());
    };
    assert.match((await refused(run(), 'bad-response', TOKEN)).message, /cut short/);
    for (const cut of [1, 100, good.length - 30]) {
      const part = good.slice(0, cut);
      answer = (res) => res.writeHead(200, chainType).end(part);
      await refused(run(), 'bad-response', TOKEN);
    }
    answer = (res) => res.writeHead(200, { ...chainType, 'content-length': String(1 << 20) }).end();
    assert.match((await refused(run(), 'bad-response', TOKEN)).message, /larger than/);
    const big = 'x'.repeat(70_000);
    answer = (res) => res.writeHead(200, chainType).end(big); // chunked: counted as it arrives
    assert.match((await refused(run(), 'bad-response', TOKEN)).message, /larger than 65536/);
    answer = (res) => res.writeHead(200, chainType).end(good);
    assert.match((await refused(run({ maxResponseBytes: 100 }), 'bad-response', TOKEN)).message, /larger than 100 bytes/);
    answer = (res) => res.writeHead(200, { 'content-type': 'text/html' }).end(good);
    assert.match((await refused(run(), 'bad-response', TOKEN)).message, /not application\/pem-certificate-chain/);
    answer = (res) => res.writeHead(200, chainType).end('hello');
    assert.match((await refused(run(), 'bad-response', TOKEN)).message, /no certificate/);
    const withKey = good + pemEncode('PRIVATE KEY', new Uint8Array(32));
    answer = (res) => res.writeHead(200, chainType).end(withKey);
    assert.match((await refused(run(), 'bad-response', TOKEN)).message, /PRIVATE KEY/);
    const six = good.repeat(3);
    answer = (res) => res.writeHead(200, chainType).end(six);
    assert.match((await refused(run(), 'bad-response', TOKEN)).message, /6 certificates/);
  });

  it('status codes map to codes; the server\'s text is quoted scrubbed of anything token-shaped', async () => {
    const cases: [number, string | undefined, string][] = [
      [401, 'enrol-token-used', 'token-spent'], [401, undefined, 'token-invalid'], [403, 'device-revoked', 'device-not-active'],
      [400, 'bad-csr', 'csr-refused'], [413, 'too-large', 'csr-refused'], [404, 'not-found', 'not-found'], [405, undefined, 'not-found'],
      [429, undefined, 'unavailable'], [500, 'internal', 'unavailable'], [503, 'enrolment-disabled', 'unavailable'], [302, undefined, 'bad-response'],
    ];
    for (const [status, code, ours] of cases) {
      // A hostile server echoing the token back: never quoted.
      const body = JSON.stringify({ error: code, message: `echo ${TOKEN} \u0007 and more` });
      answer = (res) => res.writeHead(status, { 'content-type': 'application/json' }).end(code === undefined ? 'not json' : body);
      const e = await refused(run(), ours, TOKEN);
      assert.equal(e.status, status);
      if (code !== undefined) {
        assert.equal(e.serverCode, code);
        assert.match(e.message, /\[redacted\]/);
      }
      assert.equal(e.retryable, ours === 'unavailable');
    }
  });

  it('checkIssuedChain and chainFromReply alone (pure)', async () => {
    const good = await pemChain('bed-7', deviceKey);
    const spki = await keyObjectSigner(deviceKey).publicKeySpki();
    assert.equal(checkIssuedChain(good, { roots: [pki.root], now: Date.now(), deviceId: 'bed-7', keySpki: spki }).peer.deviceId, 'bed-7');
    assert.throws(() => checkIssuedChain(good, { roots: [pki.root], now: Date.now() + 5 * 365 * 86_400_000, deviceId: 'bed-7', keySpki: spki }),
      (e: unknown) => e instanceof EnrolmentError && e.code === 'chain-refused' && /expired/.test(e.message));
    assert.equal(chainFromReply({ status: 200, contentType: 'application/pem-certificate-chain', body: Buffer.from(good) }, 'enrol', endpoint), good);
    assert.throws(() => chainFromReply({ status: 200, contentType: undefined, body: new Uint8Array() }, 'renew', endpoint), (e: unknown) => e instanceof EnrolmentError && e.code === 'bad-response');
  });
});
