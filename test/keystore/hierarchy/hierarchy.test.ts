/**
 * The envelope hierarchy over the real software store and the JSON record file: DEK rotation with
 * old versions readable until a re-key pass ends, interrupted passes that resume (also in a "new
 * process": everything reopened from disk), KEK rotation that leaves data untouched, zeroisation.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { after, describe, it } from 'node:test';
import { getProvider } from '../../../src/crypto/registry.ts';
import { DataKey, KeyHierarchy, openJsonFileRecordStore, type RekeyTarget, type StaleItem } from '../../../src/keystore/hierarchy/index.ts';
import { openSoftwareKeyStore } from '../../../src/keystore/software/index.ts';
import type { KeyEvent, KeyStore } from '../../../src/keystore/types.ts';
import { ManualClock } from '../../../src/util/clock.ts';
import { ApiMisuse, KeyStoreError } from '../../../src/util/errors.ts';
import { runRecordStoreContract } from './record-store-contract.ts';

const root = mkdtempSync(join(tmpdir(), 'vitalseal-hier-'));
after(() => rmSync(root, { recursive: true, force: true }));
const p = getProvider();
const enc = new TextEncoder();

function code(c: string): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof KeyStoreError || e instanceof ApiMisuse, `expected a typed error, got ${String(e)}`);
    assert.equal(e.code, c, e.message);
    return true;
  };
}

runRecordStoreContract('JSON file', async () => {
  const dir = mkdtempSync(join(root, 'rs-'));
  return { open: () => openJsonFileRecordStore(join(dir, 'records.json')), cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
});

/**
 * Encrypted items as the queue or the ingest database would hold them: each names its key id and
 * version beside nonce and ciphertext. It outlives "processes" (like a file would).
 */
class EncryptedItems implements RekeyTarget {
  readonly items = new Map<string, { keyId: string; version: number; nonce: Uint8Array; sealed: Uint8Array }>();
  rewrites = 0;
  /** Fault injection: throw on the n-th rewrite (1-based), as a crash would stop the pass. */
  failOnRewrite = 0;
  /** A target that forgets to store its rewrite. */
  forgetful = false;
  onRewrite: (() => void) | undefined;

  put(id: string, key: DataKey, plaintext: string): void {
    const nonce = p.randomBytes(12);
    const aad = enc.encode(`${id}|${key.keyId}|${key.version}`);
    this.items.set(id, { keyId: key.keyId, version: key.version, nonce, sealed: p.aeadSeal('aes-256-gcm', key.bytes, nonce, enc.encode(plaintext), aad) });
  }

  read(id: string, key: DataKey): string {
    const item = this.items.get(id);
    assert.ok(item, id);
    const aad = enc.encode(`${id}|${item.keyId}|${item.version}`);
    return new TextDecoder().decode(p.aeadOpen('aes-256-gcm', key.bytes, item.nonce, item.sealed, aad));
  }

  async stale(keyId: string, belowVersion: number, limit: number): Promise<StaleItem[]> {
    return [...this.items].filter(([, v]) => v.keyId === keyId && v.version < belowVersion).slice(0, limit).map(([id, v]) => ({ id, version: v.version }));
  }

  async rewrite(item: StaleItem, from: DataKey, to: DataKey): Promise<void> {
    this.rewrites++;
    if (this.failOnRewrite !== 0 && this.rewrites === this.failOnRewrite) throw new Error('power lost');
    this.onRewrite?.();
    assert.equal(from.version, item.version);
    const plaintext = this.read(item.id, from);
    if (!this.forgetful) this.put(item.id, to, plaintext);
  }

  versions(): number[] {
    return [...this.items.values()].map((v) => v.version);
  }
}

async function readAll(h: KeyHierarchy, data: EncryptedItems, keyId: string): Promise<string[]> {
  const out: string[] = [];
  for (const [id, item] of data.items) out.push(await h.use(keyId, item.version, (k) => data.read(id, k)));
  return out;
}

interface Env {
  dir: string;
  store: KeyStore;
  h: KeyHierarchy;
  events: KeyEvent[];
  reopen(): Promise<void>;
  close(): Promise<void>;
}

