/**
 * Data-key rotation and the background re-key of stored messages (DESIGN.md: storage DEKs every
 * 90 days, with a background re-key).
 *
 * A pass per device, through the key hierarchy (src/keystore/hierarchy/envelope.ts):
 * 1. when the device's current DEK version is older than `rotateAfterMs`, `rotate` makes the next
 *    version, which new messages use at once (in this instance at once, in others within the data
 *    keys' cache TTL);
 * 2. once `graceMs` (at least twice that TTL) has passed since the newest version was made, the
 *    re-key pass rewrites every row still under an older version (decrypt, encrypt under the new
 *    version, conditional update), batch by batch, recording progress in the database; then the
 *    older versions are destroyed.
 *
 * A pass can be stopped at any point (`signal`, shutdown, a crash) and resumes where it stopped:
 * rows already moved are no longer listed, and the pass state says how far it got. Instances
 * sharing a database run the worker one at a time (a lease in the database).
 *
 * @example
 *   const worker = new RekeyWorker({ storage, hierarchy, dataKeys, clock, owner: 'ingest-a', metrics });
 *   const report = await worker.runOnce({ signal });
 */
import { randomBytes } from 'node:crypto';
import type { CryptoProvider } from '../crypto/provider.ts';
import { getProvider } from '../crypto/registry.ts';
import type { DataKey } from '../keystore/hierarchy/data-key.ts';
import type { KeyHierarchy, RekeyReport, RekeyTarget, StaleItem } from '../keystore/hierarchy/envelope.ts';
import { zeroize } from '../util/bytes.ts';
import type { Clock } from '../util/clock.ts';
import { openAtRest, sealAtRest } from './at-rest.ts';
import { dataKeyId, type DeviceDataKeys } from './data-keys.ts';
import type { IngestMetrics } from './metrics.ts';
import type { IngestStorage, StoredMessage } from './storage/types.ts';

/** The stored messages of one device, as the key hierarchy's re-key pass sees them. */
export class MessageRekeyTarget implements RekeyTarget {
  readonly #storage: IngestStorage;
  readonly #deviceId: string;
  readonly #provider: CryptoProvider;
  readonly #rows = new Map<string, StoredMessage>();
  readonly #onRewrite: (() => void) | undefined;
  /** The last seq listed in this sweep (-1: the sweep starts at the first message), and for which version. */
  #after = -1;
  #belowVersion: number | undefined;
  rewritten = 0;

  constructor(storage: IngestStorage, deviceId: string, opts: { provider?: CryptoProvider; onRewrite?: () => void } = {}) {
    this.#storage = storage;
    this.#deviceId = deviceId;
    this.#provider = opts.provider ?? getProvider();
    this.#onRewrite = opts.onRewrite;
  }

