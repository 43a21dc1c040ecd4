/**
 * The message path's SQLite batches on a worker thread (src/ingest/storage/sqlite-writer.ts): what
 * the worker commits is what the inline path commits, a bad row costs only its own message, a
 * worker that cannot run leaves the batches to the main connection, and closing waits for the
 * batches already handed over.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { GroupCommit } from '../../../src/ingest/group-commit.ts';
import { SqliteStorage } from '../../../src/ingest/storage/sqlite.ts';
import { startMessageWriter } from '../../../src/ingest/storage/sqlite-writer.ts';
import type { StoreRequest } from '../../../src/ingest/storage/types.ts';
import { StorageError } from '../../../src/util/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-writer-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function req(deviceId: string, seq: number, seenAt?: number): StoreRequest {
  const message = {
    deviceId, seq, receivedAt: 1000 + seq, firstTime: seq * 1000, lastTime: seq * 1000 + 999, keyVersion: 1,
    nonce: Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, seq & 0xff),
    // A view into a larger buffer, as ciphertexts can be: only its own bytes may reach the row.
    ciphertext: new Uint8Array(100).fill(seq & 0xff).subarray(10, 74),
  };
  return seenAt === undefined ? { message } : { message, activity: { seenAt, transport: 'mqtts', suite: 'TLS_AES_128_GCM_SHA256 / chacha20-poly1305', sealingEpoch: 'e1', epochStartedAt: 1 } };
}

async function opened(name: string): Promise<SqliteStorage> {
  const s = new SqliteStorage({ path: join(dir, name), writeMessagesInBackground: true });
  await s.init();
  for (const id of ['bed-1', 'bed-2']) await s.upsertDevice({ deviceId: id, credential: 'certificate', credentialSha256: 'ab'.repeat(32), status: 'active', enrolledAt: 1 });
  return s;
}

describe('SQLite message batches on a writer thread', () => {
  it('commits a batch on the worker: results per row, duplicates inside the batch and before it, last-seen moved forward, rows readable at once', async () => {
    const s = await opened('batch.db');
    assert.equal(await s.storeMessage(req('bed-1', 2).message), 'stored');
    const results = await s.storeMessages([req('bed-1', 1, 5000), req('bed-1', 2), req('bed-2', 1, 7000), req('bed-1', 1), req('bed-1', 3, 6000)]);
    assert.deepEqual(results, ['stored', 'duplicate', 'stored', 'duplicate', 'stored']);
    assert.equal(s.backgroundBatches, 1, 'the worker, not the main connection, wrote the batch');
    const rows = await s.readMessages('bed-1', 0, Number.MAX_SAFE_INTEGER);
    assert.deepEqual(rows.map((m) => m.seq), [1, 2, 3]);
    assert.deepEqual([...(rows[0]?.ciphertext ?? [])], new Array(64).fill(1), 'the view\'s bytes only');
    assert.deepEqual([...(rows[2]?.nonce ?? [])], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    const d1 = await s.getDevice('bed-1');
    assert.equal(d1?.lastSeenAt, 6000);
    assert.equal(d1?.sealingEpoch, 'e1');
    assert.equal((await s.getDevice('bed-2'))?.lastSeenAt, 7000);
    await s.close();
  });

  it('a row the database refuses fails only its own message: the group commit stores the others one by one', async () => {
    const s = await opened('bad-row.db');
    const commits = new GroupCommit(s);
    const bad = req('bed-1', 2);
    const broken: StoreRequest = { message: { ...bad.message, firstTime: Number.NaN } }; // NOT NULL refuses it
    const outcomes = await Promise.all([req('bed-1', 1), broken, req('bed-1', 3)].map((r) => commits.store(r).then((x) => x, (e: unknown) => e)));
    assert.equal(outcomes[0], 'stored');
    assert.equal(outcomes[2], 'stored');
    assert.ok(outcomes[1] instanceof Error, 'the broken row is not acknowledged');
    assert.deepEqual((await s.readMessages('bed-1', 0, Number.MAX_SAFE_INTEGER)).map((m) => m.seq), [1, 3]);
    await s.close();
  });

  it('carries rows of any shape: byte strings of every length (empty too) land in their own rows and columns; mixed column kinds are refused', async () => {
    const path = join(dir, 'shapes.db');
    const db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (k TEXT PRIMARY KEY, a BLOB NOT NULL, n INTEGER NOT NULL, b BLOB NOT NULL)');
    const writer = startMessageWriter<readonly [string, Uint8Array, number, Uint8Array]>(path, { insertSql: 'INSERT INTO t VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING', pragmas: [] });
    const rows = Array.from({ length: 40 }, (_, i) => [`k${i}`, new Uint8Array(i).fill(i), i * 7, new Uint8Array(40 - i).fill(255 - i)] as const);
    assert.deepEqual(new Set(await writer.store([...rows, rows[3] as (typeof rows)[number]])), new Set(['stored', 'duplicate']));
    for (const r of db.prepare('SELECT * FROM t').all() as { k: string; a: Buffer; n: number; b: Buffer }[]) {
      const i = Number(r.k.slice(1));
      assert.deepEqual([r.a.length, r.n, r.b.length], [i, i * 7, 40 - i]);
      assert.ok(r.a.every((x) => x === i) && r.b.every((x) => x === 255 - i), `row ${i}'s bytes`);
    }
    await assert.rejects(writer.store([['x', new Uint8Array(1), 1, new Uint8Array(1)], ['y', 5 as unknown as Uint8Array, 1, new Uint8Array(1)]]), RangeError);
    await assert.rejects(writer.store([rows[0] as (typeof rows)[number]], [{ seen: 1, transport: 't', suite: 's', epoch: null, epochStart: null, device: 'x' }]), RangeError);
    await writer.close();
    db.close();
  });

  it('answers a batch it cannot store with a StorageError naming the database\'s code, and keeps running', async () => {
    const path = join(dir, 'no-table.db');
    const s = new SqliteStorage({ path });
    await s.init();
    await s.close();
    const writer = startMessageWriter(path, { insertSql: 'INSERT INTO missing_table VALUES (?, ?, ?, ?, ?, ?, ?, ?)', touchSql: 'SELECT @seen, @transport, @suite, @epoch, @epochStart, @device', pragmas: [] });
    const row = ['bed-1', 1, 1, 1, 1, 1, new Uint8Array(12), new Uint8Array(16)] as const;
    for (let i = 0; i < 2; i++) {
      await assert.rejects(writer.store([row], []), (e: unknown) => e instanceof StorageError && e.code === 'storage-write' && /SQLITE_ERROR/.test(e.message));
    }
    assert.equal(writer.alive, true);
    await writer.close();
    await assert.rejects(writer.store([row], []), (e: unknown) => e instanceof StorageError && e.code === 'storage-writer-stopped');
  });

  it('a worker that cannot open the database stops; the storage then writes its batches on the main connection', async () => {
    const writer = startMessageWriter(join(dir, 'no-such-dir', 'x.db'), { insertSql: 'SELECT 1', touchSql: 'SELECT 1', pragmas: [] });
    const end = Date.now() + 10_000;
    while (writer.alive && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    assert.equal(writer.alive, false);
    await assert.rejects(writer.store([], []), (e: unknown) => e instanceof StorageError && e.code === 'storage-writer-stopped');
    await writer.close();
  });

  it('close() waits for the batches already handed over: they are committed and answered', async () => {
    const path = join(dir, 'close.db');
    const s = await opened('close.db');
    const pending = s.storeMessages(Array.from({ length: 50 }, (_, i) => req('bed-2', i + 1, 100 + i)));
    await s.close();
    assert.deepEqual(new Set(await pending), new Set(['stored']));
    const reopened = new SqliteStorage({ path });
    assert.equal(await reopened.countMessages('bed-2'), 50);
    await reopened.close();
    await assert.rejects(s.storeMessages([req('bed-2', 99)]), (e: unknown) => e instanceof StorageError && e.code === 'storage-closed');
  });

  it('is not started for an in-memory database', async () => {
    const s = new SqliteStorage({ path: ':memory:', writeMessagesInBackground: true });
    await s.init();
    await s.upsertDevice({ deviceId: 'bed-1', credential: 'certificate', credentialSha256: 'ab'.repeat(32), status: 'active', enrolledAt: 1 });
    assert.deepEqual(await s.storeMessages([req('bed-1', 1)]), ['stored']);
    assert.equal(s.backgroundBatches, 0);
    await s.close();
  });
});
