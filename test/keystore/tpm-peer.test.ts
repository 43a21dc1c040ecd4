/**
 * Independent peer checks for the TPM store: tpm2-tools' FAPI commands (tss2_*) read and write the
 * same keystore through the same FAPI config, and OpenSSL verifies our signatures. swtpm runs behind
 * tpm2-abrmd on a private D-Bus (as /dev/tpmrm0 on a device), so the tools work while our store
 * stays open.
 */
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { openTpmKeyStore, type TpmKeyStore } from '../../src/keystore/tpm/index.ts';
import { objectName, parseTpm2bPublic } from '../../src/keystore/tpm/tpm-public.ts';
import { KeyStoreError } from '../../src/util/errors.ts';

let tpm: Swtpm;
let store: TpmKeyStore;
let dir: string;

function tool(cmd: string, args: string[], input?: Uint8Array): SpawnSyncReturns<Buffer> {
  return spawnSync(cmd, args, {
    ...(input === undefined ? {} : { input }),
    env: { ...process.env, ...tpm.env, TSS2_FAPICONF: store.fapiConfigPath, TSS2_LOG: 'all+NONE' },
    timeout: 30_000,
  });
}

function ok(r: SpawnSyncReturns<Buffer>, what: string): Buffer {
  assert.equal(r.status, 0, `${what} failed: ${r.stderr?.toString()}`);
  return r.stdout;
}

before(async () => {
  tpm = await startSwtpm({ resourceManager: true });
  // The tabrmd TCTI inside this process finds the private bus through the environment.
  Object.assign(process.env, tpm.env);
  dir = mkdtempSync(join(tmpdir(), 'vitalseal-tpm-peer-'));
  store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
});

