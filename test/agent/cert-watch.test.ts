/** The certificate-expiry watcher under an injected clock, on a real certificate made by openssl. */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { assessCertificate, CertificateWatcher } from '../../src/agent/cert-watch.ts';
import { createLogger } from '../../src/agent/log.ts';
import { ManualClock } from '../../src/util/clock.ts';
import { agentTestEnv } from './support.ts';

const DAY = 86_400_000;
const env = agentTestEnv('vitalseal-cert-');
after(() => env.cleanup());

describe('certificate-expiry watcher', () => {
  it('is quiet while far from expiry, warns from warnDays before (saying renewal is not configured), errors once expired', () => {
    const file = env.certificate(90);
    const cert = new X509Certificate(readFileSync(file));
    const notAfter = Date.parse(cert.validTo);
    const clock = new ManualClock(Date.parse(cert.validFrom) + 1000);
    const lines: string[] = [];
    const w = new CertificateWatcher({ file, warnDays: 30, clock, log: createLogger({ destination: { write: (s: string) => { lines.push(s); } } }) });
    assert.equal(w.check().state, 'ok');
    clock.set(notAfter - 30 * DAY + 1000);
    const soon = w.check();
    assert.equal(soon.state, 'renew-soon');
    assert.equal(soon.daysLeft, 29);
    assert.match(soon.message, /expires in 29 day\(s\).*automatic renewal is not configured \(certificate\.renew/);
    clock.set(notAfter);
    assert.equal(w.check().state, 'expired');
    const levels = lines.map((l) => (JSON.parse(l) as { level: string }).level);
    assert.deepEqual(levels, ['info', 'warn', 'error']);
  });

  it('reports an unreadable certificate and a clock before notBefore', () => {
    const clock = new ManualClock(0);
    const w = new CertificateWatcher({ file: join(env.dir, 'missing.pem'), warnDays: 30, clock, log: createLogger({ level: 'silent' }) });
    assert.equal(w.check().state, 'unreadable');
    assert.equal(assessCertificate({ notBefore: 10 * DAY, notAfter: 20 * DAY }, 5 * DAY, 3).state, 'not-yet-valid');
  });

  it('with renewal configured, the advice says renewal has not succeeded yet, and that an expired certificate needs provisioning', () => {
    const v = { notBefore: 0, notAfter: 100 * DAY };
    assert.match(assessCertificate(v, 90 * DAY, 14, 'https://ingest.example:8443').message, /automatic renewal through https:\/\/ingest\.example:8443 has not succeeded yet/);
    assert.match(assessCertificate(v, 100 * DAY, 14, 'https://ingest.example:8443').message, /no longer authenticates a renewal: provision the device again/);
    assert.equal(assessCertificate(v, 50 * DAY, 14, 'https://ingest.example:8443').state, 'ok');
  });
});
