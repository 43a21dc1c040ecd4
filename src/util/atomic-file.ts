/**
 * Replacing a file so that a crash leaves either the old content or the new, never a torn file:
 * the new bytes go to a temporary file in the same directory (created exclusively, O_EXCL, so
 * nothing planted under that name is written through), are fsynced, renamed over the target, and
 * the directory is fsynced so the rename itself survives power loss.
 *
 * `stageFile` splits that in two, for several files that should change together: stage them all
 * (the slow, failure-prone part), then commit each (one rename apiece). Until a commit, the old file
 * is untouched.
 *
 * @example
 *   await writeFileAtomic('/var/lib/vitalseal/state.json', text, 0o600);
 *   const staged = [await stageFile(a, textA, 0o644), await stageFile(b, textB, 0o644)];
 *   for (const s of staged) await s.commit();
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface StagedFile {
  readonly path: string;
  /** Renames the staged file over `path` and makes the rename durable. */
  commit(): Promise<void>;
  /** Removes the staged file; the target stays as it was. Idempotent. */
  abort(): Promise<void>;
}

/** Writes `data` to a fsynced temporary file beside `path`, with exactly `mode` (umask aside). */
export async function stageFile(path: string, data: Uint8Array | string, mode: number): Promise<StagedFile> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, 'wx', mode);
    await fh.chmod(mode); // the umask may have taken bits away
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = undefined;
  } catch (e) {
    await fh?.close().catch(() => undefined);
    await rm(tmp, { force: true }).catch(() => undefined);
    throw e;
  }
  let done = false;
  return {
    path,
    async commit() {
      if (done) return;
      done = true;
      await rename(tmp, path);
      await fsyncDirectory(dir);
    },
    async abort() {
      if (done) return;
      done = true;
      await rm(tmp, { force: true });
    },
  };
}

/** Replaces `path` atomically with `data` (mode `mode`). */
export async function writeFileAtomic(path: string, data: Uint8Array | string, mode: number): Promise<void> {
  const staged = await stageFile(path, data, mode);
  try {
    await staged.commit();
  } catch (e) {
    await staged.abort().catch(() => undefined);
    throw e;
  }
}

/** Makes a rename or unlink in `dir` durable. */
export async function fsyncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
