/**
 * From a validated configuration to a running ingest service (and the pieces the operator commands
 * need): the database, the key store (after the self-test), the issuing CA, the HTTPS front end, the
 * background timers (registry refresh, anomaly windows, refusal tallies, re-key), and a graceful stop.
 *
 * The transport listeners plug in here (docs/ingest.md, "Wiring the listeners"): the build passes
 * the ones it has (src/ingest/listeners/); a configured `mqtt` or `coaps` section whose listener is
 * not among them stops the start with `Unsupported`, naming what is missing, before anything opens.
 *
 * @example
 *   const running = await startIngest(loadIngestConfig(path), { env: process.env, selfTest, log });
 *   process.once('SIGTERM', () => void running.stop());
 */
import { readFileSync } from 'node:fs';
import { openKeyStore } from '../keystore/open.ts';
import { readPrivateFile } from '../keystore/private-file.ts';
import { readSecret } from '../keystore/secret-source.ts';
import type { Certificate } from '../pki/certificate.ts';
import { parseCertificate } from '../pki/certificate.ts';
import { openDevCa, type DevCa } from '../pki/dev-ca.ts';
import { pemDecode } from '../pki/pem.ts';
import { systemClock, type Clock } from '../util/clock.ts';
import { ApiMisuse, Unsupported } from '../util/errors.ts';
import type { CoapsListenerConfig, IngestConfig, MqttListenerConfig } from './config.ts';
import { openIngestCore, type IngestCore } from './core.ts';
import type { DeviceIssuer } from './http/est.ts';
import { startIngestHttp, type IngestHttp } from './http/server.ts';
import type { CrlPublisher } from './registry.ts';
import type { StartupSelfTest } from './selftest.ts';
import type { IngestLogger } from './service.ts';
import { PostgresStorage } from './storage/postgres.ts';
import { SqliteStorage } from './storage/sqlite.ts';
import type { IngestStorage } from './storage/types.ts';

/**
 * A transport listener (the MQTT shared-subscription subscriber, the CoAPS server) as the runtime
 * starts it: it gets the core (service, registry, metrics) and its own config section, and hands
 * every message to `core.service.accept`. docs/ingest.md, "Wiring the listeners", says what each
 * must call.
 */
export interface ListenerFactory<C> {
  start(core: IngestCore, config: C, log: IngestLogger): Promise<{ stop(): Promise<void> }>;
}

export interface Listeners {
  readonly mqtt?: ListenerFactory<MqttListenerConfig>;
  readonly coaps?: ListenerFactory<CoapsListenerConfig>;
}

export interface RuntimeDeps {
  readonly env: NodeJS.ProcessEnv;
  readonly selfTest: StartupSelfTest;
  readonly log: IngestLogger;
  readonly clock?: Clock;
  /** The transport listeners this build has (src/ingest/listeners/index.ts). */
  readonly listeners?: Listeners;
}

/** Refuses listener sections whose transport is not in this build, naming what is missing. */
export function checkListeners(cfg: IngestConfig, listeners: Listeners = {}): void {
  if (cfg.mqtt !== undefined && listeners.mqtt === undefined) {
    throw new Unsupported('transport-not-built', `${cfg.source}: mqtt: the MQTT shared-subscription subscriber (src/transport/mqtts) is not part of this build; remove the mqtt section or use a build that has it`);
  }
  if (cfg.coaps !== undefined && listeners.coaps === undefined) {
    throw new Unsupported('transport-not-built', `${cfg.source}: coaps: the CoAPS listener (CoAP over DTLS 1.3: src/dtls, src/coap, src/transport/coaps) is not part of this build; remove the coaps section or use a build that has it`);
  }
}

/**
 * Opens (does not initialise) the configured database. `messagePath`: the service, which stores
 * messages, gets SQLite's writer thread for them; an operator's command does not start one.
 */
export async function openStorage(cfg: IngestConfig, env: NodeJS.ProcessEnv, o: { readonly messagePath?: boolean } = {}): Promise<IngestStorage> {
  if (cfg.storage.kind === 'sqlite') return new SqliteStorage({ path: cfg.storage.path, checkpointInBackground: true, writeMessagesInBackground: o.messagePath === true });
  const secret = await readSecret(cfg.storage.connection, { env, what: 'PostgreSQL connection string' });
  try {
    return new PostgresStorage({ connection: new TextDecoder().decode(secret).trim(), maxConnections: cfg.storage.maxConnections });
  } finally {
    secret.fill(0);
  }
}

