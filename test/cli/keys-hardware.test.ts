/**
 * `vitalseal keys` against the hardware-backed stores, through the real bin: a TPM (swtpm) and a
 * PKCS#11 token (SoftHSM2). Independent peers check what the command did: tpm2-tools' tss2_unseal
 * reads a secret the command sealed (and the command reads one tss2_createseal made), and OpenSSL
 * verifies the signatures both stores make.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startSoftHsm, type SoftHsm, type SoftHsmToken } from '../../scripts/lib/softhsm.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vitalseal-cli-keys-hw-'));

function run(cmd: string, args: string[], input?: Uint8Array, env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(cmd, args, { input, cwd: dir, env: { ...process.env, TSS2_LOG: 'all+NONE', ...env }, maxBuffer: 1 << 24, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}
const vitalseal = (args: string[], input?: Uint8Array, env?: NodeJS.ProcessEnv) => run(process.execPath, [bin, ...args], input, env);

function opensslVerifies(pubPem: Buffer, message: Uint8Array, signature: Uint8Array, name: string): boolean {
  writeFileSync(join(dir, `${name}.pub`), pubPem);
  writeFileSync(join(dir, `${name}.msg`), message);
  writeFileSync(join(dir, `${name}.sig`), signature);
  return run('openssl', ['dgst', '-sha256', '-verify', `${name}.pub`, '-signature', `${name}.sig`, `${name}.msg`]).code === 0;
}

after(() => rmSync(dir, { recursive: true, force: true }));

describe('vitalseal keys --store tpm (swtpm)', () => {
  let tpm: Swtpm;
  let tpmArgs: string[];
  const fapiConfig = () => join(dir, 'tpm', 'fapi-config.json');
  before(async () => {
    tpm = await startSwtpm();
    tpmArgs = ['--store', 'tpm', '--tcti', tpm.tcti, '--dir', join(dir, 'tpm')];
  });
  after(async () => tpm?.stop());

  it('seal reads stdin; tss2_unseal with the same FAPI config gets the secret back, and so does unseal', () => {
    const secret = randomBytes(32);
    const r = vitalseal(['keys', 'seal', '--path', '/HS/SRK/mqtt-psk', ...tpmArgs], secret);
    assert.equal(r.code, 0, r.stderr);
    const peer = run('tss2_unseal', ['--path=/HS/SRK/mqtt-psk', '--data=-'], undefined, { TSS2_FAPICONF: fapiConfig() });
    assert.equal(peer.code, 0, peer.stderr);
    assert.deepEqual(peer.stdout, secret);
    const back = vitalseal(['keys', 'unseal', '--path', '/HS/SRK/mqtt-psk', '--store', 'tpm', '--fapi-config', fapiConfig()]);
    assert.equal(back.code, 0, back.stderr);
    assert.deepEqual(back.stdout, secret);
  });

  it('unseal reads a secret tss2_createseal made (TSS2_FAPICONF names the store)', () => {
    const secret = randomBytes(24);
    const made = run('tss2_createseal', ['--path=/HS/SRK/from-tools', '--type=noDa', '--authValue=', '--data=-'], secret, { TSS2_FAPICONF: fapiConfig() });
    assert.equal(made.code, 0, made.stderr);
    const r = vitalseal(['keys', 'unseal', '--store', 'tpm', '--path', '/HS/SRK/from-tools'], undefined, { TSS2_FAPICONF: fapiConfig() });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout, secret);
  });

  it('create + sign: the TPM-held key signs and openssl dgst -verify accepts it; list and delete', () => {
    const created = vitalseal(['keys', 'create', 'device-identity', ...tpmArgs]);
    assert.equal(created.code, 0, created.stderr);
    const message = randomBytes(500);
    const sig = vitalseal(['keys', 'sign', 'device-identity', ...tpmArgs], message);
    assert.equal(sig.code, 0, sig.stderr);
    assert.ok(opensslVerifies(created.stdout, message, sig.stdout, 'tpm'));
    assert.ok(!opensslVerifies(created.stdout, randomBytes(500), sig.stdout, 'tpm-other'));
    const listed = vitalseal(['keys', 'list', ...tpmArgs]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout.toString(), /signing\s+device-identity/);
    assert.match(listed.stdout.toString(), /sealed\s+mqtt-psk/);
    assert.equal(vitalseal(['keys', 'delete', 'device-identity', ...tpmArgs]).code, 0);
    const gone = vitalseal(['keys', 'sign', 'device-identity', ...tpmArgs], message);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /\[not-found\]/);
  });
});

describe('vitalseal keys --store pkcs11 (SoftHSM2)', () => {
  let hsm: SoftHsm;
  let token: SoftHsmToken;
  let p11Args: string[];
  before(async () => {
    hsm = await startSoftHsm();
    token = await hsm.addToken('cli-keys');
    p11Args = ['--store', 'pkcs11', '--module', hsm.module, '--token', token.uri, '--pin-file', token.pinFile];
  });
  after(async () => hsm?.stop());
  const env = () => ({ SOFTHSM2_CONF: hsm.conf });

  it('create + sign: the token-held key signs and openssl dgst -verify accepts it', () => {
    const created = vitalseal(['keys', 'create', 'device-identity', ...p11Args], undefined, env());
    assert.equal(created.code, 0, created.stderr);
    const message = randomBytes(300);
    const sig = vitalseal(['keys', 'sign', 'device-identity', ...p11Args], message, env());
    assert.equal(sig.code, 0, sig.stderr);
    assert.ok(opensslVerifies(created.stdout, message, sig.stdout, 'p11'));
    const pub = vitalseal(['keys', 'pubkey', 'device-identity', ...p11Args], undefined, env());
    assert.deepEqual(pub.stdout, created.stdout);
  });

  it('seal/unseal round trip; a wrong PIN is refused with a clear code and no PIN in the message', () => {
    const secret = randomBytes(40);
    assert.equal(vitalseal(['keys', 'seal', 'queue-kek-backup', ...p11Args], secret, env()).code, 0);
    const back = vitalseal(['keys', 'unseal', 'queue-kek-backup', ...p11Args], undefined, env());
    assert.equal(back.code, 0, back.stderr);
    assert.deepEqual(back.stdout, secret);
    const wrongPin = '000000' === token.userPin ? '111111' : '000000';
    const bad = vitalseal(['keys', 'list', '--store', 'pkcs11', '--module', hsm.module, '--token', token.uri, '--pin-env', 'VS_PIN'], undefined, { ...env(), VS_PIN: wrongPin });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /\[pin-incorrect\]/);
    assert.ok(!bad.stderr.includes(wrongPin), 'the PIN tried is not echoed');
  });
});
