/**
 * TPM store behaviour beyond the shared contract, against swtpm: audit events, serialised
 * concurrent calls, the event loop staying free during TPM commands, type checks, TPM size limits,
 * keys surviving a TPM restart (a reboot), and what describe() says about a simulator.
 */
import assert from 'node:assert/strict';
import { createPublicKey, randomBytes, verify } from 'node:crypto';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startSwtpm, type Swtpm } from '../../scripts/lib/swtpm.ts';
import { MAX_SEALED_BYTES, openTpmKeyStore, type TpmKeyStore } from '../../src/keystore/tpm/index.ts';
import type { KeyEvent } from '../../src/keystore/types.ts';
import { toHex } from '../../src/util/bytes.ts';
import { KeyStoreError } from '../../src/util/errors.ts';

const code = (c: string) => (e: unknown) => {
  assert.ok(e instanceof KeyStoreError, `expected KeyStoreError, got ${String(e)}`);
  assert.equal(e.code, c, e.message);
  return true;
};

let tpm: Swtpm;
let dir: string;
let store: TpmKeyStore;
const events: KeyEvent[] = [];
const open = () => openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir }, { events: { record: (e) => events.push(e) } });

before(async () => {
  tpm = await startSwtpm();
  dir = mkdtempSync(join(tmpdir(), 'vitalseal-tpm-store-'));
  store = await open();
});

