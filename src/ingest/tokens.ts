/**
 * Bearer secrets the ingest service hands out: one-time enrolment tokens (`vse_…`) and API tokens
 * (`vst_…`). Each is 32 random bytes (256 bits) in base64url behind a prefix that says what it is;
 * the database keeps only its SHA-256, so a copy of the database (or a backup) grants nothing. A
 * plain hash suffices (no password hashing) because the secret is random, not chosen by a person.
 * The token itself is shown once, to the operator who made it.
 *
 * @example
 *   const { token } = await createEnrolToken(storage, { deviceId: 'bed-7', now, ttlMs: 86_400_000 });
 *   const { token: api } = await createApiToken(storage, { name: 'alice', role: 'reader', now });
 */
import { createHash, randomBytes } from 'node:crypto';
import { isDeviceId } from '../util/device-id.ts';
import { ApiMisuse } from '../util/errors.ts';
import type { ApiRole, IngestStorage } from './storage/types.ts';

export const ENROL_TOKEN_PREFIX = 'vse_';
export const API_TOKEN_PREFIX = 'vst_';
const TOKEN_RE = /^(vse|vst)_[A-Za-z0-9_-]{43}$/;
/** API token names: safe in an audit actor ('api:<name>') and a log line. */
export const TOKEN_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$/;

export function tokenSha256(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** The hash of a well-formed token of `prefix`, or undefined for anything else (refused without a lookup). */
export function parseToken(text: string, prefix: typeof ENROL_TOKEN_PREFIX | typeof API_TOKEN_PREFIX): string | undefined {
  if (text.length !== 47 || !TOKEN_RE.test(text) || !text.startsWith(prefix)) return undefined;
  return tokenSha256(text);
}

function newToken(prefix: string): string {
  return `${prefix}${randomBytes(32).toString('base64url')}`;
}

export async function createEnrolToken(storage: IngestStorage, o: { deviceId: string; now: number; ttlMs: number }): Promise<{ token: string; expiresAt: number }> {
  if (!isDeviceId(o.deviceId)) throw new ApiMisuse('invalid-device-id', 'device id: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit');
  if (!Number.isSafeInteger(o.ttlMs) || o.ttlMs < 60_000 || o.ttlMs > 30 * 86_400_000) throw new ApiMisuse('invalid-ttl', 'enrolment tokens live between one minute and 30 days');
  const device = await storage.getDevice(o.deviceId);
  if (device?.status === 'revoked') throw new ApiMisuse('device-revoked', `device ${o.deviceId} is revoked; a revoked device id is not enrolled again`);
  const token = newToken(ENROL_TOKEN_PREFIX);
  const expiresAt = o.now + o.ttlMs;
  await storage.putEnrolToken({ tokenSha256: tokenSha256(token), deviceId: o.deviceId, createdAt: o.now, expiresAt });
  return { token, expiresAt };
}

export async function createApiToken(storage: IngestStorage, o: { name: string; role: ApiRole; now: number; ttlMs?: number }): Promise<{ token: string; expiresAt?: number }> {
  if (!TOKEN_NAME_PATTERN.test(o.name)) throw new ApiMisuse('invalid-name', 'token name: 1-40 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit');
  if (o.role !== 'reader' && o.role !== 'admin') throw new ApiMisuse('invalid-role', 'role: reader or admin');
  if (o.ttlMs !== undefined && (!Number.isSafeInteger(o.ttlMs) || o.ttlMs < 60_000)) throw new ApiMisuse('invalid-ttl', 'an API token lives at least one minute');
  const token = newToken(API_TOKEN_PREFIX);
  const expiresAt = o.ttlMs === undefined ? undefined : o.now + o.ttlMs;
  await storage.putApiToken({ tokenSha256: tokenSha256(token), name: o.name, role: o.role, createdAt: o.now, ...(expiresAt === undefined ? {} : { expiresAt }) });
  return { token, ...(expiresAt === undefined ? {} : { expiresAt }) };
}
