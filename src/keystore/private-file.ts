/**
 * Files that hold secrets or protect them (key files, passphrase files, Shamir shares, wrapped-key
 * records): read only when nobody but their owner can read or write them, written atomically with
 * mode 0600.
 *
 * Reading opens with O_NOFOLLOW and checks the open descriptor (fstat), so a symlink or a file
 * swapped between the check and the read is refused. Writing goes to a temporary file in the same
 * directory (created exclusively, mode 0600), is fsynced, renamed over the target, and the directory
 * is fsynced: a crash leaves either the old file or the new one, never a torn one.
 *
 * @example
 *   await writePrivateFileAtomic('/var/lib/vitalseal/keys.vsks', bytes);
 *   const again = await readPrivateFile('/var/lib/vitalseal/keys.vsks', { maxBytes: 1 << 20, what: 'key file' });
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { KeyStoreError } from '../util/errors.ts';

export interface ReadPrivateFileOptions {
  /** Larger files are refused before they are read. */
  readonly maxBytes: number;
  /** What the file is, for error messages ("key file", "passphrase file"). */
  readonly what: string;
}

/** Mode bits a private file must not have: any access for group or others. */
const GROUP_OTHER_BITS = 0o077;

/**
 * Checks an open file: a regular file, owned by this user (or by root), no group/other permission
 * bits. Throws `KeyStoreError('insecure-permissions')` naming the fix.
 */
export async function checkPrivateHandle(fh: FileHandle, path: string, what: string): Promise<{ size: number; version: string }> {
  const st = await fh.stat({ bigint: true });
  if (!st.isFile()) throw new KeyStoreError('not-a-file', `${what} ${path} is not a regular file`);
  const mode = Number(st.mode) & 0o777;
  if ((mode & GROUP_OTHER_BITS) !== 0) {
    throw new KeyStoreError(
      'insecure-permissions',
      `${what} ${path} has mode ${mode.toString(8).padStart(4, '0')}; it must be readable by its owner only: run chmod 600 ${path}`,
    );
  }
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  // As ssh does for its key files: the owner must be this user or root.
  const owner = Number(st.uid);
  if (uid !== undefined && owner !== uid && owner !== 0) {
    throw new KeyStoreError(
      'insecure-permissions',
      `${what} ${path} is owned by uid ${owner}, not by this user (uid ${uid}) or root: run as its owner, or chown it`,
    );
  }
  return { size: Number(st.size), version: versionOf(st) };
}

/**
 * Identifies one version of a file. An atomic replace (rename of a new file) changes the inode, and
 * size and modification time (nanoseconds) catch the rare reuse of a freed inode number.
 */
function versionOf(st: { ino: bigint; size: bigint; mtimeNs: bigint }): string {
  return `${st.ino}:${st.size}:${st.mtimeNs}`;
}

/** The current version of `path` (see `readPrivateFileVersioned`), or undefined if it is gone. */
export async function fileVersion(path: string): Promise<string | undefined> {
  try {
    return versionOf(await stat(path, { bigint: true }));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new KeyStoreError('file-io', `${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
  }
}

/** Reads a private file after checking its type, owner and mode (see the module comment). */
export async function readPrivateFile(path: string, opts: ReadPrivateFileOptions): Promise<Uint8Array> {
  return (await readPrivateFileVersioned(path, opts)).bytes;
}

/**
 * As `readPrivateFile`, plus a version string taken from the descriptor that was read, so a caller
 * can later tell (with `fileVersion`) whether the file has been replaced since.
 */
export async function readPrivateFileVersioned(path: string, opts: ReadPrivateFileOptions): Promise<{ bytes: Uint8Array; version: string }> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new KeyStoreError('file-not-found', `${opts.what} ${path} does not exist`);
    if (code === 'ELOOP') throw new KeyStoreError('not-a-file', `${opts.what} ${path} is a symbolic link; give the real path`);
    if (code === 'EACCES') throw new KeyStoreError('file-access', `${opts.what} ${path}: permission denied`);
    throw new KeyStoreError('file-io', `${opts.what} ${path}: ${code ?? 'read failed'}`, { cause: e });
  }
  try {
    const { size, version } = await checkPrivateHandle(fh, path, opts.what);
    if (size > opts.maxBytes) {
      throw new KeyStoreError('file-too-large', `${opts.what} ${path} is ${size} bytes; at most ${opts.maxBytes} are accepted`);
    }
    const buf = Buffer.alloc(size);
    let off = 0;
    while (off < size) {
      const { bytesRead } = await fh.read(buf, off, size - off, off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return { bytes: new Uint8Array(buf.buffer, buf.byteOffset, off), version };
  } finally {
    await fh.close();
  }
}

/**
 * Replaces `path` atomically with `bytes`, mode 0600 (see the module comment). The caller still owns
 * `bytes`; nothing here keeps a copy.
 */
export async function writePrivateFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  await writeFileAtomic(path, bytes, 0o600);
}

/**
 * The same atomic replacement with another mode, for public material other processes read (a CRL
 * for the MQTT broker: 0644).
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array, mode: number): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fh: FileHandle | undefined;
  try {
    // 'wx' (O_CREAT | O_EXCL): never write through a file or link planted under the temporary name.
    fh = await open(tmp, 'wx', mode);
    // The umask may have narrowed the mode at creation: set it exactly.
    await fh.chmod(mode);
    let off = 0;
    while (off < bytes.length) {
      const { bytesWritten } = await fh.write(bytes, off, bytes.length - off);
      off += bytesWritten;
    }
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (e) {
    await fh?.close().catch(() => undefined);
    await rm(tmp, { force: true }).catch(() => undefined);
    const code = (e as NodeJS.ErrnoException).code;
    throw new KeyStoreError('file-io', `cannot write ${path}: ${code ?? String(e)}`, { cause: e });
  }
  await fsyncDirectory(dir);
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
