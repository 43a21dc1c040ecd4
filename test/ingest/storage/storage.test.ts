import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PostgresStorage, SqliteStorage, type IngestStorage } from '../../../src/ingest/storage/index.ts';
import { startPostgres, type PostgresServer } from '../../../scripts/lib/postgres-server.ts';
import { runRecordStoreContract } from '../../keystore/hierarchy/record-store-contract.ts';
import { freshDatabase, freshStorage, type Backend } from '../support/databases.ts';
import { runStorageContract } from './contract.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-sqlite-'));
let pgServer: PostgresServer | undefined;
before(async () => {
  pgServer = await startPostgres();
});
after(async () => {
  await pgServer?.stop();
  rmSync(dir, { recursive: true, force: true });
});

// One database file shared by the suite, as a deployment has: device ids keep the tests apart.
runStorageContract('sqlite (file, WAL)', async () => new SqliteStorage({ path: join(dir, 'ingest.db') }));
// As the service opens it: the message batches committed by a writer thread on a second connection.
runStorageContract('sqlite (file, WAL, message batches on a writer thread)', async () => new SqliteStorage({ path: join(dir, 'ingest-writer.db'), writeMessagesInBackground: true, checkpointInBackground: true }));
runStorageContract('postgres (Debian PostgreSQL on loopback)', async () => {
  if (pgServer === undefined) throw new Error('PostgreSQL not started');
  return new PostgresStorage({ connection: pgServer.connectionString });
});

// The key hierarchy's records live in the ingest database: the same contract the JSON file runs.
for (const backend of ['sqlite', 'postgres'] as const) {
  runRecordStoreContract(`ingest database (${backend})`, async () => {
    const db = await freshDatabase(backend, dir, pgServer);
    const opened: IngestStorage[] = [];
    return {
      // Each open is a new connection to the same database, as a restarted process makes.
      async open() {
        const s = await db.open();
        opened.push(s);
        return s.keyRecords();
      },
      async cleanup() {
        for (const s of opened) await s.close();
      },
    };
  });
}

describe('isEmpty: what a restore target must be', () => {
  for (const backend of ['sqlite', 'postgres'] as const satisfies readonly Backend[]) {
    it(backend, async () => {
      const s = await freshStorage(backend, dir, pgServer);
      assert.equal(await s.isEmpty(), true);
      await s.putEnrolToken({ tokenSha256: 'a'.repeat(64), deviceId: 'x', createdAt: 1, expiresAt: 2 });
      assert.equal(await s.isEmpty(), false);
      const t = await freshStorage(backend, dir, pgServer);
      await t.keyRecords().insert({ keyId: 'dek.x', version: 1, kekName: 'kek', wrapped: Uint8Array.of(1), createdAt: 1 });
      assert.equal(await t.isEmpty(), false);
      await s.close();
      await t.close();
    });
  }
});
