/**
 * Enrolment-client benchmarks, each against a baseline measured in the same run:
 *  - certificate renewal (`reenrol`: a CSR signed by the device key, mutual TLS 1.3, the request,
 *    the answer read within bounds and validated as the ingest validates a device chain) against the
 *    real ingest HTTPS endpoint (SQLite, a CA issuing every time), against Node's own `https.request`
 *    POSTing a ready-made CSR to the same endpoint with the same certificate and reading the answer
 *    unchecked. The server's work is the same on both sides; the ratio is what the device side adds.
 *  - one TLS connection through `reloadingTls` (a stat of the chain file before each connection)
 *    against the same connector without it.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:tls';
import { silentLogger } from '../../src/agent/log.ts';
import { reloadingTls } from '../../src/agent/uplink/device-tls.ts';
import { startIngestHttp } from '../../src/ingest/http/server.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { spkiSha256 } from '../../src/pki/certificate.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { parseEstUrl, reenrol } from '../../src/pki/est-client.ts';
import { issueDeviceCertificate } from '../../src/pki/issue.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { inProcessTls, type TlsConnector } from '../../src/transport/mqtts/connector.ts';
import { toHex } from '../../src/util/bytes.ts';
import { startHarness } from '../../test/ingest/support/harness.ts';
import { serverCertificate, testIssuer } from '../../test/ingest/support/https.ts';
import { compareLatency, windows } from './measure.ts';
import type { BenchContext, BenchResult } from './types.ts';

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const w = windows(ctx.quick);
  const opts = { windowMs: w.windowMs * 4, rounds: w.rounds };
  const out: BenchResult[] = [];
  const push = (name: string, r: { value: number; baseline: number }, baselineName: string, target: number) => {
    out.push({ name, unit: 'ms', value: r.value, baseline: { name: baselineName, value: r.baseline }, ratio: r.value / r.baseline, target: { ratio: target, comparison: '<=' } });
    ctx.log(`${name}: ${r.value.toFixed(2)} ms vs ${r.baseline.toFixed(2)} ms (${baselineName})`);
  };

  const h = await startHarness('sqlite', undefined, {}, { realTime: true });
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-bench-enrol-'));
  try {
    const server = await serverCertificate(h.pki);
    const http = await startIngestHttp(h.core, { host: '127.0.0.1', port: 0, certPem: server.certPem, keyPem: server.keyPem, roots: [h.pki.root], issuer: testIssuer(h.pki) });
    try {
      const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
      const signer = keyObjectSigner(key);
      const csr = await createCsr({ signer, subject: { commonName: 'bed-bench' }, deviceId: 'bed-bench' });
      const cert = await issueDeviceCertificate({ ca: h.pki.ca, csr, deviceId: 'bed-bench', now: h.clock.now() });
      await h.core.registry.register({ deviceId: 'bed-bench', credential: 'certificate', credentialSha256: toHex(spkiSha256(cert.spki.der)), status: 'active', enrolledAt: h.clock.now(), certSerial: cert.serialHex, certNotAfter: cert.notAfter });
      const chainPem = pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', h.pki.issuing.der);
      const rootPem = pemEncode('CERTIFICATE', h.pki.root.der);
      const trust = { roots: [h.pki.root] };
      const endpoint = parseEstUrl(http.url);
      const body = Buffer.from(csr).toString('base64');
      const clock = { now: () => Date.now() };

      const ours = async () => {
        const connector = inProcessTls({ certChainPem: chainPem, privateKey: key, trust, clock });
        await reenrol({ endpoint, connector, signer, deviceId: 'bed-bench', roots: trust.roots, clock });
      };
      const bare = () => new Promise<void>((resolve, reject) => {
        const req = request(`${http.url}/.well-known/est/simplereenroll`, {
          method: 'POST', ca: rootPem, cert: chainPem, key: key.export({ format: 'pem', type: 'pkcs8' }), agent: false, minVersion: 'TLSv1.3',
          headers: { 'content-type': 'application/pkcs10', 'content-length': String(body.length) },
        }, (res) => {
          res.resume();
          res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode ?? 0}`))));
        });
        req.on('error', reject);
        req.end(body);
      });
      push('est renewal round trip (software key, mTLS 1.3, ingest SQLite)', await compareLatency(ours, bare, opts), 'node https.request, same endpoint, answer unchecked', 1.5);
    } finally {
      await http.close();
    }

    // reloadingTls: one connection (handshake and close) with and without the chain-file check.
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const { cert } = await h.pki.device('bed-reload', { signer: keyObjectSigner(key) });
    const chainPem = pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', h.pki.issuing.der);
    const file = join(dir, 'chain.pem');
    writeFileSync(file, chainPem);
    const s = await serverCertificate(h.pki);
    const tlsServer = createServer({ cert: s.certPem, key: s.keyPem, ca: pemEncode('CERTIFICATE', h.pki.root.der), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, (sock) => sock.end());
    await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r));
    const port = (tlsServer.address() as AddressInfo).port;
    try {
      const trust = { roots: [h.pki.root] };
      const build = (pem: string) => inProcessTls({ certChainPem: pem, privateKey: key, trust });
      const plain = build(chainPem);
      const reloading = reloadingTls({ file, field: 'bench', pem: chainPem, keySpki: cert.spki.der, build, log: silentLogger() });
      const once = (c: TlsConnector) => () => new Promise<void>((resolve, reject) => {
        const conn = c.open({ host: '127.0.0.1', port, serverName: 'localhost' });
        conn.secured.catch(reject);
        conn.stream.on('error', () => undefined);
        conn.stream.resume();
        conn.stream.once('close', () => resolve());
      });
      push('device TLS connection through reloadingTls (chain file checked)', await compareLatency(once(reloading), once(plain), opts), 'the same connector without the check', 1.1);
      await reloading.close();
    } finally {
      tlsServer.close();
    }
  } finally {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}
