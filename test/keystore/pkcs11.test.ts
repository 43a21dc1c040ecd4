/**
 * The pkcs11 key store against SoftHSM2, checked by independent tools (OpenSSL verifies signatures,
 * OpenSC's pkcs11-tool reads the token) and pushed into its failure paths: wrong PIN, blobs moved
 * between tokens and names, missing module, unknown token, names of the wrong type, replaced keys.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createPublicKey, randomBytes, verify } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openPkcs11KeyStore, SEAL_KEY_LABEL, type Pkcs11KeyStore } from '../../src/keystore/pkcs11/index.ts';
import type { KeyEvent } from '../../src/keystore/types.ts';
import { toHex } from '../../src/util/bytes.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { startSoftHsm, type SoftHsm, type SoftHsmToken } from '../../scripts/lib/softhsm.ts';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof import('pkcs11js');

const code = (c: string) => (e: unknown): boolean => {
  assert.ok(e instanceof KeyStoreError, `expected KeyStoreError(${c}), got ${String(e)}`);
  assert.equal(e.code, c, e.message);
  return true;
};

describe('pkcs11 key store on SoftHSM2', () => {
  let hsm: SoftHsm;
  let alpha: SoftHsmToken;
  let beta: SoftHsmToken;
  let a: Pkcs11KeyStore;
  let b: Pkcs11KeyStore;
  const events: KeyEvent[] = [];
  const open = (t: SoftHsmToken) => openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: t.uri, pin: { file: t.pinFile } });

  before(async () => {
    hsm = await startSoftHsm();
    alpha = await hsm.addToken('alpha');
    beta = await hsm.addToken('beta');
    a = await openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: alpha.uri, pin: { file: alpha.pinFile } },
      { events: { record: (e) => events.push(e) } });
    b = await open(beta);
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await hsm?.stop();
  });

  /** pkcs11-tool on token `t`, logged in with the PIN passed through its environment (never argv). */
  function pkcs11Tool(t: SoftHsmToken, args: string[]): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync('pkcs11-tool', ['--module', hsm.module, '--token-label', t.label, '--pin', 'env:VITALSEAL_TEST_PIN', ...args],
      { env: hsm.env({ VITALSEAL_TEST_PIN: t.userPin }), encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  /** pkcs11-tool --list-objects, split into one block of lines per object. */
  function listedObjects(t: SoftHsmToken): string[] {
    const r = pkcs11Tool(t, ['--list-objects']);
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split(/\n(?=\S)/).map((block) => block.trim()).filter((block) => block.length > 0);
  }

  it('describes the token without the PIN, and SoftHSM2 as a software token', () => {
    const d = a.describe();
    assert.equal(d.kind, 'pkcs11');
    assert.equal(d.hardwareBound, false);
    assert.equal(d.assurance, 'development');
    assert.match(d.detail, /token "alpha"/);
    assert.match(d.detail, new RegExp(alpha.serial));
    assert.match(d.detail, /libsofthsm2\.so/);
    assert.ok(!d.detail.includes(alpha.userPin));
    assert.equal(a.tokenUri(), alpha.uri);
    assert.equal(a.objectUri('device-identity', 'private'), `${alpha.uri};object=device-identity;type=private`);
  });

  it('signs so that openssl dgst -sha256 -verify accepts the signature, and rejects it for other bytes', async () => {
    const signer = await a.createSigningKey('id-openssl');
    const message = randomBytes(1000);
    const sig = await signer.sign(message);
    const dir = hsm.dir;
    writeFileSync(join(dir, 'pub.pem'), await a.publicKeyPem('id-openssl'));
    writeFileSync(join(dir, 'msg.bin'), message);
    writeFileSync(join(dir, 'sig.der'), sig);
    const ok = spawnSync('openssl', ['dgst', '-sha256', '-verify', join(dir, 'pub.pem'), '-signature', join(dir, 'sig.der'), join(dir, 'msg.bin')], { encoding: 'utf8' });
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /Verified OK/);
    message[0] = (message[0] as number) ^ 1;
    writeFileSync(join(dir, 'msg.bin'), message);
    const bad = spawnSync('openssl', ['dgst', '-sha256', '-verify', join(dir, 'pub.pem'), '-signature', join(dir, 'sig.der'), join(dir, 'msg.bin')], { encoding: 'utf8' });
    assert.equal(bad.status, 1);
    assert.match(bad.stdout, /Verification failure/);
  });

  it('pkcs11-tool sees what the store made, with the attributes it set', async () => {
    await a.createSigningKey('id-tool');
    await a.seal('sealed-tool', Uint8Array.of(1, 2, 3));
    await a.wrapKey('kek-tool', new Uint8Array(32).fill(5));
    const objects = listedObjects(alpha);
    const find = (head: RegExp, label: string) => objects.filter((o) => head.test(o) && new RegExp(`label:\\s+'?${label}'?\\n`).test(`${o}\n`));
    const priv = find(/^Private Key Object; EC/, 'id-tool');
    assert.equal(priv.length, 1, objects.join('\n---\n'));
    assert.match(priv[0] as string, /Usage:\s+sign\n/);
    assert.match(priv[0] as string, /Access:\s+sensitive, always sensitive, never extractable, local/);
    const pub = find(/^Public Key Object; EC\s+EC_POINT 256 bits/, 'id-tool');
    assert.equal(pub.length, 1);
    assert.match(pub[0] as string, /EC_PARAMS:\s+06082a8648ce3d030107/);
    assert.equal((/ID:\s+(\S+)/.exec(pub[0] as string) ?? [])[1], (/ID:\s+(\S+)/.exec(priv[0] as string) ?? [])[1], 'the halves share a CKA_ID');
    const kek = find(/^Secret Key Object; AES length 32/, 'kek-tool');
    assert.equal(kek.length, 1);
    assert.match(kek[0] as string, /Usage:\s+encrypt, decrypt\n/);
    assert.match(kek[0] as string, /Access:\s+sensitive, always sensitive, never extractable, local/);
    const sealKey = find(/^Secret Key Object; AES length 32/, SEAL_KEY_LABEL);
    assert.equal(sealKey.length, 1);
    assert.match(sealKey[0] as string, /never extractable/);
    const data = find(/^Data object/, 'sealed-tool');
    assert.equal(data.length, 1);
    assert.match(data[0] as string, /application:\s+'vitalseal sealed v1'/);
    assert.match(data[0] as string, /flags:\s+private/);
  });

  it('opens and signs with a P-256 key pkcs11-tool generated, whose public half pkcs11-tool exports', async () => {
    const gen = pkcs11Tool(alpha, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'made-by-tool', '--id', 'a1b2c3']);
    assert.equal(gen.status, 0, gen.stderr);
    const exported = join(hsm.dir, 'tool-pub.der');
    const rd = pkcs11Tool(alpha, ['--read-object', '--type', 'pubkey', '--id', 'a1b2c3', '--output-file', exported]);
    assert.equal(rd.status, 0, rd.stderr);
    const toolKey = createPublicKey({ key: readFileSync(exported), format: 'der', type: 'spki' });
    const signer = await a.openSigningKey('made-by-tool');
    assert.deepEqual(await signer.publicKeySpki(), new Uint8Array(toolKey.export({ format: 'der', type: 'spki' })));
    const msg = Uint8Array.of(9, 8, 7);
    assert.ok(verify('sha256', msg, { key: toolKey, dsaEncoding: 'der' }, await signer.sign(msg)));
  });

  it('refuses a wrong PIN with pin-incorrect, and still opens with the right one', async () => {
    await b.close();
    const wrong = join(hsm.dir, 'wrong.pin');
    writeFileSync(wrong, 'not-the-pin-123\n', { mode: 0o600 });
    await assert.rejects(openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: beta.uri, pin: { file: wrong } }),
      (e) => code('pin-incorrect')(e) && /CKR_PIN_INCORRECT from C_Login/.test((e as Error).message) && !(e as Error).message.includes('not-the-pin'));
    b = await open(beta);
    assert.match(b.describe().detail, /token "beta"/);
  });

  it('says when the token has no user PIN yet (initialised by pkcs11-tool without --init-pin)', async () => {
    const env = hsm.env({ VITALSEAL_TEST_SO_PIN: randomBytes(9).toString('base64url') });
    const slots = spawnSync('pkcs11-tool', ['--module', hsm.module, '--list-slots'], { env, encoding: 'utf8' }).stdout;
    const free = /^Slot \d+ \((0x[0-9a-f]+)\):.*\n\s+token state:\s+uninitialized/m.exec(slots);
    assert.ok(free, slots);
    const init = spawnSync('pkcs11-tool', ['--module', hsm.module, '--slot', String(Number(free[1])), '--init-token', '--label', 'no-user-pin',
      '--so-pin', 'env:VITALSEAL_TEST_SO_PIN'], { env, encoding: 'utf8' });
    assert.equal(init.status, 0, init.stderr);
    // SoftHSM2 lists the tokens it found at C_Initialize: close both stores so the module is
    // finalised and the next open initialises it again and sees the new token.
    await a.close();
    await b.close();
    try {
      await assert.rejects(openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: 'pkcs11:token=no-user-pin', pin: { file: alpha.pinFile } }),
        (e) => code('pin-not-initialized')(e) && /--init-pin/.test((e as Error).message));
    } finally {
      a = await openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: alpha.uri, pin: { file: alpha.pinFile } },
        { events: { record: (e) => events.push(e) } });
      b = await open(beta);
    }
  });

  it('refuses a PIN of a length the token cannot take without spending a try', async () => {
    const short = join(hsm.dir, 'short.pin');
    writeFileSync(short, 'abc', { mode: 0o600 });
    await b.close();
    await assert.rejects(openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: beta.uri, pin: { file: short } }), code('pin-invalid'));
    b = await open(beta);
  });

  it('a data key wrapped on one token does not unwrap on another, even under a KEK of the same name', async () => {
    const dek = randomBytes(32);
    const wrapped = await a.wrapKey('fleet-kek', dek);
    await b.wrapKey('fleet-kek', randomBytes(32));
    await assert.rejects(b.unwrapKey('fleet-kek', wrapped), code('unwrap-failed'));
    assert.deepEqual(await a.unwrapKey('fleet-kek', wrapped), new Uint8Array(dek));
  });

  it('a sealed blob copied to another token, or to another name, does not unseal', async () => {
    await a.seal('door-code', Uint8Array.from(Buffer.from('4711')));
    await b.seal('b-own', Uint8Array.of(1)); // so that beta has its own seal key
    const blobFile = join(hsm.dir, 'door.bin');
    assert.equal(pkcs11Tool(alpha, ['--read-object', '--type', 'data', '--label', 'door-code', '--output-file', blobFile]).status, 0);
    const write = (t: SoftHsmToken, label: string) => pkcs11Tool(t, ['--write-object', blobFile, '--type', 'data', '--label', label,
      '--application-label', 'vitalseal sealed v1', '--private']);
    assert.equal(write(beta, 'door-code').status, 0);
    await assert.rejects(b.unseal('door-code'), code('unwrap-failed'));
    assert.equal(write(alpha, 'door-code-2').status, 0);
    await assert.rejects(a.unseal('door-code-2'), code('unwrap-failed'), 'the AAD binds the blob to its name');
    assert.equal(Buffer.from(await a.unseal('door-code')).toString(), '4711');
  });

  it('a missing module names the Debian package to install', async () => {
    process.env['VITALSEAL_TEST_PIN_A'] = alpha.userPin;
    try {
      const cfg = (module: string) => ({ kind: 'pkcs11' as const, module, token: 'pkcs11:token=alpha', pin: { env: 'VITALSEAL_TEST_PIN_A' } });
      await assert.rejects(openPkcs11KeyStore(cfg('/nonexistent/softhsm/libsofthsm2.so')),
        (e) => code('module-missing')(e) && /Debian package "softhsm2"/.test((e as Error).message));
      await assert.rejects(openPkcs11KeyStore(cfg('/usr/lib/aarch64-linux-gnu/libckteec.so.0')),
        (e) => code('module-missing')(e) && /"libckteec0"/.test((e as Error).message) && /tee-supplicant/.test((e as Error).message));
      const notALibrary = join(hsm.dir, 'libbroken.so');
      writeFileSync(notALibrary, 'not an ELF file');
      await assert.rejects(openPkcs11KeyStore(cfg(notALibrary)), code('module-load-failed'));
    } finally {
      delete process.env['VITALSEAL_TEST_PIN_A'];
    }
  });

  it('names the tokens there are when the URI matches none, and refuses the same token twice', async () => {
    await assert.rejects(openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: 'pkcs11:token=gamma', pin: { file: alpha.pinFile } }),
      (e) => code('token-not-found')(e) && /"alpha"/.test((e as Error).message) && /"beta"/.test((e as Error).message));
    await assert.rejects(open(alpha), code('already-open'));
  });

  it('refuses token URIs that name objects, carry a PIN source or another module', async () => {
    const cfg = (token: string) => ({ kind: 'pkcs11' as const, module: hsm.module, token, pin: { file: alpha.pinFile } });
    for (const uri of ['pkcs11:token=alpha;object=x', 'pkcs11:token=alpha;type=private', 'pkcs11:token=alpha;id=%01',
      'pkcs11:token=alpha?pin-source=file:/etc/pin', 'pkcs11:token=alpha?pin-value=1234', 'pkcs11:token=alpha?module-name=softhsm2',
      'pkcs11:token=alpha?module-path=/usr/lib/other.so', 'token=alpha']) {
      await assert.rejects(openPkcs11KeyStore(cfg(uri)), code('invalid-uri'), uri);
    }
  });

  it('keeps one namespace: a name is one kind of object, and the other kinds say wrong-type', async () => {
    await a.seal('just-sealed', Uint8Array.of(1));
    await a.createSigningKey('just-signing');
    await assert.rejects(a.createSigningKey('just-sealed'), code('exists'));
    await assert.rejects(a.wrapKey('just-sealed', new Uint8Array(16)), code('exists'));
    await assert.rejects(a.openSigningKey('just-sealed'), code('wrong-type'));
    await assert.rejects(a.unwrapKey('just-signing', new Uint8Array(64)), code('wrong-type'));
    await assert.rejects(a.unseal('just-signing'), code('wrong-type'));
    await assert.rejects(a.seal(SEAL_KEY_LABEL, Uint8Array.of(1)), code('invalid-name'));
    assert.ok(!(await a.list()).some((k) => k.name === SEAL_KEY_LABEL), 'the seal key is not listed');
  });

  it('a Signer refuses once its key was deleted, even if a new key took the name', async () => {
    const old = await a.createSigningKey('rotating');
    const oldSpki = await old.publicKeySpki();
    await a.delete('rotating');
    await assert.rejects(old.sign(Uint8Array.of(1)), code('not-found'));
    const fresh = await a.createSigningKey('rotating');
    assert.notDeepEqual(await fresh.publicKeySpki(), oldSpki);
    await assert.rejects(old.sign(Uint8Array.of(1)), code('not-found'));
    await fresh.sign(Uint8Array.of(1));
  });

  it('serialises concurrent calls on one session', async () => {
    const signer = await a.createSigningKey('busy');
    const spki = createPublicKey({ key: Buffer.from(await signer.publicKeySpki()), format: 'der', type: 'spki' });
    const msgs = Array.from({ length: 24 }, (_, i) => Uint8Array.of(i, i + 1));
    const deks = Array.from({ length: 12 }, () => randomBytes(32));
    const [sigs, wrapped] = await Promise.all([
      Promise.all(msgs.map((m) => signer.sign(m))),
      Promise.all(deks.map((d) => a.wrapKey('busy-kek', d))),
      Promise.all(Array.from({ length: 8 }, () => a.randomBytes(64))),
    ]);
    sigs.forEach((s, i) => assert.ok(verify('sha256', msgs[i] as Uint8Array, { key: spki, dsaEncoding: 'der' }, s)));
    const back = await Promise.all(wrapped.map((w) => a.unwrapKey('busy-kek', w)));
    back.forEach((k, i) => assert.deepEqual(k, new Uint8Array(deks[i] as Buffer)));
  });

  it('recovers when an operation was left active on its session', async () => {
    // Another user of the module in this process (a second pkcs11js binding on the same library)
    // starts a digest on the store's session and leaves it unfinished: every Init on that session
    // then fails with CKR_OPERATION_ACTIVE until the store replaces the session.
    const other = new pkcs11js.PKCS11();
    other.load(hsm.module);
    try { other.C_Initialize(); } catch (e) { assert.equal((e as { code?: number }).code, pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED); }
    const signer = await a.createSigningKey('after-stuck');
    let stuck = 0;
    for (let h = 1n; h < 64n; h++) {
      const handle = Buffer.alloc(8);
      handle.writeBigUInt64LE(h);
      try {
        other.C_GetSessionInfo(handle);
        other.C_DigestInit(handle, { mechanism: pkcs11js.CKM_SHA256 });
        stuck++;
      } catch { /* not a session of this process, or not idle */ }
    }
    assert.ok(stuck >= 2, 'the digests are started on the stores\' sessions');
    const spki = createPublicKey({ key: Buffer.from(await signer.publicKeySpki()), format: 'der', type: 'spki' });
    assert.ok(verify('sha256', Uint8Array.of(5), { key: spki, dsaEncoding: 'der' }, await signer.sign(Uint8Array.of(5))));
    assert.equal((await b.randomBytes(8)).length, 8);
    assert.equal((await a.list()).some((k) => k.name === 'after-stuck'), true, 'the login survived the new session');
  });

  it('records each key operation and its outcome for the audit log, never the secret', async () => {
    const secret = randomBytes(24);
    const before = events.length;
    await a.seal('audited', secret);
    await a.unseal('audited');
    await assert.rejects(a.unseal('audited-absent'), code('not-found'));
    const signer = await a.openSigningKey('id-openssl');
    await signer.sign(Uint8Array.of(1));
    await a.delete('audited');
    const got = events.slice(before).map((e) => `${e.operation}:${e.keyName}:${e.result}${e.code ? `:${e.code}` : ''}`);
    assert.deepEqual(got, ['seal:audited:ok', 'unseal:audited:ok', 'unseal:audited-absent:error:not-found', 'open:id-openssl:ok',
      'sign:id-openssl:ok', 'delete:audited:ok']);
    assert.ok(!JSON.stringify(events).includes(toHex(secret)));
    assert.ok(events.every((e) => e.store === 'pkcs11'));
  });

  it('checks its arguments at the boundary', async () => {
    await assert.rejects(a.randomBytes(-1), RangeError);
    await assert.rejects(a.randomBytes(65537), RangeError);
    await assert.rejects(a.randomBytes(1.5), TypeError);
    assert.equal((await a.randomBytes(1500)).length, 1500);
    await assert.rejects(a.seal('empty', new Uint8Array(0)), RangeError);
    await assert.rejects(a.seal('text', 'secret' as unknown as Uint8Array), TypeError);
    await assert.rejects(a.wrapKey('k', new Uint8Array(1025)), code('too-large'));
    await assert.rejects(a.unwrapKey('fleet-kek', new Uint8Array(2000)), code('unwrap-failed'));
  });
});
