/**
 * Row ↔ record mapping shared by both backends. PostgreSQL returns BIGINT as strings and BYTEA as
 * Buffers; SQLite returns numbers and Buffers: everything passes through `num` and `bytes`.
 */
import { ApiMisuse, KeyStoreError } from '../../util/errors.ts';
import type { RekeyState, WrappedKeyRecord } from '../../keystore/hierarchy/types.ts';
import type { ApiRole, ApiTokenRecord, CredentialKind, DeviceRecord, DeviceStatus, EnrolTokenRecord, StoredMessage } from './types.ts';

type Num = number | string | bigint;

export interface DeviceRow {
  device_id: string; credential: CredentialKind; credential_sha256: string; status: DeviceStatus; enrolled_at: Num;
  status_changed_at: Num | null; cert_serial: string | null; cert_not_after: Num | null; last_seen_at: Num | null;
  transport: string | null; suite: string | null; sealing_epoch: string | null; epoch_started_at: Num | null;
  rejections: Num; last_rejection_at: Num | null; last_rejection_reason: string | null;
}
export interface MessageRow {
  device_id: string; seq: Num; received_at: Num; first_time: Num; last_time: Num; key_version: Num; nonce: Uint8Array; ciphertext: Uint8Array;
}
export interface WrappedKeyRow { key_id: string; version: Num; kek_name: string; wrapped: Uint8Array; created_at: Num }
export interface RekeyRow { key_id: string; target_version: Num; started_at: Num; updated_at: Num; rewritten: Num; resumed: Num }
export interface EnrolTokenRow { token_sha256: string; device_id: string; created_at: Num; expires_at: Num; used_at: Num | null }
export interface ApiTokenRow { token_sha256: string; name: string; role: ApiRole; created_at: Num; expires_at: Num | null; revoked_at: Num | null }

export function num(v: Num): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new RangeError(`storage: ${String(v)} is not a safe integer`);
  return n;
}

function opt<K extends string>(key: K, v: Num | null): { [P in K]?: number } {
  return (v === null ? {} : { [key]: num(v) }) as { [P in K]?: number };
}

function optStr<K extends string>(key: K, v: string | null): { [P in K]?: string } {
  return (v === null ? {} : { [key]: v }) as { [P in K]?: string };
}

export function bytes(v: Uint8Array): Uint8Array {
  return Uint8Array.from(v);
}

export function deviceFromRow(r: DeviceRow): DeviceRecord {
  return {
    deviceId: r.device_id, credential: r.credential, credentialSha256: r.credential_sha256, status: r.status, enrolledAt: num(r.enrolled_at),
    ...opt('statusChangedAt', r.status_changed_at), ...optStr('certSerial', r.cert_serial), ...opt('certNotAfter', r.cert_not_after),
    ...opt('lastSeenAt', r.last_seen_at), ...optStr('transport', r.transport), ...optStr('suite', r.suite),
    ...optStr('sealingEpoch', r.sealing_epoch), ...opt('epochStartedAt', r.epoch_started_at),
    rejections: num(r.rejections), ...opt('lastRejectionAt', r.last_rejection_at), ...optStr('lastRejectionReason', r.last_rejection_reason),
  };
}

export function messageFromRow(r: MessageRow): StoredMessage {
  return {
    deviceId: r.device_id, seq: num(r.seq), receivedAt: num(r.received_at), firstTime: num(r.first_time), lastTime: num(r.last_time),
    keyVersion: num(r.key_version), nonce: bytes(r.nonce), ciphertext: bytes(r.ciphertext),
  };
}

export function wrappedKeyFromRow(r: WrappedKeyRow): WrappedKeyRecord {
  return { keyId: r.key_id, version: num(r.version), kekName: r.kek_name, wrapped: bytes(r.wrapped), createdAt: num(r.created_at) };
}

export function rekeyFromRow(r: RekeyRow): RekeyState {
  return { keyId: r.key_id, targetVersion: num(r.target_version), startedAt: num(r.started_at), updatedAt: num(r.updated_at), rewritten: num(r.rewritten), resumed: num(r.resumed) };
}

export function enrolTokenFromRow(r: EnrolTokenRow): EnrolTokenRecord {
  return { tokenSha256: r.token_sha256, deviceId: r.device_id, createdAt: num(r.created_at), expiresAt: num(r.expires_at), ...opt('usedAt', r.used_at) };
}

export function apiTokenFromRow(r: ApiTokenRow): ApiTokenRecord {
  return { tokenSha256: r.token_sha256, name: r.name, role: r.role, createdAt: num(r.created_at), ...opt('expiresAt', r.expires_at), ...opt('revokedAt', r.revoked_at) };
}

export function closedError(): KeyStoreError {
  return new KeyStoreError('closed', 'the record store is closed');
}

/** A device id that is already registered (registerDeviceWithKey). */
export function deviceExistsError(deviceId: string): ApiMisuse {
  return new ApiMisuse('exists', `device ${deviceId} is already registered`);
}

export function existsError(keyId: string, version: number): KeyStoreError {
  return new KeyStoreError('exists', `${keyId} version ${version} already has a record`);
}
