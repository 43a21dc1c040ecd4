/**
 * hardware/raspberry-pi/check-tpm.sh against real TPMs: swtpm as it comes (no EK certificate), and
 * swtpm manufactured by swtpm_setup with an EK certificate from a local CA (swtpm_localca) standing in
 * for the chip maker's. The "genuine" verdict needs a hardware TPM, which no test here has; what is
 * tested is every step that decides it: the simulator is called one, the EK chain is verified against
 * the right CA and refused against another, and a certificate copied from another TPM fails the
 * possession check (make/activate credential).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const script = join(repo, 'hardware', 'raspberry-pi', 'check-tpm.sh');
const temps: string[] = [];
const tpms: Swtpm[] = [];
const tempDir = (p: string) => {
  const d = mkdtempSync(join(tmpdir(), p));
  temps.push(d);
  return d;
};

after(async () => {
  for (const t of tpms) await t.stop();
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});

interface Check {
  status: number | null;
  out: string;
  fields: Map<string, string>;
}

function check(tcti: string, args: string[] = []): Check {
  const r = spawnSync('sh', [script, '-T', tcti, ...args], { encoding: 'utf8', timeout: 120_000 });
  const out = `${r.stdout}${r.stderr}`;
  const fields = new Map<string, string>();
  for (const line of r.stdout.split('\n')) {
    const m = /^([a-z_]+): (.*)$/.exec(line);
    if (m !== null) fields.set(m[1] as string, m[2] as string);
  }
  return { status: r.status, out, fields };
}

function tools(cmd: string, args: string[], tcti: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, TPM2TOOLS_TCTI: tcti, TSS2_LOG: 'all+NONE' }, timeout: 60_000 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A local CA (swtpm_localca's files) and a swtpm state manufactured with EK certificates it signed. */
function manufacture(caDir: string): string {
  const state = tempDir('vitalseal-ek-state-');
  const conf = join(caDir, 'localca.conf');
  writeFileSync(conf, [
    `statedir = ${caDir}`,
    `signingkey = ${join(caDir, 'signkey.pem')}`,
    `issuercert = ${join(caDir, 'issuercert.pem')}`,
    `certserial = ${join(caDir, 'certserial')}`,
    '',
  ].join('\n'));
  writeFileSync(join(caDir, 'localca.options'), '--platform-manufacturer vitalseal-test\n--platform-version 2.1\n--platform-model test\n');
  writeFileSync(join(caDir, 'setup.conf'), [
    'create_certs_tool = swtpm_localca',
    `create_certs_tool_config = ${conf}`,
    `create_certs_tool_options = ${join(caDir, 'localca.options')}`,
    '',
  ].join('\n'));
  const r = spawnSync('swtpm_setup', ['--tpm2', '--tpmstate', state, '--create-ek-cert', '--config', join(caDir, 'setup.conf')], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `swtpm_setup: ${r.stdout}${r.stderr}`);
  return state;
}

