/**
 * Reads the token's user PIN from where the configuration says (an environment variable or a file
 * only its owner can read), never from the configuration itself or a command line.
 *
 * The file is opened with O_NOFOLLOW and checked on the open descriptor (regular file, owned by this
 * user or root, no group/other permission bits), as ssh checks its key files, so a symlink or a file
 * swapped between check and read is refused. One trailing newline is dropped (`echo PIN > file`).
 *
 * @example
 *   const pin = readPin({ file: '/etc/vitalseal/token.pin' });   // or { env: 'VITALSEAL_TOKEN_PIN' }
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { KeyStoreError } from '../../util/errors.ts';
import type { SecretSource } from '../config.ts';

/** PKCS#11 PINs are short; anything longer than this is a wrong file. */
export const MAX_PIN_BYTES = 255;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

function fromBytes(bytes: Uint8Array, where: string): string {
  let end = bytes.length;
  if (end > 0 && bytes[end - 1] === 0x0a) end--;
  if (end > 0 && bytes[end - 1] === 0x0d) end--;
  const body = bytes.subarray(0, end);
  if (body.length === 0) throw new KeyStoreError('pin-missing', `the PIN from ${where} is empty`);
  if (body.length > MAX_PIN_BYTES) throw new KeyStoreError('pin-invalid', `the PIN from ${where} is longer than ${MAX_PIN_BYTES} bytes`);
  let pin: string;
  try {
    pin = utf8Strict.decode(body);
  } catch {
    throw new KeyStoreError('pin-invalid', `the PIN from ${where} is not valid UTF-8`);
  }
  if (/[\u0000\n\r]/.test(pin)) throw new KeyStoreError('pin-invalid', `the PIN from ${where} contains a NUL or line break`);
  return pin;
}

function readPinFile(path: string): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new KeyStoreError('pin-missing', `PIN file ${path} does not exist`);
    if (code === 'ELOOP') throw new KeyStoreError('insecure-permissions', `PIN file ${path} is a symbolic link; point the configuration at the file itself`);
    throw new KeyStoreError('pin-missing', `cannot open PIN file ${path}: ${code ?? String(err)}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new KeyStoreError('insecure-permissions', `PIN file ${path} is not a regular file`);
    const mode = st.mode & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new KeyStoreError('insecure-permissions',
        `PIN file ${path} has mode ${mode.toString(8).padStart(4, '0')}; it must be readable by its owner only: run chmod 600 ${path}`);
    }
    const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
    if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
      throw new KeyStoreError('insecure-permissions', `PIN file ${path} is owned by uid ${st.uid}, not by this user (uid ${uid}) or root`);
    }
    // Read at most one byte more than the longest PIN plus a CRLF, so a huge file is not slurped.
    const buf = new Uint8Array(MAX_PIN_BYTES + 3);
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
      if (n === buf.length) break;
    }
    const pin = fromBytes(buf.subarray(0, n), `file ${path}`);
    buf.fill(0);
    return pin;
  } finally {
    closeSync(fd);
  }
}

/** Returns the PIN named by `source`; `KeyStoreError` ('pin-missing', 'pin-invalid', 'insecure-permissions') otherwise. */
export function readPin(source: SecretSource): string {
  if ('env' in source) {
    if (!ENV_NAME.test(source.env)) throw new KeyStoreError('pin-missing', `invalid environment variable name ${JSON.stringify(source.env.slice(0, 40))} for the PIN`);
    const value = process.env[source.env];
    if (value === undefined || value === '') throw new KeyStoreError('pin-missing', `environment variable ${source.env} (the token PIN) is not set`);
    return fromBytes(new TextEncoder().encode(value), `environment variable ${source.env}`);
  }
  if ('file' in source) {
    if (typeof source.file !== 'string' || source.file.length === 0 || source.file.includes('\u0000')) {
      throw new KeyStoreError('pin-missing', 'the PIN file path is empty or invalid');
    }
    return readPinFile(source.file);
  }
  throw new KeyStoreError('pin-missing', 'no PIN source configured: give { env: NAME } or { file: PATH }');
}
