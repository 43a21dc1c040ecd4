/**
 * Databases for ingest tests: a fresh SQLite file in a temp directory, or a fresh database in the
 * PostgreSQL cluster the test file started (scripts/lib/postgres-server.ts).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import pg from 'pg';
import { startPostgres, type PostgresServer } from '../../../scripts/lib/postgres-server.ts';
import { PostgresStorage, SqliteStorage, type IngestStorage } from '../../../src/ingest/storage/index.ts';

/** A connection string to a new, empty database in `server`. */
export async function freshPostgresDatabase(server: PostgresServer): Promise<string> {
  const name = `t_${randomBytes(6).toString('hex')}`;
  const client = new pg.Client({ connectionString: server.connectionString });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${name}`);
  } finally {
    await client.end();
  }
  return server.connectionString.replace(/\/postgres$/, `/${name}`);
}

export type Backend = 'sqlite' | 'postgres';

/** A new, initialised, empty storage of `kind`. */
export async function freshStorage(kind: Backend, dir: string, server: PostgresServer | undefined): Promise<IngestStorage> {
  return (await freshDatabase(kind, dir, server)).open();
}

/** A new empty database of `kind`, and a way to open (more) connections to it. */
export async function freshDatabase(kind: Backend, dir: string, server: PostgresServer | undefined): Promise<{ open(): Promise<IngestStorage>; readonly location: string }> {
  let location: string;
  if (kind === 'sqlite') location = join(dir, `ingest-${randomBytes(6).toString('hex')}.db`);
  else {
    if (server === undefined) throw new Error('PostgreSQL not started');
    location = await freshPostgresDatabase(server);
  }
  return {
    location,
    async open() {
      const s: IngestStorage = kind === 'sqlite' ? new SqliteStorage({ path: location }) : new PostgresStorage({ connection: location });
      await s.init();
      return s;
    },
  };
}

/**
 * For a test file over both backends: a temp directory for SQLite files and a PostgreSQL cluster,
 * started before the file's tests and removed after them; `freshDatabase(kind)` opens a new
 * empty database in either.
 */
export function bothBackends(prefix: string): { readonly dir: string; freshDatabase(kind: Backend): ReturnType<typeof freshDatabase> } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  let server: PostgresServer | undefined;
  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, freshDatabase: (kind) => freshDatabase(kind, dir, server) };
}
