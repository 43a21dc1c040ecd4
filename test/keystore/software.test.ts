/**
 * The software key store: the shared KeyStore contract, then what only a file-backed store can get
 * wrong (permissions, passphrase, truncated or altered files, several processes, a file key held by
 * another store), and an independent reader of the documented file format built on @noble.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, verify } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { gcm } from '@noble/ciphers/aes.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { scrypt } from '@noble/hashes/scrypt.js';
import { sha256 } from '@noble/hashes/sha2.js';
import fc from 'fast-check';
import { openSoftwareKeyStore, type SoftwareKeyStoreOptions } from '../../src/keystore/software/index.ts';
import { deriveScrypt } from '../../src/keystore/software/scrypt.ts';
import type { KeyEvent } from '../../src/keystore/types.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';
import { runKeyStoreContract } from './contract.ts';

const PASSPHRASE = 'correct horse battery staple';
/** Low scrypt cost keeps the suite quick; the default cost is exercised once below. */
const TEST_SCRYPT = { logN: 11 } as const;

const root = mkdtempSync(join(tmpdir(), 'vitalseal-swks-'));
after(() => rmSync(root, { recursive: true, force: true }));
function freshDir(): string {
  return mkdtempSync(join(root, 'd'));
}

function isCode(...codes: string[]): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof KeyStoreError, `expected KeyStoreError, got ${String(e)}`);
    assert.ok(codes.includes(e.code), `expected ${codes.join('|')}, got ${e.code}: ${e.message}`);
    return true;
  };
}

function passOpts(path: string, extra: Partial<SoftwareKeyStoreOptions> = {}): SoftwareKeyStoreOptions {
  return { path, passphrase: PASSPHRASE, scrypt: TEST_SCRYPT, ...extra } as SoftwareKeyStoreOptions;
}

