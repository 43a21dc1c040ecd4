/**
 * The KeyStore contract. Every backend runs it against the real thing (swtpm, SoftHSM2, a file):
 *
 *   runKeyStoreContract('software', async () => {
 *     const dir = mkdtempSync(...);
 *     return { open: () => openSoftwareKeyStore({ path: join(dir, 'keys'), passphrase }), cleanup: () => rm(dir) };
 *   });
 *
 * `open` must return a store over the same persistent state each time it is called within one
 * fixture, so the suite can check that keys survive a close and reopen. When given a `KeyEventSink`,
 * the store must report its key events to it (the audit log records them).
 */
import assert from 'node:assert/strict';
import { createPublicKey, verify } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { KeyEvent, KeyEventSink, KeyStore } from '../../src/keystore/types.ts';
import { KeyStoreError } from '../../src/util/errors.ts';

export interface KeyStoreFixture {
  /** Opens the store over this fixture's state (a second call reopens the same keys), reporting key events to `events`. */
  open(events?: KeyEventSink): Promise<KeyStore>;
  /** Stops whatever the fixture started (swtpm, temp dirs). */
  cleanup(): Promise<void>;
}

function isKeyStoreError(code: string): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof KeyStoreError, `expected KeyStoreError, got ${String(e)}`);
    assert.equal(e.code, code);
    return true;
  };
}

let counter = 0;
/** A fresh, valid key name; backends keep state across tests in one fixture. */
function fresh(prefix: string): string {
  counter++;
  return `${prefix}-${process.pid}-${counter}`;
}

function verifyWith(spki: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  return verify('sha256', message, { key, dsaEncoding: 'der' }, signature);
}

