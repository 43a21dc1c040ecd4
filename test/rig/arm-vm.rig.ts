/**
 * `npm run test:rig`: the aarch64 rig end to end. Slow, so not part of `npm test`: the first run
 * builds the images (debootstrap's second stage runs under emulation), every run boots a VM.
 * Named *.rig.ts so scripts/run-tests.mjs does not collect it.
 *
 * What it proves, on an emulated Cortex-A72 with swtpm as a TIS TPM:
 *   - the guest runs Debian 12 arm64 with Node for arm64, the checkout, and the Raspberry Pi
 *     profile installed by hardware/raspberry-pi/install.sh;
 *   - /dev/tpmrm0 exists with the profile's ownership, and check-tpm.sh calls the TPM a simulator;
 *   - `vitalseal keys create/sign --store tpm --tcti device:/dev/tpmrm0` works as user vitalseal in
 *     vitalseal-agent.service's sandbox, and the signature of a fresh host challenge verifies on
 *     the host with OpenSSL (runRig) and with node:crypto (here);
 *   - the device enrols through the host's ingest (`vitalseal provision --enrol`, key made in the
 *     VM's TPM, one-time token in a 0600 file removed after use): the ingest's registry holds the
 *     SPKI of the key that `keys list` shows in the TPM and that signs the host's challenge;
 *   - vitalseal-agent.service, hardened, as user vitalseal, reaching the TPM through tpm2-abrmd on
 *     the system bus (the Raspberry Pi profile's TCTI), sends readings over CoAPS (DTLS 1.3,
 *     CertificateVerify signed in the TPM through FAPI) and then over MQTTS (TLS 1.3 in the agent's
 *     child process, signed in the TPM through tpm2-openssl); the host's ingest stores them under
 *     the VM's device id and serves them decrypted as SenML JSON.
 */
import assert from 'node:assert/strict';
import { verify } from 'node:crypto';
import { describe, it } from 'node:test';
import { NODE_ARM64 } from '../../scripts/rig/config.ts';
import { runRig } from '../../scripts/rig/run.ts';