/** The dev CA directory of the `pki` section. Reads certificates only; the CA key is read on first use. */
export async function openCa(cfg: IngestConfig, env: NodeJS.ProcessEnv): Promise<DevCa | undefined> {
  if (cfg.pki === undefined) return undefined;
  const passphrase = cfg.pki.passphrase === undefined ? undefined : await readSecret(cfg.pki.passphrase, { env, what: 'CA key passphrase' });
  try {
    return openDevCa(cfg.pki.dir, passphrase === undefined ? {} : { passphrase });
  } finally {
    passphrase?.fill(0);
  }
}

/** The dev CA as the enrolment endpoint's issuer and the registry's CRL publisher. */
export function devCaAdapters(ca: DevCa): { issuer: DeviceIssuer; crl: CrlPublisher } {
  return {
    issuer: {
      chain: [ca.issuing, ca.root],
      issueDevice: (csr, deviceId, now) => ca.issueDevice(csr, deviceId, now),
      revoke: (serial, now, reason) => ca.revoke(serial, reason, now),
    },
    crl: { revoke: (serial, now) => ca.revoke(serial, 'cessationOfOperation', now), crlPath: ca.paths.crl },
  };
}

/**
 * Self-test, then key store, audit log, hierarchy, static key, registry (see core.ts). `cli` writes
 * the operator commands' audit log instead of the service's.
 */
export async function openCoreFromConfig(cfg: IngestConfig, deps: RuntimeDeps, opts: { allowNoStaticKey?: boolean; crl?: CrlPublisher; cli?: boolean } = {}): Promise<IngestCore> {
  const storage = await openStorage(cfg, deps.env, { messagePath: opts.cli !== true });
  return openIngestCore({
    selfTest: deps.selfTest,
    openKeyStore: (events) => openKeyStore(cfg.keystore, { env: deps.env, events, logger: { warn: (m) => deps.log.warn({}, m) } }),
    storage,
    auditPath: opts.cli === true ? cfg.audit.cliPath : cfg.audit.path,
    ...(cfg.keys.auditSigningKey === undefined ? {} : { auditSigningKey: cfg.keys.auditSigningKey }),
    kekName: cfg.keys.kek,
    clock: deps.clock ?? systemClock,
    log: deps.log,
    ...(opts.crl === undefined ? {} : { crl: opts.crl }),
    limits: { maxMessageBytes: cfg.ingest.maxMessageBytes, epochCacheEntries: cfg.ingest.epochCacheEntries },
    epochPolicy: { maxAgeMs: cfg.ingest.epochMaxAgeSeconds * 1000, maxMessages: cfg.ingest.epochMaxMessages },
    anomaly: { windowMs: cfg.anomaly.windowSeconds * 1000, decryptFailures: cfg.anomaly.decryptFailures, rejections: cfg.anomaly.rejections, auditBurst: cfg.anomaly.auditBurst },
    dataKeyCache: { ttlMs: cfg.keys.dataKeyCacheTtlSeconds * 1000 },
    rekey: { rotateAfterMs: cfg.keys.rotateDataKeysAfterDays * 86_400_000 },
    ...(opts.allowNoStaticKey === undefined ? {} : { allowNoStaticKey: opts.allowNoStaticKey }),
  });
}

