/**
 * Shamir split and combine of a key backup (the fleet CA key), with the audited
 * `shamir-secret-sharing` library doing the maths (GF(2^8), the AES field) and this module doing
 * the bookkeeping a custodian needs:
 *
 *   - The split payload is the secret followed by its SHA-256, so a combine from wrong, altered or
 *     too few shares is detected (the library would return wrong bytes silently) without any share
 *     revealing a hash of the secret.
 *   - Each share is a small text file naming its split (a random set id), its place ("2 of 5"), the
 *     threshold, and a check over all of that, so a mixed-up or mistyped share is named before any
 *     combining.
 *
 *   vitalseal-shamir-share v1
 *   set: 7d0c5b2e9a41f3c6
 *   share: 2 of 5
 *   threshold: 3
 *   data: <base64: the library's share bytes>
 *   check: <first 16 hex digits of SHA-256 over the lines above>
 *
 * @example
 *   const files = await splitSecret(caKeyBackup, { shares: 5, threshold: 3 });   // 5 texts
 *   const back = await combineShares([files[0], files[2], files[4]]);
 */
import { createHash, randomBytes } from 'node:crypto';
import { combine, split } from 'shamir-secret-sharing';
import { equalBytes } from '../util/bytes.ts';
import { KeyStoreError } from '../util/errors.ts';

const MAGIC = 'vitalseal-shamir-share v1';
const HASH_LENGTH = 32;
export const MAX_SHARED_SECRET_BYTES = 64 * 1024;

export interface SplitOptions {
  /** How many shares to make (2-255). */
  readonly shares: number;
  /** How many are needed to rebuild the secret (2-shares). */
  readonly threshold: number;
}

export interface ParsedShare {
  readonly setId: string;
  readonly index: number;
  readonly total: number;
  readonly threshold: number;
  readonly data: Uint8Array;
}

function sha256(...parts: (Uint8Array | string)[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

function body(s: Omit<ParsedShare, 'data'> & { data: string }): string {
  return `${MAGIC}\nset: ${s.setId}\nshare: ${s.index} of ${s.total}\nthreshold: ${s.threshold}\ndata: ${s.data}\n`;
}

function check(text: string): string {
  return Buffer.from(sha256(text)).toString('hex').slice(0, 16);
}

/** Splits `secret` into share files (texts); the caller writes each to its own 0600 file. */
export async function splitSecret(secret: Uint8Array, opts: SplitOptions): Promise<string[]> {
  const { shares, threshold } = opts;
  if (!Number.isSafeInteger(shares) || shares < 2 || shares > 255) throw new KeyStoreError('invalid-argument', 'shares: 2-255');
  if (!Number.isSafeInteger(threshold) || threshold < 2 || threshold > shares) throw new KeyStoreError('invalid-argument', `threshold: 2-${shares} (at most the number of shares)`);
  if (secret.length === 0 || secret.length > MAX_SHARED_SECRET_BYTES) throw new KeyStoreError('invalid-argument', `the secret must be 1-${MAX_SHARED_SECRET_BYTES} bytes`);
  // The library insists on a plain Uint8Array (not a Buffer).
  const payload = new Uint8Array(secret.length + HASH_LENGTH);
  payload.set(secret);
  payload.set(sha256(secret), secret.length);
  try {
    const parts = await split(payload, shares, threshold);
    const setId = randomBytes(8).toString('hex');
    return parts.map((data, i) => {
      const text = body({ setId, index: i + 1, total: shares, threshold, data: Buffer.from(data).toString('base64') });
      data.fill(0);
      return `${text}check: ${check(text)}\n`;
    });
  } finally {
    payload.fill(0);
  }
}

/** Parses and checks one share file; `where` names it in errors. */
export function parseShare(text: string, where: string): ParsedShare {
  const bad = (why: string) => new KeyStoreError('share-invalid', `${where}: ${why}`);
  const m = /^vitalseal-shamir-share v1\nset: ([0-9a-f]{16})\nshare: (\d{1,3}) of (\d{1,3})\nthreshold: (\d{1,3})\ndata: ([A-Za-z0-9+/]+={0,2})\ncheck: ([0-9a-f]{16})\n?$/.exec(text);
  if (m === null) throw bad(`not a vitalseal share file (expected the lines ${MAGIC} / set / share / threshold / data / check)`);
  const [, setId, index, total, threshold, data, given] = m as unknown as [string, string, string, string, string, string, string];
  const s = { setId, index: Number(index), total: Number(total), threshold: Number(threshold) };
  if (check(body({ ...s, data })) !== given) throw bad('the check does not match: the file was altered or mistyped');
  if (s.index < 1 || s.index > s.total || s.threshold < 2 || s.threshold > s.total) throw bad('inconsistent share numbers');
  const bytes = new Uint8Array(Buffer.from(data, 'base64'));
  if (bytes.length < HASH_LENGTH + 2) throw bad('the share data is too short');
  return { ...s, data: bytes };
}

/** Rebuilds the secret from share files (texts); the caller zeroises the result after writing it. */
export async function combineShares(texts: readonly string[]): Promise<Uint8Array> {
  const shares = texts.map((t, i) => parseShare(t, `share ${i + 1}`));
  const first = shares[0];
  if (first === undefined) throw new KeyStoreError('shares-insufficient', 'no shares given');
  for (const [i, s] of shares.entries()) {
    if (s.setId !== first.setId || s.total !== first.total || s.threshold !== first.threshold) {
      throw new KeyStoreError('shares-mismatch', `share ${i + 1} belongs to another split (set ${s.setId}, not ${first.setId})`);
    }
    if (s.data.length !== first.data.length) throw new KeyStoreError('shares-mismatch', `share ${i + 1} has another length than share 1`);
  }
  const distinct = new Set(shares.map((s) => s.index));
  if (distinct.size !== shares.length) throw new KeyStoreError('shares-mismatch', 'the same share was given twice');
  if (shares.length < first.threshold) {
    throw new KeyStoreError('shares-insufficient', `${first.threshold} shares of set ${first.setId} are needed; ${shares.length} given`);
  }
  const payload = await combine(shares.map((s) => s.data));
  try {
    const secret = payload.subarray(0, payload.length - HASH_LENGTH);
    if (!equalBytes(sha256(secret), payload.subarray(payload.length - HASH_LENGTH))) {
      throw new KeyStoreError('shares-checksum', 'the shares do not rebuild the secret (checksum mismatch): one of them was altered');
    }
    return Uint8Array.from(secret);
  } finally {
    payload.fill(0);
    for (const s of shares) s.data.fill(0);
  }
}
