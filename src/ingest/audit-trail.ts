/**
 * The ingest service's side of the audit log (src/audit): what it records and how.
 *
 * - `append` waits for the line to be on disk: reads of patient data are answered only once their
 *   audit line is written (a failure refuses the read).
 * - `record` is for the message path, where a flood of refused messages must not stall accepted
 *   ones: lines queue in order and are written in the background, at most `maxPending` at a time;
 *   beyond that they are counted and one line says how many were not written, once the backlog drains.
 *
 * Device ids go into `detail` text; one that looks like key material to the audit log's secret
 * filter (a long hex id) is written as a short hash instead (`deviceLabel`).
 *
 * @example
 *   const trail = new AuditTrail({ log, actor: 'ingest' });
 *   trail.record({ operation: 'reject', result: 'denied', code: 'identity-mismatch', detail: `device ${deviceLabel(id)}` });
 *   await trail.append({ actor: 'api:alice', operation: 'read', result: 'ok', detail: 'GET /api/v1/devices' });
 */
import { createHash } from 'node:crypto';
import { NO_KEY, secretSuspicion, type AuditOperation, type AuditResult } from '../audit/entry.ts';
import type { AuditLog } from '../audit/log.ts';

export interface IngestAuditEvent {
  readonly actor?: string;
  readonly operation: AuditOperation;
  readonly keyId?: string;
  readonly result: AuditResult;
  readonly code?: string;
  readonly detail?: string;
}

export interface AuditTrailOptions {
  readonly log: AuditLog;
  /** Actor for events that name none (default 'ingest'). */
  readonly actor?: string;
  /** Background lines queued at most (default 1024). */
  readonly maxPending?: number;
  /** Called for each background line not written (queue full) and each failed append. */
  readonly onDropped?: (count: number) => void;
  readonly onError?: (error: unknown) => void;
}

/** A device id as audit text: itself, or `sha256:<12 hex>` when the audit filter would take it for key material. */
export function deviceLabel(deviceId: string): string {
  if (secretSuspicion(`device ${deviceId}`) === undefined) return deviceId;
  return `sha256:${createHash('sha256').update(deviceId).digest('hex').slice(0, 12)}`;
}

/** Detail text cut to the audit log's 200 characters. */
function clip(detail: string | undefined): string | undefined {
  if (detail === undefined) return undefined;
  // The log refuses control characters: replace them rather than lose the line.
  const clean = detail.replace(/[\u0000-\u001f\u007f]/g, ' ');
  return clean.length <= 200 ? clean : `${clean.slice(0, 197)}...`;
}

export class AuditTrail {
  readonly #log: AuditLog;
  readonly #actor: string;
  readonly #maxPending: number;
  readonly #onDropped: ((n: number) => void) | undefined;
  readonly #onError: ((e: unknown) => void) | undefined;
  #pending = 0;
  #dropped = 0;
  #chain: Promise<void> = Promise.resolve();
  #failures = 0;

  constructor(o: AuditTrailOptions) {
    this.#log = o.log;
    this.#actor = o.actor ?? 'ingest';
    this.#maxPending = o.maxPending ?? 1024;
    this.#onDropped = o.onDropped;
    this.#onError = o.onError;
  }

  get log(): AuditLog {
    return this.#log;
  }

  /** Background lines that failed to write (disk full, ...). */
  get failures(): number {
    return this.#failures;
  }

  /** Writes one line and waits for it to be on disk. */
  async append(e: IngestAuditEvent): Promise<void> {
    const detail = clip(e.detail);
    await this.#log.append({
      actor: e.actor ?? this.#actor, operation: e.operation, keyId: e.keyId ?? NO_KEY, result: e.result,
      ...(e.code === undefined ? {} : { code: e.code }), ...(detail === undefined ? {} : { detail }),
    });
  }

  /** Queues one line without waiting; see the module comment for the bound. */
  record(e: IngestAuditEvent): void {
    if (this.#pending >= this.#maxPending) {
      this.#dropped++;
      this.#onDropped?.(1);
      return;
    }
    this.#pending++;
    this.#chain = this.#chain.then(async () => {
      try {
        await this.append(e);
      } catch (err) {
        this.#failures++;
        this.#onError?.(err);
      } finally {
        this.#pending--;
      }
      if (this.#dropped > 0 && this.#pending === 0) {
        const n = this.#dropped;
        this.#dropped = 0;
        await this.append({ operation: 'alert', result: 'error', code: 'audit-backlog', detail: `${n} audit events were not written: the backlog was full` })
          .catch((err: unknown) => this.#onError?.(err));
      }
    });
  }

  /** Resolves when every queued line has been handled. */
  flush(): Promise<void> {
    return this.#chain;
  }
}
