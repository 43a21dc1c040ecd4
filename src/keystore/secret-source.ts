/**
 * Reads a PIN or passphrase from where configuration says it is: an environment variable or a file
 * that only its owner can read (mode 0600). Never from a command line or a config file's own text,
 * where `ps`, shell history and backups would see it.
 *
 * @example
 *   const pin = await readSecret({ file: '/etc/vitalseal/token.pin' }, { env: process.env, what: 'token PIN' });
 *   try { ... } finally { pin.fill(0); }
 */
import { KeyStoreError } from '../util/errors.ts';
import type { SecretSource } from './config.ts';
import { readPrivateFile } from './private-file.ts';

const MAX_SECRET_FILE_BYTES = 4096;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

export interface ReadSecretOptions {
  readonly env: NodeJS.ProcessEnv;
  /** What the secret is, for error messages ("key file passphrase", "token PIN"). */
  readonly what: string;
}

/** Checks a `SecretSource` read from a config file or flags: exactly one of `env` or `file`. */
export function parseSecretSource(value: unknown, where: string): SecretSource {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new KeyStoreError('invalid-config', `${where}: expected { env: NAME } or { file: PATH }, never the secret itself`);
  }
  const keys = Object.keys(value);
  const v = value as Record<string, unknown>;
  if (keys.length === 1 && typeof v['env'] === 'string' && ENV_NAME.test(v['env'])) return { env: v['env'] };
  if (keys.length === 1 && typeof v['file'] === 'string' && v['file'].length > 0) return { file: v['file'] };
  throw new KeyStoreError('invalid-config', `${where}: expected exactly one of { env: NAME } or { file: PATH } (got ${keys.map((k) => JSON.stringify(k)).join(', ') || 'nothing'})`);
}

/**
 * The secret's bytes (the caller zeroises them). A file's single trailing newline is not part of
 * the secret (`echo secret > file` adds one). An empty secret is refused.
 */
export async function readSecret(source: SecretSource, opts: ReadSecretOptions): Promise<Uint8Array> {
  if ('env' in source) {
    const value = opts.env[source.env];
    if (value === undefined || value.length === 0) {
      throw new KeyStoreError('secret-missing', `the ${opts.what} is to come from the environment variable ${source.env}, which is not set or empty`);
    }
    return new TextEncoder().encode(value);
  }
  const bytes = await readPrivateFile(source.file, { maxBytes: MAX_SECRET_FILE_BYTES, what: `${opts.what} file` });
  let end = bytes.length;
  if (end > 0 && bytes[end - 1] === 0x0a) end--;
  if (end > 0 && bytes[end - 1] === 0x0d) end--;
  const secret = Uint8Array.from(bytes.subarray(0, end));
  bytes.fill(0);
  if (secret.length === 0) throw new KeyStoreError('secret-missing', `the ${opts.what} file ${source.file} is empty`);
  return secret;
}
