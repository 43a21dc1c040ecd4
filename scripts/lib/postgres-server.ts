/**
 * Starts a private PostgreSQL cluster from Debian's packages on a free loopback port, in a temp
 * directory, with a password generated here (SCRAM auth), for tests, benchmarks and the demo.
 * PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user.
 *
 * @example
 *   const pg = await startPostgres();
 *   const storage = new PostgresStorage({ connection: pg.connectionString });
 *   ...
 *   await pg.stop();
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.ts';

export interface PostgresServer {
  readonly port: number;
  readonly connectionString: string;
  readonly dir: string;
  stop(): Promise<void>;
}

function binDir(): string {
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base) ? readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'postgres'))).sort((a, b) => Number(b) - Number(a)) : [];
  if (versions.length === 0) throw new Error('PostgreSQL server not found: install the Debian package "postgresql" (scripts/setup does)');
  return join(base, versions[0] as string, 'bin');
}

export async function startPostgres(opts: { dir?: string } = {}): Promise<PostgresServer> {
  const bin = binDir();
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'vitalseal-pg-'));
  const data = join(dir, 'data');
  const asRoot = process.getuid?.() === 0;
  const password = randomBytes(18).toString('base64url');
  const pwfile = join(dir, 'pw');
  writeFileSync(pwfile, password, { mode: 0o600 });
  let uid: number | undefined;
  let gid: number | undefined;
  if (asRoot) {
    const id = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
    const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
    uid = Number(id.stdout.trim());
    gid = Number(g.stdout.trim());
    if (!Number.isInteger(uid) || id.status !== 0) throw new Error('running as root but no "postgres" user exists');
    chownSync(dir, uid, gid);
    chownSync(pwfile, uid, gid);
  }
  const runAs = { ...(uid === undefined ? {} : { uid }), ...(gid === undefined ? {} : { gid }) };
  const init = spawnSync(join(bin, 'initdb'), ['-D', data, '-U', 'vitalseal', '--pwfile', pwfile, '-A', 'scram-sha-256', '--no-sync', '-E', 'UTF8'],
    { encoding: 'utf8', ...runAs });
  rmSync(pwfile, { force: true });
  if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr}`);
  const port = await freePort();
  const child: ChildProcess = spawn(join(bin, 'postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1',
    '-c', 'fsync=on', '-c', 'max_connections=200'], { stdio: ['ignore', 'ignore', 'pipe'], ...runAs });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  for (let i = 0; ; i++) {
    const ready = spawnSync(join(bin, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(port)], { encoding: 'utf8' });
    if (ready.status === 0) break;
    if (child.exitCode !== null || i > 300) {
      child.kill('SIGKILL');
      throw new Error(`PostgreSQL did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const connectionString = `postgres://vitalseal:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  let stopped = false;
  return {
    port, connectionString, dir,
    async stop() {
      if (stopped) return;
      stopped = true;
      child.kill('SIGINT'); // fast shutdown
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
      if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
    },
  };
}
