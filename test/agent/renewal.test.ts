/**
 * Automatic certificate renewal (src/agent/renewal/):
 *   - the schedule alone (due, back-off, a certificate replaced from outside);
 *   - the `certificate.renew` configuration and its refusals;
 *   - the renewer against the real ingest HTTPS endpoint under injected clock and timers: renews
 *     when due with the same key, writes every file atomically in the form it had, refuses a revoked
 *     device with a clear error, keeps the old certificate, retries with back-off (no sleeps: the
 *     timers fire when the test says);
 *   - the whole agent over a real mosquitto, with the key in the software store and in a TPM
 *     (swtpm behind tpm2-abrmd): it renews at start-up because its clock says the certificate is
 *     due, the broker is then told the old serial is revoked and restarted, and the agent delivers
 *     again: its next connection presented the new certificate.
 */
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type IngestInstance, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { createAgent } from '../../src/agent/agent.ts';
import { ConfigError, parseAgentConfig, type CertificateRenewalConfig } from '../../src/agent/config.ts';
import { createLogger } from '../../src/agent/log.ts';
import { MetricsRegistry } from '../../src/agent/metrics.ts';
import { CertificateRenewer } from '../../src/agent/renewal/renewer.ts';
import { RenewalSchedule, type RenewalState } from '../../src/agent/renewal/schedule.ts';
import type { DeviceIssuer } from '../../src/ingest/http/est.ts';
import { startIngestHttp, type IngestHttp } from '../../src/ingest/http/server.ts';
import type { IngestCore } from '../../src/ingest/core.ts';
import type { KeyStoreConfig } from '../../src/keystore/config.ts';
import { openKeyStore } from '../../src/keystore/open.ts';
import { SoftwareKeyStore } from '../../src/keystore/software/store.ts';
import { parseCertificate, spkiSha256, type Certificate } from '../../src/pki/certificate.ts';
import { createCsr } from '../../src/pki/csr.ts';
import type { CertificateAuthority } from '../../src/pki/issue.ts';
import { issueDeviceCertificate } from '../../src/pki/issue.ts';
import { pemDecode, pemEncode } from '../../src/pki/pem.ts';
import { validityPolicy } from '../../src/pki/policy.ts';
import { inProcessTls } from '../../src/transport/mqtts/connector.ts';
import { ManualTimers } from '../../src/transport/timers.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';
import { toHex } from '../../src/util/bytes.ts';
import { Unsupported } from '../../src/util/errors.ts';
import { startHarness, type Harness } from '../ingest/support/harness.ts';
import { serverCertificate } from '../ingest/support/https.ts';
import { agentTestEnv, rigAgentFiles, until, type RigAgentFiles } from './support.ts';

const DAY = 86_400_000;
const FORTY_DAYS = validityPolicy({ deviceDays: 40 });
function capture(): { log: ReturnType<typeof createLogger>; lines: { level: string; msg: string; [k: string]: unknown }[] } {
  const lines: { level: string; msg: string }[] = [];
  return { lines, log: createLogger({ level: 'debug', destination: { write: (s: string) => { lines.push(JSON.parse(s) as { level: string; msg: string }); } } }) };
}

/** The issuing CA as the enrolment endpoint's issuer, with its own validity policy. */
function issuerOf(ca: CertificateAuthority, root: Certificate, policy = FORTY_DAYS): DeviceIssuer {
  return { chain: [ca.certificate, root], issueDevice: (csr, deviceId, now) => issueDeviceCertificate({ ca, csr, deviceId, now, policy }) };
}

