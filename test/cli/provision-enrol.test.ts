/**
 * `vitalseal provision --enrol` through the real bin against the real ingest HTTPS enrolment
 * endpoint (TLS 1.3, SQLite, the test fleet CA issuing): the identity key made in the software
 * store, a swtpm-held TPM key and a SoftHSM2 token key, each signing its own CSR; the negatives a
 * device meets in the field (unknown, spent and foreign tokens, a token on the command line or in a
 * readable file, a server from another CA). The token never appears in any output, nor in the
 * service's audit log.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startSoftHsm } from '../../scripts/lib/softhsm.ts';
import { startSwtpm } from '../../scripts/lib/swtpm.ts';
import { startIngestHttp, type IngestHttp } from '../../src/ingest/http/server.ts';
import { createEnrolToken } from '../../src/ingest/tokens.ts';
import { parseCertificate } from '../../src/pki/certificate.ts';
import { pemDecode, pemEncode } from '../../src/pki/pem.ts';
import { validateChain } from '../../src/pki/validate.ts';
import { startHarness, type Harness } from '../ingest/support/harness.ts';
import { serverCertificate, testIssuer } from '../ingest/support/https.ts';
import { makePki } from '../pki/fixtures.ts';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vitalseal-cli-enrol-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Every token this file made: none may show up in any output. */
const tokens: string[] = [];
const STORE_PASS = `store passphrase ${process.pid}`;

interface Run { code: number | null; stdout: string; stderr: string }

/** The bin in a child process, asynchronously: the ingest server answers from this process meanwhile. */
function vitalseal(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { cwd: dir, env: { ...process.env, VITALSEAL_PKI_PASSPHRASE: '', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code) => {
      for (const t of tokens) assert.ok(!(stdout + stderr).includes(t), `a token reached the output of vitalseal ${args[0] ?? ''}`);
      assert.doesNotMatch(stdout + stderr, /vse_[A-Za-z0-9_-]{20,}|BEGIN (ENCRYPTED )?PRIVATE KEY/);
      resolve({ code, stdout, stderr });
    });
  });
}

function openssl(args: string[]) {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  return { code: r.status, out: r.stdout + r.stderr };
}