async function env(): Promise<Env> {
  const dir = mkdtempSync(join(root, 'h-'));
  const clock = new ManualClock(1_700_000_000_000);
  const events: KeyEvent[] = [];
  const open = async () => {
    const store = await openSoftwareKeyStore({ path: join(dir, 'keys.vsks'), passphrase: 'pw', scrypt: { logN: 10 } });
    const records = await openJsonFileRecordStore(join(dir, 'records.json'));
    return { store, records, h: new KeyHierarchy({ store, kekName: 'queue-kek', records, clock, events: { record: (e) => events.push(e) } }) };
  };
  let cur = await open();
  const e: Env = {
    dir, events,
    get store() { return cur.store; },
    get h() { return cur.h; },
    async reopen() {
      await e.close();
      cur = await open();
    },
    async close() {
      await cur.records.close();
      await cur.store.close();
    },
  } as Env;
  return e;
}

describe('KeyHierarchy: DEK versions and re-key passes', () => {
  it('rotation: new data uses the new version, old data stays readable, a pass moves it and destroys the old version', async () => {
    const { h, close, events } = await env();
    const data = new EncryptedItems();
    assert.equal(await h.createKey('queue-meta'), 1);
    await assert.rejects(h.createKey('queue-meta'), code('exists'));
    for (let i = 0; i < 10; i++) await h.use('queue-meta', 'current', (k) => data.put(`a${i}`, k, `reading ${i}`));
    assert.equal(await h.rotate('queue-meta'), 2);
    assert.equal(await h.currentVersion('queue-meta'), 2);
    for (let i = 0; i < 5; i++) await h.use('queue-meta', 'current', (k) => data.put(`b${i}`, k, `later ${i}`));
    assert.deepEqual(await h.versions('queue-meta'), [1, 2]);
    const before = await readAll(h, data, 'queue-meta');

    const report = await h.rekey('queue-meta', data, { batchSize: 3 });
    assert.deepEqual(report, { keyId: 'queue-meta', targetVersion: 2, rewritten: 10, totalRewritten: 10, resumed: false, destroyedVersions: [1] });
    assert.ok(data.versions().every((v) => v === 2));
    assert.deepEqual(await readAll(h, data, 'queue-meta'), before);
    assert.deepEqual(await h.versions('queue-meta'), [2]);
    await assert.rejects(h.acquire('queue-meta', 1), code('version-destroyed'));
    assert.equal(await h.rekeyStatus('queue-meta'), undefined);
    const ops = events.filter((e) => e.keyName === 'queue-meta').map((e) => `${e.operation}:${e.result}`);
    assert.deepEqual(ops, ['create:ok', 'create:error', 'rotate:ok', 'delete:ok', 'rotate:ok']);
    await close();
  });

  it('a pass cut short (crash in the middle of a batch) records its progress and resumes in a new process', async () => {
    const e = await env();
    const data = new EncryptedItems();
    await e.h.createKey('queue-meta');
    for (let i = 0; i < 23; i++) await e.h.use('queue-meta', 'current', (k) => data.put(`i${String(i).padStart(2, '0')}`, k, `v${i}`));
    await e.h.rotate('queue-meta');
    const expected = await readAll(e.h, data, 'queue-meta');

    data.failOnRewrite = 8;
    await assert.rejects(e.h.rekey('queue-meta', data, { batchSize: 5 }), /power lost/);
    const status = await e.h.rekeyStatus('queue-meta');
    assert.equal(status?.targetVersion, 2);
    assert.equal(status?.rewritten, 7, 'one full batch and two items of the next');
    assert.deepEqual(await e.h.versions('queue-meta'), [1, 2], 'the old version stays while data needs it');
    assert.equal(data.versions().filter((v) => v === 2).length, 7);
    assert.deepEqual(await readAll(e.h, data, 'queue-meta'), expected, 'everything readable mid-pass');

    // A new process: the key store, the record file and the hierarchy are reopened from disk.
    await e.reopen();
    data.failOnRewrite = 0;
    const report = await e.h.rekey('queue-meta', data, { batchSize: 5 });
    assert.equal(report.resumed, true);
    assert.equal(report.rewritten, 16);
    assert.equal(report.totalRewritten, 23);
    assert.deepEqual(report.destroyedVersions, [1]);
    assert.deepEqual(await readAll(e.h, data, 'queue-meta'), expected);
    assert.equal(await e.h.rekeyStatus('queue-meta'), undefined);
    await e.close();
  });

  it('an abort signal stops a pass between items; the next run finishes it', async () => {
    const { h, close } = await env();
    const data = new EncryptedItems();
    await h.createKey('k');
    for (let i = 0; i < 9; i++) await h.use('k', 'current', (key) => data.put(`x${i}`, key, `${i}`));
    await h.rotate('k');
    const ac = new AbortController();
    data.onRewrite = () => { if (data.rewrites === 3) ac.abort(); };
    await assert.rejects(h.rekey('k', data, { batchSize: 100, signal: ac.signal }), code('rekey-interrupted'));
    assert.equal((await h.rekeyStatus('k'))?.rewritten, 3);
    data.onRewrite = undefined;
    const report = await h.rekey('k', data);
    assert.deepEqual([report.resumed, report.rewritten, report.totalRewritten], [true, 6, 9]);
    await close();
  });

  it('a pass resumed after another rotation targets the newest version and destroys both older ones', async () => {
    const { h, close } = await env();
    const data = new EncryptedItems();
    await h.createKey('k');
    for (let i = 0; i < 6; i++) await h.use('k', 'current', (key) => data.put(`x${i}`, key, `${i}`));
    await h.rotate('k');
    data.failOnRewrite = 3;
    await assert.rejects(h.rekey('k', data, { batchSize: 10 }));
    await h.rotate('k');
    data.failOnRewrite = 0;
    const report = await h.rekey('k', data);
    assert.equal(report.targetVersion, 3);
    assert.deepEqual(report.destroyedVersions, [1, 2]);
    assert.ok(data.versions().every((v) => v === 3));
    assert.deepEqual(await h.versions('k'), [3]);
    await close();
  });

  it('refuses to loop on a target that does not store its rewrites, and keeps the old version', async () => {
    const { h, close } = await env();
    const data = new EncryptedItems();
    await h.createKey('k');
    await h.use('k', 'current', (key) => data.put('only', key, 'x'));
    await h.rotate('k');
    data.forgetful = true;
    await assert.rejects(h.rekey('k', data), code('rekey-stalled'));
    assert.deepEqual(await h.versions('k'), [1, 2]);
    await close();
  });

  it('destroyKey shreds every version', async () => {
    const { h, close } = await env();
    await h.createKey('k');
    await h.rotate('k');
    await h.destroyKey('k');
    await assert.rejects(h.acquire('k'), code('not-found'));
    await assert.rejects(h.destroyKey('k'), code('not-found'));
    await close();
  });
});