/** A key in the store and its first certificate (40 days, from `ca`), registered at the service. */
async function firstCertificate(keystore: KeyStoreConfig, deviceId: string, ca: CertificateAuthority, core: IngestCore, now: number): Promise<{ cert: Certificate; chainPem: string }> {
  const store = await openKeyStore(keystore);
  try {
    const signer = await store.createSigningKey('device-identity');
    const csr = await createCsr({ signer, subject: { commonName: deviceId }, deviceId });
    const cert = await issueDeviceCertificate({ ca, csr, deviceId, now, policy: FORTY_DAYS });
    await core.registry.register({ deviceId, credential: 'certificate', credentialSha256: toHex(spkiSha256(cert.spki.der)), status: 'active', enrolledAt: now, certSerial: cert.serialHex, certNotAfter: cert.notAfter });
    return { cert, chainPem: pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', ca.certificate.der) };
  } finally {
    await store.close();
  }
}

const leafSerial = (file: string) => parseCertificate((pemDecode(readFileSync(file, 'utf8'), 'CERTIFICATE')[0] as { der: Uint8Array }).der).serialHex;

describe('renewal schedule (sans I/O)', () => {
  const policy = { renewDays: 30, backoff: { initialMs: 60_000, maxMs: 3_600_000 } };

  it('renews from renewDays before notAfter; backs off exponentially after failures; a success resets', () => {
    const s = new RenewalSchedule(policy, () => 1);
    const notAfter = 100 * DAY;
    assert.deepEqual(s.decide(notAfter, 69 * DAY), { kind: 'not-due', dueAt: 70 * DAY });
    assert.deepEqual(s.decide(notAfter, 70 * DAY), { kind: 'renew' });
    s.started(70 * DAY);
    assert.deepEqual(s.decide(notAfter, 70 * DAY), { kind: 'busy' });
    assert.throws(() => s.started(70 * DAY), RangeError);
    let now = 70 * DAY;
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      const retryAt = s.failed(now, 'unavailable', 'down');
      delays.push(retryAt - now);
      assert.deepEqual(s.decide(notAfter, retryAt - 1), { kind: 'retry-later', retryAt });
      now = retryAt;
      assert.deepEqual(s.decide(notAfter, now), { kind: 'renew' });
      s.started(now);
    }
    // random() = 1: the full ceiling, doubling from 60 s up to the 1 h cap.
    assert.deepEqual(delays, [60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000, 3_600_000]);
    s.succeeded(now, 200 * DAY);
    assert.equal(s.state.kind, 'idle');
    assert.deepEqual(s.lastSuccess, { at: now, notAfter: 200 * DAY });
    assert.equal(s.decide(200 * DAY, now).kind, 'not-due');
  });

  it('a certificate replaced from outside that is not due ends a back-off', () => {
    const s = new RenewalSchedule(policy, () => 0);
    s.started(80 * DAY);
    const retryAt = s.failed(80 * DAY, 'certificate-refused', 'revoked');
    assert.equal(retryAt, 80 * DAY + 30_000, 'equal jitter: at least half the ceiling');
    assert.equal(s.state.kind, 'backing-off');
    assert.equal(s.decide(500 * DAY, 80 * DAY + 1).kind, 'not-due');
    const after = s.state as RenewalState;
    assert.equal(after.kind, 'idle');
    assert.equal(after.lastFailure?.code, 'certificate-refused', 'the last failure stays visible');
    assert.throws(() => s.succeeded(0, 0), RangeError);
    assert.throws(() => new RenewalSchedule({ ...policy, renewDays: 0 }, Math.random), RangeError);
  });
});

