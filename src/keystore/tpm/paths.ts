/**
 * FAPI paths (TSS 2.0 FAPI spec §5.3 "Path descriptions"). The store keeps its objects directly under
 * the storage root key, `/HS/SRK/<name>`, because FAPI creates no intermediate path elements: every
 * element above a key must itself be a key (`/HS/SRK/a/b` needs a storage key `a`).
 *
 * Operators name objects exactly as tpm2-tools' `tss2_*` commands do: `/HS/SRK/NAME`, `HS/SRK/NAME`
 * or with the profile in front, `/P_ECCP256SHA256/HS/SRK/NAME`. Only objects below the SRK are
 * reachable through the path API: the store never signs with, unseals or deletes hierarchy objects
 * (`/HS`, `/HE/EK`, `/LOCKOUT`, the SRK itself).
 */
import { checkKeyName } from '../names.ts';
import { TpmKeyStoreError } from './errors.ts';

export const SRK_PREFIX = '/HS/SRK/';
const ELEMENT = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const PROFILE = /^P_[A-Za-z0-9_]{1,60}$/;
const MAX_DEPTH = 8;

/** `/HS/SRK/<name>` for a checked key name. */
export function pathForName(name: string): string {
  return `${SRK_PREFIX}${checkKeyName(name)}`;
}

/**
 * A FAPI object path as an operator gives it, checked and normalised to `/HS/SRK/...` (the profile
 * element, if any, is kept: FAPI accepts it).
 */
export function checkObjectPath(path: unknown): string {
  if (typeof path !== 'string' || path.length === 0 || path.length > 512) {
    throw new TpmKeyStoreError('invalid-path', `invalid FAPI path ${JSON.stringify(String(path)).slice(0, 80)}`);
  }
  const elements = path.split('/').filter((e, i) => !(i === 0 && e === ''));
  let start = 0;
  let profile = '';
  if (elements[0] !== undefined && PROFILE.test(elements[0])) {
    profile = `/${elements[0]}`;
    start = 1;
  }
  const rest = elements.slice(start);
  if (rest[0] !== 'HS' || rest[1] !== 'SRK' || rest.length < 3 || rest.length > 2 + MAX_DEPTH
      || !rest.slice(2).every((e) => ELEMENT.test(e))) {
    throw new TpmKeyStoreError('invalid-path',
      `invalid FAPI object path ${JSON.stringify(path).slice(0, 120)}: expected /HS/SRK/NAME (elements of A-Z a-z 0-9 _ . -, up to ${MAX_DEPTH} below the SRK)`);
  }
  return `${profile}/${rest.join('/')}`;
}

/** Strips the profile element FAPI puts in front of listed paths: `/P_ECCP256SHA256/HS/SRK/x` → `/HS/SRK/x`. */
export function withoutProfile(path: string): string {
  const m = /^\/P_[A-Za-z0-9_]+(\/.*)$/.exec(path);
  return m === null ? path : (m[1] as string);
}

/** The store's key name for a listed path, if it is a direct child of the SRK with a valid name. */
export function nameOfPath(path: string): string | undefined {
  const p = withoutProfile(path);
  if (!p.startsWith(SRK_PREFIX)) return undefined;
  const name = p.slice(SRK_PREFIX.length);
  return ELEMENT.test(name) ? name : undefined;
}
