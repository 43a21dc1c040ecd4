/**
 * Data-key rotation and the background re-key of stored messages, on SQLite and PostgreSQL:
 * rotation by age, the grace period, an interrupted pass resumed by a new process, old versions
 * destroyed only when nothing needs them, and one worker at a time across instances.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startPostgres, type PostgresServer } from '../../scripts/lib/postgres-server.ts';
import { encodeVitalsPack } from '../../src/codec/vitals.ts';
import { openAtRest } from '../../src/ingest/at-rest.ts';
import type { IngestCore } from '../../src/ingest/core.ts';
import { dataKeyId } from '../../src/ingest/data-keys.ts';
import { MessageRekeyTarget } from '../../src/ingest/rekey.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { batchFor, startHarness, type Harness } from './support/harness.ts';

let pg: PostgresServer | undefined;
before(async () => {
  pg = await startPostgres();
});
after(async () => {
  await pg?.stop();
});

async function readAll(core: IngestCore, deviceId: string): Promise<Uint8Array[]> {
  const rows = await core.storage.readMessages(deviceId, 0, Number.MAX_SAFE_INTEGER);
  const out: Uint8Array[] = [];
  for (const r of rows) out.push(openAtRest(core.provider, await core.dataKeys.version(deviceId, r.keyVersion), r));
  return out;
}

async function versionsOf(core: IngestCore, deviceId: string): Promise<number[]> {
  return [...new Set((await core.storage.readMessages(deviceId, 0, Number.MAX_SAFE_INTEGER)).map((r) => r.keyVersion))].sort();
}

for (const backend of ['sqlite', 'postgres'] as const) {
  describe(`data-key rotation and re-key (${backend})`, () => {
    let h: Harness;
    before(async () => {
      h = await startHarness(backend, pg);
    });
    after(async () => {
      await h?.close();
    });

    it('rotates by age, waits out the grace period, re-keys every row, then destroys the old version', async () => {
      const d = await h.enrol('bed-rk');
      for (let seq = 1; seq <= 30; seq++) await h.core.service?.accept({ payload: d.seal(seq), contentFormat: 96, peer: d.peer });
      const w = h.core.rekey;
      assert.deepEqual((await w.runOnce()).devices, [], 'nothing is due yet');
      h.clock.advance(w.rotateAfterMs);
      const first = await w.runOnce();
      assert.deepEqual(first.devices.map((x) => [x.deviceId, x.rotatedTo, x.report]), [['bed-rk', 2, undefined]], 'rotated, re-key waits for the grace period');
      for (let seq = 31; seq <= 35; seq++) await h.core.service?.accept({ payload: d.seal(seq), contentFormat: 96, peer: d.peer });
      assert.deepEqual(await versionsOf(h.core, 'bed-rk'), [1, 2], 'new rows use v2 at once');
      h.clock.advance(w.graceMs);
      const second = await w.runOnce();
      assert.equal(second.devices[0]?.report?.rewritten, 30);
      assert.deepEqual(second.devices[0]?.report?.destroyedVersions, [1]);
      assert.deepEqual(await versionsOf(h.core, 'bed-rk'), [2]);
      assert.deepEqual(await h.core.hierarchy.versions(dataKeyId('bed-rk')), [2]);
      const plain = await readAll(h.core, 'bed-rk');
      assert.equal(plain.length, 35);
      assert.deepEqual(plain[0], encodeVitalsPack(batchFor('bed-rk', 1)));
      assert.equal(h.core.metrics.rekeyed.get(), 30);
      await assert.rejects(h.core.hierarchy.acquire(dataKeyId('bed-rk'), 1), (e: unknown) => e instanceof KeyStoreError && e.code === 'version-destroyed');
    });

    it('the message path\'s cached data key: the current version while fresh, nothing once expired or rotated', async () => {
      const d = await h.enrol('bed-ck');
      const keys = h.core.dataKeys;
      assert.equal(keys.cachedCurrent('bed-ck'), undefined, 'nothing before the first message');
      assert.equal((await h.core.service?.accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer }))?.status, 'accepted');
      assert.equal(keys.cachedCurrent('bed-ck')?.version, 1);
      h.clock.advance(keys.ttlMs);
      assert.equal(keys.cachedCurrent('bed-ck'), undefined, 'expired: the next message unwraps again');
      assert.equal((await keys.current('bed-ck')).version, 1);
      await h.core.rekey.rotate('bed-ck');
      assert.equal(keys.cachedCurrent('bed-ck'), undefined, 'a rotation forgets the cached version');
      assert.equal((await h.core.service?.accept({ payload: d.seal(2), contentFormat: 96, peer: d.peer }))?.status, 'accepted');
      assert.equal(keys.cachedCurrent('bed-ck')?.version, 2);
      assert.deepEqual(await versionsOf(h.core, 'bed-ck'), [1, 2]);
    });

    it('an interrupted pass keeps its progress and is finished by another process', async () => {
      const d = await h.enrol('bed-int');
      for (let seq = 1; seq <= 40; seq++) await h.core.service?.accept({ payload: d.seal(seq), contentFormat: 96, peer: d.peer });
      await h.core.rekey.rotate('bed-int');
      const ac = new AbortController();
      let n = 0;
      const target = new MessageRekeyTarget(h.core.storage, 'bed-int', { onRewrite: () => { if (++n === 17) ac.abort(); } });
      await assert.rejects(h.core.hierarchy.rekey(dataKeyId('bed-int'), target, { batchSize: 5, signal: ac.signal }),
        (e: unknown) => e instanceof KeyStoreError && e.code === 'rekey-interrupted');
      const state = await h.core.hierarchy.rekeyStatus(dataKeyId('bed-int'));
      assert.equal(state?.rewritten, 17);
      assert.deepEqual(await versionsOf(h.core, 'bed-int'), [1, 2], 'half done; both versions still held');
      // A new process (another core on the same database) resumes and finishes it.
      const next = await h.openCore({ auditPath: join(h.dir, 'audit-next.log') });
      try {
        const r = await next.rekey.runOnce({ deviceIds: ['bed-int'], force: true });
        const report = r.devices[0]?.report;
        assert.equal(report?.resumed, true);
        assert.equal(report?.rewritten, 23);
        assert.equal(report?.totalRewritten, 40);
        assert.deepEqual(await versionsOf(next, 'bed-int'), [2]);
        assert.equal((await readAll(next, 'bed-int')).length, 40);
        assert.equal(await next.hierarchy.rekeyStatus(dataKeyId('bed-int')), undefined);
      } finally {
        await next.close();
      }
    });

    it('the work list walks the (device, seq) key with a cursor, and a closing sweep from the start finds a row left behind', async () => {
      const d = await h.enrol('bed-cur');
      for (let seq = 1; seq <= 12; seq++) await h.core.service?.accept({ payload: d.seal(seq), contentFormat: 96, peer: d.peer });
      const target = new MessageRekeyTarget(h.core.storage, 'bed-cur');
      const id = dataKeyId('bed-cur');
      const seqs = async () => (await target.stale(id, 2, 5)).map((x) => Number(x.id));
      // Moves rows to version 2 as a re-key pass would (the bytes do not matter to the work list).
      const move = (list: number[]) => Promise.all(list.map((seq) => h.core.storage.rewriteMessage('bed-cur', seq, 1, 2, Uint8Array.of(0), Uint8Array.of(0))));
      const first = await seqs();
      assert.deepEqual(first, [1, 2, 3, 4, 5]);
      await move(first.filter((s) => s !== 3)); // seq 3's rewrite "lost" to another writer: still v1
      assert.deepEqual(await seqs(), [6, 7, 8, 9, 10], 'the cursor does not list 3 again in this sweep');
      await move([6, 7, 8, 9, 10]);
      assert.deepEqual(await seqs(), [11, 12]);
      await move([11, 12]);
      assert.deepEqual(await seqs(), [3], 'the end of the sweep starts a closing sweep from the first message');
      await move([3]);
      assert.deepEqual(await seqs(), [], 'empty only after a whole sweep found nothing');
    });

    it('instances sharing a database run the worker one at a time', async () => {
      const other = await h.openCore({ auditPath: join(h.dir, 'audit-lease.log') });
      try {
        assert.equal(await h.core.storage.tryLease('rekey-worker', 'someone-else', h.clock.now(), 60_000), true);
        assert.equal((await other.rekey.runOnce()).ran, false);
        await h.core.storage.releaseLease('rekey-worker', 'someone-else');
        assert.equal((await other.rekey.runOnce()).ran, true);
      } finally {
        await other.close();
      }
    });
  });
}