describe('certificate.renew configuration', () => {
  const env = agentTestEnv('vitalseal-renew-config-');
  after(() => env.cleanup());
  const identity = { keystore: { kind: 'software', path: join(env.dir, 'k.vsks'), passphrase: { env: 'P' } }, keyLabel: 'device-identity' };
  const doc = (renew: unknown, primary: Record<string, unknown> = {}, failover?: Record<string, unknown>) => env.config({
    transport: { primary: { kind: 'mqtts', host: '127.0.0.1', caFile: 'ca.pem', certFile: 'chain.pem', identity, ...primary }, ...(failover === undefined ? {} : { failover }) },
    certificate: { file: 'chain.pem', renew },
  });
  const issues = (d: Record<string, unknown>): string[] => {
    try {
      parseAgentConfig(d, { baseDir: env.dir });
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      return [...e.issues];
    }
    return [];
  };

  it('accepts a URL and defaults the rest from the primary transport', () => {
    const c = parseAgentConfig(doc({ url: 'https://ingest.example:8443' }), { baseDir: env.dir });
    assert.deepEqual(c.certificate?.renew, {
      url: 'https://ingest.example:8443', caFile: join(env.dir, 'ca.pem'), renewDays: 30, retryInitialSeconds: 60, retryMaxSeconds: 21_600, timeoutSeconds: 30,
      identity: { keystore: { kind: 'software', path: join(env.dir, 'k.vsks'), passphrase: { env: 'P' } }, keyLabel: 'device-identity' },
    });
  });

  it('names every wrong field', () => {
    assert.deepEqual(issues(doc({ url: 'http://ingest.example' })), ['certificate.renew.url: must be https://HOST[:PORT] (the enrolment URL must be https://HOST[:PORT]: enrolment runs over TLS only)']);
    assert.deepEqual(issues(doc({})), ['certificate.renew.url: is required']);
    assert.deepEqual(issues(doc({ url: 'https://i.example', renewDays: 0, retryInitialSeconds: 600, retryMaxSeconds: 60, colour: 'blue' })), [
      'certificate.renew.colour: unknown field (allowed: url, caFile, renewDays, retryInitialSeconds, retryMaxSeconds, timeoutSeconds)',
      'certificate.renew.renewDays: must be an integer in 1..3650, got number 0',
      'certificate.renew.retryMaxSeconds: must be at least certificate.renew.retryInitialSeconds',
    ]);
    assert.deepEqual(issues(doc({ url: 'https://i.example' }, { caFile: undefined })), [
      'certificate.renew.caFile: is required (transport.primary.caFile is not set either): the root the enrolment endpoint\'s certificate chains to',
    ]);
    assert.deepEqual(issues(doc({ url: 'https://i.example' }, { identity: undefined })), ['certificate.renew: needs transport.primary.identity: the key store and key the certificate is for']);
    const otherKey = { kind: 'mqtts', host: '127.0.0.2', certFile: 'chain2.pem', identity: { ...identity, keyLabel: 'other' } };
    assert.deepEqual(issues(doc({ url: 'https://i.example' }, {}, otherKey)), [
      'transport.failover.identity: must name the same key as transport.primary.identity when certificate.renew is set: renewal keeps one certificate for one device key',
    ]);
    assert.deepEqual(issues(doc({ url: 'https://i.example' }, {}, { ...otherKey, identity })), []);
  });

  it('a PKCS#11 identity key is refused at start-up: TLS cannot sign with it on Debian 12', () => {
    const c = parseAgentConfig(doc({ url: 'https://i.example' }, { identity: { keystore: { kind: 'pkcs11', module: '/usr/lib/softhsm/libsofthsm2.so', token: 'pkcs11:token=t', pin: { env: 'PIN' } }, keyLabel: 'k' } }), { baseDir: env.dir });
    assert.throws(() => new CertificateRenewer({
      deviceId: 'bed-7', renewal: c.certificate?.renew as CertificateRenewalConfig, certificateFile: 'x', chainFiles: [], clock: { now: () => 0 }, log: createLogger({ level: 'silent' }), env: {},
    }), (e: unknown) => e instanceof Unsupported && e.code === 'renewal-pkcs11-key' && /vitalseal provision --enrol/.test(e.message));
  });
});