after(async () => {
  await store?.close();
  await tpm?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('TPM store', () => {
  it('says a simulator is not hardware, and keeps its FAPI files private', () => {
    const d = store.describe();
    assert.equal(d.kind, 'tpm');
    assert.equal(d.hardwareBound, false);
    assert.equal(d.assurance, 'development');
    assert.match(d.detail, /simulator/);
    assert.equal(store.tpm?.simulator, true);
    assert.equal(statSync(store.fapiConfigPath).mode & 0o777, 0o600);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
  });

  it('reports every key operation to the event sink, without secret material', async () => {
    events.length = 0;
    const secret = randomBytes(32);
    await store.seal('ev-seal', secret);
    await store.unseal('ev-seal');
    const signer = await store.createSigningKey('ev-sign');
    await signer.sign(Uint8Array.of(1));
    await store.openSigningKey('ev-sign');
    const dek = randomBytes(32);
    const wrapped = await store.wrapKey('ev-kek', dek);
    await store.unwrapKey('ev-kek', wrapped);
    await store.unwrapKey('ev-kek', wrapped.subarray(1)).catch(() => undefined);
    await store.unseal('ev-absent').catch(() => undefined);
    await store.delete('ev-seal');
    assert.deepEqual(events.map((e) => [e.operation, e.keyName, e.result, e.code ?? '']), [
      ['seal', 'ev-seal', 'ok', ''],
      ['unseal', 'ev-seal', 'ok', ''],
      ['create', 'ev-sign', 'ok', ''],
      ['sign', 'ev-sign', 'ok', ''],
      ['open', 'ev-sign', 'ok', ''],
      ['create', 'ev-kek', 'ok', ''],
      ['wrap', 'ev-kek', 'ok', ''],
      ['unwrap', 'ev-kek', 'ok', ''],
      ['unwrap', 'ev-kek', 'error', 'unwrap-failed'],
      ['unseal', 'ev-absent', 'error', 'not-found'],
      ['delete', 'ev-seal', 'ok', ''],
    ]);
    assert.ok(events.every((e) => e.store === 'tpm'));
    const text = JSON.stringify(events);
    for (const s of [secret, dek]) assert.ok(!text.includes(toHex(s)) && !text.includes(Buffer.from(s).toString('base64')));
  });

  it('serialises concurrent calls on one FAPI context', async () => {
    const signer = await store.createSigningKey('conc-sign');
    const key = createPublicKey({ key: Buffer.from(await signer.publicKeySpki()), format: 'der', type: 'spki' });
    const secrets = Array.from({ length: 6 }, () => randomBytes(16));
    const jobs: Promise<unknown>[] = [];
    for (let i = 0; i < secrets.length; i++) {
      jobs.push(store.seal(`conc-${i}`, secrets[i] as Buffer).then(() => store.unseal(`conc-${i}`)).then((got) => assert.deepEqual(got, new Uint8Array(secrets[i] as Buffer))));
      const msg = Buffer.from(`message ${i}`);
      jobs.push(signer.sign(msg).then((sig) => assert.ok(verify('sha256', msg, { key, dsaEncoding: 'der' }, sig))));
      jobs.push(store.randomBytes(24).then((r) => assert.equal(r.length, 24)));
      jobs.push(store.wrapKey('conc-kek', secrets[i] as Buffer).then((w) => store.unwrapKey('conc-kek', w)).then((d) => assert.deepEqual(d, new Uint8Array(secrets[i] as Buffer))));
    }
    await Promise.all(jobs);
  });

  it('keeps the event loop free while the TPM works (koffi async calls)', async () => {
    const signer = await store.openSigningKey('conc-sign');
    let ticks = 0;
    let done = false;
    const spin = () => {
      if (done) return;
      ticks++;
      setImmediate(spin);
    };
    setImmediate(spin);
    // Several TPM commands in a row: with blocking calls the loop could not turn in between them.
    for (let i = 0; i < 5; i++) await signer.sign(Uint8Array.of(i));
    done = true;
    assert.ok(ticks >= 5, `event loop turned ${ticks} times during five TPM signatures`);
  });

  it('refuses to use an object as something it is not', async () => {
    await store.createSigningKey('type-key');
    await store.seal('type-sealed', Uint8Array.of(1, 2, 3));
    await store.wrapKey('type-kek', randomBytes(32));
    await assert.rejects(store.unseal('type-key'), code('wrong-type'));
    await assert.rejects(store.unseal('type-kek'), code('wrong-type'));
    await assert.rejects(store.openSigningKey('type-sealed'), code('wrong-type'));
    await assert.rejects(store.publicKeyPem('type-kek'), code('wrong-type'));
    await assert.rejects(store.wrapKey('type-sealed', randomBytes(32)), code('wrong-type'));
    await assert.rejects(store.unwrapKey('type-key', randomBytes(81)), code('wrong-type'));
    await assert.rejects(store.seal('type-key', Uint8Array.of(1)), code('exists'));
    await assert.rejects(store.createSigningKey('type-kek'), code('exists'));
  });

  it('seals 1..128 bytes, the most a TPM data object holds', async () => {
    const max = randomBytes(MAX_SEALED_BYTES);
    await store.seal('size-max', max);
    assert.deepEqual(await store.unseal('size-max'), new Uint8Array(max));
    await store.seal('size-one', Uint8Array.of(0));
    assert.deepEqual(await store.unseal('size-one'), Uint8Array.of(0));
    await assert.rejects(store.seal('size-over', new Uint8Array(MAX_SEALED_BYTES + 1)), code('too-large'));
    await assert.rejects(store.seal('size-zero', new Uint8Array(0)), code('too-small'));
    await assert.rejects(store.wrapKey('size-kek', new Uint8Array(0)), code('too-small'));
    await assert.rejects(store.wrapKey('size-kek', new Uint8Array(1025)), code('too-large'));
    await assert.rejects(store.randomBytes(4097), RangeError);
    await assert.rejects(store.randomBytes(-1), RangeError);
    await assert.rejects(store.seal('size-type', 'text' as unknown as Uint8Array), TypeError);
    assert.equal((await store.list()).some((k) => k.name.startsWith('size-over') || k.name === 'size-zero'), false);
  });

  it('a signer whose key was deleted fails with not-found, and the store carries on', async () => {
    const signer = await store.createSigningKey('gone-key');
    await store.delete('gone-key');
    await assert.rejects(signer.sign(Uint8Array.of(1)), code('not-found'));
    await store.seal('after-gone', Uint8Array.of(9));
    assert.deepEqual(await store.unseal('after-gone'), Uint8Array.of(9));
  });

  it('keys survive a TPM restart (a reboot), with the same public key', async () => {
    const spki = await (await store.createSigningKey('reboot-key')).publicKeySpki();
    await store.seal('reboot-seal', Uint8Array.of(7, 7));
    const wrapped = await store.wrapKey('reboot-kek', Uint8Array.of(1, 2, 3, 4));
    await store.close();
    await tpm.restart();
    store = await open();
    const signer = await store.openSigningKey('reboot-key');
    assert.deepEqual(await signer.publicKeySpki(), spki);
    const sig = await signer.sign(Uint8Array.of(5));
    assert.ok(verify('sha256', Uint8Array.of(5), { key: createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig));
    assert.deepEqual(await store.unseal('reboot-seal'), Uint8Array.of(7, 7));
    assert.deepEqual(await store.unwrapKey('reboot-kek', wrapped), Uint8Array.of(1, 2, 3, 4));
  });
});