describe('KeyHierarchy: KEK rotation', () => {
  it('re-wraps every DEK under the new KEK without touching data; the old KEK can then be retired', async () => {
    const { h, store, close, dir } = await env();
    const data = new EncryptedItems();
    for (const id of ['a', 'b', 'c']) {
      await h.createKey(id);
      await h.use(id, 'current', (k) => data.put(`${id}-1`, k, `${id} one`));
      await h.rotate(id);
      await h.use(id, 'current', (k) => data.put(`${id}-2`, k, `${id} two`));
    }
    const dataBefore = structuredClone([...data.items]);
    const dekBefore = await h.use('b', 1, (k) => Uint8Array.from(k.bytes));
    const recordsBefore = readFileSync(join(dir, 'records.json'), 'utf8');

    await assert.rejects(h.retireKek('queue-kek'), code('in-use'));
    assert.deepEqual(await h.rotateKek('queue-kek-2'), { rewrapped: 6 });
    assert.equal(h.kekName, 'queue-kek-2');
    assert.deepEqual([...data.items], dataBefore, 'data untouched');
    assert.deepEqual(await h.use('b', 1, (k) => Uint8Array.from(k.bytes)), dekBefore, 'the DEK itself is unchanged');
    assert.notEqual(readFileSync(join(dir, 'records.json'), 'utf8'), recordsBefore);
    for (const id of ['a', 'b', 'c']) {
      assert.equal(await h.use(id, 1, (k) => data.read(`${id}-1`, k)), `${id} one`);
      assert.equal(await h.use(id, 2, (k) => data.read(`${id}-2`, k)), `${id} two`);
    }
    await h.rotate('a');
    await h.retireKek('queue-kek');
    assert.ok(!(await store.list()).some((k) => k.name === 'queue-kek'), 'old KEK deleted from the store');
    assert.equal(await h.use('a', 1, (k) => data.read('a-1', k)), 'a one');
    assert.equal(statSync(join(dir, 'records.json')).mode & 0o777, 0o600);
    await close();
  });

  it('a KEK rotation cut short finishes when run again', async () => {
    const e = await env();
    for (const id of ['a', 'b', 'c', 'd']) await e.h.createKey(id);
    const deks = new Map<string, Uint8Array>();
    for (const id of ['a', 'b', 'c', 'd']) deks.set(id, await e.h.use(id, 1, (k) => Uint8Array.from(k.bytes)));
    await e.close();

    // The real store behind a fault injector: the third wrap under the new KEK fails.
    const store = await openSoftwareKeyStore({ path: join(e.dir, 'keys.vsks'), passphrase: 'pw' });
    let wraps = 0;
    const faulty = new Proxy(store, {
      get(target, prop) {
        if (prop === 'wrapKey') {
          return async (kek: string, dek: Uint8Array) => {
            if (kek === 'kek-2' && ++wraps === 3) throw new KeyStoreError('io', 'injected failure');
            return target.wrapKey(kek, dek);
          };
        }
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const records = await openJsonFileRecordStore(join(e.dir, 'records.json'));
    const cut = new KeyHierarchy({ store: faulty, kekName: 'queue-kek', records });
    await assert.rejects(cut.rotateKek('kek-2', { batchSize: 2 }), code('io'));
    assert.deepEqual((await records.list()).map((r) => r.kekName), ['kek-2', 'kek-2', 'queue-kek', 'queue-kek'], 'first batch stored, second not');
    await records.close();
    await store.close();

    await e.reopen();
    assert.deepEqual(await e.h.rotateKek('kek-2'), { rewrapped: 2 });
    assert.deepEqual(await e.h.rotateKek('kek-2'), { rewrapped: 0 }, 'nothing left to do');
    for (const [id, dek] of deks) assert.deepEqual(await e.h.use(id, 1, (k) => Uint8Array.from(k.bytes)), dek, id);
    await e.close();
  });
});

describe('KeyHierarchy: zeroisation and records file', () => {
  it('use() zeroises the key afterwards, even when the callback throws; a destroyed DataKey refuses access and never prints', async () => {
    const { h, close } = await env();
    await h.createKey('k');
    let seen: Uint8Array | undefined;
    let key: DataKey | undefined;
    await h.use('k', 'current', (k) => { key = k; seen = k.bytes; assert.ok(k.bytes.some((b) => b !== 0)); });
    assert.ok(seen?.every((b) => b === 0), 'bytes zeroised');
    assert.throws(() => key?.bytes, code('key-destroyed'));
    let inThrow: Uint8Array | undefined;
    await assert.rejects(h.use('k', 'current', (k) => { inThrow = k.bytes; throw new Error('boom'); }), /boom/);
    assert.ok(inThrow?.every((b) => b === 0));
    const live = await h.acquire('k');
    const hex = Buffer.from(live.bytes).toString('hex');
    assert.ok(!inspect(live).includes(hex) && !JSON.stringify(live).includes(hex));
    assert.match(inspect(live), /DataKey\(k v1\)/);
    live.destroy();
    await close();
  });

  it('the records file is strict: truncated, altered or widely readable files are refused', async () => {
    const { h, close, dir } = await env();
    await h.createKey('k');
    await h.rotate('k');
    await close();
    const path = join(dir, 'records.json');
    const whole = readFileSync(path);
    for (let n = 0; n < whole.length - 1; n += 7) {
      writeFileSync(path, whole.subarray(0, n), { mode: 0o600 });
      await assert.rejects(openJsonFileRecordStore(path), code('records-corrupt'), `prefix ${n}`);
    }
    const doc = JSON.parse(whole.toString()) as { records: Record<string, unknown>[] };
    const variants = [
      { ...doc, extra: 1 },
      { ...doc, records: [{ ...doc.records[0], secret: 'x' }] },
      { ...doc, records: [{ ...doc.records[0], wrapped: 'not base64!' }] },
      { ...doc, records: [doc.records[0], doc.records[0]] },
      { ...doc, records: [{ ...doc.records[0], version: -1 }] },
      { ...doc, v: 2 },
    ];
    for (const v of variants) {
      writeFileSync(path, JSON.stringify(v), { mode: 0o600 });
      await assert.rejects(openJsonFileRecordStore(path), code('records-corrupt'), JSON.stringify(v).slice(0, 80));
    }
    writeFileSync(path, whole, { mode: 0o600 });
    chmodSync(path, 0o644);
    await assert.rejects(openJsonFileRecordStore(path), code('insecure-permissions'));
  });
});
