import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vitalseal-cli-keys-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const PASS = 'a development passphrase';
const env = { ...process.env, VS_PASS: PASS };

function vitalseal(args: string[], input?: Uint8Array | string, extraEnv: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [bin, ...args], { input, cwd: dir, env: { ...env, ...extraEnv }, maxBuffer: 1 << 24 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

const sw = ['--store', 'software', '--file', join(dir, 'dev.vsks'), '--passphrase-env', 'VS_PASS'];

describe('vitalseal keys (through the real bin, software store)', () => {
  it('create prints the public key; the file is 0600; the development warning goes to stderr', () => {
    const r = vitalseal(['keys', 'create', 'device-identity', ...sw]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.toString(), /^-----BEGIN PUBLIC KEY-----/);
    assert.match(r.stderr, /warning: DEVELOPMENT KEY STORE/);
    assert.equal(statSync(join(dir, 'dev.vsks')).mode & 0o777, 0o600);
    writeFileSync(join(dir, 'identity.pub'), r.stdout);
    const again = vitalseal(['keys', 'create', 'device-identity', ...sw]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /\[exists\]/);
  });

  it('sign writes a DER signature that openssl dgst -verify accepts', () => {
    const message = randomBytes(1000);
    writeFileSync(join(dir, 'msg.bin'), message);
    const r = vitalseal(['keys', 'sign', 'device-identity', ...sw], message);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout[0], 0x30, 'DER SEQUENCE');
    writeFileSync(join(dir, 'sig.der'), r.stdout);
    const ok = spawnSync('openssl', ['dgst', '-sha256', '-verify', join(dir, 'identity.pub'), '-signature', join(dir, 'sig.der'), join(dir, 'msg.bin')]);
    assert.equal(ok.status, 0, ok.stderr.toString());
    assert.match(ok.stdout.toString(), /Verified OK/);
    writeFileSync(join(dir, 'msg.bin'), Buffer.concat([message, Buffer.of(0)]));
    assert.notEqual(spawnSync('openssl', ['dgst', '-sha256', '-verify', join(dir, 'identity.pub'), '-signature', join(dir, 'sig.der'), join(dir, 'msg.bin')]).status, 0);
    const pub = vitalseal(['keys', 'pubkey', 'device-identity', ...sw]);
    assert.equal(pub.stdout.toString(), readFileSync(join(dir, 'identity.pub'), 'utf8'));
  });

  it('seal reads stdin, unseal writes stdout, list shows types, delete removes; the secret never reaches stderr', () => {
    const secret = randomBytes(64);
    const s = vitalseal(['keys', 'seal', 'mqtt-psk', ...sw], secret);
    assert.equal(s.code, 0, s.stderr);
    const u = vitalseal(['keys', 'unseal', 'mqtt-psk', ...sw]);
    assert.equal(u.code, 0, u.stderr);
    assert.deepEqual(u.stdout, secret);
    assert.ok(!s.stderr.includes(secret.toString('hex')) && !u.stderr.includes(secret.toString('hex')));
    const l = vitalseal(['keys', 'list', ...sw]);
    assert.equal(l.stdout.toString(), 'signing  device-identity\nsealed   mqtt-psk\n');
    assert.equal(vitalseal(['keys', 'seal', 'too-big', ...sw], randomBytes(4097)).code, 2);
    assert.equal(vitalseal(['keys', 'delete', 'mqtt-psk', ...sw]).code, 0);
    const gone = vitalseal(['keys', 'unseal', 'mqtt-psk', ...sw]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /\[not-found\]/);
    assert.equal(gone.stdout.length, 0);
  });

  it('takes the store from a YAML or JSON config with a keystore: section and a 0600 passphrase file', () => {
    const pw = join(dir, 'pass.txt');
    writeFileSync(pw, `${PASS}\n`, { mode: 0o600 });
    writeFileSync(join(dir, 'agent.yaml'), `agent:\n  deviceId: d1\nkeystore:\n  kind: software\n  path: ${join(dir, 'dev.vsks')}\n  passphrase:\n    file: ${pw}\n`);
    writeFileSync(join(dir, 'agent.json'), JSON.stringify({ keystore: { kind: 'software', path: join(dir, 'dev.vsks'), passphrase: { env: 'VS_PASS' } } }));
    assert.equal(vitalseal(['keys', 'list', '--config', join(dir, 'agent.yaml')]).stdout.toString(), 'signing  device-identity\n');
    assert.equal(vitalseal(['keys', 'list', '--config', join(dir, 'agent.json')]).stdout.toString(), 'signing  device-identity\n');
    writeFileSync(join(dir, 'inline.yaml'), `keystore:\n  kind: software\n  path: x\n  passphrase: hunter2\n`);
    const inline = vitalseal(['keys', 'list', '--config', join(dir, 'inline.yaml')]);
    assert.equal(inline.code, 1);
    assert.match(inline.stderr, /\[invalid-config\]/);
    assert.doesNotMatch(inline.stderr, /hunter2/);
  });

  it('refuses secrets on the command line, world-readable passphrase files and wrong passphrases', () => {
    assert.equal(vitalseal(['keys', 'list', '--store', 'software', '--file', join(dir, 'dev.vsks'), '--passphrase', PASS]).code, 2);
    const pw = join(dir, 'open.txt');
    writeFileSync(pw, PASS, { mode: 0o644 });
    const wide = vitalseal(['keys', 'list', '--store', 'software', '--file', join(dir, 'dev.vsks'), '--passphrase-file', pw]);
    assert.equal(wide.code, 1);
    assert.match(wide.stderr, new RegExp(`chmod 600 ${pw}`));
    const wrong = vitalseal(['keys', 'list', ...sw], undefined, { VS_PASS: 'not it' });
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /\[wrong-passphrase\]/);
    const missing = vitalseal(['keys', 'list', '--store', 'software', '--file', join(dir, 'absent.vsks'), '--passphrase-env', 'VS_PASS']);
    assert.equal(missing.code, 1, 'list does not create a store');
    assert.ok(!readdirSync(dir).includes('absent.vsks'));
  });

  it('checks the tpm and pkcs11 options before touching a store', () => {
    assert.equal(vitalseal(['keys', 'unseal', '--store', 'tpm', '--path', '/HS/SRK/a/b']).code, 2, 'FAPI paths have no intermediate elements');
    assert.equal(vitalseal(['keys', 'unseal', '--store', 'software', '--file', 'x', '--passphrase-env', 'VS_PASS', '--path', '/HS/SRK/a']).code, 2);
    assert.equal(vitalseal(['keys', 'list', '--store', 'pkcs11', '--module', 'm.so', '--token', 'pkcs11:token=t', '--pin-env', 'P', '--file', 'x']).code, 2);
  });

  it('--audit-log records the key events; vitalseal audit verify finds the log intact', () => {
    const log = join(dir, 'audit.log');
    assert.equal(vitalseal(['keys', 'sign', 'device-identity', ...sw, '--audit-log', log], 'm').code, 0);
    assert.equal(vitalseal(['keys', 'unseal', 'nothing-here', ...sw, '--audit-log', log]).code, 1);
    const text = readFileSync(log, 'utf8');
    assert.match(text, /"actor":"cli:[^"]+","op":"sign","key":"device-identity","result":"ok"/);
    assert.match(text, /"op":"unseal","key":"nothing-here","result":"error","code":"not-found"/);
    const v = vitalseal(['audit', 'verify', log]);
    assert.equal(v.code, 0, v.stdout.toString());
  });
});

