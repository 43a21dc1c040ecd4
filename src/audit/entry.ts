/**
 * Audit log lines: one JSON object per line, fields in a fixed order, chained by SHA-256.
 *
 *   {"seq":0,"type":"header","v":1,"log":"<32 hex>","time":"2024-01-01T00:00:00.000Z","prev":"<64 zeros>"}
 *   {"seq":1,"type":"event","time":"...","actor":"agent","op":"unseal","key":"queue-kek","result":"error","code":"unwrap-failed","prev":"<hex>"}
 *   {"seq":2,"type":"checkpoint","time":"...","alg":"ecdsa-p256-sha256","signer":"<hex>","sig":"<base64>","prev":"<hex>"}
 *
 * `prev` is the SHA-256 of the previous line's exact bytes (without its newline), so changing,
 * removing, adding or moving any line breaks the chain at the next one. A checkpoint signs
 * (log id, seq, time, signer, prev) with the device identity key: `prev` commits to every line
 * before it, so one signature covers the whole prefix, and an attacker who rewrites the chain
 * cannot re-sign it. `signer` is the SHA-256 of the signing key's SubjectPublicKeyInfo.
 *
 * Nothing secret belongs in an audit line. Fields are typed and bounded; `detail` is short free
 * text and is refused when it looks like key material (long hex or base64 runs, PEM armour).
 */
import { createHash } from 'node:crypto';
import { KEY_NAME_PATTERN } from '../keystore/types.ts';
import { ApiMisuse } from '../util/errors.ts';

export const AUDIT_FORMAT_VERSION = 1;
export const MAX_LINE_BYTES = 4096;
export const GENESIS_PREV = '0'.repeat(64);
/** `key` for events that concern no single key. */
export const NO_KEY = '-';

/** What an event records: key-store operations, plus the security events around them. */
export const AUDIT_OPERATIONS = [
  'create', 'open', 'sign', 'seal', 'unseal', 'wrap', 'unwrap', 'delete', 'rotate', 'export',
  'destroy', 'policy-violation', 'auth-failure', 'enrol', 'revoke', 'recover',
  // The ingest service: refused messages, anomaly alerts, device status, reads of patient data, backups, tokens.
  'reject', 'alert', 'suspend', 'resume', 'read', 'backup', 'restore', 'token',
] as const;
export type AuditOperation = (typeof AUDIT_OPERATIONS)[number];
export type AuditResult = 'ok' | 'error' | 'denied';

export interface AuditEventInput {
  /** Who acted: `agent`, `ingest`, `cli:alice`, ... */
  readonly actor: string;
  readonly operation: AuditOperation;
  /** A key name, or NO_KEY ('-'). */
  readonly keyId: string;
  readonly result: AuditResult;
  /** Error code on failure (`unwrap-failed`). */
  readonly code?: string;
  /** Short context, at most 200 characters, never secret material. */
  readonly detail?: string;
}

export interface HeaderLine {
  readonly type: 'header';
  readonly seq: 0;
  readonly v: number;
  readonly log: string;
  readonly time: string;
  readonly prev: string;
}

export interface EventLine {
  readonly type: 'event';
  readonly seq: number;
  readonly time: string;
  readonly actor: string;
  readonly op: AuditOperation;
  readonly key: string;
  readonly result: AuditResult;
  readonly code?: string;
  readonly detail?: string;
  readonly prev: string;
}

export interface CheckpointLine {
  readonly type: 'checkpoint';
  readonly seq: number;
  readonly time: string;
  readonly alg: 'ecdsa-p256-sha256' | 'ed25519';
  readonly signer: string;
  readonly sig: string;
  readonly prev: string;
}

export type AuditLine = HeaderLine | EventLine | CheckpointLine;

const ACTOR = /^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$/;
const CODE = /^[a-z0-9][a-z0-9-]{0,47}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const LOG_ID = /^[0-9a-f]{32}$/;
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const BASE64 = /^[A-Za-z0-9+/]{1,400}={0,2}$/;
const MAX_DETAIL = 200;

