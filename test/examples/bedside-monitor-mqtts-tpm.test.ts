/**
 * examples/bedside-monitor-mqtts-tpm.ts as its header says to try it: first-boot enrolment with the
 * key made in a TPM (swtpm behind tpm2-abrmd), MQTTS through mosquitto with the TPM-signed
 * handshake, the readings back from the ingest's API; nothing left running (swtpm, tpm2-abrmd,
 * dbus-daemon, mosquitto, the ingest, openssl s_client).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cleanEnd, runExample } from './run-example.ts';

describe('examples/bedside-monitor-mqtts-tpm.ts', () => {
  it('--local --seconds 8: enrolled with a TPM key, sent over MQTTS, stored at the ingest, everything stopped', { timeout: 120_000 }, async () => {
    const r = await runExample('bedside-monitor-mqtts-tpm.ts', ['--local', '--seconds', '8']);
    assert.equal(cleanEnd(r), undefined);
    assert.match(r.stdout, /^enrolled bed-7: identity key made in the tpm key store, certificate \S+\/bed-7-identity\/chain\.pem$/m);
    assert.match(r.stdout, /^certificate: ok \(\d+ days left\), renewal idle$/m);
    const agent = /^agent bed-7: (\d+) messages sealed \((\d+) readings\), (\d+) acknowledged, \d+ left in the queue; mqtts to 127\.0\.0\.1:\d+, TLSv1\.3 TLS_\w+$/m.exec(r.stdout);
    assert.ok(agent, r.stdout);
    const stored = /^bed-7: stored (\d+) messages \((\d+) readings, (\d+) ECG strips\) at the ingest; last heart rate \d+ beat\/min, SpO2 \d+ %, respiration \d+ \/min, temperature 3\d\.\d °C/m.exec(r.stdout);
    assert.ok(stored, r.stdout);
    assert.ok(Number(stored[1]) >= 1);
    // Every acknowledged message is stored; one stored as the agent stopped may have lost its acknowledgement.
    assert.ok(Number(agent[3]) <= Number(stored[1]) && Number(stored[1]) <= Number(agent[1]), `acknowledged ${agent[3]} <= stored ${stored[1]} <= sealed ${agent[1]}`);
    assert.match(r.stderr, /"tls":"TLS in openssl s_client; the device key stays in the TPM \(tpm2-openssl, TCTI tabrmd:/, 'the handshake was signed in the TPM');
  });

  it('without --local and with --config: a certificate device with no certificate and no token says what it needs', async () => {
    const r = await runExample('bedside-monitor-mqtts-tpm.ts', ['--config', 'test/examples/no-such.yaml', '--seconds', '1']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no-such\.yaml is invalid:\n\s+cannot read the file \(ENOENT\)/);
  });
});