describe('vitalseal keys split / combine', () => {
  it('splits a 0600 backup into 5 shares (0600 each), rebuilds it from 3, refuses 2 and overwrites', () => {
    const backup = join(dir, 'ca-backup.key');
    const content = randomBytes(600);
    writeFileSync(backup, content, { mode: 0o600 });
    const s = vitalseal(['keys', 'split', '--shares', '5', '--threshold', '3', '--in', backup, '--out', join(dir, 'ca')]);
    assert.equal(s.code, 0, s.stderr);
    const shares = [1, 2, 3, 4, 5].map((i) => join(dir, `ca.share-${i}-of-5`));
    for (const p of shares) assert.equal(statSync(p).mode & 0o777, 0o600);
    const out = join(dir, 'rebuilt.key');
    const c = vitalseal(['keys', 'combine', '--out', out, shares[4] as string, shares[0] as string, shares[2] as string]);
    assert.equal(c.code, 0, c.stderr);
    assert.deepEqual(readFileSync(out), content);
    assert.equal(statSync(out).mode & 0o777, 0o600);
    const few = vitalseal(['keys', 'combine', '--out', join(dir, 'x.key'), shares[0] as string, shares[1] as string]);
    assert.equal(few.code, 1);
    assert.match(few.stderr, /3 shares .* needed; 2 given \[shares-insufficient\]/);
    assert.equal(vitalseal(['keys', 'combine', '--out', out, ...shares]).code, 2, 'never overwrites');
    assert.equal(vitalseal(['keys', 'split', '--shares', '5', '--threshold', '3', '--in', backup, '--out', join(dir, 'ca')]).code, 2, 'never overwrites shares');
  });
});