/** Why a `detail` text looks like secret material, or undefined when it does not. */
export function secretSuspicion(text: string): string | undefined {
  if (/-----BEGIN/.test(text)) return 'PEM armour';
  if (/[0-9a-fA-F]{32,}/.test(text)) return 'a long hex run (32+ digits)';
  if (/[A-Za-z0-9+/_-]{40,}={0,2}/.test(text)) return 'a long base64 run (40+ characters)';
  return undefined;
}

/** The reason `value` is not a valid field, or undefined. Shared by append (refuse) and verify (report). */
function fieldProblem(field: string, value: unknown): string | undefined {
  switch (field) {
    case 'actor':
      return typeof value === 'string' && ACTOR.test(value) ? undefined : 'actor: 1-64 characters of A-Z a-z 0-9 _ . : @ -';
    case 'op':
      return typeof value === 'string' && (AUDIT_OPERATIONS as readonly string[]).includes(value) ? undefined : `op: one of ${AUDIT_OPERATIONS.join(', ')}`;
    case 'key':
      return typeof value === 'string' && (value === NO_KEY || KEY_NAME_PATTERN.test(value)) ? undefined : "key: a key name or '-'";
    case 'result':
      return value === 'ok' || value === 'error' || value === 'denied' ? undefined : 'result: ok, error or denied';
    case 'code':
      return typeof value === 'string' && CODE.test(value) ? undefined : 'code: 1-48 characters of a-z 0-9 -';
    case 'detail': {
      if (typeof value !== 'string' || value.length > MAX_DETAIL || /[\u0000-\u001f\u007f]/.test(value)) return `detail: text of at most ${MAX_DETAIL} characters without control characters`;
      const why = secretSuspicion(value);
      return why === undefined ? undefined : `detail looks like secret material (${why}); audit lines never carry keys`;
    }
    default:
      return `unknown field ${field}`;
  }
}

/**
 * Checks an event before it is appended: `ApiMisuse('audit-field')` for a wrong type or value,
 * `ApiMisuse('audit-secret')` for text that looks like key material. Nothing is written then.
 */
export function checkEventInput(input: AuditEventInput): void {
  if (typeof input !== 'object' || input === null) throw new TypeError('audit event: expected an object');
  const allowed = ['actor', 'operation', 'keyId', 'result', 'code', 'detail'];
  for (const k of Object.keys(input)) {
    if (!allowed.includes(k)) throw new ApiMisuse('audit-field', `audit event: unknown field ${k}`);
  }
  const pairs: [string, unknown][] = [['actor', input.actor], ['op', input.operation], ['key', input.keyId], ['result', input.result]];
  if (input.code !== undefined) pairs.push(['code', input.code]);
  if (input.detail !== undefined) pairs.push(['detail', input.detail]);
  for (const [field, value] of pairs) {
    const problem = fieldProblem(field, value);
    if (problem !== undefined) throw new ApiMisuse(problem.startsWith('detail looks like') ? 'audit-secret' : 'audit-field', `audit event: ${problem}`);
  }
}

export function isoTime(ms: number): string {
  return new Date(ms).toISOString();
}

/** Serialises with a fixed field order (JSON.stringify keeps insertion order). */
export function serializeLine(line: AuditLine): string {
  switch (line.type) {
    case 'header':
      return JSON.stringify({ seq: 0, type: 'header', v: line.v, log: line.log, time: line.time, prev: line.prev });
    case 'event': {
      const o: Record<string, unknown> = { seq: line.seq, type: 'event', time: line.time, actor: line.actor, op: line.op, key: line.key, result: line.result };
      if (line.code !== undefined) o['code'] = line.code;
      if (line.detail !== undefined) o['detail'] = line.detail;
      o['prev'] = line.prev;
      return JSON.stringify(o);
    }
    case 'checkpoint':
      return JSON.stringify({ seq: line.seq, type: 'checkpoint', time: line.time, alg: line.alg, signer: line.signer, sig: line.sig, prev: line.prev });
    default: {
      const never: never = line;
      throw new TypeError(`unknown line ${String(never)}`);
    }
  }
}

