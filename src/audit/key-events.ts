/**
 * Key events from any key store (or the key hierarchy) into the audit log.
 *
 * `KeyEventSink.record` is synchronous (stores call it inline); the adapter queues the append and
 * keeps order. A failed append is kept and rethrown by `flush()` (and given to `onError` at once),
 * so a caller that must not run without an audit trail can check it at a point of its choosing.
 *
 * @example
 *   const sink = auditKeyEvents(log, { actor: 'agent' });
 *   const store = await openKeyStore(config, { events: sink });
 *   ...
 *   await sink.flush();
 */
import type { KeyEvent, KeyEventSink } from '../keystore/types.ts';
import type { AuditLog } from './log.ts';

export interface AuditKeyEventSink extends KeyEventSink {
  /** Resolves when every recorded event is on disk; rejects with the first append that failed. */
  flush(): Promise<void>;
}

export interface AuditKeyEventsOptions {
  /** Who is acting (`agent`, `ingest`, `cli:alice`). */
  readonly actor: string;
  readonly onError?: (error: unknown) => void;
}

export function auditKeyEvents(log: AuditLog, opts: AuditKeyEventsOptions): AuditKeyEventSink {
  let pending: Promise<void> = Promise.resolve();
  let failure: unknown;
  return {
    record(event: KeyEvent): void {
      pending = pending.then(async () => {
        try {
          await log.append({
            actor: opts.actor,
            operation: event.operation,
            keyId: event.keyName,
            result: event.result,
            ...(event.code === undefined ? {} : { code: event.code }),
            detail: `${event.store} store`,
          });
        } catch (e) {
          failure ??= e;
          opts.onError?.(e);
        }
      });
    },
    async flush(): Promise<void> {
      await pending;
      if (failure !== undefined) throw failure;
    },
  };
}
