/**
 * Negative tests for the TPM store, each against the real failure: a key or keystore from another
 * swtpm instance, a cleared TPM (tpm2_clear) and a reset simulator state with the re-provisioning
 * path, dictionary-attack lockout, no TPM, a missing libtss2-fapi, bad configuration.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../../scripts/lib/ports.ts';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { FAPI_LIBRARY_ENV, openTpmKeyStore, reprovisionTpmKeyStore, type TpmKeyStore } from '../../src/keystore/tpm/index.ts';
import { KeyStoreError } from '../../src/util/errors.ts';

const code = (c: string, text?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof KeyStoreError, `expected KeyStoreError, got ${String(e)}`);
  assert.equal(e.code, c, e.message);
  if (text !== undefined) assert.match(e.message, text);
  return true;
};

const temps: string[] = [];
const tempDir = (prefix: string) => {
  const d = mkdtempSync(join(tmpdir(), prefix));
  temps.push(d);
  return d;
};
after(() => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});

function tools(cmd: string, args: string[], env: Record<string, string> = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, ...env, TSS2_LOG: 'all+NONE' }, timeout: 30_000 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** The directory FAPI keeps one object in (its keystore layout: <user_dir>/<profile>/HS/SRK/<name>). */
function objectDir(storeDir: string, name: string): string {
  return join(storeDir, 'keystore', 'user', 'P_ECCP256SHA256', 'HS', 'SRK', name);
}

describe('keys and keystores from another TPM', () => {
  let a: Swtpm;
  let b: Swtpm;
  const dirA = tempDir('vitalseal-tpm-a-');
  const dirB = tempDir('vitalseal-tpm-b-');
  before(async () => {
    [a, b] = await Promise.all([startSwtpm(), startSwtpm()]);
  });
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
  });

  it('an object copied from one TPM\'s keystore does not unseal or sign on another', async () => {
    const storeA = await openTpmKeyStore({ kind: 'tpm', tcti: a.tcti, dir: dirA });
    await storeA.seal('moved-seal', Buffer.from('only for TPM A'));
    await storeA.createSigningKey('moved-key');
    await storeA.close();
    const storeB = await openTpmKeyStore({ kind: 'tpm', tcti: b.tcti, dir: dirB });
    try {
      await storeB.close();
      for (const n of ['moved-seal', 'moved-key']) cpSync(objectDir(dirA, n), objectDir(dirB, n), { recursive: true });
      const reopened = await openTpmKeyStore({ kind: 'tpm', tcti: b.tcti, dir: dirB });
      try {
        await assert.rejects(reopened.unseal('moved-seal'), code('tpm-mismatch', /another TPM/));
        await assert.rejects(reopened.openSigningKey('moved-key').then((s) => s.sign(Uint8Array.of(1))), code('tpm-mismatch'));
        // The failed commands did not damage the store's FAPI context.
        await reopened.seal('b-own', Uint8Array.of(1));
        assert.deepEqual(await reopened.unseal('b-own'), Uint8Array.of(1));
      } finally {
        await reopened.close();
      }
    } finally {
      await storeB.close();
    }
  });

  it("opening TPM A's keystore against TPM B fails at open, before any authorization the TPM would count", async () => {
    const before = tools('tpm2_getcap', ['-T', b.tcti, 'properties-variable']);
    assert.match(before, /TPM2_PT_LOCKOUT_COUNTER: 0x0\b/);
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', tcti: b.tcti, dir: dirA }), code('tpm-mismatch', /not the one this keystore .* was provisioned under/));
    await assert.rejects(reprovisionTpmKeyStore({ kind: 'tpm', tcti: b.tcti, dir: dirA }), code('tpm-mismatch'));
    const afterCap = tools('tpm2_getcap', ['-T', b.tcti, 'properties-variable']);
    assert.match(afterCap, /TPM2_PT_LOCKOUT_COUNTER: 0x0\b/);
    // Keystore A is untouched and still works with its own TPM.
    const storeA = await openTpmKeyStore({ kind: 'tpm', tcti: a.tcti, dir: dirA });
    assert.equal(Buffer.from(await storeA.unseal('moved-seal')).toString(), 'only for TPM A');
    await storeA.close();
  });
});