export function runKeyStoreContract(name: string, makeFixture: () => Promise<KeyStoreFixture>): void {
  describe(`KeyStore contract: ${name}`, () => {
    let fixture: KeyStoreFixture;
    let store: KeyStore;

    before(async () => {
      fixture = await makeFixture();
      store = await fixture.open();
    });
    after(async () => {
      await store?.close().catch(() => undefined);
      await fixture?.cleanup();
    });

    it('describes itself without secrets', () => {
      const d = store.describe();
      assert.ok(['tpm', 'pkcs11', 'software'].includes(d.kind));
      assert.equal(typeof d.hardwareBound, 'boolean');
      assert.equal(d.assurance, d.hardwareBound ? 'hardware' : 'development');
      assert.equal(typeof d.detail, 'string');
      // Whole words: a random temp directory name in the detail may hold the letters "pin".
      assert.doesNotMatch(d.detail, /\b(pin|passphrase|password)\b/i);
    });

    it('creates a P-256 signing key whose signatures verify with node:crypto', async () => {
      const keyName = fresh('sign');
      const signer = await store.createSigningKey(keyName);
      assert.equal(signer.scheme, 'ecdsa-p256-sha256');
      const spki = await signer.publicKeySpki();
      const message = new TextEncoder().encode('CertificateVerify content');
      const sig = await signer.sign(message);
      assert.ok(verifyWith(spki, message, sig), 'signature verifies');
      assert.ok(!verifyWith(spki, new TextEncoder().encode('another message'), sig), 'signature is bound to the message');
      const pem = await store.publicKeyPem(keyName);
      assert.match(pem, /^-----BEGIN PUBLIC KEY-----/);
      const fromPem = createPublicKey(pem).export({ format: 'der', type: 'spki' });
      assert.deepEqual(new Uint8Array(fromPem), spki);
      const key = createPublicKey(pem);
      assert.equal(key.asymmetricKeyType, 'ec');
      assert.equal(key.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    });

    it('refuses to create a key twice and to open one that does not exist', async () => {
      const keyName = fresh('dup');
      await store.createSigningKey(keyName);
      await assert.rejects(store.createSigningKey(keyName), isKeyStoreError('exists'));
      await assert.rejects(store.openSigningKey(fresh('absent')), isKeyStoreError('not-found'));
      await assert.rejects(store.publicKeyPem(fresh('absent')), isKeyStoreError('not-found'));
    });

    it('refuses invalid names', async () => {
      for (const bad of ['', '../x', 'a/b', 'sp ace', '-lead', 'x'.repeat(64)]) {
        await assert.rejects(store.createSigningKey(bad), isKeyStoreError('invalid-name'), JSON.stringify(bad));
        await assert.rejects(store.seal(bad, new Uint8Array(4)), isKeyStoreError('invalid-name'), JSON.stringify(bad));
      }
    });

    it('seals and unseals a secret; refuses to overwrite one', async () => {
      const keyName = fresh('seal');
      const secret = Uint8Array.from({ length: 32 }, (_, i) => i * 7);
      await store.seal(keyName, secret);
      assert.deepEqual(await store.unseal(keyName), secret);
      await assert.rejects(store.seal(keyName, new Uint8Array(8)), isKeyStoreError('exists'));
      await assert.rejects(store.unseal(fresh('absent')), isKeyStoreError('not-found'));
    });

    it('unseal and unwrapKey hand out copies: the caller may zeroise them, and its own inputs, after use', async () => {
      const keyName = fresh('copy');
      const secret = Uint8Array.from({ length: 24 }, (_, i) => i + 1);
      const input = Uint8Array.from(secret);
      await store.seal(keyName, input);
      input.fill(0);
      const first = await store.unseal(keyName);
      assert.deepEqual(first, secret);
      first.fill(0);
      assert.deepEqual(await store.unseal(keyName), secret, 'zeroising a returned secret does not touch the stored one');
      const kek = fresh('copykek');
      const dek = Uint8Array.from(secret);
      const wrapped = await store.wrapKey(kek, dek);
      dek.fill(0);
      const back = await store.unwrapKey(kek, wrapped);
      assert.deepEqual(back, secret);
      back.fill(0);
      assert.deepEqual(await store.unwrapKey(kek, wrapped), secret);
    });

    it('refuses a secret larger than the backend can seal', async () => {
      await assert.rejects(store.seal(fresh('big'), new Uint8Array(4097)), isKeyStoreError('too-large'));
    });

    it('wraps and unwraps data keys; tampering and the wrong KEK are detected', async () => {
      const kek = fresh('kek');
      const other = fresh('kek');
      const dek = Uint8Array.from({ length: 32 }, (_, i) => 255 - i);
      const wrapped = await store.wrapKey(kek, dek);
      assert.ok(wrapped.length > dek.length, 'the blob carries more than the key (authentication)');
      assert.equal(Buffer.from(wrapped).indexOf(Buffer.from(dek)), -1, 'the blob does not contain the key in clear');
      assert.deepEqual(await store.unwrapKey(kek, wrapped), dek);
      // Same KEK again (it exists now): a second wrap still unwraps, and differs (fresh IV).
      const wrapped2 = await store.wrapKey(kek, dek);
      assert.notDeepEqual(wrapped2, wrapped);
      assert.deepEqual(await store.unwrapKey(kek, wrapped2), dek);
      for (let i = 0; i < wrapped.length; i += Math.max(1, Math.floor(wrapped.length / 8))) {
        const bad = Uint8Array.from(wrapped);
        bad[i] = (bad[i] as number) ^ 0x01;
        await assert.rejects(store.unwrapKey(kek, bad), isKeyStoreError('unwrap-failed'), `flip at ${i}`);
      }
      await assert.rejects(store.unwrapKey(kek, wrapped.subarray(0, wrapped.length - 1)), isKeyStoreError('unwrap-failed'));
      await store.wrapKey(other, new Uint8Array(16));
      await assert.rejects(store.unwrapKey(other, wrapped), isKeyStoreError('unwrap-failed'));
      await assert.rejects(store.unwrapKey(fresh('absent'), wrapped), isKeyStoreError('not-found'));
    });

    it('gives random bytes of the asked length', async () => {
      const a = await store.randomBytes(32);
      const b = await store.randomBytes(32);
      assert.equal(a.length, 32);
      assert.notDeepEqual(a, b);
      assert.equal((await store.randomBytes(0)).length, 0);
    });

    it('lists what it holds by type, and deletes', async () => {
      const s = fresh('lst');
      const k = fresh('lsk');
      const w = fresh('lsw');
      await store.createSigningKey(s);
      await store.seal(k, new Uint8Array(16));
      await store.wrapKey(w, new Uint8Array(16));
      const listed = await store.list();
      const typeOf = (n: string) => listed.find((i) => i.name === n)?.type;
      assert.equal(typeOf(s), 'signing');
      assert.equal(typeOf(k), 'sealed');
      assert.equal(typeOf(w), 'kek');
      await store.delete(s);
      await store.delete(k);
      await store.delete(w);
      const after = (await store.list()).map((i) => i.name);
      for (const n of [s, k, w]) assert.ok(!after.includes(n), `${n} deleted`);
      await assert.rejects(store.openSigningKey(s), isKeyStoreError('not-found'));
      await assert.rejects(store.unseal(k), isKeyStoreError('not-found'));
      await assert.rejects(store.delete(s), isKeyStoreError('not-found'));
    });

    it('keeps keys across a close and reopen', async () => {
      const s = fresh('persist');
      const k = fresh('persist');
      const w = fresh('persist');
      const spki = await (await store.createSigningKey(s)).publicKeySpki();
      await store.seal(k, Uint8Array.of(1, 2, 3));
      const wrapped = await store.wrapKey(w, new Uint8Array(32).fill(9));
      await store.close();
      store = await fixture.open();
      const signer = await store.openSigningKey(s);
      assert.deepEqual(await signer.publicKeySpki(), spki);
      const msg = Uint8Array.of(4, 5, 6);
      assert.ok(verifyWith(spki, msg, await signer.sign(msg)));
      assert.deepEqual(await store.unseal(k), Uint8Array.of(1, 2, 3));
      assert.deepEqual(await store.unwrapKey(w, wrapped), new Uint8Array(32).fill(9));
    });

    it('reports key events, with outcome and error code, and never secret material', async () => {
      const events: KeyEvent[] = [];
      await store.close();
      store = await fixture.open({ record: (e) => events.push(e) });
      const s = fresh('ev');
      const k = fresh('ev');
      const w = fresh('ev');
      const secret = Uint8Array.from({ length: 32 }, (_, i) => 0xa0 ^ i);
      const signer = await store.createSigningKey(s);
      await (await store.openSigningKey(s)).sign(Uint8Array.of(1));
      await signer.sign(Uint8Array.of(2));
      await store.seal(k, secret);
      await store.unseal(k);
      const wrapped = await store.wrapKey(w, secret);
      await store.unwrapKey(w, wrapped);
      const bad = Uint8Array.from(wrapped);
      bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
      await assert.rejects(store.unwrapKey(w, bad));
      await assert.rejects(store.unseal(fresh('absent')));
      await store.delete(k);
      const kind = store.describe().kind;
      const seen = (op: KeyEvent['operation'], name: string, result: KeyEvent['result'], code?: string) =>
        events.some((e) => e.operation === op && e.keyName === name && e.result === result && (code === undefined || e.code === code));
      assert.ok(seen('create', s, 'ok'), 'create');
      assert.ok(seen('open', s, 'ok'), 'open');
      assert.equal(events.filter((e) => e.operation === 'sign' && e.keyName === s && e.result === 'ok').length, 2, 'one event per signature');
      assert.ok(seen('seal', k, 'ok'), 'seal');
      assert.ok(seen('unseal', k, 'ok'), 'unseal');
      assert.ok(seen('wrap', w, 'ok'), 'wrap');
      assert.ok(seen('unwrap', w, 'ok'), 'unwrap');
      assert.ok(seen('unwrap', w, 'error', 'unwrap-failed'), 'failed unwrap, with its code');
      assert.ok(events.some((e) => e.operation === 'unseal' && e.result === 'error' && e.code === 'not-found'), 'failed unseal, with its code');
      assert.ok(seen('delete', k, 'ok'), 'delete');
      const secretHex = Buffer.from(secret).toString('hex');
      for (const e of events) {
        assert.equal(e.store, kind);
        for (const [field, value] of Object.entries(e)) {
          assert.ok(['operation', 'keyName', 'store', 'result', 'code'].includes(field), `unexpected event field ${field}`);
          assert.equal(typeof value, 'string', `${field} is a string`);
        }
        assert.ok(!JSON.stringify(e).includes(secretHex), 'no secret in an event');
      }
    });

    it('refuses every call after close', async () => {
      const s = fresh('closed');
      const signer = await store.createSigningKey(s);
      await store.close();
      await assert.rejects(store.list(), isKeyStoreError('closed'));
      await assert.rejects(store.randomBytes(4), isKeyStoreError('closed'));
      await assert.rejects(signer.sign(Uint8Array.of(1)), isKeyStoreError('closed'));
      store = await fixture.open();
    });
  });
}