  async stale(keyId: string, belowVersion: number, limit: number): Promise<readonly StaleItem[]> {
    if (keyId !== dataKeyId(this.#deviceId)) throw new RangeError(`re-key target for ${this.#deviceId} asked about ${keyId}`);
    if (belowVersion !== this.#belowVersion) {
      this.#belowVersion = belowVersion;
      this.#after = -1;
    }
    let rows = await this.#storage.messagesBelowKeyVersion(this.#deviceId, belowVersion, limit, this.#after);
    if (rows.length === 0 && this.#after >= 0) {
      // The cursor reached the end of a sweep that did work: one more sweep from the first message,
      // so nothing behind the cursor (a row whose conditional rewrite lost to another writer) is
      // left under the old key. The list is empty only after a whole sweep found nothing.
      this.#after = -1;
      rows = await this.#storage.messagesBelowKeyVersion(this.#deviceId, belowVersion, limit, this.#after);
    }
    const last = rows[rows.length - 1];
    if (last !== undefined) this.#after = last.seq;
    this.#rows.clear();
    for (const r of rows) this.#rows.set(String(r.seq), r);
    return rows.map((r) => ({ id: String(r.seq), version: r.keyVersion }));
  }

  async rewrite(item: StaleItem, from: DataKey, to: DataKey): Promise<void> {
    const row = this.#rows.get(item.id);
    if (row === undefined) throw new RangeError(`re-key: row ${item.id} was not listed`);
    const plaintext = openAtRest(this.#provider, from, row);
    try {
      const sealed = sealAtRest(this.#provider, to, row.deviceId, row.seq, plaintext);
      // Conditional on the version it was read under: a concurrent writer's change is not overwritten.
      await this.#storage.rewriteMessage(row.deviceId, row.seq, from.version, to.version, sealed.nonce, sealed.ciphertext);
    } finally {
      zeroize(plaintext);
    }
    this.rewritten++;
    this.#onRewrite?.();
  }
}

export interface RekeyWorkerOptions {
  readonly storage: IngestStorage;
  /** A hierarchy instance of its own: its operations are serialised, and a long pass must not hold up the message path's. */
  readonly hierarchy: KeyHierarchy;
  readonly dataKeys: DeviceDataKeys;
  readonly clock: Clock;
  /** Names this instance in the lease (default random). */
  readonly owner?: string;
  /** Rotate a device's DEK when its current version is this old (default 90 days). */
  readonly rotateAfterMs?: number;
  /** Wait after a rotation before re-keying (default twice the data keys' cache TTL). */
  readonly graceMs?: number;
  readonly batchSize?: number;
  readonly metrics?: IngestMetrics;
  readonly provider?: CryptoProvider;
}

export interface DeviceRekeyResult {
  readonly deviceId: string;
  readonly rotatedTo?: number;
  readonly report?: RekeyReport;
}

export interface RekeyRunReport {
  /** False when another instance holds the lease. */
  readonly ran: boolean;
  readonly devices: readonly DeviceRekeyResult[];
}

const LEASE = 'rekey-worker';
const DAY = 86_400_000;

export class RekeyWorker {
  readonly #o: RekeyWorkerOptions;
  readonly owner: string;
  readonly rotateAfterMs: number;
  readonly graceMs: number;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<RekeyRunReport> | undefined;
  #abort: AbortController | undefined;

  constructor(o: RekeyWorkerOptions) {
    this.#o = o;
    this.owner = o.owner ?? `ingest-${randomBytes(6).toString('hex')}`;
    this.rotateAfterMs = o.rotateAfterMs ?? 90 * DAY;
    this.graceMs = o.graceMs ?? 2 * o.dataKeys.ttlMs;
    if (!(this.rotateAfterMs > 0) || !(this.graceMs >= 0)) throw new RangeError('rotateAfterMs must be positive and graceMs non-negative');
  }

  /** Rotates a device's DEK now (the operator's `vitalseal ingest keys rotate`). */
  async rotate(deviceId: string): Promise<number> {
    const v = await this.#o.hierarchy.rotate(dataKeyId(deviceId));
    this.#o.dataKeys.forget(deviceId);
    this.#o.metrics?.dekRotations.inc();
    return v;
  }

  /**
   * One pass over every device (or `deviceIds`): rotate what is due, re-key what has waited out the
   * grace period. `force` re-keys without waiting for the grace period (an operator's command, with
   * no other instance running).
   */
  async runOnce(opts: { signal?: AbortSignal; deviceIds?: readonly string[]; force?: boolean } = {}): Promise<RekeyRunReport> {
    const { storage, hierarchy, clock } = this.#o;
    const leaseTtl = Math.max(60_000, this.graceMs);
    if (!(await storage.tryLease(LEASE, this.owner, clock.now(), leaseTtl))) return { ran: false, devices: [] };
    const results: DeviceRekeyResult[] = [];
    try {
      const ids = opts.deviceIds ?? (await storage.listDevices()).map((d) => d.deviceId);
      const records = await storage.keyRecords().list();
      for (const deviceId of ids) {
        if (opts.signal?.aborted) break;
        const keyId = dataKeyId(deviceId);
        const versions = records.filter((r) => r.keyId === keyId);
        const current = versions[versions.length - 1];
        if (current === undefined) continue; // no message yet, no key yet
        const now = clock.now();
        let rotatedTo: number | undefined;
        let newest = current;
        if (now - current.createdAt >= this.rotateAfterMs && (await hierarchy.rekeyStatus(keyId)) === undefined) {
          rotatedTo = await this.rotate(deviceId);
          newest = { ...current, version: rotatedTo, createdAt: now };
        }
        const pending = versions.length > 1 || rotatedTo !== undefined || (await hierarchy.rekeyStatus(keyId)) !== undefined;
        let report: RekeyReport | undefined;
        if (pending && (opts.force === true || now - newest.createdAt >= this.graceMs)) {
          await storage.tryLease(LEASE, this.owner, clock.now(), leaseTtl);
          const target = new MessageRekeyTarget(storage, deviceId, { ...(this.#o.provider === undefined ? {} : { provider: this.#o.provider }), onRewrite: () => this.#o.metrics?.rekeyed.inc() });
          report = await hierarchy.rekey(keyId, target, { batchSize: this.#o.batchSize ?? 200, ...(opts.signal === undefined ? {} : { signal: opts.signal }) });
          this.#o.dataKeys.forget(deviceId);
        }
        if (rotatedTo !== undefined || report !== undefined) {
          results.push({ deviceId, ...(rotatedTo === undefined ? {} : { rotatedTo }), ...(report === undefined ? {} : { report }) });
        }
      }
    } finally {
      await storage.releaseLease(LEASE, this.owner).catch(() => undefined);
    }
    return { ran: true, devices: results };
  }

  /** Runs `runOnce` every `intervalMs` in the background until `stop`. Errors are reported, not thrown. */
  start(intervalMs: number, onError: (e: unknown) => void): void {
    if (this.#timer !== undefined) return;
    const tick = () => {
      if (this.#running !== undefined) return;
      this.#abort = new AbortController();
      this.#running = this.runOnce({ signal: this.#abort.signal });
      this.#running.catch(onError).finally(() => {
        this.#running = undefined;
      });
    };
    this.#timer = setInterval(tick, intervalMs);
    this.#timer.unref();
  }

  /** Stops the background pass between two rows (its progress is kept) and waits for it. */
  async stop(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#abort?.abort();
    await this.#running?.catch(() => undefined);
  }
}