describe('a cleared TPM, and re-provisioning', () => {
  let tpm: Swtpm;
  const dir = tempDir('vitalseal-tpm-clear-');
  before(async () => {
    tpm = await startSwtpm();
  });
  after(async () => {
    await tpm?.stop();
  });

  it('tpm2_clear: open says the TPM was cleared and what that means', async () => {
    const store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
    await store.seal('before-clear', Uint8Array.of(1, 2));
    await store.createSigningKey('identity');
    await store.close();
    tools('tpm2_clear', ['-T', tpm.tcti, '-c', 'l']);
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir }), code('tpm-cleared', /cleared.*gone for good.*re-provision.*re-enrol/s));
  });

  it('re-provisioning wipes the dead objects and gives a working, empty store', async () => {
    const store = await reprovisionTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
    try {
      await assert.rejects(store.unseal('before-clear'), code('not-found'));
      assert.deepEqual(await store.list(), []);
      await store.seal('after-clear', Uint8Array.of(3));
      assert.deepEqual(await store.unseal('after-clear'), Uint8Array.of(3));
    } finally {
      await store.close();
    }
  });

  it('re-provisioning refuses while the TPM still holds the keystore\'s SRK', async () => {
    await assert.rejects(reprovisionTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir }), code('refused'));
    const store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
    assert.deepEqual(await store.unseal('after-clear'), Uint8Array.of(3));
    await store.close();
  });

  it('a simulator state reset is a cleared TPM too', async () => {
    await tpm.resetState();
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir }), code('tpm-cleared'));
    const store = await reprovisionTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
    await assert.rejects(store.unseal('after-clear'), code('not-found'));
    await store.close();
  });
});

describe('clear and lockout while the store is open (behind tpm2-abrmd)', () => {
  let tpm: Swtpm;
  let store: TpmKeyStore;
  const dir = tempDir('vitalseal-tpm-rm-');
  const work = tempDir('vitalseal-tpm-da-');
  before(async () => {
    tpm = await startSwtpm({ resourceManager: true });
    Object.assign(process.env, tpm.env);
    store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
  });
  after(async () => {
    await store?.close();
    await tpm?.stop();
  });

  it('dictionary-attack lockout: a typed error naming the way out, then recovery', async () => {
    await store.seal('da-seal', Uint8Array.of(4));
    const t = ['-T', tpm.tcti];
    // One failed authorization locks this TPM out (max tries 1) for ten minutes.
    tools('tpm2_dictionarylockout', [...t, '--setup-parameters', '--max-tries=1', '--recovery-time=600', '--lockout-recovery-time=600'], tpm.env);
    tools('tpm2_createprimary', [...t, '-C', 'o', '-c', join(work, 'primary.ctx')], tpm.env);
    writeFileSync(join(work, 'data'), 'da-protected');
    tools('tpm2_create', [...t, '-C', join(work, 'primary.ctx'), '-p', 'right', '-i', join(work, 'data'), '-u', join(work, 'o.pub'), '-r', join(work, 'o.priv')], tpm.env);
    tools('tpm2_load', [...t, '-C', join(work, 'primary.ctx'), '-u', join(work, 'o.pub'), '-r', join(work, 'o.priv'), '-c', join(work, 'o.ctx')], tpm.env);
    const wrong = spawnSync('tpm2_unseal', [...t, '-c', join(work, 'o.ctx'), '-p', 'wrong'], { env: { ...process.env, TSS2_LOG: 'all+NONE' } });
    assert.notEqual(wrong.status, 0);
    assert.match(tools('tpm2_getcap', [...t, 'properties-variable']), /inLockout:\s+1/);
    await assert.rejects(store.unseal('da-seal'), code('lockout', /dictionary-attack lockout.*--clear-lockout/));
    await assert.rejects(store.createSigningKey('da-key'), code('lockout'));
    tools('tpm2_dictionarylockout', [...t, '--clear-lockout'], tpm.env);
    assert.deepEqual(await store.unseal('da-seal'), Uint8Array.of(4));
  });

  it('tpm2_clear under an open store: the next use says the TPM was cleared', async () => {
    await store.seal('clear-live', Uint8Array.of(5));
    const signer = await store.createSigningKey('clear-live-key');
    tools('tpm2_clear', ['-T', tpm.tcti, '-c', 'l'], tpm.env);
    await assert.rejects(store.unseal('clear-live'), code('tpm-cleared', /re-enrol/));
    await assert.rejects(signer.sign(Uint8Array.of(1)), code('tpm-cleared'));
    await assert.rejects(store.seal('clear-new', Uint8Array.of(1)), code('tpm-cleared'));
    // FAPI salts even GetRandom's session with the SRK, so nothing works until re-provisioning.
    await assert.rejects(store.randomBytes(8), code('tpm-cleared'));
    await store.close();
    store = await reprovisionTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
    await store.seal('clear-new', Uint8Array.of(6));
    assert.deepEqual(await store.unseal('clear-new'), Uint8Array.of(6));
  });
});

