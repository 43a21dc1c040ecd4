/**
 * Reads the token's user PIN from where the configuration says (an environment variable or a file
 * only its owner can read), never from the configuration itself or a command line. The file checks
 * (O_NOFOLLOW, regular file, owner, mode) are the shared ones in `secret-source.ts`; this adds what a
 * PKCS#11 PIN must be: at most 255 bytes of UTF-8 with no NUL or line break.
 *
 * @example
 *   const pin = await readPin({ file: '/etc/vitalseal/token.pin' });   // or { env: 'VITALSEAL_TOKEN_PIN' }
 */
import { KeyStoreError } from '../../util/errors.ts';
import type { SecretSource } from '../config.ts';
import { readSecret } from '../secret-source.ts';

/** PKCS#11 PINs are short; anything longer than this is a wrong file. */
export const MAX_PIN_BYTES = 255;

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/**
 * Returns the PIN named by `source`. Errors: the shared secret-source codes (`secret-missing`,
 * `file-not-found`, `not-a-file`, `insecure-permissions`, `file-too-large`) and `pin-invalid`.
 */
export async function readPin(source: SecretSource, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const bytes = await readSecret(source, { env, what: 'token PIN' });
  try {
    if (bytes.length > MAX_PIN_BYTES) throw new KeyStoreError('pin-invalid', `the token PIN is longer than ${MAX_PIN_BYTES} bytes`);
    let pin: string;
    try {
      pin = utf8Strict.decode(bytes);
    } catch {
      throw new KeyStoreError('pin-invalid', 'the token PIN is not valid UTF-8');
    }
    if (/[\u0000\n\r]/.test(pin)) throw new KeyStoreError('pin-invalid', 'the token PIN contains a NUL or line break');
    return pin;
  } finally {
    bytes.fill(0);
  }
}
