/**
 * WAL checkpoints on a worker thread (src/ingest/storage/sqlite-checkpointer.ts): the worker, not
 * the writer, copies committed pages into the database file, and closing stops it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SqliteStorage } from '../../../src/ingest/storage/sqlite.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-checkpointer-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('SQLite WAL checkpoints in the background', () => {
  it('copies every committed page into the database file off the writer, and stops on close', async () => {
    const path = join(dir, 'ingest.db');
    const s = new SqliteStorage({ path, checkpointInBackground: true });
    await s.init();
    await s.upsertDevice({ deviceId: 'bed-1', credential: 'certificate', credentialSha256: 'ab'.repeat(32), status: 'active', enrolledAt: 1 });
    const before = statSync(path).size;
    // Well under the writer's own autocheckpoint (10 000 pages): only the worker checkpoints these.
    const rows = Array.from({ length: 200 }, (_, i) => ({
      message: { deviceId: 'bed-1', seq: i + 1, receivedAt: i, firstTime: i, lastTime: i, keyVersion: 1, nonce: new Uint8Array(12), ciphertext: new Uint8Array(800).fill(i & 0xff) },
    }));
    assert.deepEqual(new Set(await s.storeMessages(rows)), new Set(['stored']));
    const runs = s.backgroundCheckpoints;
    await until('two more background checkpoints', () => s.backgroundCheckpoints >= runs + 2);
    assert.ok(statSync(path).size > before + 200 * 800, 'the rows are in the database file, not only in the WAL');
    const probe = new Database(path);
    const [state] = probe.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[];
    assert.equal(state?.log, state?.checkpointed, 'nothing was left for another checkpoint');
    probe.close();
    await s.close();
    const reopened = new SqliteStorage({ path });
    assert.equal(await reopened.countMessages('bed-1'), 200);
    await reopened.close();
  });

  it('is not started for an in-memory database or without the option', async () => {
    for (const s of [new SqliteStorage({ path: ':memory:', checkpointInBackground: true }), new SqliteStorage({ path: join(dir, 'plain.db') })]) {
      await s.init();
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(s.backgroundCheckpoints, 0);
      await s.close();
    }
  });
});
