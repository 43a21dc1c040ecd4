/**
 * The HTTPS front end over real TLS 1.3 on loopback: HSTS and the plain-HTTP redirect, API tokens
 * and operator mTLS (and every way to get them wrong), audited reads, readings as SenML JSON, gaps,
 * posture, metrics, device operations, enrolment and renewal (EST-like), the live feed, and limits.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { request } from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startIngestHttp, type IngestHttp } from '../../src/ingest/http/server.ts';
import { createApiToken, createEnrolToken } from '../../src/ingest/tokens.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { parseCertificate, spkiSha256 } from '../../src/pki/certificate.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { pemDecode, pemEncode } from '../../src/pki/pem.ts';
import { validateChain } from '../../src/pki/validate.ts';
import { toHex } from '../../src/util/bytes.ts';
import { batchFor, startHarness, type Harness } from './support/harness.ts';
import { httpsRequest, operatorCertificate, pemOf, serverCertificate, testIssuer, type RequestOptions } from './support/https.ts';

describe('ingest HTTPS: API, enrolment, dashboard assets', () => {
  let h: Harness;
  let http: IngestHttp;
  let root: string;
  let reader: string;
  let admin: string;
  let issuer: ReturnType<typeof testIssuer>;
  let operator: Awaited<ReturnType<typeof operatorCertificate>>;
  const crlRevocations: string[] = [];
  const get = (path: string, o: RequestOptions = {}) => httpsRequest(http.url, path, root, o);

  before(async () => {
    h = await startHarness('sqlite', undefined, { crl: { revoke: async (serial) => { crlRevocations.push(serial); return { crlNumber: crlRevocations.length }; }, crlPath: '/nonexistent/crl.pem' } }, { realTime: true });
    root = pemEncode('CERTIFICATE', h.pki.root.der);
    const server = await serverCertificate(h.pki);
    operator = await operatorCertificate(h.pki, 'alice-laptop');
    issuer = testIssuer(h.pki);
    http = await startIngestHttp(h.core, {
      host: '127.0.0.1', port: 0, redirectPort: 0, certPem: server.certPem, keyPem: server.keyPem, roots: [h.pki.root], issuer,
      operators: [{ name: 'alice', spkiSha256: toHex(spkiSha256(operator.cert.spki.der)), role: 'reader' }],
    });
    reader = (await createApiToken(h.core.storage, { name: 'alice', role: 'reader', now: h.clock.now() })).token;
    admin = (await createApiToken(h.core.storage, { name: 'ops', role: 'admin', now: h.clock.now() })).token;
  });
  after(async () => {
    await http?.close();
    await h?.close();
  });

  const auditText = async () => {
    await h.core.audit.flush();
    return readFileSync(join(h.dir, 'audit.log'), 'utf8');
  };

  it('serves TLS 1.3 only, with HSTS and a strict CSP; plain HTTP only redirects', async () => {
    const r = await get('/healthz');
    assert.equal(r.status, 200);
    assert.match(String(r.headers['strict-transport-security']), /^max-age=31536000; includeSubDomains$/);
    assert.match(String(r.headers['content-security-policy']), /default-src 'none'; script-src 'self'/);
    assert.equal(r.headers['x-content-type-options'], 'nosniff');
    await assert.rejects(get('/healthz', { maxVersion: 'TLSv1.2' }), /protocol|version|alert/i);
    const plain = await new Promise<{ status: number; location: string | undefined; body: string }>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: http.redirectPort, path: '/api/v1/devices?x=1', headers: { host: `127.0.0.1:${http.redirectPort}` } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, location: res.headers.location, body }));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(plain.status, 308);
    assert.equal(plain.location, `https://127.0.0.1:${http.port}/api/v1/devices?x=1`);
    assert.equal(plain.body, '', 'no content over plain HTTP');
  });

  it('refuses unauthenticated and wrongly authenticated calls, and audits the attempts', async () => {
    const none = await get('/api/v1/devices');
    assert.equal(none.status, 401);
    assert.match(String(none.headers['www-authenticate']), /^Bearer/);
    assert.equal((await get('/api/v1/devices', { headers: { authorization: 'Basic YWxpY2U6eA==' } })).status, 401);
    assert.equal((await get('/api/v1/devices', { token: 'vst_short' })).status, 401);
    assert.equal((await get('/api/v1/devices', { token: `vst_${'A'.repeat(43)}` })).json()['error'], 'unknown-token');
    const temp = await createApiToken(h.core.storage, { name: 'temp', role: 'reader', now: h.clock.now(), ttlMs: 60_000 });
    assert.equal((await get('/api/v1/devices', { token: temp.token })).status, 200);
    h.clock.advance(60_000);
    assert.equal((await get('/api/v1/devices', { token: temp.token })).json()['error'], 'expired-token');
    const gone = await createApiToken(h.core.storage, { name: 'gone', role: 'reader', now: h.clock.now() });
    await h.core.storage.revokeApiToken('gone', h.clock.now());
    assert.equal((await get('/api/v1/devices', { token: gone.token })).json()['error'], 'revoked-token');
    assert.equal((await get('/api/v1/devices/x/suspend', { method: 'POST', token: reader })).status, 403, 'a reader cannot change devices');
    // Certificates: a device's never opens the API; an operator's only when listed.
    const dev = await h.enrol('bed-api-cert');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const devCert = await h.pki.device('bed-api-cert', { signer: keyObjectSigner(privateKey) });
    assert.equal((await get('/api/v1/devices', { cert: pemEncode('CERTIFICATE', devCert.cert.der) + pemEncode('CERTIFICATE', h.pki.issuing.der), key: pemOf(privateKey) })).json()['error'], 'device-certificate');
    assert.ok(dev);
    const stranger = await operatorCertificate(h.pki, 'mallory');
    assert.equal((await get('/api/v1/devices', { cert: stranger.certPem, key: stranger.keyPem })).json()['error'], 'not-an-operator');
    const ok = await get('/api/v1/devices', { cert: operator.certPem, key: operator.keyPem });
    assert.equal(ok.status, 200);
    const audit = await auditText();
    assert.match(audit, /"op":"auth-failure","key":"-","result":"denied","code":"unknown-token"/);
    assert.match(audit, /"op":"auth-failure","key":"-","result":"denied","code":"expired-token"/);
    assert.match(audit, /"actor":"mtls:alice","op":"read"/);
  });

  it('serves readings as SenML JSON, gaps, one device and the list, each read audited', async () => {
    const d = await h.enrol('bed-api');
    for (const seq of [1, 2, 3, 5]) assert.equal((await h.core.service?.accept({ payload: d.seal(seq), contentFormat: 96, peer: d.peer }))?.status, 'accepted');
    const base = batchFor('bed-api', 1).readings[0]?.time as number;
    const r = await get(`/api/v1/devices/bed-api/readings?from=${base}&to=${base + 2999}`, { token: reader });
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'application/senml+json');
    const recs = r.json<{ n: string; u: string; v?: number; vd?: string; t: number }[]>();
    const hr = recs.filter((x) => x.n === 'bed-api/heart-rate');
    assert.deepEqual(hr.map((x) => [x.t * 1000, x.v]), [[base, 61], [base + 1000, 62], [base + 2000, 63]]);
    assert.deepEqual(recs.find((x) => x.n === 'bed-api/spo2'), { n: 'bed-api/spo2', u: '/', v: 0.96, t: base / 1000 });
    const ecg = recs.find((x) => x.n === 'bed-api/ecg');
    assert.ok(ecg?.vd !== undefined && Buffer.from(ecg.vd, 'base64url').length === 500, 'the seq-3 ECG strip, 250 int16 samples');
    const iso = await get(`/api/v1/devices/bed-api/readings?from=${new Date(base).toISOString()}&to=${new Date(base + 60_000).toISOString()}&limit=1`, { token: reader });
    assert.equal(iso.headers['x-vitalseal-truncated'], 'true');
    assert.equal((await get('/api/v1/devices/bed-api/readings?from=yesterday', { token: reader })).status, 400);
    assert.equal((await get('/api/v1/devices/bed-api/readings?from=5&to=1', { token: reader })).status, 400);
    assert.equal((await get('/api/v1/devices/bed-api/readings?limit=0', { token: reader })).status, 400);
    assert.equal((await get('/api/v1/devices/bed-api/readings?evil=1', { token: reader })).status, 400);
    assert.equal((await get('/api/v1/devices/nobody/readings', { token: reader })).status, 404);
    assert.equal((await get('/api/v1/devices/..%2Fetc/readings', { token: reader })).status, 404);
    const g = (await get('/api/v1/devices/bed-api/gaps', { token: reader })).json<{ gaps: unknown; missing: number; highestSeq: number }>();
    assert.deepEqual(g, { deviceId: 'bed-api', highestSeq: 5, missing: 1, gaps: [{ from: 4, to: 4 }] });
    const one = (await get('/api/v1/devices/bed-api', { token: reader })).json<{ device: Record<string, unknown> }>();
    assert.equal(one.device['messages'], 4);
    assert.equal(one.device['transport'], 'coaps');
    assert.deepEqual((one.device['dataKeyVersions'] as { version: number }[]).map((v) => v.version), [1]);
    const audit = await auditText();
    assert.match(audit, /"actor":"api:alice","op":"read","key":"-","result":"ok","detail":"readings bed-api /);
    assert.match(audit, /"actor":"api:alice","op":"read","key":"-","result":"ok","detail":"gaps bed-api"/);
  });

  it('posture and metrics', async () => {
    const p = (await get('/api/v1/posture', { token: reader })).json<{ service: Record<string, unknown>; devices: Record<string, unknown>[] }>();
    assert.equal(p.service['storage'], 'sqlite');
    assert.deepEqual(p.service['keyStore'], { kind: 'software', hardwareBound: false, assurance: 'development' });
    assert.equal((p.service['staticKey'] as { version: number }).version, 1);
    assert.equal((p.service['https'] as { protocol: string }).protocol, 'TLSv1.3');
    const dev = p.devices.find((d) => d['deviceId'] === 'bed-api');
    assert.ok(dev);
    assert.equal(typeof dev['epochAgeMs'], 'number');
    assert.equal(typeof dev['certExpiresInDays'], 'number');
    assert.match(String(dev['suite']), /DTLSv1\.3/);
    const m = await get('/metrics', { token: reader });
    assert.match(String(m.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    const text = m.text();
    for (const name of ['vitalseal_ingest_messages_received_total', 'vitalseal_ingest_messages_accepted_total{transport="coaps"}', 'vitalseal_ingest_messages_rejected_total',
      'vitalseal_ingest_messages_duplicate_total', 'vitalseal_ingest_sequence_gaps_total', 'vitalseal_ingest_handshake_failures_total', 'vitalseal_ingest_storage_latency_seconds_bucket',
      'vitalseal_ingest_devices{status="active"}', 'vitalseal_ingest_api_requests_total']) {
      assert.ok(text.includes(name), `metrics lack ${name}`);
    }
    assert.equal((await get('/metrics')).status, 401);
  });

  it('an admin suspends, resumes and revokes a device; revocation regenerates the CRL and is final', async () => {
    const d = await h.enrol('bed-ops');
    const post = (action: string, token = admin) => get(`/api/v1/devices/bed-ops/${action}`, { method: 'POST', token });
    assert.equal((await post('suspend')).json<{ device: { status: string } }>().device.status, 'suspended');
    assert.equal((await h.core.service?.accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer }))?.status, 'rejected');
    assert.equal((await post('resume')).status, 200);
    assert.equal((await h.core.service?.accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer }))?.status, 'accepted');
    const rev = (await post('revoke')).json<{ crlNumber: number }>();
    assert.ok(crlRevocations.includes(d.cert.serialHex), 'the certificate went onto the CRL');
    assert.equal(typeof rev.crlNumber, 'number');
    assert.equal((await post('resume')).status, 409);
    assert.equal((await get('/api/v1/devices/nobody/suspend', { method: 'POST', token: admin })).status, 404);
    assert.equal((await get('/api/v1/devices/bed-ops/suspend', { method: 'GET', token: admin })).status, 405);
    assert.match(await auditText(), /"actor":"api:ops","op":"revoke"/);
  });

  it('enrols a device with a one-time token and a CSR; renews with the current certificate', async () => {
    const cacerts = await get('/.well-known/est/cacerts');
    assert.equal(cacerts.status, 200);
    assert.equal(pemDecode(cacerts.text(), 'CERTIFICATE').length, 2);
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const csr = await createCsr({ signer: keyObjectSigner(privateKey), subject: { commonName: 'bed-new' }, deviceId: 'bed-new' });
    const body = Buffer.from(csr).toString('base64');
    const { token } = await createEnrolToken(h.core.storage, { deviceId: 'bed-new', now: h.clock.now(), ttlMs: 3_600_000 });
    assert.equal((await get('/.well-known/est/simpleenroll', { method: 'POST', body })).status, 401, 'no token');
    const bad = await get('/.well-known/est/simpleenroll', { method: 'POST', token, body: 'not base64!' });
    assert.equal(bad.status, 400);
    const garbage = await get('/.well-known/est/simpleenroll', { method: 'POST', token, body: Buffer.from(csr.subarray(0, csr.length - 3)).toString('base64') });
    assert.equal(garbage.json()['error'], 'bad-csr', 'a truncated CSR is refused, and does not spend the token');
    const r = await get('/.well-known/est/simpleenroll', { method: 'POST', token, body, headers: { 'content-type': 'application/pkcs10' } });
    assert.equal(r.status, 200, r.text());
    assert.equal(r.headers['content-type'], 'application/pem-certificate-chain');
    const chain = pemDecode(r.text(), 'CERTIFICATE').map((b) => b.der);
    const peer = validateChain(chain, { roots: [h.pki.root], now: h.clock.now(), purpose: 'client', revocation: { registry: (q) => h.core.registry.revocationStatus(q) } });
    assert.equal(peer.deviceId, 'bed-new');
    assert.equal((await h.core.storage.getDevice('bed-new'))?.status, 'active');
    assert.equal((await get('/.well-known/est/simpleenroll', { method: 'POST', token, body })).json()['error'], 'enrol-token-used', 'single use');
    const expired = await createEnrolToken(h.core.storage, { deviceId: 'bed-late', now: h.clock.now(), ttlMs: 60_000 });
    h.clock.advance(60_001);
    const lateCsr = Buffer.from(await createCsr({ signer: keyObjectSigner(privateKey), subject: { commonName: 'bed-late' } })).toString('base64');
    assert.equal((await get('/.well-known/est/simpleenroll', { method: 'POST', token: expired.token, body: lateCsr })).json()['error'], 'enrol-token-expired');
    const other = await createEnrolToken(h.core.storage, { deviceId: 'bed-x', now: h.clock.now(), ttlMs: 3_600_000 });
    assert.equal((await get('/.well-known/est/simpleenroll', { method: 'POST', token: other.token, body })).json()['error'], 'device-id-mismatch', 'a token enrols only its device');
    assert.equal((await get('/.well-known/est/simpleenroll', { method: 'POST', token: `vse_${'B'.repeat(43)}`, body })).json()['error'], 'enrol-token-unknown');

    // Renewal with a new key, authenticated by the current certificate.
    const certPem = pemEncode('CERTIFICATE', chain[0] as Uint8Array) + pemEncode('CERTIFICATE', chain[1] as Uint8Array);
    const next = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const csr2 = Buffer.from(await createCsr({ signer: keyObjectSigner(next), subject: { commonName: 'bed-new' } })).toString('base64');
    assert.equal((await get('/.well-known/est/simplereenroll', { method: 'POST', body: csr2 })).status, 401, 'renewal needs the certificate');
    const renewed = await get('/.well-known/est/simplereenroll', { method: 'POST', body: csr2, cert: certPem, key: pemOf(privateKey) });
    assert.equal(renewed.status, 200, renewed.text());
    const newCert = parseCertificate(pemDecode(renewed.text(), 'CERTIFICATE')[0]?.der as Uint8Array);
    assert.equal((await h.core.storage.getDevice('bed-new'))?.credentialSha256, toHex(spkiSha256(newCert.spki.der)));
    assert.deepEqual(issuer.revoked, [{ serial: parseCertificate(chain[0] as Uint8Array).serialHex, reason: 'superseded' }]);
    const stale = await get('/.well-known/est/simplereenroll', { method: 'POST', body: csr2, cert: certPem, key: pemOf(privateKey) });
    assert.equal(stale.status, 401, 'the superseded certificate no longer renews');
    const audit = await auditText();
    assert.match(audit, /"actor":"est","op":"enrol","key":"-","result":"ok","detail":"device bed-new enrolled/);
    assert.match(audit, /"code":"enrol-token-used"/);
  });

  it('mutated CSRs and random paths never cause a server error, and a CSR that fails its checks never spends the token', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const csr = await createCsr({ signer: keyObjectSigner(privateKey), subject: { commonName: 'bed-fuzz' } });
    const { token } = await createEnrolToken(h.core.storage, { deviceId: 'bed-fuzz', now: h.clock.now(), ttlMs: 3_600_000 });
    let seed = 99;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 60; i++) {
      const m = Uint8Array.from(csr);
      m[Math.floor(rnd() * m.length)] = Math.floor(rnd() * 256);
      if (Buffer.compare(m, csr) === 0) continue;
      const r = await get('/.well-known/est/simpleenroll', { method: 'POST', token, body: Buffer.from(m).toString('base64') });
      assert.ok(r.status === 400 || r.status === 403, `mutation ${i}: ${r.status} ${r.text()}`);
    }
    const ok = await get('/.well-known/est/simpleenroll', { method: 'POST', token, body: Buffer.from(csr).toString('base64') });
    assert.equal(ok.status, 200, 'the token survived every refused CSR');
    const alphabet = 'abz09./%-_~?&=#';
    for (let i = 0; i < 80; i++) {
      const path = `/${Array.from({ length: 1 + Math.floor(rnd() * 40) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join('')}`;
      const r = await get(`/api/v1/devices${path}`, { token: reader });
      assert.ok(r.status < 500, `${path}: ${r.status}`);
    }
  });

  it('the live feed streams stored readings', async () => {
    const d = await h.enrol('bed-live');
    const events: string[] = [];
    const req = request(new URL('/api/v1/live?device=bed-live', http.url), { ca: root, headers: { authorization: `Bearer ${reader}` }, agent: false });
    const got = new Promise<void>((resolve, reject) => {
      req.on('response', (res) => {
        assert.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8');
        res.on('data', (c: Buffer) => {
          events.push(c.toString());
          if (events.join('').includes('event: hello')) void h.core.service?.accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer });
          if (events.join('').includes('event: reading')) resolve();
        });
      });
      req.on('error', reject);
    });
    req.end();
    await got;
    req.destroy();
    const data = events.join('').split('\n').find((l) => l.startsWith('data: {"deviceId"'));
    const ev = JSON.parse((data as string).slice(6)) as { deviceId: string; seq: number; readings: { kind: string; value: number }[] };
    assert.equal(ev.deviceId, 'bed-live');
    assert.equal(ev.readings.find((r) => r.kind === 'heart-rate')?.value, 61);
  });

  it('limits: oversized bodies (413), headers (431), URIs (414); unknown routes (404)', async () => {
    const { token } = await createEnrolToken(h.core.storage, { deviceId: 'bed-big', now: h.clock.now(), ttlMs: 3_600_000 });
    const big = await get('/.well-known/est/simpleenroll', { method: 'POST', token, body: 'A'.repeat(100_000) });
    assert.equal(big.status, 413);
    const chunked = await get('/api/v1/devices/bed-api/suspend', { method: 'POST', token: admin, body: 'x', headers: { 'transfer-encoding': 'chunked' } });
    assert.equal(chunked.status, 413, 'a body where none belongs');
    await assert.rejects(get('/healthz', { headers: { 'x-pad': 'p'.repeat(10_000) } }).then((r) => { if (r.status === 431) throw new Error('431'); return r; }), /431|socket hang up|ECONNRESET/);
    assert.equal((await get(`/api/v1/devices?${'a'.repeat(3000)}`, { token: reader })).status, 414);
    assert.equal((await get('/nothing-here')).status, 404);
    assert.equal((await get('/assets/../../etc/passwd')).status, 404);
    const page = await get('/');
    assert.equal(page.status, 200);
    assert.match(page.text(), /<script src="\/assets\/dashboard\.js"><\/script>/);
    assert.doesNotMatch(page.text(), /https?:\/\/(?!www\.w3\.org)/, 'no external resources');
  });
});