describe('aarch64 rig (qemu-system-aarch64 virt + swtpm)', () => {
  it('boots, signs with the ARM VM\'s TPM in the agent\'s sandbox, enrols, and the agent\'s readings arrive decrypted at the host\'s ingest', async () => {
    const t0 = performance.now();
    const report = await runRig({
      log: (l) => process.stderr.write(`rig: ${l}\n`),
      transports: ['coaps', 'mqtts'],
      deviceId: 'rig-arm64',
      timeoutMinutes: 60,
    });
    const r = report.result;
    process.stderr.write(`rig timings: ${JSON.stringify({ host: report.timings, guest: r.timings, phases: report.ingest?.phases, runRigSeconds: (performance.now() - t0) / 1000 })}\n`);

    assert.equal(r.system.arch, 'arm64');
    assert.equal(r.system.node, `v${NODE_ARM64.version}`);
    assert.match(r.system.kernel, /-cloud-arm64$/);

    assert.equal(r.tpm.device, '/dev/tpmrm0');
    assert.equal(r.tpm.access, 'c0660 tss:tss');
    assert.equal(r.tpm.driver, 'tpm_tis');
    assert.equal(r.tpm.versionMajor, '2');
    assert.equal(r.tpm.check.exitCode, 2, r.tpm.check.output);
    assert.match(r.tpm.check.output, /^manufacturer: IBM$/m);
    assert.match(r.tpm.check.output, /^driver: tpm_tis$/m);
    assert.match(r.tpm.check.output, /^verdict: simulator$/m);

    assert.equal(r.keys.create.exitCode, 0, r.keys.create.output);
    assert.equal(r.keys.sign.exitCode, 0, r.keys.sign.output);
    assert.equal(report.signatureVerified, true);
    // A second, independent check of the same signature.
    const challenge = Buffer.from(report.job.challenge, 'base64');
    assert.equal(verify('sha256', challenge, r.keys.publicKeyPem, Buffer.from(r.keys.signature, 'base64')), true);

    const exposure = /Overall exposure level for vitalseal-agent\.service: (\d+\.\d)/.exec(r.exposure);
    assert.ok(exposure !== null, r.exposure);
    assert.ok(Number(exposure[1]) <= 2.0, r.exposure);

    // Enrolment: the key in the VM's TPM, the certificate from the host's ingest, the token spent and gone.
    const d = r.device;
    assert.ok(d !== undefined);
    assert.equal(d.provision.exitCode, 0, d.provision.output);
    assert.match(d.provision.output, /rig-arm64/);
    assert.deepEqual(d.tokenFile, { mode: '0600', owner: 'vitalseal:vitalseal', removed: true });
    assert.deepEqual(report.tokenNotIn, ['the VM console', 'the guest report', "the ingest's log"]);
    // The certificate files belong to the agent's user, where ProtectSystem=strict lets it renew them.
    assert.match(d.identityFiles, /^0700 vitalseal:vitalseal \/var\/lib\/vitalseal\/identity$/m);
    assert.match(d.identityFiles, /^0[0-7]{3} vitalseal:vitalseal \/var\/lib\/vitalseal\/identity\/chain\.pem$/m);
    assert.match(d.keysList.output, /^signing\s+device-identity$/m);
    // The ingest's registry holds the issued certificate's key, and that key is in the TPM: it signed the challenge.
    const ing = report.ingest;
    const id = report.identity;
    assert.ok(ing !== undefined && id !== undefined);
    assert.equal(ing.registry?.credential, 'certificate');
    assert.equal(ing.registry?.credentialSha256, id.spkiSha256);
    assert.equal(ing.registry?.certSerial, id.serial);
    assert.equal(ing.registry?.status, 'active');
    assert.equal(id.signatureVerified, true);
    assert.match(id.subject, /rig-arm64/);

    // Each transport delivered: the ingest stored messages from the VM's device over it.
    assert.deepEqual(ing.phases.map((p) => [p.transport, p.arrived]), [['coaps', true], ['mqtts', true]]);
    const [coaps, mqtts] = ing.phases;
    assert.ok(coaps !== undefined && mqtts !== undefined);
    assert.equal(coaps.seenTransport, 'coaps');
    assert.match(coaps.seenSuite ?? '', /^DTLSv1\.3 TLS_/);
    assert.ok(coaps.messagesAfter - coaps.messagesBefore >= 3);
    assert.equal(mqtts.seenTransport, 'mqtts');
    assert.match(mqtts.seenSuite ?? '', /^TLSv1\.3 via broker \/ /);
    assert.ok(mqtts.messagesAfter - mqtts.messagesBefore >= 3);
    assert.ok(Number(ing.posture?.['messages']) >= mqtts.messagesAfter);
    // The device's side of each link: its own status document names the protocol it negotiated.
    const deviceTransport = (i: number) => (JSON.parse(d.phases[i]?.status ?? '{}') as { transport?: { kind?: string; protocol?: string } }).transport;
    assert.equal(deviceTransport(0)?.kind, 'coaps', d.phases[0]?.status);
    assert.match(deviceTransport(0)?.protocol ?? '', /DTLS/, d.phases[0]?.status);
    assert.equal(deviceTransport(1)?.kind, 'mqtts', d.phases[1]?.status);
    assert.match(deviceTransport(1)?.protocol ?? '', /TLSv1\.3/, d.phases[1]?.status);

    // Decrypted at the ingest: SenML JSON records named after the VM's device, with values.
    const numeric = ing.readings.filter((x) => typeof x.v === 'number');
    assert.ok(numeric.length > 0, JSON.stringify(ing.readings).slice(0, 500));
    for (const rec of ing.readings) assert.match(String(rec.n), /^rig-arm64\//);
    assert.ok(numeric.some((x) => /^rig-arm64\/(heart-rate|spo2|respiration-rate)$/.test(String(x.n))), JSON.stringify(numeric.slice(0, 5)));

    // The unit ran hardened, as vitalseal (in group tss for the TPM), with no capabilities and a system-call filter.
    for (const p of d.phases) {
      assert.match(p.process, /^user=vitalseal group=vitalseal groups=\S*tss/, p.process);
      assert.match(p.process, /NoNewPrivs=1 Seccomp=2 CapEff=0000000000000000 CapBnd=0000000000000000/, p.process);
      assert.match(p.state, /^ActiveState=active$/m, p.state);
      assert.match(p.state, /^User=vitalseal$/m, p.state);
      assert.match(p.journal, /agent running/);
    }
  });
});
