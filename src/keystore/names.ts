/**
 * Key names, checked the same way by every backend: a name becomes a FAPI path element
 * (/HS/SRK/<name>), a PKCS#11 CKA_LABEL and a file-system-safe record key, so it must be safe in all
 * three. FAPI creates no intermediate path elements implicitly, so '/' is refused.
 */
import { KeyStoreError } from '../util/errors.ts';
import { KEY_NAME_PATTERN } from './types.ts';

/** Returns `name` if valid; otherwise throws `KeyStoreError('invalid-name')`. */
export function checkKeyName(name: unknown): string {
  if (typeof name !== 'string' || !KEY_NAME_PATTERN.test(name)) {
    throw new KeyStoreError('invalid-name', `invalid key name ${JSON.stringify(String(name)).slice(0, 80)}: 1-63 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit`);
  }
  return name;
}