describe('renewer against the ingest enrolment endpoint (software key store, injected clock and timers)', () => {
  let h: Harness;
  let http: IngestHttp;
  let dir: string;
  const passFile = () => join(dir, 'store.pass');

  before(async () => {
    h = await startHarness('sqlite', undefined, { crl: { revoke: async () => ({ crlNumber: 1 }), crlPath: '/nonexistent/crl.pem' } }, { realTime: true });
    dir = mkdtempSync(join(tmpdir(), 'vitalseal-renewer-'));
    writeFileSync(passFile(), `renewer-${process.pid}`, { mode: 0o600 });
    writeFileSync(join(dir, 'root.pem'), pemEncode('CERTIFICATE', h.pki.root.der));
    const s = await serverCertificate(h.pki);
    http = await startIngestHttp(h.core, { host: '127.0.0.1', port: 0, certPem: s.certPem, keyPem: s.keyPem, roots: [h.pki.root], issuer: issuerOf(h.pki.ca, h.pki.root) });
  });
  after(async () => {
    await http?.close();
    await h?.close();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  /** A device with its first certificate in `sub/` (chain.pem 0640, device.pem leaf only), and a renewer for it. */
  async function device(deviceId: string, o: { certificateFile?: string } = {}) {
    const keystore: KeyStoreConfig = { kind: 'software', path: join(dir, `${deviceId}.vsks`), passphrase: { file: passFile() } };
    const sub = join(dir, deviceId);
    mkdirSync(sub);
    const first = await firstCertificate(keystore, deviceId, h.pki.ca, h.core, h.clock.now());
    const chainFile = join(sub, 'chain.pem');
    const certFile = o.certificateFile ?? join(sub, 'device.pem');
    writeFileSync(chainFile, first.chainPem, { mode: 0o640 });
    if (o.certificateFile === undefined) writeFileSync(certFile, pemEncode('CERTIFICATE', first.cert.der), { mode: 0o644 });
    // The timers are the clock: time moves only when the test advances it.
    const timers = new ManualTimers(h.clock.now());
    const out = capture();
    const renewer = new CertificateRenewer({
      deviceId, certificateFile: certFile, chainFiles: [chainFile], clock: timers, timers, log: out.log, env: {}, random: () => 0.5,
      renewal: { url: http.url, caFile: join(dir, 'root.pem'), renewDays: 30, retryInitialSeconds: 60, retryMaxSeconds: 3600, timeoutSeconds: 10, identity: { keystore, keyLabel: 'device-identity' } },
    });
    /** Moves the device's clock and the service's together (one world time). */
    const advance = (ms: number) => {
      timers.advance(ms);
      h.clock.set(timers.now());
    };
    return { keystore, first, chainFile, certFile, sub, timers, renewer, advance, ...out };
  }

  it('renews when due, with the same key; writes the chain and the leaf atomically, in the form each had', async () => {
    const d = await device('bed-renew');
    assert.deepEqual(await d.renewer.tick(), { result: 'not-due', dueAt: d.first.cert.notAfter - 30 * DAY });
    d.advance(11 * DAY);
    const beforeIno = statSync(d.chainFile).ino;
    const outcome = await d.renewer.tick();
    assert.equal(outcome.result, 'renewed', JSON.stringify(outcome));
    const chain = pemDecode(readFileSync(d.chainFile, 'utf8'), 'CERTIFICATE').map((b) => parseCertificate(b.der));
    assert.equal(chain.length, 2);
    const [leaf] = chain as [Certificate, Certificate];
    assert.notEqual(leaf.serialHex, d.first.cert.serialHex);
    assert.deepEqual(leaf.spki.der, d.first.cert.spki.der, 'the same identity key, re-enrolled');
    assert.ok(leaf.notAfter > d.first.cert.notAfter);
    assert.equal(statSync(d.chainFile).mode & 0o777, 0o640, 'the mode is kept');
    assert.notEqual(statSync(d.chainFile).ino, beforeIno, 'replaced by rename, not rewritten in place');
    assert.equal(pemDecode(readFileSync(d.certFile, 'utf8'), 'CERTIFICATE').length, 1, 'device.pem stays a single certificate');
    assert.equal(leafSerial(d.certFile), leaf.serialHex);
    assert.deepEqual(readdirSync(d.sub).sort(), ['chain.pem', 'device.pem'], 'no temporary file left');
    assert.equal((await h.core.storage.getDevice('bed-renew'))?.certSerial, leaf.serialHex, 'the service registered the new certificate');
    const st = d.renewer.status();
    assert.equal(st.state, 'idle');
    assert.equal(st.renewed, 1);
    assert.equal(st.lastRenewal?.serial, leaf.serialHex);
    assert.ok(d.lines.some((l) => l.msg === 'device certificate renewed; the transports present it from their next connection' && l['to'] === leaf.serialHex));
    // Not due again.
    assert.equal((await d.renewer.tick()).result, 'not-due');
    const m = new MetricsRegistry();
    d.renewer.registerMetrics(m);
    assert.match(m.render(), /vitalseal_agent_certificate_renewals_total 1\n/);
    assert.match(m.render(), /vitalseal_agent_certificate_renewal_consecutive_failures 0\n/);
    await d.renewer.stop();
  });

  it('a revoked device: a clear error, the old certificate kept, retried with back-off when the timer fires', async () => {
    const d = await device('bed-revoked');
    await h.core.registry.setStatus('bed-revoked', 'revoked', 'test');
    d.advance(11 * DAY);
    const chainBefore = readFileSync(d.chainFile, 'utf8');
    const inoBefore = statSync(d.chainFile).ino;
    const first = await d.renewer.tick();
    assert.equal(first.result, 'failed');
    assert.ok(first.result === 'failed' && first.code === 'certificate-refused', JSON.stringify(first));
    assert.match(first.message, /did not accept the current certificate.*HTTP 401 certificate-required/);
    assert.equal(readFileSync(d.chainFile, 'utf8'), chainBefore, 'the old certificate is kept');
    assert.equal(statSync(d.chainFile).ino, inoBefore);
    const err = d.lines.find((l) => l.level === 'error' && /certificate renewal failed/.test(l.msg));
    assert.ok(err, 'logged as an error');
    assert.match(err.msg, /the current certificate stays in use; next attempt after/);
    assert.equal(err['code'], 'certificate-refused');
    const st = d.renewer.status();
    assert.equal(st.state, 'backing-off');
    assert.equal(st.consecutiveFailures, 1);
    assert.equal(st.lastError?.code, 'certificate-refused');
    // random 0.5: 3/4 of the ceiling: 45 s, then 90 s.
    assert.equal(Date.parse(st.retryAt as string) - d.timers.now(), 45_000);
    assert.equal(d.timers.pending, 1, 'one retry timer');
    // A check in between does not jump the back-off.
    assert.equal((await d.renewer.tick()).result, 'retry-later');
    d.advance(44_999);
    await d.renewer.settled();
    assert.equal(d.renewer.status().attempts, 1);
    d.advance(1);
    await until(() => d.renewer.status().attempts === 2, 'the retry to start');
    await d.renewer.settled();
    const again = d.renewer.status();
    assert.equal(again.consecutiveFailures, 2);
    assert.equal(Date.parse(again.retryAt as string) - d.timers.now(), 90_000);
    const m = new MetricsRegistry();
    d.renewer.registerMetrics(m);
    assert.match(m.render(), /vitalseal_agent_certificate_renewal_failures_total\{code="certificate-refused"\} 2\n/);
    assert.match(m.render(), /vitalseal_agent_certificate_renewal_consecutive_failures 2\n/);
    assert.equal(readFileSync(d.chainFile, 'utf8'), chainBefore);
    await d.renewer.stop();
    assert.equal(d.timers.pending, 0, 'stop cancels the retry timer');
  });

  it('a file that cannot be written: nothing replaced, the failure retried', async () => {
    const d = await device('bed-nowrite', { certificateFile: join(dir, 'no-such-dir', 'device.pem') });
    d.advance(11 * DAY);
    const chainBefore = readFileSync(d.chainFile, 'utf8');
    const o = await d.renewer.tick();
    assert.ok(o.result === 'failed' && o.code === 'write-failed', JSON.stringify(o));
    assert.match(o.result === 'failed' ? o.message : '', /the current files are unchanged/);
    assert.equal(readFileSync(d.chainFile, 'utf8'), chainBefore, 'the chain file was staged, then abandoned');
    assert.deepEqual(readdirSync(d.sub), ['chain.pem'], 'the staged file was removed');
    await d.renewer.stop();
  });

  it('the service unreachable: unavailable, logged as a warning, retried', async () => {
    const d = await device('bed-offline');
    d.advance(11 * DAY);
    await http.close();
    try {
      const o = await d.renewer.tick();
      assert.ok(o.result === 'failed' && o.code === 'unavailable', JSON.stringify(o));
      assert.ok(d.lines.some((l) => l.level === 'warn' && /certificate renewal failed/.test(l.msg)));
    } finally {
      const s = await serverCertificate(h.pki);
      http = await startIngestHttp(h.core, { host: '127.0.0.1', port: Number(new URL(http.url).port), certPem: s.certPem, keyPem: s.keyPem, roots: [h.pki.root], issuer: issuerOf(h.pki.ca, h.pki.root) });
    }
    d.advance(45_000);
    await until(() => d.renewer.status().renewed === 1 || d.renewer.status().attempts >= 2, 'the retry');
    await d.renewer.settled();
    assert.equal(d.renewer.status().renewed, 1, 'the retry renewed once the service was back');
    await d.renewer.stop();
  });
});

describe('the agent renews and its next MQTTS connection presents the new certificate (real mosquitto)', () => {
  let rig: MqttRig;
  let ingest: IngestInstance;
  let h: Harness;
  let http: IngestHttp;
  let files: RigAgentFiles;

  before(async () => {
    rig = await startMqttRig({ devices: ['bed-soft', 'bed-tpm'] });
    ingest = await rig.startIngest('ingest-renewal');
    h = await startHarness('sqlite', undefined, {}, { realTime: true });
    // The enrolment endpoint issues from the broker's fleet: two-year certificates on renewal.
    const server = await rig.fleet.service({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
    http = await startIngestHttp(h.core, {
      host: '127.0.0.1', port: 0, certPem: server.certChainPem, keyPem: server.keyPem as string, roots: [rig.fleet.root],
      issuer: issuerOf(rig.fleet.authority, rig.fleet.root, validityPolicy()),
    });
    files = rigAgentFiles(rig, 'vitalseal-agent-renewal-');
  });
  after(async () => {
    await http?.close();
    await h?.close();
    await rig?.stop();
    files?.cleanup();
  });

  async function renewAndReconnect(deviceId: string, keystore: KeyStoreConfig): Promise<{ oldSerial: string; newSerial: string; chainPem: string }> {
    const first = await firstCertificate(keystore, deviceId, rig.fleet.authority, h.core, Date.now());
    const chainFile = join(files.dir, `${deviceId}-chain.pem`);
    writeFileSync(chainFile, first.chainPem, { mode: 0o640 });
    const config = files.config(deviceId, { certFile: chainFile, identity: { keystore, keyLabel: 'device-identity' } }, {
      certificate: { file: chainFile, warnDays: 7, renew: { url: http.url, renewDays: 30 } },
    });
    // The device's clock is 11 days ahead of the machine's: its 40-day certificate is due (29 days left).
    const clock = { now: () => Date.now() + 11 * DAY };
    const out = capture();
    const agent = await createAgent({ config, clock, log: out.log });
    await agent.start();
    try {
      await until(() => agent.status().certificate?.renewal?.renewed === 1, 'the renewal');
      const newSerial = leafSerial(chainFile);
      assert.notEqual(newSerial, first.cert.serialHex);
      assert.equal(statSync(chainFile).mode & 0o777, 0o640);
      assert.equal((await h.core.storage.getDevice(deviceId))?.certSerial, newSerial);
      const s = agent.status().certificate;
      assert.equal(s?.renewal?.lastRenewal?.serial, newSerial);
      await until(() => agent.status().certificate?.state === 'ok' && agent.status().certificate?.notAfter !== new Date(first.cert.notAfter).toISOString(), 'the watcher to see the new certificate');
      await until(() => ingest.received.some((r) => r.deviceId === deviceId), 'a first delivery');

      // The broker now refuses the old certificate; a restart drops the connection made with it.
      await rig.broker.updateCrl(await rig.fleet.revoke(first.cert.serialHex));
      const connectsBefore = agent.status().uplink['connects'] ?? 0;
      await rig.broker.restart();
      await until(() => (agent.status().uplink['connects'] ?? 0) > connectsBefore, 'a reconnect');
      const deliveredBefore = ingest.received.filter((r) => r.deviceId === deviceId).length;
      await until(() => ingest.received.filter((r) => r.deviceId === deviceId).length >= deliveredBefore + 3, 'deliveries over the new connection');
      assert.equal(agent.status().transport.link, 'connected');
      assert.ok(out.lines.some((l) => /presenting the new device certificate from the next connection on/.test(l.msg) && l['to'] === newSerial));
      for (const l of out.lines) assert.doesNotMatch(JSON.stringify(l), /PRIVATE KEY|vse_/);
      return { oldSerial: first.cert.serialHex, newSerial, chainPem: first.chainPem };
    } finally {
      await agent.stop();
    }
  }

  it('software key store', async () => {
    const keystore: KeyStoreConfig = { kind: 'software', path: join(files.dir, 'soft.vsks'), passphrase: { file: files.pass } };
    const r = await renewAndReconnect('bed-soft', keystore);
    // Control: the old certificate is what the broker now refuses, so the reconnect above used the new one.
    const store = await openKeyStore(keystore);
    try {
      assert.ok(store instanceof SoftwareKeyStore);
      const privateKey = createPrivateKey(await store.exportPrivateKeyPemForDevelopmentOnly('device-identity'));
      const old = createMqttsUplink({ deviceId: 'bed-soft', host: '127.0.0.1', port: rig.broker.port, serverName: 'localhost', tls: inProcessTls({ certChainPem: r.chainPem, privateKey, trust: rig.trust }) });
      await assert.rejects(old.connect(), (e: unknown) => e instanceof Error && /revoked|refused|unauthorized|certificate/i.test(`${(e as { code?: string }).code ?? ''} ${e.message}`));
      await old.close();
    } finally {
      await store.close();
    }
  });

  it('TPM key store (swtpm behind tpm2-abrmd): renewal and TLS both sign in the TPM', { timeout: 300_000 }, async () => {
    let tpm: Swtpm | undefined;
    const saved = { ...process.env };
    try {
      tpm = await startSwtpm({ resourceManager: true });
      Object.assign(process.env, tpm.env);
      const keystore: KeyStoreConfig = { kind: 'tpm', tcti: tpm.tcti, dir: join(files.dir, 'tpm-store') };
      const r = await renewAndReconnect('bed-tpm', keystore);
      assert.notEqual(r.newSerial, r.oldSerial);
      assert.equal(existsSync(join(files.dir, 'tpm-store')), true);
    } finally {
      await tpm?.stop();
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    }
  });
});
