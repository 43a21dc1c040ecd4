/**
 * The group commit (src/ingest/group-commit.ts) over both real backends: what one turn's stores
 * become (one transaction), what each caller is told, when it is told, and what a failing row does
 * to its neighbours.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GroupCommit } from '../../src/ingest/group-commit.ts';
import type { DeviceRegistration, StoredMessage } from '../../src/ingest/storage/index.ts';
import { bothBackends, type Backend } from './support/databases.ts';

const databases = bothBackends('vitalseal-group-commit-');

function msg(deviceId: string, seq: number, over: Partial<StoredMessage> = {}): StoredMessage {
  return {
    deviceId, seq, receivedAt: 1_700_000_000_000 + seq, firstTime: 1_700_000_000_000 + seq * 1000, lastTime: 1_700_000_000_000 + seq * 1000 + 999,
    keyVersion: 1, nonce: Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, seq & 0xff), ciphertext: Uint8Array.from({ length: 64 }, (_, i) => (i + seq) & 0xff), ...over,
  };
}

function reg(deviceId: string): DeviceRegistration {
  return { deviceId, credential: 'certificate', credentialSha256: 'ab'.repeat(32), status: 'active', enrolledAt: 1000 };
}

const outcome = (p: Promise<'stored' | 'duplicate'>) => p.then((r) => r, (e: unknown) => `failed: ${(e as Error).name}`);

for (const backend of ['sqlite', 'postgres'] as Backend[]) {
  describe(`group commit over ${backend}`, () => {
    it('stores one turn in one transaction: duplicates (stored before, or twice in the batch) answered once stored, a gap inside the batch persisted', async () => {
      const db = await databases.freshDatabase(backend);
      const s = await db.open();
      await s.upsertDevice(reg('bed-1'));
      await s.upsertDevice(reg('bed-2'));
      assert.equal(await s.storeMessage(msg('bed-1', 2)), 'stored');
      const batches: number[] = [];
      const commits = new GroupCommit(s, { onBatch: (n) => batches.push(n) });
      const seen = (at: number) => ({ seenAt: at, transport: 'mqtts', suite: 'test' });
      const results = await Promise.all([
        commits.store({ message: msg('bed-1', 1), activity: seen(10) }),
        commits.store({ message: msg('bed-1', 2) }),                        // stored before: a redelivery
        commits.store({ message: msg('bed-1', 3) }),
        commits.store({ message: msg('bed-1', 3, { ciphertext: Uint8Array.of(7) }) }), // the same seq twice in one batch
        commits.store({ message: msg('bed-1', 5), activity: seen(30) }),    // 4 never came: a gap
        commits.store({ message: msg('bed-2', 1), activity: seen(20) }),
      ]);
      assert.deepEqual(batches, [6], 'one transaction for the turn');
      assert.deepEqual(results, ['stored', 'duplicate', 'stored', 'duplicate', 'stored', 'stored']);
      assert.deepEqual((await s.readMessages('bed-1', 0, Number.MAX_SAFE_INTEGER)).map((m) => [m.seq, m.ciphertext.length]), [[1, 64], [2, 64], [3, 64], [5, 64]],
        'stored once each; the first of a repeat is the one kept');
      assert.deepEqual(await s.gaps('bed-1'), [{ from: 4, to: 4 }]);
      assert.equal(await s.highestSeq('bed-1'), 5);
      assert.equal((await s.getDevice('bed-1'))?.lastSeenAt, 30, 'the latest activity of the batch');
      await s.close();
      // Persisted: another connection (a restarted instance) sees the same sequence state.
      const again = await db.open();
      assert.deepEqual(await again.gaps('bed-1'), [{ from: 4, to: 4 }]);
      assert.equal(await again.countMessages('bed-2'), 1);
      await again.close();
    });

    it('answers a caller only once its batch is committed, so a crash before the acknowledgement loses nothing: the redelivery is a duplicate, stored once', async () => {
      const db = await databases.freshDatabase(backend);
      const writer = await db.open();
      const reader = await db.open(); // another connection: sees only what is committed
      await writer.upsertDevice(reg('bed-3'));
      const commits = new GroupCommit(writer);
      const visibleWhenAnswered = await Promise.all([1, 2, 3, 4].map((seq) => commits.store({ message: msg('bed-3', seq) })
        .then(async (r) => ({ r, committed: (await reader.readMessages('bed-3', 0, Number.MAX_SAFE_INTEGER)).some((m) => m.seq === seq) }))));
      assert.deepEqual(visibleWhenAnswered, [1, 2, 3, 4].map(() => ({ r: 'stored', committed: true })));
      // The process dies here, before any acknowledgement leaves; the broker or device sends them all again.
      await writer.close();
      const restarted = await db.open();
      const redelivered = await Promise.all([1, 2, 3, 4, 5].map((seq) => new GroupCommit(restarted).store({ message: msg('bed-3', seq) })));
      assert.deepEqual(redelivered, ['duplicate', 'duplicate', 'duplicate', 'duplicate', 'stored']);
      assert.equal(await reader.countMessages('bed-3'), 5);
      await restarted.close();
      await reader.close();
    });

    it('a row the database refuses fails alone: every other caller of its batch gets its own outcome', async () => {
      const db = await databases.freshDatabase(backend);
      const s = await db.open();
      await s.upsertDevice(reg('bed-4'));
      assert.equal(await s.storeMessage(msg('bed-4', 2)), 'stored');
      const batches: number[] = [];
      const commits = new GroupCommit(s, { onBatch: (n) => batches.push(n) });
      // key_version is NOT NULL / an integer: NaN is refused by both databases, failing the whole batch statement.
      const results = await Promise.all([
        outcome(commits.store({ message: msg('bed-4', 1) })),
        outcome(commits.store({ message: msg('bed-4', 2) })),
        outcome(commits.store({ message: msg('bed-4', 3, { keyVersion: Number.NaN }) })),
        outcome(commits.store({ message: msg('bed-4', 4) })),
      ]);
      assert.equal(results[2]?.startsWith('failed'), true, `the bad row fails: ${String(results[2])}`);
      assert.deepEqual([results[0], results[1], results[3]], ['stored', 'duplicate', 'stored']);
      assert.deepEqual(batches, [], 'the batch as a whole did not commit');
      assert.deepEqual((await s.readMessages('bed-4', 0, Number.MAX_SAFE_INTEGER)).map((m) => m.seq), [1, 2, 4]);
      await s.close();
    });
  });
}
