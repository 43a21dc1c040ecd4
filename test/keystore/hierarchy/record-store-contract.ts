/**
 * The WrappedKeyRecordStore contract: the JSON file store runs it here, the ingest database (SQLite
 * and PostgreSQL) in test/ingest/storage. `open` reopens the same persistent state within one fixture.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { WrappedKeyRecord, WrappedKeyRecordStore } from '../../../src/keystore/hierarchy/types.ts';
import { KeyStoreError } from '../../../src/util/errors.ts';

export interface RecordStoreFixture {
  open(): Promise<WrappedKeyRecordStore>;
  cleanup(): Promise<void>;
}

function code(c: string): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof KeyStoreError, `expected KeyStoreError, got ${String(e)}`);
    assert.equal(e.code, c);
    return true;
  };
}

function rec(keyId: string, version: number, fill = version): WrappedKeyRecord {
  return { keyId, version, kekName: 'kek-a', wrapped: new Uint8Array(50).fill(fill), createdAt: 1_700_000_000_000 + version };
}

export function runRecordStoreContract(name: string, makeFixture: () => Promise<RecordStoreFixture>): void {
  describe(`WrappedKeyRecordStore contract: ${name}`, () => {
    let fixture: RecordStoreFixture;
    let store: WrappedKeyRecordStore;
    before(async () => {
      fixture = await makeFixture();
      store = await fixture.open();
    });
    after(async () => {
      await store?.close().catch(() => undefined);
      await fixture?.cleanup();
    });

    it('inserts and lists records sorted by key id and version; refuses a taken (key id, version)', async () => {
      assert.deepEqual(await store.list('k1'), []);
      await store.insert(rec('k1', 2));
      await store.insert(rec('k0', 1));
      await store.insert(rec('k1', 1));
      assert.deepEqual((await store.list()).map((r) => `${r.keyId}/${r.version}`), ['k0/1', 'k1/1', 'k1/2']);
      assert.deepEqual(await store.list('k1'), [rec('k1', 1), rec('k1', 2)]);
      assert.deepEqual(await store.get('k1', 2), rec('k1', 2));
      assert.equal(await store.get('k1', 3), undefined);
      await assert.rejects(store.insert(rec('k1', 2, 9)), code('exists'));
      assert.deepEqual(await store.get('k1', 2), rec('k1', 2), 'the refused insert changed nothing');
    });

    it('hands out copies: changing a returned record does not change the store', async () => {
      const r = await store.get('k1', 1);
      assert.ok(r);
      r.wrapped.fill(0xee);
      assert.deepEqual(await store.get('k1', 1), rec('k1', 1));
    });

    it('replaces records all together or not at all', async () => {
      await store.replace([{ ...rec('k1', 1), kekName: 'kek-b', wrapped: new Uint8Array(50).fill(0x11) }, { ...rec('k1', 2), kekName: 'kek-b' }]);
      assert.deepEqual((await store.list('k1')).map((r) => r.kekName), ['kek-b', 'kek-b']);
      await assert.rejects(store.replace([{ ...rec('k0', 1), kekName: 'kek-c' }, rec('k9', 1)]), code('not-found'));
      assert.equal((await store.get('k0', 1))?.kekName, 'kek-a', 'nothing replaced when one record is missing');
    });

    it('removes versions idempotently', async () => {
      await store.insert(rec('k2', 1));
      await store.insert(rec('k2', 2));
      await store.remove('k2', [1]);
      await store.remove('k2', [1]);
      assert.deepEqual((await store.list('k2')).map((r) => r.version), [2]);
    });

    it('keeps re-key bookkeeping per key id', async () => {
      assert.equal(await store.getRekey('k2'), undefined);
      const state = { keyId: 'k2', targetVersion: 2, startedAt: 5, updatedAt: 6, rewritten: 10, resumed: 1 };
      await store.putRekey(state);
      await store.putRekey({ ...state, keyId: 'k1', targetVersion: 3 });
      assert.deepEqual(await store.getRekey('k2'), state);
      await store.putRekey({ ...state, rewritten: 20 });
      assert.equal((await store.getRekey('k2'))?.rewritten, 20);
      await store.clearRekey('k2');
      assert.equal(await store.getRekey('k2'), undefined);
      assert.equal((await store.getRekey('k1'))?.targetVersion, 3);
    });

    it('refuses invalid records', async () => {
      for (const bad of [{ ...rec('k3', 1), keyId: '../x' }, { ...rec('k3', 1), version: 0 }, { ...rec('k3', 1), wrapped: new Uint8Array(0) }, { ...rec('k3', 1), kekName: '' }]) {
        await assert.rejects(store.insert(bad), code('invalid-record'), JSON.stringify({ ...bad, wrapped: bad.wrapped.length }));
      }
    });

    it('keeps everything across a close and reopen', async () => {
      const before = await store.list();
      const rekey = await store.getRekey('k1');
      await store.close();
      await assert.rejects(store.list(), code('closed'));
      store = await fixture.open();
      assert.deepEqual(await store.list(), before);
      assert.deepEqual(await store.getRekey('k1'), rekey);
    });
  });
}
