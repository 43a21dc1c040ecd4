import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { startSoftHsm } from '../../scripts/lib/softhsm.ts';
import { startSwtpm } from '../../scripts/lib/swtpm.ts';
import { openKeyStore, parseKeyStoreConfig } from '../../src/keystore/open.ts';
import { readSecret } from '../../src/keystore/secret-source.ts';
import { KeyStoreError, Unsupported } from '../../src/util/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-open-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function code(c: string, kind: typeof KeyStoreError | typeof Unsupported = KeyStoreError): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof kind, `expected ${kind.name}, got ${String(e)}`);
    assert.equal(e.code, c, e.message);
    return true;
  };
}

describe('secrets from an environment variable or a 0600 file', () => {
  it('reads an env var; refuses one unset or empty, naming the variable but not a value', async () => {
    assert.deepEqual(await readSecret({ env: 'PW' }, { env: { PW: 'hunter2' }, what: 'pass' }), new TextEncoder().encode('hunter2'));
    await assert.rejects(readSecret({ env: 'PW' }, { env: {}, what: 'pass' }), (e: unknown) => code('secret-missing')(e) && /PW/.test((e as Error).message));
    await assert.rejects(readSecret({ env: 'PW' }, { env: { PW: '' }, what: 'pass' }), code('secret-missing'));
  });

  it('reads a 0600 file without its trailing newline; refuses wider modes and empty files', async () => {
    const f = join(dir, 'pw');
    writeFileSync(f, 'hunter2\n', { mode: 0o600 });
    assert.deepEqual(await readSecret({ file: f }, { env: {}, what: 'pass' }), new TextEncoder().encode('hunter2'));
    writeFileSync(f, 'two\nlines\r\n', { mode: 0o600 });
    assert.deepEqual(await readSecret({ file: f }, { env: {}, what: 'pass' }), new TextEncoder().encode('two\nlines'));
    chmodSync(f, 0o644);
    await assert.rejects(readSecret({ file: f }, { env: {}, what: 'pass' }), (e: unknown) => code('insecure-permissions')(e) && /chmod 600/.test((e as Error).message));
    const empty = join(dir, 'empty');
    writeFileSync(empty, '\n', { mode: 0o600 });
    await assert.rejects(readSecret({ file: empty }, { env: {}, what: 'pass' }), code('secret-missing'));
    await assert.rejects(readSecret({ file: join(dir, 'absent') }, { env: {}, what: 'pass' }), code('file-not-found'));
  });
});

describe('openKeyStore: configuration to store', () => {
  it('opens a software store with the passphrase from env, then from a file (same passphrase, trailing newline)', async () => {
    const path = join(dir, 'keys.vsks');
    const a = await openKeyStore({ kind: 'software', path, passphrase: { env: 'VS_PASS' } }, { env: { VS_PASS: 'open sesame' } });
    assert.equal(a.describe().kind, 'software');
    await a.seal('x', Uint8Array.of(5));
    await a.close();
    const pwFile = join(dir, 'pass.txt');
    writeFileSync(pwFile, 'open sesame\n', { mode: 0o600 });
    const b = await openKeyStore({ kind: 'software', path, passphrase: { file: pwFile } }, { env: {} });
    assert.deepEqual(await b.unseal('x'), Uint8Array.of(5));
    await b.close();
    await assert.rejects(openKeyStore({ kind: 'software', path, passphrase: { env: 'VS_PASS' } }, { env: { VS_PASS: 'open sesame!' } }), code('wrong-passphrase'));
  });

  it('opens the TPM store on a real swtpm and the PKCS#11 store on a real SoftHSM2 token', async () => {
    const tpm = await startSwtpm();
    const hsm = await startSoftHsm();
    const tpmDir = mkdtempSync(join(tmpdir(), 'vitalseal-open-tpm-'));
    try {
      const t = await openKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir: tpmDir });
      assert.equal(t.describe().kind, 'tpm');
      assert.equal((await t.randomBytes(8)).length, 8);
      await t.close();
      const token = await hsm.addToken('open-test');
      const p = await openKeyStore({ kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } });
      assert.equal(p.describe().kind, 'pkcs11');
      await p.close();
      await assert.rejects(openKeyStore({ kind: 'tpm', tcti: 'device:/dev/tpmrm0' }), code('config'), 'a TPM config without dir or fapiConfig');
    } finally {
      await tpm.stop();
      await hsm.stop();
      rmSync(tpmDir, { recursive: true, force: true });
    }
  });
});

describe('parseKeyStoreConfig', () => {
  it('accepts the three shapes', () => {
    assert.deepEqual(parseKeyStoreConfig({ kind: 'software', path: 'k.vsks', passphrase: { file: 'p' } }), { kind: 'software', path: 'k.vsks', passphrase: { file: 'p' } });
    assert.deepEqual(parseKeyStoreConfig({ kind: 'tpm', fapiConfig: '/etc/fapi.json' }), { kind: 'tpm', fapiConfig: '/etc/fapi.json' });
    assert.deepEqual(parseKeyStoreConfig({ kind: 'pkcs11', module: '/m.so', token: 'pkcs11:token=vs', pin: { env: 'PIN' } }),
      { kind: 'pkcs11', module: '/m.so', token: 'pkcs11:token=vs', pin: { env: 'PIN' } });
  });

  it('refuses secrets written inline, unknown settings and wrong types, with where', () => {
    const bad: [unknown, RegExp][] = [
      [{ kind: 'software', path: 'k', passphrase: 'hunter2' }, /keystore\.passphrase: expected/],
      [{ kind: 'pkcs11', module: '/m.so', token: 'pkcs11:token=vs', pin: 1234 }, /keystore\.pin/],
      [{ kind: 'pkcs11', module: '/m.so', token: 'pkcs11:token=vs?pin-value=1234', pin: { env: 'P' } }, /pin-value/],
      [{ kind: 'pkcs11', module: '/m.so', token: 'token=vs', pin: { env: 'P' } }, /RFC 7512/],
      [{ kind: 'software', path: 'k', passphrase: { env: 'A', file: 'b' } }, /exactly one/],
      [{ kind: 'software', path: 'k', passphrase: { env: 'A' }, tcti: 'x' }, /unknown setting 'tcti'/],
      [{ kind: 'tpm', extra: 1 }, /unknown setting 'extra'/],
      [{ kind: 'hsm' }, /expected tpm, pkcs11 or software/],
      [['software'], /expected a mapping/],
      [{ kind: 'software', passphrase: { env: 'A' } }, /keystore\.path/],
    ];
    for (const [value, message] of bad) {
      assert.throws(() => parseKeyStoreConfig(value), (e: unknown) => code('invalid-config')(e) && message.test((e as Error).message), JSON.stringify(value));
    }
    assert.throws(() => parseKeyStoreConfig({ kind: 'software', path: 'k', passphrase: 'hunter2' }), (e: unknown) => !(e as Error).message.includes('hunter2'));
  });
});
