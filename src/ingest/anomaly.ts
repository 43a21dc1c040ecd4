/**
 * Anomaly alerts over refused messages, per device, in fixed windows (default one minute):
 *
 * | alert               | raised when                                                        |
 * |---------------------|--------------------------------------------------------------------|
 * | decrypt-failures    | `decryptFailures` COSE decryption failures from one device in a window |
 * | rejections          | `rejections` refusals of any kind from one device in a window      |
 * | revoked-device      | the first attempt by a revoked device in a window                  |
 * | suspended-device    | the first attempt by a suspended device in a window                |
 * | identity-mismatch   | the first identity mismatch of a device in a window                |
 * | epoch-misuse        | the first sealing-epoch misuse of a device in a window             |
 * | unknown-device      | the first message from an unregistered identity in a window        |
 *
 * Each alert is raised once per device and window. It also decides which refusals get an audit line
 * of their own: the first `auditBurst` per device and reason in a window; the rest are counted and
 * summed up in one line when the window closes (`sweep`). State is bounded (`maxTracked` devices).
 *
 * @example
 *   const a = new AnomalyDetector({ clock, onAlert: (alert) => audit.record(...) });
 *   const { audit } = a.observe('bed-7', 'decrypt-failed');
 */
import type { Clock } from '../util/clock.ts';
import type { RejectReason } from './outcome.ts';

export type AlertKind = 'decrypt-failures' | 'rejections' | 'revoked-device' | 'suspended-device' | 'identity-mismatch' | 'epoch-misuse' | 'unknown-device';
export const ALERT_KINDS: readonly AlertKind[] = ['decrypt-failures', 'rejections', 'revoked-device', 'suspended-device', 'identity-mismatch', 'epoch-misuse', 'unknown-device'];

export interface Alert {
  readonly kind: AlertKind;
  /** The device (or claimed identity) it is about. */
  readonly deviceId: string;
  /** Events of this kind in the window so far. */
  readonly count: number;
  readonly windowStart: number;
}

export interface Suppressed {
  readonly deviceId: string;
  readonly reason: RejectReason;
  readonly count: number;
  readonly windowStart: number;
}

export interface AnomalyOptions {
  readonly clock: Clock;
  readonly windowMs?: number;
  readonly decryptFailures?: number;
  readonly rejections?: number;
  /** Individual audit lines per device and reason in a window (default 10). */
  readonly auditBurst?: number;
  readonly maxTracked?: number;
  readonly onAlert: (alert: Alert) => void;
  /** Refusals that got no audit line of their own, summed per window. */
  readonly onSuppressed?: (s: Suppressed) => void;
}

interface DeviceWindow {
  start: number;
  readonly reasons: Map<RejectReason, number>;
  total: number;
  readonly raised: Set<AlertKind>;
  readonly suppressed: Map<RejectReason, number>;
}

const FIRST_ATTEMPT: Partial<Record<RejectReason, AlertKind>> = {
  'device-revoked': 'revoked-device',
  'device-suspended': 'suspended-device',
  'identity-mismatch': 'identity-mismatch',
  'epoch-misuse': 'epoch-misuse',
  'unknown-device': 'unknown-device',
};

export class AnomalyDetector {
  readonly #o: Required<Omit<AnomalyOptions, 'onSuppressed'>> & { readonly onSuppressed: ((s: Suppressed) => void) | undefined };
  readonly #windows = new Map<string, DeviceWindow>();

  constructor(o: AnomalyOptions) {
    this.#o = {
      clock: o.clock, windowMs: o.windowMs ?? 60_000, decryptFailures: o.decryptFailures ?? 5, rejections: o.rejections ?? 20,
      auditBurst: o.auditBurst ?? 10, maxTracked: o.maxTracked ?? 10_000, onAlert: o.onAlert, onSuppressed: o.onSuppressed,
    };
    for (const [k, v] of Object.entries({ windowMs: this.#o.windowMs, decryptFailures: this.#o.decryptFailures, rejections: this.#o.rejections, auditBurst: this.#o.auditBurst, maxTracked: this.#o.maxTracked })) {
      if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`anomaly ${k}: a positive integer`);
    }
  }

  get tracked(): number {
    return this.#windows.size;
  }

  /** Records one refusal; `audit` says whether it should get an audit line of its own. */
  observe(deviceId: string, reason: RejectReason): { audit: boolean } {
    const now = this.#o.clock.now();
    let w = this.#windows.get(deviceId);
    if (w !== undefined && now - w.start >= this.#o.windowMs) {
      this.#close(deviceId, w);
      w = undefined;
    }
    if (w === undefined) {
      if (this.#windows.size >= this.#o.maxTracked) this.sweep();
      if (this.#windows.size >= this.#o.maxTracked) {
        const [oldestId, oldest] = this.#windows.entries().next().value as [string, DeviceWindow];
        this.#close(oldestId, oldest);
      }
      w = { start: now, reasons: new Map(), total: 0, raised: new Set(), suppressed: new Map() };
      this.#windows.set(deviceId, w);
    }
    const n = (w.reasons.get(reason) ?? 0) + 1;
    w.reasons.set(reason, n);
    w.total++;
    const first = FIRST_ATTEMPT[reason];
    if (first !== undefined) this.#raise(deviceId, w, first, n);
    if (reason === 'decrypt-failed' && n >= this.#o.decryptFailures) this.#raise(deviceId, w, 'decrypt-failures', n);
    if (w.total >= this.#o.rejections) this.#raise(deviceId, w, 'rejections', w.total);
    if (n <= this.#o.auditBurst) return { audit: true };
    w.suppressed.set(reason, (w.suppressed.get(reason) ?? 0) + 1);
    return { audit: false };
  }

  /** An accepted message that broke the sealing-epoch policy (too old, too many messages). */
  observeEpochPolicy(deviceId: string): void {
    this.observe(deviceId, 'epoch-misuse');
  }

  /** Closes windows that have ended (reporting what they suppressed). Call about once per window. */
  sweep(): void {
    const now = this.#o.clock.now();
    for (const [id, w] of this.#windows) if (now - w.start >= this.#o.windowMs) this.#close(id, w);
  }

  #raise(deviceId: string, w: DeviceWindow, kind: AlertKind, count: number): void {
    if (w.raised.has(kind)) return;
    w.raised.add(kind);
    this.#o.onAlert({ kind, deviceId, count, windowStart: w.start });
  }

  #close(deviceId: string, w: DeviceWindow): void {
    this.#windows.delete(deviceId);
    for (const [reason, count] of w.suppressed) this.#o.onSuppressed?.({ deviceId, reason, count, windowStart: w.start });
  }
}
