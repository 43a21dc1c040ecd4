/**
 * Assembles the ingest service's parts in the order that keeps keys safe:
 *
 *   1. the start-up self-test (known answers) — before any key store is opened;
 *   2. the database; 3. the key store (its events go to the audit log once it is open);
 *   4. the audit log (checkpoints signed by a key-store key when configured);
 *   5. the key hierarchy over the database's records; the static X25519 key unwrapped into memory;
 *   6. the device registry, the data-key cache, the message path, the re-key worker.
 *
 * `close` undoes it in reverse after draining messages in flight. The HTTPS front end (http/) and
 * the transport listeners sit on top of an `IngestCore`.
 *
 * @example
 *   const core = await openIngestCore({ selfTest, openKeyStore: (events) => openKeyStore(cfg, { events }),
 *     storage, auditPath, kekName: 'ingest-kek' });
 *   const outcome = await core.service.accept({ payload, contentFormat: 96, peer });
 *   await core.close();
 */
import { openAuditLog, type AuditLog } from '../audit/log.ts';
import { auditKeyEvents } from '../audit/key-events.ts';
import type { CryptoProvider } from '../crypto/provider.ts';
import { getProvider } from '../crypto/registry.ts';
import { KeyHierarchy } from '../keystore/hierarchy/envelope.ts';
import type { Signer } from '../keystore/signer.ts';
import type { KeyEvent, KeyEventSink, KeyStore } from '../keystore/types.ts';
import { systemClock, type Clock } from '../util/clock.ts';
import { KeyStoreError } from '../util/errors.ts';
import { AuditTrail } from './audit-trail.ts';
import { DeviceDataKeys } from './data-keys.ts';
import type { EpochPolicy } from './epochs.ts';
import { IngestMetrics } from './metrics.ts';
import { RekeyWorker } from './rekey.ts';
import { DeviceRegistry, type CrlPublisher } from './registry.ts';
import type { SelfTestSummary, StartupSelfTest } from './selftest.ts';
import { IngestService, silentLogger, type AnomalyThresholds, type IngestLimits, type IngestLogger } from './service.ts';
import { loadStaticKeys, type StaticKeys } from './static-key.ts';
import type { IngestStorage } from './storage/types.ts';

export interface IngestCoreOptions {
  readonly selfTest: StartupSelfTest;
  /** Opens the key store; called only after the self-test passed. */
  readonly openKeyStore: (events: KeyEventSink) => Promise<KeyStore>;
  /** The database (`init` is called here). Closed by `close`. */
  readonly storage: IngestStorage;
  readonly auditPath: string;
  /** A signing key in the key store for audit checkpoints (made on first use). */
  readonly auditSigningKey?: string;
  /** The KEK (in the key store) that wraps the data keys and the static key. */
  readonly kekName: string;
  readonly clock?: Clock;
  readonly provider?: CryptoProvider;
  readonly crl?: CrlPublisher;
  readonly log?: IngestLogger;
  readonly limits?: IngestLimits;
  readonly epochPolicy?: EpochPolicy;
  readonly anomaly?: AnomalyThresholds;
  readonly dataKeyCache?: { readonly ttlMs?: number; readonly maxCached?: number };
  readonly rekey?: { readonly rotateAfterMs?: number; readonly graceMs?: number; readonly batchSize?: number; readonly owner?: string };
  /** Start without a static key (only for commands that make one: `keygen`, `restore`). */
  readonly allowNoStaticKey?: boolean;
}

export interface IngestCore {
  readonly selfTest: SelfTestSummary;
  readonly clock: Clock;
  readonly provider: CryptoProvider;
  readonly storage: IngestStorage;
  readonly keyStore: KeyStore;
  readonly auditLog: AuditLog;
  readonly audit: AuditTrail;
  readonly hierarchy: KeyHierarchy;
  readonly metrics: IngestMetrics;
  readonly registry: DeviceRegistry;
  readonly dataKeys: DeviceDataKeys;
  /** Undefined only with `allowNoStaticKey` and no key yet. */
  readonly staticKeys: StaticKeys | undefined;
  /** Undefined without a static key. */
  readonly service: IngestService | undefined;
  readonly rekey: RekeyWorker;
  readonly log: IngestLogger;
  readonly kekName: string;
  close(): Promise<void>;
}

/** Holds key events until the audit log is open, then forwards them in order. */
class DeferredKeyEvents implements KeyEventSink {
  #queue: KeyEvent[] = [];
  #target: KeyEventSink | undefined;

  record(event: KeyEvent): void {
    if (this.#target === undefined) this.#queue.push(event);
    else this.#target.record(event);
  }

  attach(target: KeyEventSink): void {
    this.#target = target;
    const q = this.#queue;
    this.#queue = [];
    for (const e of q) target.record(e);
  }