describe('vitalseal provision --enrol (through the real bin, against the ingest enrolment endpoint)', () => {
  let h: Harness;
  let http: IngestHttp;
  const rootFile = join(dir, 'fleet-root.pem');
  const passFile = join(dir, 'store.pass');

  before(async () => {
    h = await startHarness('sqlite', undefined, {}, { realTime: true });
    const server = await serverCertificate(h.pki);
    http = await startIngestHttp(h.core, { host: '127.0.0.1', port: 0, certPem: server.certPem, keyPem: server.keyPem, roots: [h.pki.root], issuer: testIssuer(h.pki) });
    writeFileSync(rootFile, pemEncode('CERTIFICATE', h.pki.root.der));
    writeFileSync(passFile, STORE_PASS, { mode: 0o600 });
  });
  after(async () => {
    await http?.close();
    if (h !== undefined) {
      await h.core.audit.flush();
      const audit = readFileSync(join(h.dir, 'audit.log'), 'utf8');
      for (const t of tokens) assert.ok(!audit.includes(t), 'a token reached the service\'s audit log');
      await h.close();
    }
  });

  /** A one-time token for `deviceId`, in a 0600 file. */
  async function tokenFile(deviceId: string): Promise<{ token: string; file: string }> {
    const { token } = await createEnrolToken(h.core.storage, { deviceId, now: h.clock.now(), ttlMs: 3_600_000 });
    tokens.push(token);
    const file = join(dir, `${deviceId}-${tokens.length}.token`);
    writeFileSync(file, `${token}\n`, { mode: 0o600 });
    return { token, file };
  }

  const enrolArgs = (deviceId: string, out: string, token: { file: string }) =>
    ['provision', '--device-id', deviceId, '--enrol', http.url, '--token-file', token.file, '--ca-file', rootFile, '--out', out];

  function checkIdentity(out: string, deviceId: string, keyPubPem: string): void {
    const chain = pemDecode(readFileSync(join(dir, out, 'chain.pem'), 'utf8'), 'CERTIFICATE').map((b) => b.der);
    assert.equal(chain.length, 2);
    const peer = validateChain(chain, { roots: [h.pki.root], now: Date.now(), purpose: 'client', expectedDeviceId: deviceId });
    assert.equal(peer.deviceId, deviceId);
    const v = openssl(['verify', '-CAfile', `${out}/root-ca.pem`, '-untrusted', `${out}/chain.pem`, '-purpose', 'sslclient', `${out}/device.pem`]);
    assert.equal(v.code, 0, v.out);
    assert.equal(openssl(['x509', '-in', `${out}/device.pem`, '-noout', '-pubkey']).out, keyPubPem, 'the certificate carries the store\'s key');
    assert.equal(openssl(['req', '-verify', '-in', `${out}/device.csr`, '-noout']).code, 0);
    const id = JSON.parse(readFileSync(join(dir, out, 'identity.json'), 'utf8')) as Record<string, string>;
    assert.equal(id['deviceId'], deviceId);
    assert.equal(id['serial'], parseCertificate(chain[0] as Uint8Array).serialHex);
    assert.equal(id['issuedBy'], `enrolment endpoint ${http.url}`);
    assert.equal(statSync(join(dir, out)).mode & 0o777, 0o700);
  }

  it('--help describes enrolment and where the token comes from', async () => {
    const r = await vitalseal(['provision', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /--enrol URL/);
    assert.match(r.stdout, /--token-file FILE \(mode 0600\) or --token-env VAR/);
    assert.match(r.stdout, /never from the command\s+line/);
  });

  it('software store: enrolled, registered at the service, and the token is spent', async () => {
    const t = await tokenFile('bed-soft');
    const store = ['--store', 'software', '--file', join(dir, 'soft.vsks'), '--passphrase-file', passFile];
    const r = await vitalseal([...enrolArgs('bed-soft', 'bed-soft-id', t), ...store]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /provisioned device bed-soft/);
    assert.match(r.stderr, /issued by {4}enrolment endpoint https:\/\/127\.0\.0\.1:\d+/);
    const pub = await vitalseal(['keys', 'pubkey', 'device-identity', ...store]);
    assert.equal(pub.code, 0, pub.stderr);
    checkIdentity('bed-soft-id', 'bed-soft', pub.stdout);
    const device = await h.core.storage.getDevice('bed-soft');
    assert.equal(device?.status, 'active');
    assert.equal(device?.certSerial, JSON.parse(readFileSync(join(dir, 'bed-soft-id', 'identity.json'), 'utf8')).serial);

    // The same token again (another output directory): spent; the new key is deleted again.
    const again = await vitalseal([...enrolArgs('bed-soft', 'bed-soft-2', t), ...store, '--key-name', 'second']);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /token was used already.*\[token-spent\]/);
    assert.match(again.stderr, /the new key 'second' was deleted again/);
    const list = await vitalseal(['keys', 'list', ...store]);
    assert.doesNotMatch(list.stdout, /second/);
    assert.deepEqual(readdirSync(join(dir, 'bed-soft-2')), [], 'nothing written');
  });

  it('a TPM-held identity (swtpm): the TPM signs the CSR, the key never leaves it', async () => {
    const tpm = await startSwtpm();
    try {
      const t = await tokenFile('bed-tpm');
      const store = ['--store', 'tpm', '--tcti', tpm.tcti, '--dir', join(dir, 'tpm-store')];
      const r = await vitalseal([...enrolArgs('bed-tpm', 'bed-tpm-id', t), ...store]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /key {10}device-identity in tpm/);
      const pub = await vitalseal(['keys', 'pubkey', 'device-identity', ...store]);
      assert.equal(pub.code, 0, pub.stderr);
      checkIdentity('bed-tpm-id', 'bed-tpm', pub.stdout);
      assert.equal(existsSync(join(dir, 'bed-tpm-id', 'device-identity.key')), false, 'no key file');
    } finally {
      await tpm.stop();
    }
  });

  it('a token-held identity (SoftHSM2), with the enrolment token from the environment', async () => {
    const hsm = await startSoftHsm();
    try {
      const p11 = await hsm.addToken('enrol');
      const t = await tokenFile('bed-p11');
      const store = ['--store', 'pkcs11', '--module', hsm.module, '--token', p11.uri, '--pin-file', p11.pinFile];
      const env = { SOFTHSM2_CONF: hsm.conf, ENROL_TOKEN: t.token };
      const r = await vitalseal(['provision', '--device-id', 'bed-p11', '--enrol', http.url, '--token-env', 'ENROL_TOKEN', '--ca-file', rootFile, '--out', 'bed-p11-id', ...store], env);
      assert.equal(r.code, 0, r.stderr);
      const pub = await vitalseal(['keys', 'pubkey', 'device-identity', ...store], env);
      checkIdentity('bed-p11-id', 'bed-p11', pub.stdout);
      assert.match((JSON.parse(readFileSync(join(dir, 'bed-p11-id', 'identity.json'), 'utf8')) as Record<string, string>)['keyStore'] as string, /^pkcs11 \(/);
    } finally {
      await hsm.stop();
    }
  });

  it('refusals: unknown token, a token for another device, a server from another CA (the token survives that)', async () => {
    const devPem = ['--unencrypted-dev-keys'];
    const unknownFile = join(dir, 'unknown.token');
    const unknown = `vse_${'U'.repeat(43)}`;
    tokens.push(unknown);
    writeFileSync(unknownFile, unknown, { mode: 0o600 });
    const u = await vitalseal([...enrolArgs('bed-u', 'bed-u-id', { file: unknownFile }), ...devPem]);
    assert.equal(u.code, 1);
    assert.match(u.stderr, /\[token-invalid\]/);
    assert.equal(existsSync(join(dir, 'bed-u-id', 'device-identity.key')), false, 'the dev key was deleted again');

    const foreign = await tokenFile('bed-elsewhere');
    const f = await vitalseal([...enrolArgs('bed-here', 'bed-here-id', foreign), ...devPem]);
    assert.equal(f.code, 1);
    assert.match(f.stderr, /token is for another device.*\[device-mismatch\]/);

    const other = await makePki({ now: Date.now() - 3_600_000 });
    const otherRoot = join(dir, 'other-root.pem');
    writeFileSync(otherRoot, pemEncode('CERTIFICATE', other.root.der));
    const t = await tokenFile('bed-pinned');
    const args = enrolArgs('bed-pinned', 'bed-pinned-id', t);
    args[args.indexOf(rootFile)] = otherRoot;
    const s = await vitalseal([...args, ...devPem]);
    assert.equal(s.code, 1);
    assert.match(s.stderr, /server certificate of https:\/\/127\.0\.0\.1:\d+ was refused \(unknown-issuer\).*\[server-untrusted\]/);
    // Nothing was sent: the same token enrols with the right root.
    const ok = await vitalseal([...enrolArgs('bed-pinned', 'bed-pinned-id', t), ...devPem]);
    assert.equal(ok.code, 0, ok.stderr);
  });

  it('usage errors before any key exists: the token as a value, a readable token file, a missing root, both issuers', async () => {
    const t = await tokenFile('bed-usage');
    const asValue = await vitalseal(['provision', '--device-id', 'bed-usage', '--enrol', http.url, '--token', t.token, '--ca-file', rootFile, '--out', 'x', '--unencrypted-dev-keys']);
    assert.equal(asValue.code, 2);
    assert.match(asValue.stderr, /never a command-line value/);
    const positional = await vitalseal(['provision', '--device-id', 'bed-usage', '--enrol', http.url, t.token, '--out', 'x']);
    assert.equal(positional.code, 2);
    assert.match(positional.stderr, /an enrolment token\? use --token-file/);
    chmodSync(t.file, 0o644);
    const readable = await vitalseal([...enrolArgs('bed-usage', 'bed-usage-id', t), '--unencrypted-dev-keys']);
    assert.equal(readable.code, 1);
    assert.match(readable.stderr, /chmod 600/);
    chmodSync(t.file, 0o600);
    const noRoot = await vitalseal(['provision', '--device-id', 'bed-usage', '--enrol', http.url, '--token-file', t.file, '--out', 'bed-usage-id', '--unencrypted-dev-keys']);
    assert.equal(noRoot.code, 2);
    assert.match(noRoot.stderr, /--ca-file ROOT\.pem/);
    const both = await vitalseal([...enrolArgs('bed-usage', 'bed-usage-id', t), '--pki', 'ca', '--unencrypted-dev-keys']);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /exactly one issuer/);
    const plain = await vitalseal(['provision', '--device-id', 'bed-usage', '--enrol', `http://127.0.0.1:${http.port}`, '--token-file', t.file, '--ca-file', rootFile, '--out', 'bed-usage-id', '--unencrypted-dev-keys']);
    assert.equal(plain.code, 2);
    assert.match(plain.stderr, /TLS only/);
    const badToken = join(dir, 'bad.token');
    writeFileSync(badToken, 'not-a-token\n', { mode: 0o600 });
    const malformed = await vitalseal([...enrolArgs('bed-usage', 'bed-usage-id', { file: badToken }), '--unencrypted-dev-keys']);
    assert.equal(malformed.code, 2);
    assert.match(malformed.stderr, /not well-formed/);
    assert.doesNotMatch(malformed.stderr, /not-a-token/);
    assert.equal(existsSync(join(dir, 'bed-usage-id')), false, 'nothing was created');
    // And the token is still good.
    const ok = await vitalseal([...enrolArgs('bed-usage', 'bed-usage-id', t), '--unencrypted-dev-keys']);
    assert.equal(ok.code, 0, ok.stderr);
  });
});
