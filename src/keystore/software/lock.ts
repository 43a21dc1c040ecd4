/**
 * A lock file beside the key file, so two processes (the agent and an operator's `vitalseal keys`)
 * never interleave read-modify-write cycles on the same store.
 *
 * `<file>.lock` is created exclusively (O_EXCL) and holds the owner's pid. A lock whose pid no longer
 * runs on this machine is stale (its process crashed) and is removed. A live lock is retried for
 * `timeoutMs`, then refused with `KeyStoreError('locked')`.
 */
import { open, readFile, rm } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { KeyStoreError } from '../../util/errors.ts';

export interface FileLockOptions {
  readonly timeoutMs?: number;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: the process exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function tryAcquire(lockPath: string): Promise<boolean> {
  try {
    const fh = await open(lockPath, 'wx', 0o600);
    try {
      await fh.writeFile(`${process.pid}\n`);
    } finally {
      await fh.close();
    }
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new KeyStoreError('file-io', `cannot create lock ${lockPath}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
    }
  }
  // Held: stale if its pid is gone (or unreadable garbage left by a crash mid-write).
  let text = '';
  try {
    text = await readFile(lockPath, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false; // released meanwhile: retry
    throw e;
  }
  const pid = Number.parseInt(text.trim(), 10);
  if (!Number.isSafeInteger(pid) || pid <= 0 || (pid !== process.pid && !processAlive(pid))) {
    await rm(lockPath, { force: true });
  }
  return false;
}

/** Runs `fn` holding `<path>.lock`. */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, opts: FileLockOptions = {}): Promise<T> {
  const lockPath = `${path}.lock`;
  const deadline = Date.now() + (opts.timeoutMs ?? 5000);
  let wait = 2;
  while (!(await tryAcquire(lockPath))) {
    if (Date.now() > deadline) {
      throw new KeyStoreError('locked', `key file ${path} is locked by another process (${lockPath}); try again when it is done`);
    }
    await delay(wait);
    wait = Math.min(wait * 2, 50);
  }
  try {
    return await fn();
  } finally {
    await rm(lockPath, { force: true });
  }
}