  /**
   * From now on events go nowhere: called as the audit log closes, whose final checkpoint is signed
   * with a key-store key (a `sign` event the closing log could not take; the checkpoint line itself
   * is the record of that signature).
   */
  detach(): void {
    this.#target = { record: () => undefined };
    this.#queue = [];
  }
}

async function signingKey(store: KeyStore, name: string): Promise<Signer> {
  try {
    return await store.openSigningKey(name);
  } catch (e) {
    if (e instanceof KeyStoreError && e.code === 'not-found') return store.createSigningKey(name);
    throw e;
  }
}

export async function openIngestCore(o: IngestCoreOptions): Promise<IngestCore> {
  const clock = o.clock ?? systemClock;
  const provider = o.provider ?? getProvider();
  const log = o.log ?? silentLogger;
  // 1. Known answers first: a broken primitive must not touch a key.
  const selfTest = await o.selfTest();
  log.info({ primitives: selfTest.results.length, ms: Math.round(selfTest.durationMs) }, 'start-up self-test passed');

  const cleanups: (() => Promise<unknown>)[] = [];
  const unwind = async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  };
  try {
    cleanups.push(() => o.storage.close());
    await o.storage.init();

    const events = new DeferredKeyEvents();
    const keyStore = await o.openKeyStore(events);
    cleanups.push(() => keyStore.close());

    const signer = o.auditSigningKey === undefined ? undefined : await signingKey(keyStore, o.auditSigningKey);
    const auditLog = await openAuditLog({ path: o.auditPath, clock, actor: 'ingest', ...(signer === undefined ? {} : { signer }) });
    cleanups.push(() => auditLog.close());
    // Cleanups run in reverse: the sink is detached just before the log closes.
    cleanups.push(async () => events.detach());
    const metrics = new IngestMetrics();
    const keyEvents = auditKeyEvents(auditLog, { actor: 'ingest', onError: (e) => log.error({ err: String(e) }, 'audit append failed') });
    events.attach(keyEvents);
    const audit = new AuditTrail({ log: auditLog, onDropped: (n) => metrics.auditSuppressed.inc({}, n), onError: (e) => log.error({ err: String(e) }, 'audit append failed') });
    await audit.append({ operation: 'open', result: 'ok', detail: `ingest started; self-test passed (${selfTest.results.length} checks); key store ${keyStore.describe().kind}` });

    const hierarchy = new KeyHierarchy({ store: keyStore, kekName: o.kekName, records: o.storage.keyRecords(), clock, events, provider });
    const staticKeys = await loadStaticKeys(hierarchy, provider).catch((e: unknown) => {
      if (o.allowNoStaticKey === true && e instanceof KeyStoreError && e.code === 'not-found') return undefined;
      throw e;
    });
    if (staticKeys !== undefined) cleanups.push(async () => staticKeys.destroy());

    const registry = new DeviceRegistry({ storage: o.storage, clock, audit, ...(o.crl === undefined ? {} : { crl: o.crl }) });
    await registry.load();
    const dataKeys = new DeviceDataKeys({ hierarchy, clock, ...o.dataKeyCache });
    cleanups.push(async () => dataKeys.clear());
    const service = staticKeys === undefined ? undefined : new IngestService({
      storage: o.storage, registry, dataKeys, staticKeys, audit, metrics, clock, provider, log,
      ...(o.limits === undefined ? {} : { limits: o.limits }),
      ...(o.epochPolicy === undefined ? {} : { epochPolicy: o.epochPolicy }),
      ...(o.anomaly === undefined ? {} : { anomaly: o.anomaly }),
    });
    // The re-key worker gets a hierarchy of its own (see rekey.ts).
    const rekeyHierarchy = new KeyHierarchy({ store: keyStore, kekName: o.kekName, records: o.storage.keyRecords(), clock, events, provider });
    const rekey = new RekeyWorker({ storage: o.storage, hierarchy: rekeyHierarchy, dataKeys, clock, metrics, provider, ...o.rekey });

    let closed: Promise<void> | undefined;
    return {
      selfTest, clock, provider, storage: o.storage, keyStore, auditLog, audit, hierarchy, metrics, registry, dataKeys, staticKeys, service, rekey, log,
      kekName: o.kekName,
      close() {
        closed ??= (async () => {
          await service?.drain();
          await rekey.stop();
          service?.destroy();
          await audit.flush();
          await audit.append({ operation: 'open', result: 'ok', code: 'shutdown', detail: 'ingest stopped' }).catch(() => undefined);
          await keyEvents.flush().catch(() => undefined);
          await unwind();
        })();
        return closed;
      },
    };
  } catch (e) {
    await unwind();
    throw e;
  }
}