function readCertificates(path: string, field: string): Certificate[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ApiMisuse('invalid-config', `${field}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const certs = pemDecode(text, 'CERTIFICATE').map((b) => parseCertificate(b.der));
  if (certs.length === 0) throw new ApiMisuse('invalid-config', `${field}: ${path} holds no certificate`);
  return certs;
}

export interface RunningIngest {
  readonly core: IngestCore;
  readonly http: IngestHttp | undefined;
  stop(): Promise<void>;
}

/** Starts the service as the configuration says; `stop` drains and closes everything. */
export async function startIngest(cfg: IngestConfig, deps: RuntimeDeps): Promise<RunningIngest> {
  checkListeners(cfg, deps.listeners);
  if (cfg.https === undefined) throw new ApiMisuse('invalid-config', `${cfg.source}: https: required (the API, enrolment and dashboard listener)`);
  const https = cfg.https;
  const ca = await openCa(cfg, deps.env);
  const adapters = ca === undefined ? undefined : devCaAdapters(ca);
  const certPem = readFileSync(https.certificate, 'utf8');
  const keyPem = Buffer.from(await readPrivateFile(https.key, { maxBytes: 64 * 1024, what: 'HTTPS private key' }));
  const keyPassphrase = https.keyPassphrase === undefined ? undefined : await readSecret(https.keyPassphrase, { env: deps.env, what: 'HTTPS key passphrase' });
  const roots = https.clientRoots.length > 0 ? https.clientRoots.flatMap((p, i) => readCertificates(p, `https.clientRoots[${i}]`)) : ca === undefined ? [] : [ca.root];
  if (roots.length === 0) throw new ApiMisuse('invalid-config', `${cfg.source}: https.clientRoots: required when there is no pki section`);

  const core = await openCoreFromConfig(cfg, deps, adapters === undefined ? {} : { crl: adapters.crl });
  const timers: NodeJS.Timeout[] = [];
  const listeners: { stop(): Promise<void> }[] = [];
  let http: IngestHttp | undefined;
  try {
    if (core.service === undefined) throw new ApiMisuse('no-static-key', 'the ingest has no static key yet: run `vitalseal ingest keygen --config FILE` first');
    http = await startIngestHttp(core, {
      host: https.host, port: https.port, ...(https.redirectPort === undefined ? {} : { redirectPort: https.redirectPort }),
      certPem, keyPem: keyPem, ...(keyPassphrase === undefined ? {} : { keyPassphrase: new TextDecoder().decode(keyPassphrase) }),
      roots, operators: https.operators, hstsMaxAge: https.hstsMaxAgeSeconds, maxLiveStreams: https.maxLiveStreams,
      ...(adapters === undefined ? {} : { issuer: adapters.issuer }),
    });
    const every = (ms: number, fn: () => Promise<unknown> | void) => {
      const t = setInterval(() => {
        Promise.resolve(fn()).catch((e: unknown) => deps.log.error({ err: e instanceof Error ? e.message : String(e) }, 'background task failed'));
      }, ms);
      t.unref();
      timers.push(t);
    };
    every(cfg.ingest.registryRefreshMs, () => core.registry.refresh());
    every(cfg.anomaly.windowSeconds * 1000, () => core.service?.sweepAnomalies());
    every(5000, () => core.service?.flushRejections());
    core.rekey.start(cfg.keys.rekeyIntervalSeconds * 1000, (e) => deps.log.error({ err: e instanceof Error ? e.message : String(e) }, 're-key pass failed; it resumes on the next run'));
    if (cfg.mqtt !== undefined && deps.listeners?.mqtt !== undefined) listeners.push(await deps.listeners.mqtt.start(core, cfg.mqtt, deps.log));
    if (cfg.coaps !== undefined && deps.listeners?.coaps !== undefined) listeners.push(await deps.listeners.coaps.start(core, cfg.coaps, deps.log));
    core.registry.onStatusChange((deviceId, status) => deps.log.warn({ deviceId, status }, 'device status changed'));
    // The MQTT listener has the broker reload it (mqtt.crlReload); without one, the operator does.
    core.registry.onCrlChange((info) => deps.log.warn({ ...info }, cfg.mqtt?.crlReload === undefined ? 'CRL regenerated: the broker must reload it' : 'CRL regenerated'));
    deps.log.info({ url: http.url, redirectPort: http.redirectPort, storage: core.storage.kind, keyStore: core.keyStore.describe().kind }, 'ingest service listening');
  } catch (e) {
    for (const t of timers) clearInterval(t);
    for (const l of listeners.reverse()) await l.stop().catch(() => undefined);
    await http?.close();
    await core.close();
    throw e;
  } finally {
    keyPassphrase?.fill(0);
  }
  let stopped: Promise<void> | undefined;
  return {
    core, http,
    stop() {
      stopped ??= (async () => {
        for (const t of timers) clearInterval(t);
        // Listeners first: no new messages; then what is in flight drains in core.close().
        for (const l of [...listeners].reverse()) await l.stop().catch((e: unknown) => deps.log.error({ err: String(e) }, 'listener did not stop cleanly'));
        await http?.close();
        await core.close();
        deps.log.info({}, 'ingest service stopped');
      })();
      return stopped;
    },
  };
}
