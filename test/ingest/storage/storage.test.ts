import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { PostgresStorage, SqliteStorage } from '../../../src/ingest/storage/index.ts';
import { startPostgres, type PostgresServer } from '../../../scripts/lib/postgres-server.ts';
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
runStorageContract('postgres (Debian PostgreSQL on loopback)', async () => {
  if (pgServer === undefined) throw new Error('PostgreSQL not started');
  return new PostgresStorage({ connection: pgServer.connectionString });
});