runKeyStoreContract('software (passphrase)', async () => {
  const dir = freshDir();
  const path = join(dir, 'keys.vsks');
  return {
    open: (events) => openSoftwareKeyStore(passOpts(path, events === undefined ? {} : { events })),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

runKeyStoreContract('software (file key sealed in another store)', async () => {
  const dir = freshDir();
  const outer = await openSoftwareKeyStore(passOpts(join(dir, 'outer.vsks')));
  return {
    open: (events) => openSoftwareKeyStore({ path: join(dir, 'inner.vsks'), fileKeySealedIn: { store: outer, name: 'inner-file-key' }, ...(events ? { events } : {}) }),
    cleanup: async () => {
      await outer.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

describe('scrypt known answers (RFC 7914 §12) through the derivation the store uses', () => {
  const file = loadVectors<{ password: string; salt: string; N: number; r: number; p: number; dkLen: number; dk: string }>('scrypt-rfc7914.json');
  for (const v of file.vectors) {
    it(`N=${v.N} r=${v.r} p=${v.p}`, async () => {
      const dk = await deriveScrypt(new TextEncoder().encode(v.password), new TextEncoder().encode(v.salt), { logN: Math.log2(v.N), r: v.r, p: v.p }, v.dkLen);
      assert.equal(Buffer.from(dk).toString('hex'), v.dk);
    });
  }
});

describe('software key store: files, passphrases and tampering', () => {
  it('writes the file with mode 0600, atomically (no temporary or lock file left), never with a secret in clear', async () => {
    const dir = freshDir();
    const path = join(dir, 'keys.vsks');
    const store = await openSoftwareKeyStore(passOpts(path));
    const secret = Buffer.from('a sealed secret that must never appear in clear on disk');
    await store.seal('psk', secret);
    await store.createSigningKey('id');
    const pem = await store.exportPrivateKeyPemForDevelopmentOnly('id');
    const der = createPrivateKey(pem).export({ format: 'der', type: 'pkcs8' });
    await store.close();
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(dir), ['keys.vsks']);
    const bytes = readFileSync(path);
    assert.equal(bytes.indexOf(secret), -1, 'sealed secret not in clear');
    assert.equal(bytes.indexOf(der.subarray(der.length - 40)), -1, 'private key not in clear');
  });

  it('refuses a file readable or writable by group or others, naming the fix', async () => {
    const dir = freshDir();
    const path = join(dir, 'keys.vsks');
    await (await openSoftwareKeyStore(passOpts(path))).close();
    for (const mode of [0o644, 0o640, 0o604, 0o660, 0o606]) {
      chmodSync(path, mode);
      await assert.rejects(openSoftwareKeyStore(passOpts(path)), (e: unknown) => {
        isCode('insecure-permissions')(e);
        assert.match((e as Error).message, new RegExp(`chmod 600 ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
        return true;
      }, mode.toString(8));
    }
    chmodSync(path, 0o400);
    const ro = await openSoftwareKeyStore(passOpts(path));
    await ro.close();
  });

  it('refuses a symbolic link in place of the key file', async () => {
    const dir = freshDir();
    const real = join(dir, 'real.vsks');
    await (await openSoftwareKeyStore(passOpts(real))).close();
    const link = join(dir, 'link.vsks');
    symlinkSync(real, link);
    await assert.rejects(openSoftwareKeyStore(passOpts(link)), isCode('not-a-file'));
  });

  it('a wrong passphrase is a typed error, reported as a failed open, and changes nothing', async () => {
    const dir = freshDir();
    const path = join(dir, 'keys.vsks');
    const store = await openSoftwareKeyStore(passOpts(path));
    await store.seal('s', Uint8Array.of(1, 2, 3));
    await store.close();
    const before = readFileSync(path);
    const events: KeyEvent[] = [];
    await assert.rejects(openSoftwareKeyStore({ path, passphrase: 'Correct horse battery staple', events: { record: (e) => events.push(e) } }), isCode('wrong-passphrase'));
    await assert.rejects(openSoftwareKeyStore({ path, passphrase: new Uint8Array(0) }), isCode('wrong-passphrase'));
    assert.deepEqual(events, [{ operation: 'open', keyName: '-', store: 'software', result: 'error', code: 'wrong-passphrase' }]);
    assert.deepEqual(readFileSync(path), before);
    const again = await openSoftwareKeyStore(passOpts(path));
    assert.deepEqual(await again.unseal('s'), Uint8Array.of(1, 2, 3));
    await again.close();
  });

  it('a passphrase string is NFC-normalised: the same text typed either way opens the file', async () => {
    const dir = freshDir();
    const path = join(dir, 'keys.vsks');
    await (await openSoftwareKeyStore({ path, passphrase: 'caf\u00e9 au lait', scrypt: TEST_SCRYPT })).close();
    await (await openSoftwareKeyStore({ path, passphrase: 'cafe\u0301 au lait' })).close();
  });

  it('refuses to create a file with an empty passphrase or out-of-range scrypt costs', async () => {
    const dir = freshDir();
    await assert.rejects(openSoftwareKeyStore({ path: join(dir, 'a'), passphrase: '' }), isCode('invalid-argument'));
    await assert.rejects(openSoftwareKeyStore({ path: join(dir, 'b'), passphrase: 'x', scrypt: { logN: 9 } }), isCode('invalid-argument'));
    await assert.rejects(openSoftwareKeyStore({ path: join(dir, 'c'), passphrase: 'x', scrypt: { logN: 20, r: 32 } }), isCode('invalid-argument'));
    assert.deepEqual(readdirSync(dir), []);
  });

  it('does not create a file when told not to', async () => {
    const dir = freshDir();
    await assert.rejects(openSoftwareKeyStore(passOpts(join(dir, 'absent.vsks'), { create: false })), isCode('file-not-found'));
    assert.deepEqual(readdirSync(dir), []);
  });

  it('logs a loud development-grade warning on open, and describe() says development', async () => {
    const dir = freshDir();
    const warnings: string[] = [];
    const store = await openSoftwareKeyStore(passOpts(join(dir, 'k.vsks'), { logger: { warn: (m) => warnings.push(m) } }));
    assert.match(warnings[0] ?? '', /^DEVELOPMENT KEY STORE .*Do not use it for patient data in production/);
    assert.ok(warnings.some((w) => /below the default/.test(w)), 'low test cost is called out');
    assert.deepEqual({ ...store.describe(), detail: '' }, { kind: 'software', hardwareBound: false, assurance: 'development', detail: '' });
    assert.doesNotMatch(warnings.join('\n'), new RegExp(PASSPHRASE));
    await store.close();
  });

  it('every truncation of the file is refused as file-corrupt, before any key derivation', async () => {
    const dir = freshDir();
    const path = join(dir, 'keys.vsks');
    const store = await openSoftwareKeyStore(passOpts(path));
    await store.seal('s', new Uint8Array(40).fill(7));
    await store.close();
    const whole = readFileSync(path);
    for (let n = 0; n < whole.length; n++) {
      writeFileSync(path, whole.subarray(0, n), { mode: 0o600 });
      await assert.rejects(openSoftwareKeyStore(passOpts(path)), isCode('file-corrupt'), `prefix ${n}`);
    }
    writeFileSync(path, Buffer.concat([whole, Buffer.of(0)]), { mode: 0o600 });
    await assert.rejects(openSoftwareKeyStore(passOpts(path)), isCode('file-corrupt'), 'trailing byte');
  });

  it('a flipped bit anywhere is refused: in the body as file-corrupt, in the header as corrupt, wrong passphrase or unsupported version', async () => {
    const dir = freshDir();
    const path = join(dir, 'keys.vsks');
    const store = await openSoftwareKeyStore(passOpts(path));
    await store.seal('s', new Uint8Array(40).fill(7));
    await store.createSigningKey('id');
    await store.close();
    const whole = readFileSync(path);
    // Header length for scrypt protection with a 32-byte salt: 4 + 1 + 1 + 4 + 32 + 16 + 32 + 4.
    const HEADER = 94;
    assert.equal(whole.readUInt32BE(HEADER - 4), whole.length - HEADER, 'header layout as documented');
    for (let i = 0; i < whole.length; i++) {
      const bad = Buffer.from(whole);
      bad[i] = (bad[i] as number) ^ 0x01;
      writeFileSync(path, bad, { mode: 0o600 });
      const codes = i >= HEADER ? ['file-corrupt'] : i === 4 ? ['unsupported-version'] : ['file-corrupt', 'wrong-passphrase'];
      await assert.rejects(openSoftwareKeyStore(passOpts(path)), isCode(...codes), `flip at ${i}`);
    }
  });

  it('random mutations only ever give a typed error (fast-check)', async () => {
    const dir = freshDir();
    const path = join(dir, 'keys.vsks');
    const store = await openSoftwareKeyStore(passOpts(path));
    await store.seal('s', new Uint8Array(8));
    await store.close();
    const whole = readFileSync(path);
    await fc.assert(fc.asyncProperty(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }), async (edits) => {
      const bad = Buffer.from(whole);
      for (const [pos, xor] of edits) bad[pos % bad.length] = (bad[pos % bad.length] as number) ^ xor;
      writeFileSync(path, bad, { mode: 0o600 });
      await assert.rejects(openSoftwareKeyStore(passOpts(path)), (e: unknown) => e instanceof KeyStoreError);
    }), { numRuns: 60 });
  });

  it('refuses to open a passphrase file as if its key were held by another store, and the reverse', async () => {
    const dir = freshDir();
    const outer = await openSoftwareKeyStore(passOpts(join(dir, 'outer.vsks')));
    const plain = join(dir, 'plain.vsks');
    await (await openSoftwareKeyStore(passOpts(plain))).close();
    await assert.rejects(openSoftwareKeyStore({ path: plain, fileKeyWrappedBy: { store: outer, kekName: 'k' } }), isCode('wrong-protection'));
    const wrapped = join(dir, 'wrapped.vsks');
    await (await openSoftwareKeyStore({ path: wrapped, fileKeyWrappedBy: { store: outer, kekName: 'k' } })).close();
    await assert.rejects(openSoftwareKeyStore(passOpts(wrapped)), isCode('wrong-protection'));
    await assert.rejects(openSoftwareKeyStore({ path: wrapped, fileKeyWrappedBy: { store: outer, kekName: 'other' } }), isCode('wrong-protection'));
    await outer.close();
  });

  it('a file key wrapped by another store: reopens through that store; fails when its KEK is gone or replaced', async () => {
    const dir = freshDir();
    const outerPath = join(dir, 'outer.vsks');
    let outer = await openSoftwareKeyStore(passOpts(outerPath));
    const path = join(dir, 'inner.vsks');
    const inner = await openSoftwareKeyStore({ path, fileKeyWrappedBy: { store: outer, kekName: 'file-kek' } });
    await inner.seal('s', Uint8Array.of(9, 9));
    await inner.close();
    await outer.close();
    outer = await openSoftwareKeyStore(passOpts(outerPath));
    const again = await openSoftwareKeyStore({ path, fileKeyWrappedBy: { store: outer, kekName: 'file-kek' } });
    assert.deepEqual(await again.unseal('s'), Uint8Array.of(9, 9));
    assert.match(again.describe().detail, /wrapped by the software store's KEK 'file-kek'/);
    await again.close();
    await outer.delete('file-kek');
    await assert.rejects(openSoftwareKeyStore({ path, fileKeyWrappedBy: { store: outer, kekName: 'file-kek' } }), isCode('not-found'));
    await outer.wrapKey('file-kek', new Uint8Array(32)); // a new KEK under the old name
    await assert.rejects(openSoftwareKeyStore({ path, fileKeyWrappedBy: { store: outer, kekName: 'file-kek' } }), isCode('unwrap-failed'));
    await outer.close();
  });

  it('a file key sealed in another store: a different secret under that name is wrong-kek', async () => {
    const dir = freshDir();
    const outer = await openSoftwareKeyStore(passOpts(join(dir, 'outer.vsks')));
    const path = join(dir, 'inner.vsks');
    await (await openSoftwareKeyStore({ path, fileKeySealedIn: { store: outer, name: 'fk' } })).close();
    await outer.delete('fk');
    await outer.seal('fk', new Uint8Array(32).fill(1));
    await assert.rejects(openSoftwareKeyStore({ path, fileKeySealedIn: { store: outer, name: 'fk' } }), isCode('wrong-kek'));
    await outer.close();
  });

  it('two stores over one file (two processes) see each other\'s changes and never lose one', async () => {
    const dir = freshDir();
    const path = join(dir, 'shared.vsks');
    const a = await openSoftwareKeyStore(passOpts(path));
    const b = await openSoftwareKeyStore(passOpts(path));
    const signer = await a.createSigningKey('id');
    await b.seal('from-b', Uint8Array.of(2));
    await a.seal('from-a', Uint8Array.of(1));
    assert.deepEqual((await b.list()).map((k) => k.name), ['from-a', 'from-b', 'id']);
    const viaB = await b.openSigningKey('id');
    assert.deepEqual(await viaB.publicKeySpki(), await signer.publicKeySpki());
    await b.delete('id');
    await assert.rejects(signer.sign(Uint8Array.of(1)), isCode('not-found'));
    await b.createSigningKey('id'); // a new key under the old name: the old handle must not use it
    await assert.rejects(signer.sign(Uint8Array.of(1)), isCode('not-found'));
    await Promise.all([a.seal('p1', Uint8Array.of(1)), b.seal('p2', Uint8Array.of(2)), a.seal('p3', Uint8Array.of(3)), b.seal('p4', Uint8Array.of(4))]);
    const names = (await a.list()).map((k) => k.name);
    for (const n of ['p1', 'p2', 'p3', 'p4']) assert.ok(names.includes(n), n);
    await a.close();
    await b.close();
  });

  it('exports a signing key for development only, as an export event; refuses other object types', async () => {
    const dir = freshDir();
    const events: KeyEvent[] = [];
    const store = await openSoftwareKeyStore(passOpts(join(dir, 'k.vsks'), { events: { record: (e) => events.push(e) } }));
    const signer = await store.createSigningKey('dev-ca');
    const pem = await store.exportPrivateKeyPemForDevelopmentOnly('dev-ca');
    assert.match(pem, /^-----BEGIN PRIVATE KEY-----/);
    const spki = createPublicKey(createPrivateKey(pem)).export({ format: 'der', type: 'spki' });
    assert.deepEqual(new Uint8Array(spki), await signer.publicKeySpki());
    assert.ok(events.some((e) => e.operation === 'export' && e.keyName === 'dev-ca' && e.result === 'ok'));
    await store.seal('not-a-key', Uint8Array.of(1));
    await assert.rejects(store.exportPrivateKeyPemForDevelopmentOnly('not-a-key'), isCode('wrong-type'));
    await assert.rejects(store.unwrapKey('not-a-key', new Uint8Array(60)), isCode('wrong-type'));
    await assert.rejects(store.openSigningKey('not-a-key'), isCode('wrong-type'));
    await assert.rejects(store.createSigningKey('not-a-key'), isCode('exists'));
    await store.close();
  });

  it('opens at the default scrypt cost (N=2^15, r=8) and says so in describe()', async () => {
    const dir = freshDir();
    const store = await openSoftwareKeyStore({ path: join(dir, 'k.vsks'), passphrase: PASSPHRASE });
    assert.match(store.describe().detail, /N=2\^15, r=8, p=1/);
    await store.close();
  });
});

describe('software key store file format, read by an independent implementation (@noble)', () => {
  it('scrypt → HKDF check and content key → AES-256-GCM over the header; wrapped blobs open with the stored KEK', async () => {
    const dir = freshDir();
    const path = join(dir, 'keys.vsks');
    const store = await openSoftwareKeyStore(passOpts(path));
    const secret = new TextEncoder().encode('sealed for the cross-check');
    await store.seal('cross', secret);
    const dek = Uint8Array.from({ length: 32 }, (_, i) => i);
    const blob = await store.wrapKey('cross-kek', dek);
    const signer = await store.createSigningKey('cross-id');
    await store.close();

    const file = new Uint8Array(readFileSync(path));
    const enc = new TextEncoder();
    assert.deepEqual(file.subarray(0, 4), enc.encode('VSKS'));
    assert.equal(file[4], 1, 'version');
    assert.equal(file[5], 1, 'scrypt protection');
    const [logN, r, p, saltLength] = [file[6] as number, file[7] as number, file[8] as number, file[9] as number];
    assert.deepEqual([logN, r, p, saltLength], [11, 8, 1, 32]);
    const salt = file.subarray(10, 10 + saltLength);
    let off = 10 + saltLength;
    const check = file.subarray(off, off + 16); off += 16;
    const writeSalt = file.subarray(off, off + 32); off += 32;
    const bodyLength = new DataView(file.buffer, file.byteOffset).getUint32(off); off += 4;
    const header = file.subarray(0, off);
    assert.equal(bodyLength, file.length - off);

    const fileKey = scrypt(enc.encode(PASSPHRASE), salt, { N: 2 ** logN, r, p, dkLen: 32 });
    assert.deepEqual(hkdf(sha256, fileKey, undefined, enc.encode('vitalseal keystore-file v1 check'), 16), check);
    const contentKey = hkdf(sha256, fileKey, writeSalt, enc.encode('vitalseal keystore-file v1 content'), 32);
    const body = gcm(contentKey, new Uint8Array(12), header).decrypt(file.subarray(off));

    // body = count u16 | (type u8 | name-length u8 | name | material-length u16 | material)*
    const entries = new Map<string, { type: number; material: Uint8Array }>();
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    let pos = 2;
    for (let i = 0; i < view.getUint16(0); i++) {
      const type = body[pos] as number;
      const nameLength = body[pos + 1] as number;
      const name = new TextDecoder().decode(body.subarray(pos + 2, pos + 2 + nameLength));
      pos += 2 + nameLength;
      const len = view.getUint16(pos);
      entries.set(name, { type, material: body.subarray(pos + 2, pos + 2 + len) });
      pos += 2 + len;
    }
    assert.equal(pos, body.length);
    assert.deepEqual([...entries.keys()], ['cross', 'cross-id', 'cross-kek']);
    assert.deepEqual(entries.get('cross'), { type: 2, material: secret });

    const key = createPrivateKey({ key: Buffer.from(entries.get('cross-id')?.material ?? []), format: 'der', type: 'pkcs8' });
    const spki = new Uint8Array(createPublicKey(key).export({ format: 'der', type: 'spki' }));
    assert.deepEqual(spki, await signer.publicKeySpki());
    const msg = enc.encode('m');
    assert.ok(verify('sha256', msg, createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }), await (async () => {
      const s = await openSoftwareKeyStore(passOpts(path));
      try {
        return (await s.openSigningKey('cross-id')).sign(msg);
      } finally {
        await s.close();
      }
    })()));

    // blob = 1 | 1 | salt(32) | ct || tag; key = HKDF(KEK, salt, "vitalseal software-kek v1 wrap"); aad = blob[0..34] | name
    const kek = entries.get('cross-kek')?.material ?? new Uint8Array();
    assert.equal(entries.get('cross-kek')?.type, 3);
    assert.deepEqual([blob[0], blob[1]], [1, 1]);
    const blobKey = hkdf(sha256, kek, blob.subarray(2, 34), enc.encode('vitalseal software-kek v1 wrap'), 32);
    const aad = new Uint8Array([...blob.subarray(0, 34), ...enc.encode('cross-kek')]);
    assert.deepEqual(gcm(blobKey, new Uint8Array(12), aad).decrypt(blob.subarray(34)), dek);
  });
});