describe('no TPM, no library, bad configuration', () => {
  it('a missing libtss2-fapi names the Debian package (option and environment override)', async () => {
    const dir = tempDir('vitalseal-tpm-nolib-');
    const cfg = { kind: 'tpm' as const, tcti: 'swtpm:host=127.0.0.1,port=1', dir };
    await assert.rejects(openTpmKeyStore(cfg, { library: '/nonexistent/libtss2-fapi.so.1' }),
      code('library-missing', /\/nonexistent\/libtss2-fapi\.so\.1.*apt-get install libtss2-fapi1/s));
    const saved = process.env[FAPI_LIBRARY_ENV];
    process.env[FAPI_LIBRARY_ENV] = 'libtss2-fapi-absent.so.9';
    try {
      await assert.rejects(openTpmKeyStore(cfg), code('library-missing', /libtss2-fapi-absent\.so\.9.*Debian package libtss2-fapi1/s));
    } finally {
      if (saved === undefined) delete process.env[FAPI_LIBRARY_ENV];
      else process.env[FAPI_LIBRARY_ENV] = saved;
    }
  });

  it('no TPM at the TCTI: a closed port, a missing device, an unknown TCTI', async () => {
    const port = await freePort();
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', tcti: `swtpm:host=127.0.0.1,port=${port}`, dir: tempDir('vitalseal-tpm-none-') }),
      code('no-tpm', new RegExp(`no TPM reachable through TCTI "swtpm:host=127.0.0.1,port=${port}"`)));
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', tcti: 'device:/nonexistent/tpmrm0', dir: tempDir('vitalseal-tpm-none-') }),
      code('no-tpm', /\/nonexistent\/tpmrm0 does not exist.*dtoverlay/));
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', tcti: 'nosuchtcti:x', dir: tempDir('vitalseal-tpm-none-') }), code('config', /not a usable TCTI/));
  });

  it("FAPI's own stderr logging is silenced: failures reach the caller as typed errors only", async () => {
    const port = await freePort();
    const d = tempDir('vitalseal-tpm-quiet-');
    const script = join(d, 'open.mts');
    const store = new URL('../../src/keystore/tpm/index.ts', import.meta.url).pathname;
    writeFileSync(script, `import { openTpmKeyStore } from ${JSON.stringify(store)};
try { await openTpmKeyStore({ kind: 'tpm', tcti: 'swtpm:host=127.0.0.1,port=${port}', dir: ${JSON.stringify(join(d, 'ks'))} }); }
catch (e) { process.stdout.write(String(e.code)); }
`);
    const env: Record<string, string | undefined> = { ...process.env };
    delete env['TSS2_LOG'];
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], { encoding: 'utf8', env, cwd: new URL('../..', import.meta.url).pathname, timeout: 60_000 });
    assert.equal(r.stdout, 'no-tpm', r.stderr);
    assert.equal(r.stderr, '');
  });

  it('configuration: tcti and dir, or an existing FAPI config', async () => {
    await assert.rejects(openTpmKeyStore({ kind: 'tpm' }), code('config', /fapiConfig, or both tcti and dir/));
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', tcti: 'device:/dev/tpmrm0' }), code('config'));
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', tcti: 'device:/dev/tpmrm0', dir: 'relative/dir' }), code('config', /absolute/));
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', fapiConfig: '/nonexistent/fapi-config.json' }), code('config', /cannot read/));
    const bad = join(tempDir('vitalseal-tpm-cfg-'), 'fapi-config.json');
    writeFileSync(bad, '[1, 2]');
    await assert.rejects(openTpmKeyStore({ kind: 'tpm', fapiConfig: bad }), code('config', /not a JSON object/));
  });

  it("an operator's FAPI config file works as given, and says what to change when the TPM has no EK certificate", async () => {
    const tpm = await startSwtpm();
    try {
      const d = tempDir('vitalseal-tpm-opcfg-');
      const file = join(d, 'fapi-config.json');
      const base = {
        profile_name: 'P_ECCP256SHA256', profile_dir: '/etc/tpm2-tss/fapi-profiles/',
        user_dir: join(d, 'user'), system_dir: join(d, 'system'), log_dir: join(d, 'log'), tcti: tpm.tcti, system_pcrs: [],
      };
      writeFileSync(file, JSON.stringify(base));
      await assert.rejects(openTpmKeyStore({ kind: 'tpm', fapiConfig: file }), code('no-ek-certificate', new RegExp(`"ek_cert_less": "yes" in ${file}`)));
      writeFileSync(file, JSON.stringify({ ...base, ek_cert_less: 'yes' }));
      const store = await openTpmKeyStore({ kind: 'tpm', fapiConfig: file });
      await store.seal('op', Uint8Array.of(1));
      assert.equal(store.fapiConfigPath, file);
      await store.close();
      assert.ok(existsSync(join(d, 'user', 'P_ECCP256SHA256', 'HS', 'SRK', 'op')));
      assert.ok(readdirSync(join(d, 'system')).includes('P_ECCP256SHA256'));
      assert.ok(statSync(file).isFile());
    } finally {
      await tpm.stop();
    }
  });
});