describe('check-tpm.sh', () => {
  let ca: string;
  let otherCa: string;
  let manufactured: Swtpm;
  let donorCert: Buffer;

  before(async () => {
    ca = tempDir('vitalseal-localca-');
    otherCa = tempDir('vitalseal-localca-other-');
    manufactured = await startSwtpm({ stateDir: manufacture(ca) });
    tpms.push(manufactured);
    // Another TPM manufactured by the same CA: its EK certificate chains fine, but is not ours.
    const donor = await startSwtpm({ stateDir: manufacture(ca) });
    tpms.push(donor);
    const out = join(tempDir('vitalseal-donor-'), 'ek.der');
    tools('tpm2_nvread', ['0x1c00002', '-C', '0x1c00002', '-o', out], donor.tcti);
    donorCert = readFileSync(out);
    await donor.stop();
    // A CA that signed nothing here.
    manufacture(otherCa);
  });

  it('calls plain swtpm a simulator with no EK certificate (exit 2)', async () => {
    const tpm = await startSwtpm();
    tpms.push(tpm);
    const r = check(tpm.tcti);
    assert.equal(r.status, 2, r.out);
    assert.equal(r.fields.get('manufacturer'), 'IBM');
    assert.equal(r.fields.get('vendor'), 'SW TPM');
    assert.equal(r.fields.get('simulator'), 'yes');
    assert.equal(r.fields.get('ek_certificate'), 'none');
    assert.equal(r.fields.get('verdict'), 'simulator');
    assert.match(r.fields.get('reasons') ?? '', /no EK certificate/);
  });

  it('verifies the EK chain to the right CA and proves the TPM holds the EK, and still says simulator', () => {
    const r = check(manufactured.tcti, ['--ca', join(ca, 'swtpm-localca-rootca-cert.pem'), '--untrusted', join(ca, 'issuercert.pem')]);
    assert.equal(r.status, 2, r.out);
    assert.equal(r.fields.get('ek_certificate'), '0x1c00002 (rsa)');
    assert.equal(r.fields.get('ek_issuer'), 'CN = swtpm-localca');
    assert.match(r.fields.get('ek_chain') ?? '', /^ok /);
    assert.equal(r.fields.get('ek_possession'), 'ok');
    assert.equal(r.fields.get('verdict'), 'simulator');
    // The only reason left is the simulator: chain and possession passed.
    assert.equal(r.fields.get('reasons'), 'the TPM says it is a simulator (vendor "SW TPM")');
  });

  it('refuses the chain against another CA, and says so when no CA is given', () => {
    const wrong = check(manufactured.tcti, ['--ca', join(otherCa, 'swtpm-localca-rootca-cert.pem'), '--untrusted', join(otherCa, 'issuercert.pem')]);
    assert.equal(wrong.status, 2);
    assert.equal(wrong.fields.get('ek_chain'), 'FAILED');
    assert.match(wrong.fields.get('reasons') ?? '', /does not chain/);
    const none = check(manufactured.tcti);
    assert.equal(none.status, 2);
    assert.match(none.fields.get('ek_chain') ?? '', /^not checked/);
    assert.match(none.fields.get('reasons') ?? '', /no --ca/);
  });

  it('fails the possession check for an EK certificate copied from another TPM', async () => {
    // Replace this TPM's EK certificate with the donor's (platform hierarchy, as a forger with the
    // platform's authorization could). The chain still verifies; only possession gives it away.
    const dir = tempDir('vitalseal-forged-');
    const forged = await startSwtpm({ stateDir: manufacture(ca) });
    tpms.push(forged);
    writeFileSync(join(dir, 'donor.der'), donorCert);
    tools('tpm2_nvundefine', ['0x1c00002', '-C', 'p'], forged.tcti);
    tools('tpm2_nvdefine', ['0x1c00002', '-C', 'p', '-s', String(statSync(join(dir, 'donor.der')).size), '-a', 'ppwrite|ppread|ownerread|authread|no_da|platformcreate'], forged.tcti);
    tools('tpm2_nvwrite', ['0x1c00002', '-C', 'p', '-i', join(dir, 'donor.der')], forged.tcti);
    const r = check(forged.tcti, ['--ca', join(ca, 'swtpm-localca-rootca-cert.pem'), '--untrusted', join(ca, 'issuercert.pem')]);
    assert.equal(r.status, 2, r.out);
    assert.match(r.fields.get('ek_chain') ?? '', /^ok /);
    assert.equal(r.fields.get('ek_possession'), 'FAILED');
    assert.match(r.fields.get('reasons') ?? '', /not this TPM's/);
  });

  it('exits 1 when there is no TPM to ask', () => {
    const missing = check('device:/dev/vitalseal-no-such-tpm');
    assert.equal(missing.status, 1);
    assert.match(missing.out, /does not exist/);
    const bad = spawnSync('sh', [script, '--frobnicate'], { encoding: 'utf8' });
    assert.equal(bad.status, 1);
  });
});