after(async () => {
  await store?.close();
  await tpm?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('TPM store and tpm2-tools share one keystore', () => {
  it('tss2_unseal opens a secret we sealed', async () => {
    const secret = randomBytes(48);
    await store.seal('peer-ours', secret);
    const out = ok(tool('tss2_unseal', ['--path=/HS/SRK/peer-ours', '--data=-']), 'tss2_unseal');
    assert.deepEqual(new Uint8Array(out), new Uint8Array(secret));
  });

  it('we unseal what tss2_createseal sealed', async () => {
    const secret = randomBytes(32);
    ok(tool('tss2_createseal', ['--path=/HS/SRK/peer-theirs', '--type=noDa', '--authValue=', '--data=-'], secret), 'tss2_createseal');
    assert.deepEqual(await store.unseal('peer-theirs'), new Uint8Array(secret));
    assert.deepEqual(await store.unsealAt('HS/SRK/peer-theirs'), new Uint8Array(secret));
    assert.deepEqual((await store.list()).find((k) => k.name === 'peer-theirs'), { name: 'peer-theirs', type: 'sealed' });
  });

  it('an object tss2_createseal protected with a password is refused as auth-required, without a DA count', async () => {
    ok(tool('tss2_createseal', ['--path=/HS/SRK/peer-password', '--type=', '--authValue=pw', '--data=-'], Uint8Array.of(1)), 'tss2_createseal');
    await assert.rejects(store.unseal('peer-password'), (e: unknown) => e instanceof KeyStoreError && e.code === 'auth-required');
    assert.match(ok(tool('tpm2_getcap', ['-T', tpm.tcti, 'properties-variable']), 'tpm2_getcap').toString(), /TPM2_PT_LOCKOUT_COUNTER: 0x0\b/);
  });

  it('tss2_list sees our objects and we see theirs', async () => {
    await store.createSigningKey('peer-listed');
    const listed = ok(tool('tss2_list', ['--searchPath=/HS/SRK']), 'tss2_list').toString().split(':');
    assert.ok(listed.some((p) => p.endsWith('/HS/SRK/peer-listed')), listed.join(' '));
    const ours = await store.listPaths('/HS/SRK');
    assert.ok(ours.some((o) => o.path === '/HS/SRK/peer-listed' && o.type === 'signing'));
  });

  it('tss2_delete removes what we made; we delete what they made', async () => {
    await store.seal('peer-del-a', Uint8Array.of(1));
    ok(tool('tss2_delete', ['--path=/HS/SRK/peer-del-a']), 'tss2_delete');
    await assert.rejects(store.unseal('peer-del-a'), (e: unknown) => e instanceof KeyStoreError && e.code === 'not-found');
    ok(tool('tss2_createseal', ['--path=/HS/SRK/peer-del-b', '--type=noDa', '--authValue=', '--data=-'], Uint8Array.of(2)), 'tss2_createseal');
    await store.deleteAt('/HS/SRK/peer-del-b');
    assert.notEqual(tool('tss2_unseal', ['--path=/HS/SRK/peer-del-b', '--data=-']).status, 0);
  });

  it('our signature verifies with openssl dgst -sha256 -verify; a changed message does not', async () => {
    const signer = await store.createSigningKey('peer-sign');
    const message = randomBytes(1000);
    const sig = await signer.sign(message);
    const files = mkdtempSync(join(tmpdir(), 'vitalseal-openssl-'));
    try {
      writeFileSync(join(files, 'pub.pem'), await store.publicKeyPem('peer-sign'));
      writeFileSync(join(files, 'msg'), message);
      writeFileSync(join(files, 'sig'), sig);
      const good = spawnSync('openssl', ['dgst', '-sha256', '-verify', join(files, 'pub.pem'), '-signature', join(files, 'sig'), join(files, 'msg')], { encoding: 'utf8' });
      assert.equal(good.status, 0, good.stderr);
      assert.match(good.stdout, /Verified OK/);
      const changed = Buffer.from(message);
      changed[0] = (changed[0] as number) ^ 1;
      writeFileSync(join(files, 'msg'), changed);
      const bad = spawnSync('openssl', ['dgst', '-sha256', '-verify', join(files, 'pub.pem'), '-signature', join(files, 'sig'), join(files, 'msg')], { encoding: 'utf8' });
      assert.notEqual(bad.status, 0);
      assert.match(bad.stdout, /Verification failure/);
    } finally {
      rmSync(files, { recursive: true, force: true });
    }
  });

  it('tss2_sign with our key gives signatures our public key verifies, and the public key it reports is ours', async () => {
    const signer = await store.createSigningKey('peer-sign2');
    const spki = await signer.publicKeySpki();
    const message = randomBytes(64);
    const files = mkdtempSync(join(tmpdir(), 'vitalseal-tss2-sign-'));
    try {
      writeFileSync(join(files, 'digest'), createHash('sha256').update(message).digest());
      ok(tool('tss2_sign', ['--keyPath=/HS/SRK/peer-sign2', `--digest=${join(files, 'digest')}`, `--signature=${join(files, 'sig')}`, `--publicKey=${join(files, 'pub.pem')}`]), 'tss2_sign');
      const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
      assert.ok(verify('sha256', message, { key, dsaEncoding: 'der' }, readFileSync(join(files, 'sig'))));
      const theirPem = createPublicKey(readFileSync(join(files, 'pub.pem'), 'utf8')).export({ format: 'der', type: 'spki' });
      assert.deepEqual(new Uint8Array(theirPem), spki);
    } finally {
      rmSync(files, { recursive: true, force: true });
    }
  });

  it('our object Names match tpm2_readpublic (the SRK check at open relies on them)', () => {
    const files = mkdtempSync(join(tmpdir(), 'vitalseal-names-'));
    try {
      ok(tool('tss2_gettpmblobs', ['--path=/HS/SRK', `--tpm2bPublic=${join(files, 'pub')}`]), 'tss2_gettpmblobs');
      ok(tool('tpm2_readpublic', ['-T', tpm.tcti, '-c', '0x81000001', '-n', join(files, 'name')]), 'tpm2_readpublic');
      const ours = objectName(parseTpm2bPublic(new Uint8Array(readFileSync(join(files, 'pub')))));
      assert.deepEqual(ours, new Uint8Array(readFileSync(join(files, 'name'))));
    } finally {
      rmSync(files, { recursive: true, force: true });
    }
  });

  it('the operators\' path functions name objects exactly as tss2_* does', async () => {
    await store.sealAt('/HS/SRK/op-secret', Buffer.from('wifi-psk-0123'));
    assert.equal(ok(tool('tss2_unseal', ['--path=/HS/SRK/op-secret', '--data=-']), 'tss2_unseal').toString(), 'wifi-psk-0123');
    assert.equal(Buffer.from(await store.unsealAt('/P_ECCP256SHA256/HS/SRK/op-secret')).toString(), 'wifi-psk-0123');
    await store.createSigningKeyAt('/HS/SRK/op-key');
    const sig = await store.signAt('/HS/SRK/op-key', Buffer.from('m'));
    assert.ok(verify('sha256', Buffer.from('m'), { key: createPublicKey(await store.publicKeyPemAt('HS/SRK/op-key')), dsaEncoding: 'der' }, sig));
    await assert.rejects(store.unsealAt('/HE/EK'), (e: unknown) => e instanceof KeyStoreError && e.code === 'invalid-path');
    await assert.rejects(store.deleteAt('/HS/SRK'), (e: unknown) => e instanceof KeyStoreError && e.code === 'invalid-path');
  });
});
