/**
 * A small file system of its own for the end-to-end suite's disk-full scenario: a tmpfs with a size
 * limit, mounted on a fresh directory, so a device's queue can run out of space without touching
 * anything else. `fill(leaveBytes)` takes space with a filler file (another program filling the
 * device's disk), `release()` gives it back.
 *
 * Needs root (mount). Mount points carry the creating process id; `removeStaleDisks()` unmounts
 * what a crashed earlier run left behind.
 *
 * @example
 *   const disk = await mountSmallDisk({ sizeBytes: 1 << 20 });
 *   // queue.dir under disk.dir
 *   disk.fill(8 * 1024);      // 8 KiB left
 *   disk.release();
 *   await disk.unmount();
 */
import { execFile, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pidAlive } from './processes.ts';

const run = promisify(execFile);
const PREFIX = 'vitalseal-disk-';

export interface SmallDisk {
  readonly dir: string;
  readonly sizeBytes: number;
  /** Bytes free right now. */
  free(): number;
  /** Writes a filler file until at most `leaveBytes` stay free. */
  fill(leaveBytes: number): void;
  /** Deletes the filler. */
  release(): void;
  unmount(): Promise<void>;
}

/** Why a tmpfs cannot be mounted here, or `undefined` when it can. */
export function smallDiskUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'tmpfs mounts need Linux';
  if (process.getuid?.() !== 0) return 'mounting a size-limited tmpfs needs root';
  return undefined;
}

/** Unmounts and removes disks left by processes that are gone; returns their paths. */
export async function removeStaleDisks(): Promise<string[]> {
  const removed: string[] = [];
  const re = new RegExp(`^${join(tmpdir(), PREFIX).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(\\d+)-[0-9a-z]+$`);
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const mountPoint = line.split(' ')[1] ?? '';
    const m = re.exec(mountPoint);
    if (m === null || pidAlive(Number(m[1]))) continue;
    await run('umount', ['-l', mountPoint]).catch(() => undefined);
    rmSync(mountPoint, { recursive: true, force: true });
    removed.push(mountPoint);
  }
  return removed;
}

export async function mountSmallDisk(o: { sizeBytes: number }): Promise<SmallDisk> {
  const why = smallDiskUnavailable();
  if (why !== undefined) throw new Error(`small disk: ${why}`);
  await removeStaleDisks();
  const dir = join(tmpdir(), `${PREFIX}${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  mkdirSync(dir, { mode: 0o700 });
  try {
    await run('mount', ['-t', 'tmpfs', '-o', `size=${o.sizeBytes},mode=0700`, 'tmpfs', dir]);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`small disk: mount failed: ${(e as { stderr?: string }).stderr ?? String(e)}`);
  }
  let mounted = true;
  process.once('exit', () => {
    if (mounted) spawnSync('umount', ['-l', dir]);
  });
  const filler = join(dir, 'filler');
  const free = () => {
    const s = statfsSync(dir);
    return Number(s.bavail) * Number(s.bsize);
  };
  return {
    dir,
    sizeBytes: o.sizeBytes,
    free,
    fill(leaveBytes) {
      const fd = openSync(filler, 'a');
      try {
        const chunk = Buffer.alloc(4096);
        for (let left = free() - leaveBytes; left > 0; left = free() - leaveBytes) {
          try {
            writeSync(fd, chunk, 0, Math.min(chunk.length, left));
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
            throw e;
          }
        }
      } finally {
        closeSync(fd);
      }
    },
    release() {
      rmSync(filler, { force: true });
    },
    async unmount() {
      if (!mounted) return;
      mounted = false;
      await run('umount', [dir]).catch(() => run('umount', ['-l', dir]));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