export function hashLine(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The bytes a checkpoint's signature covers. */
export function checkpointPayload(logId: string, line: Pick<CheckpointLine, 'seq' | 'time' | 'signer' | 'prev'>): Uint8Array {
  return new TextEncoder().encode(`vitalseal audit checkpoint v1\n${logId}\n${line.seq}\n${line.time}\n${line.signer}\n${line.prev}`);
}

function exact(o: Record<string, unknown>, required: readonly string[], optional: readonly string[] = []): string | undefined {
  for (const k of required) if (!(k in o)) return `missing field ${k}`;
  for (const k of Object.keys(o)) if (!required.includes(k) && !optional.includes(k)) return `unexpected field ${k}`;
  return undefined;
}

/** Parses and checks one line (without its newline); returns the line or the reason it is malformed. */
export function parseLine(text: string): { line: AuditLine } | { problem: string; secret?: boolean } {
  if (text.length > MAX_LINE_BYTES) return { problem: `longer than ${MAX_LINE_BYTES} bytes` };
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return { problem: 'not JSON' };
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return { problem: 'not a JSON object' };
  const r = o as Record<string, unknown>;
  if (!Number.isSafeInteger(r['seq']) || (r['seq'] as number) < 0) return { problem: 'seq: a non-negative integer' };
  if (typeof r['time'] !== 'string' || !TIME.test(r['time']) || Number.isNaN(Date.parse(r['time']))) return { problem: 'time: an ISO 8601 UTC time with milliseconds' };
  if (typeof r['prev'] !== 'string' || !HEX64.test(r['prev'])) return { problem: 'prev: 64 lowercase hex digits' };
  switch (r['type']) {
    case 'header': {
      const bad = exact(r, ['seq', 'type', 'v', 'log', 'time', 'prev']);
      if (bad) return { problem: bad };
      if (r['seq'] !== 0) return { problem: 'a header has seq 0' };
      if (r['v'] !== AUDIT_FORMAT_VERSION) return { problem: `format version ${String(r['v'])} is not ${AUDIT_FORMAT_VERSION}` };
      if (typeof r['log'] !== 'string' || !LOG_ID.test(r['log'])) return { problem: 'log: 32 lowercase hex digits' };
      return { line: r as unknown as HeaderLine };
    }
    case 'event': {
      const bad = exact(r, ['seq', 'type', 'time', 'actor', 'op', 'key', 'result', 'prev'], ['code', 'detail']);
      if (bad) return { problem: bad };
      for (const f of ['actor', 'op', 'key', 'result', 'code', 'detail']) {
        if (f in r) {
          const problem = fieldProblem(f, r[f]);
          if (problem !== undefined) return { problem, secret: problem.startsWith('detail looks like') };
        }
      }
      return { line: r as unknown as EventLine };
    }
    case 'checkpoint': {
      const bad = exact(r, ['seq', 'type', 'time', 'alg', 'signer', 'sig', 'prev']);
      if (bad) return { problem: bad };
      if (r['alg'] !== 'ecdsa-p256-sha256' && r['alg'] !== 'ed25519') return { problem: 'alg: ecdsa-p256-sha256 or ed25519' };
      if (typeof r['signer'] !== 'string' || !HEX64.test(r['signer'])) return { problem: 'signer: 64 lowercase hex digits' };
      if (typeof r['sig'] !== 'string' || !BASE64.test(r['sig'])) return { problem: 'sig: base64' };
      return { line: r as unknown as CheckpointLine };
    }
    default:
      return { problem: 'type: header, event or checkpoint' };
  }
}
