/**
 * `createAgent`: the device agent as a library, for device makers embedding it, and what
 * `vitalseal agent run` wraps.
 *
 * Start-up order (each step only if the previous passed):
 *   1. power-on self-test of every primitive about to be used (src/crypto/selftest.ts), before any
 *      key is opened: a mismatch refuses to start and names the primitive;
 *   2. the pinned ingest public key; the certificate watcher (and renewal, when configured);
 *   3. the durable queue (recovering any torn tail, reported in the status and the log);
 *   4. the uplinks (from configuration: uplink/from-config.ts; or those passed in `uplinks`);
 *   5. `start()`: sources, sampler, uplink scheduler, metrics endpoint, status socket.
 *
 * `stop()` (what SIGTERM calls): HL7 gateways stop accepting and finish what they were storing,
 * the pipeline seals and queues its last batch, the scheduler persists the acknowledged position,
 * the queue writes its state; then the endpoints close.
 *
 * @example
 *   import { createAgent, loadAgentConfig } from 'vitalseal/agent';
 *   const agent = await createAgent({ config: loadAgentConfig('agent.yaml', process.env), uplinks: { primary: myUplink } });
 *   await agent.start();
 *   process.once('SIGTERM', () => void agent.stop());
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { contentAlgByName } from '../cose/algorithms.ts';
import { x25519PublicFromPem } from '../cose/keys.ts';
import { SealingSession } from '../cose/sealing-session.ts';
import type { CryptoProvider } from '../crypto/provider.ts';
import { getProvider, providerForAead } from '../crypto/registry.ts';
import { setKeyedContextDefault } from '../crypto/keyed.ts';
import { nodeEcdsaP256, runSelfTest, type EcdsaP256, type SelfTestReport } from '../crypto/selftest.ts';
import type { Uplink } from '../transport/types.ts';
import { systemClock, type Clock } from '../util/clock.ts';
import { ApiMisuse, VitalsealError } from '../util/errors.ts';
import { CertificateWatcher } from './cert-watch.ts';
import type { RenewalStatus } from './renewal/renewer.ts';
import { ConfigError, type AgentConfig } from './config.ts';
import { createLogger, type Logger } from './log.ts';
import { MetricsRegistry, serveMetrics } from './metrics.ts';
import { Pipeline } from './pipeline.ts';
import { openSegmentQueue, type SegmentQueue } from './queue/segment-queue.ts';
import { RejectedStore } from './queue/rejected-store.ts';
import type { MllpGateway } from './sensors/hl7/gateway.ts';
import { SimulatedPatient } from './sensors/simulated-patient.ts';
import type { SensorSource } from './sensors/types.ts';
import { serveStatus } from './status-socket.ts';
import { uplinkFromConfig, type BuiltUplink } from './uplink/from-config.ts';
import { UplinkRunner, type Timers } from './uplink/runner.ts';

export interface CreateAgentOptions {
  readonly config: AgentConfig;
  /** Transports to use instead of building them from `config.transport` (embedding, tests). */
  readonly uplinks?: { readonly primary: Uplink; readonly failover?: Uplink };
  /** More polled sources: drivers for real sensors (see docs/agent.md, "Sensor drivers"). */
  readonly sources?: readonly SensorSource[];
  readonly clock?: Clock;
  readonly log?: Logger;
  readonly random?: () => number;
  readonly timers?: Timers;
  /** The crypto provider to test and then use (default: the registry's choice for the suite). */
  readonly crypto?: CryptoProvider;
  /** The ECDSA implementation the self-test checks (default node:crypto). */
  readonly ecdsa?: EcdsaP256;
  /** Where `{ env: NAME }` secret sources (key store PIN, passphrase) are read (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
}

export interface AgentStatus {
  readonly device: string;
  readonly state: 'created' | 'running' | 'stopping' | 'stopped';
  readonly startedAt: string | null;
  /** `keyedContexts`: what the DTLS record layer's AEAD contexts run on ("libcrypto ..." or "node: <why>"). */
  readonly selfTest: { readonly passed: readonly string[]; readonly durationMs: number; readonly keyedContexts: string };
  readonly queue: {
    readonly depth: number; readonly bytes: number; readonly capacityBytes: number; readonly nearlyFull: boolean;
    readonly dropped: number; readonly ackedThrough: number; readonly nextSeq: number; readonly movedAside: number;
    readonly recovery: { readonly state: string; readonly truncatedBytes: number; readonly problems: readonly string[] };
  };
  readonly lastAck: { readonly seq: number; readonly at: string } | null;
  readonly transport: {
    readonly kind: string; readonly link: string; readonly target: string | null; readonly peer: string | null;
    readonly protocol: string | null; readonly suite: string | null; readonly lastError: string | null; readonly retryAt: string | null;
    /** Since the last (re)connect, messages below this sequence number drain as the backlog; the rest are live. */
    readonly liveFrom: number;
  };
  readonly sealing: { readonly suite: string; readonly epochAgeSeconds: number | null; readonly epochMessages: number | null; readonly epochsStarted: number };
  readonly certificate: {
    readonly state: string; readonly notAfter: string | null; readonly daysLeft: number | null; readonly message: string;
    /** Automatic renewal, when `certificate.renew` is configured. */
    readonly renewal: RenewalStatus | null;
  } | null;
  readonly pipeline: Record<string, number>;
  readonly uplink: Record<string, number>;
  readonly hl7: Record<string, Record<string, number>>;
  readonly sources: readonly { readonly ok: boolean; readonly detail: string }[];
}

export interface AgentEvents {
  appended: [{ readonly seq: number }];
  stopped: [];
}

const iso = (t: number | undefined): string | null => (t === undefined ? null : new Date(t).toISOString());

export class Agent extends EventEmitter<AgentEvents> {
  readonly config: AgentConfig;
  readonly selfTest: SelfTestReport;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #queue: SegmentQueue;
  readonly #rejected: RejectedStore;
  readonly #session: SealingSession;
  readonly #pipeline: Pipeline;
  readonly #runner: UplinkRunner;
  readonly #uplinks: { readonly primary: Uplink; readonly failover?: Uplink };
  /** Releases what configured uplinks hold (TLS processes, key store) after the runner closed them. */
  readonly #releaseUplinks: () => Promise<void>;
  readonly #gateways: { id: string; gw: MllpGateway }[] = [];
  readonly #cert: CertificateWatcher | undefined;
  readonly #metrics = new MetricsRegistry();
  #state: AgentStatus['state'] = 'created';
  #startedAt: number | undefined;
  #tick: NodeJS.Timeout | undefined;
  #certTimer: NodeJS.Timeout | undefined;
  #metricsServer: { close(cb?: () => void): unknown } | undefined;
  #statusServer: Server | undefined;
  #stopping: Promise<void> | undefined;
  /** Where the metrics endpoint listens once started (port 0 in config picks a free one). */
  metricsAddress: { host: string; port: number } | undefined;

  /** @internal use createAgent */
  constructor(parts: {
    config: AgentConfig; selfTest: SelfTestReport; log: Logger; clock: Clock; queue: SegmentQueue; rejected: RejectedStore;
    session: SealingSession; uplinks: { primary: Uplink; failover?: Uplink }; cert: CertificateWatcher | undefined;
    sources: readonly SensorSource[]; random: () => number; timers: Timers | undefined; releaseUplinks?: () => Promise<void>;
    /** The HL7 gateway class, loaded by createAgent only when a source needs it. */
    Gateway?: typeof MllpGateway;
  }) {
    super();
    this.config = parts.config;
    this.selfTest = parts.selfTest;
    this.#log = parts.log;
    this.#clock = parts.clock;
    this.#queue = parts.queue;
    this.#rejected = parts.rejected;
    this.#session = parts.session;
    this.#uplinks = parts.uplinks;
    this.#releaseUplinks = parts.releaseUplinks ?? (async () => undefined);
    this.#cert = parts.cert;
    const c = parts.config;
    this.#runner = new UplinkRunner({
      uplinks: parts.uplinks, queue: parts.queue, rejected: parts.rejected, clock: parts.clock, deviceId: c.device.id,
      log: parts.log.child({ part: 'uplink' }), random: parts.random,
      ...(parts.timers === undefined ? {} : { timers: parts.timers }),
      scheduler: {
        window: c.uplink.window, liveSlots: c.uplink.liveSlots, failoverAfter: c.uplink.failoverAfter,
        primaryProbeMs: c.uplink.primaryProbeSeconds * 1000, sendTimeoutMs: c.uplink.sendTimeoutMs,
        backoff: { initialMs: c.uplink.backoffInitialMs, maxMs: c.uplink.backoffMaxMs },
      },
    });
    this.#pipeline = new Pipeline({
      deviceId: c.device.id, session: parts.session, queue: parts.queue, clock: parts.clock, log: parts.log.child({ part: 'pipeline' }),
      windowMs: c.batch.windowMs,
      onAppended: (seq) => {
        this.#runner.notifyAppended();
        this.emit('appended', { seq });
      },
    });
    for (const s of c.sources) {
      if (s.type === 'simulated') {
        this.#pipeline.addSource(new SimulatedPatient({
          id: s.id, seed: s.seed, ecgHz: s.ecgHz,
          ...(s.heartRate === undefined ? {} : { heartRate: s.heartRate }), ...(s.spo2 === undefined ? {} : { spo2: s.spo2 }),
          ...(s.respirationRate === undefined ? {} : { respirationRate: s.respirationRate }),
          ...(s.nibpIntervalSeconds === undefined ? {} : { nibpIntervalMs: s.nibpIntervalSeconds * 1000 }),
        }));
      } else {
        if (parts.Gateway === undefined) throw new ApiMisuse('hl7-not-loaded', 'an hl7-mllp source needs the gateway module (createAgent loads it)');
        this.#gateways.push({
          id: s.id,
          gw: new parts.Gateway({
            host: s.listen.host, port: s.listen.port, sink: this.#pipeline, clock: parts.clock, log: parts.log.child({ part: 'hl7', source: s.id }),
            maxConnections: s.maxConnections, maxFrameBytes: s.maxFrameBytes, idleTimeoutMs: s.idleTimeoutMs, frameTimeoutMs: s.frameTimeoutMs,
            ...(s.acceptSenders === undefined ? {} : { acceptSenders: s.acceptSenders }),
            ...(s.utcOffsetMinutes === undefined ? {} : { utcOffsetMinutes: s.utcOffsetMinutes }),
          }),
        });
      }
    }
    for (const s of parts.sources) this.#pipeline.addSource(s);
    this.#registerMetrics();
  }

  /** The HL7 gateways' bound addresses (port 0 in config picks a free one). */
  gatewayAddresses: Record<string, { host: string; port: number }> = {};

  async start(): Promise<void> {
    if (this.#state !== 'created') throw new ApiMisuse('agent-started', 'agent.start() may be called once');
    this.#state = 'running';
    this.#startedAt = this.#clock.now();
    const c = this.config;
    this.#pipeline.start(this.#clock.now());
    for (const { id, gw } of this.#gateways) this.gatewayAddresses[id] = await gw.start();
    if (c.metrics.listen !== false) {
      const m = await serveMetrics(this.#metrics, c.metrics.listen);
      this.#metricsServer = m.server;
      this.metricsAddress = { host: m.host, port: m.port };
      this.#log.info({ host: m.host, port: m.port }, 'metrics endpoint listening');
    }
    this.#statusServer = await serveStatus(c.status.socket, () => this.status());
    this.#runner.start();
    const tickMs = Math.max(10, Math.min(250, c.batch.windowMs / 2));
    this.#tick = setInterval(() => {
      this.#pipeline.tick(this.#clock.now()).catch(() => undefined); // failures are counted and logged inside
    }, tickMs);
    if (this.#cert !== undefined && c.certificate !== undefined) {
      this.#cert.check();
      this.#certTimer = setInterval(() => this.#cert?.check(), c.certificate.checkIntervalSeconds * 1000);
      this.#certTimer.unref();
    }
    this.#log.info({ device: c.device.id, suite: c.sealing.alg, transport: c.transport.primary.kind, windowMs: c.batch.windowMs }, 'agent running');
  }

  /** Graceful shutdown; safe to call more than once. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    const wasRunning = this.#state === 'running';
    this.#state = 'stopping';
    this.#log.info({}, 'agent stopping');
    clearInterval(this.#tick);
    clearInterval(this.#certTimer);
    // The gateways stop accepting and wait for the messages they are storing; those wait for a
    // flush, so keep flushing until the gateways are done, then seal the last batch.
    const flusher = setInterval(() => void this.#pipeline.flush().catch(() => undefined), 50);
    try {
      await Promise.all(this.#gateways.map(({ gw }) => gw.stop()));
    } finally {
      clearInterval(flusher);
    }
    if (wasRunning) await this.#pipeline.stop(this.#clock.now()).catch(() => undefined);
    await this.#cert?.stop();
    await this.#runner.stop();
    await this.#releaseUplinks();
    await this.#queue.close();
    this.#session.destroy();
    await new Promise<void>((r) => (this.#metricsServer === undefined ? r() : this.#metricsServer.close(() => r())));
    await new Promise<void>((r) => (this.#statusServer === undefined ? r() : this.#statusServer.close(() => r())));
    this.#state = 'stopped';
    const s = this.#queue.stats();
    this.#log.info({ depth: s.depth, ackedThrough: s.ackedThrough, nextSeq: s.nextSeq }, 'agent stopped; queue state saved');
    this.emit('stopped');
  }

  status(): AgentStatus {
    const q = this.#queue.stats();
    const sched = this.#runner.core.status();
    const target = sched.target;
    const uplink = target === undefined ? undefined : this.#uplinks[target];
    const session = sched.link === 'connected' ? uplink?.session : undefined;
    const epoch = this.#session.epoch();
    const cert = this.#cert?.status();
    const now = this.#clock.now();
    return {
      device: this.config.device.id,
      state: this.#state,
      startedAt: iso(this.#startedAt),
      selfTest: {
        passed: this.selfTest.results.map((r) => `${r.primitive} (${r.provider})`),
        durationMs: Math.round(this.selfTest.durationMs * 10) / 10,
        keyedContexts: this.selfTest.keyedContexts.backend === 'libcrypto'
          ? `libcrypto: ${this.selfTest.keyedContexts.library ?? ''}`
          : `node: ${this.selfTest.keyedContexts.reason ?? ''}`,
      },
      queue: {
        depth: q.depth, bytes: q.bytes, capacityBytes: q.capacityBytes, nearlyFull: q.nearlyFull, dropped: q.dropped,
        ackedThrough: q.ackedThrough, nextSeq: q.nextSeq, movedAside: this.#rejected.count,
        recovery: { state: this.#queue.recovery.state, truncatedBytes: this.#queue.recovery.truncatedBytes, problems: this.#queue.recovery.problems },
      },
      lastAck: sched.lastAckAt === undefined || sched.lastAckSeq === undefined ? null : { seq: sched.lastAckSeq, at: new Date(sched.lastAckAt).toISOString() },
      transport: {
        kind: uplink?.kind ?? this.config.transport.primary.kind, link: sched.link, target: target ?? null,
        peer: session?.peer ?? null, protocol: session?.protocol ?? null, suite: session?.suite ?? null,
        lastError: sched.lastError ?? null, retryAt: iso(sched.retryAt), liveFrom: sched.liveFrom,
      },
      sealing: {
        suite: this.config.sealing.alg,
        epochAgeSeconds: epoch === undefined ? null : Math.max(0, Math.round((now - epoch.startedAt) / 100) / 10),
        epochMessages: epoch?.messages ?? null,
        epochsStarted: this.#session.epochsStarted,
      },
      certificate: cert === undefined ? null : { state: cert.state, notAfter: iso(cert.notAfter), daysLeft: cert.daysLeft ?? null, message: cert.message, renewal: this.#cert?.renewal() ?? null },
      pipeline: { ...this.#pipeline.counters() },
      uplink: { ...this.#runner.core.counters() },
      hl7: Object.fromEntries(this.#gateways.map(({ id, gw }) => [id, { ...gw.counters() }])),
      sources: [...this.#pipeline.health(), ...this.#gateways.map(({ gw }) => gw.health())],
    };
  }

  /** The Prometheus exposition text (also served on the metrics endpoint). */
  metrics(): string {
    return this.#metrics.render();
  }

  #registerMetrics(): void {
    const m = this.#metrics;
    const q = () => this.#queue.stats();
    const p = () => this.#pipeline.counters();
    const u = () => this.#runner.core.counters();
    m.gauge('vitalseal_agent_up', 'The agent is running (1) or stopping (0)', () => (this.#state === 'running' ? 1 : 0));
    m.gauge('vitalseal_agent_selftest_passed', 'Power-on self-test passed (the agent does not run otherwise)', () => 1);
    m.gauge('vitalseal_agent_queue_depth', 'Sealed messages held and not yet acknowledged', () => q().depth);
    m.gauge('vitalseal_agent_queue_bytes', 'Bytes held in the queue', () => q().bytes);
    m.gauge('vitalseal_agent_queue_capacity_bytes', 'Queue capacity in bytes', () => q().capacityBytes);
    m.gauge('vitalseal_agent_queue_nearly_full', 'Queue at or above its high-water mark (health alarm)', () => (q().nearlyFull ? 1 : 0));
    m.counter('vitalseal_agent_queue_dropped_total', 'Messages dropped by the queue capacity policy (persisted)', () => q().dropped);
    m.gauge('vitalseal_agent_queue_acked_through', 'Highest contiguously acknowledged sequence number', () => q().ackedThrough);
    m.gauge('vitalseal_agent_queue_next_seq', 'Sequence number the next message will get', () => q().nextSeq);
    m.gauge('vitalseal_agent_queue_recovered_bytes', 'Bytes cut from torn segment tails at the last start', () => this.#queue.recovery.truncatedBytes);
    m.gauge('vitalseal_agent_rejected_messages', 'Refused messages kept aside (sealed) for inspection', () => this.#rejected.count);
    m.counter('vitalseal_agent_messages_total', 'Sealed messages queued', () => p().messages);
    m.counter('vitalseal_agent_readings_total', 'Vital-sign readings queued', () => p().readings);
    m.counter('vitalseal_agent_ecg_samples_total', 'ECG samples queued', () => p().ecgSamples);
    m.counter('vitalseal_agent_invalid_readings_total', 'Readings dropped as outside the plausible range', () => p().invalidReadings);
    m.counter('vitalseal_agent_lost_readings_total', 'Readings lost because sealing or storing failed', () => p().lostReadings);
    m.counter('vitalseal_agent_seal_errors_total', 'Batches that could not be sealed', () => p().sealErrors);
    m.counter('vitalseal_agent_store_errors_total', 'Batches that could not be stored', () => p().storeErrors);
    m.counter('vitalseal_agent_uplink_sent_total', 'Send attempts (resends included)', () => u().sent);
    m.counter('vitalseal_agent_uplink_acknowledged_total', 'Messages acknowledged by the receiver', () => u().acknowledged);
    m.counter('vitalseal_agent_uplink_duplicates_total', 'Acknowledgements saying the receiver already had the message', () => u().duplicates);
    m.counter('vitalseal_agent_uplink_rejected_total', 'Messages refused for good by the receiver', () => u().rejected);
    m.counter('vitalseal_agent_uplink_moved_aside_total', 'Refused messages moved aside', () => u().movedAside);
    m.counter('vitalseal_agent_uplink_transient_errors_total', 'Transient transport failures', () => u().transientErrors);
    m.counter('vitalseal_agent_uplink_connects_total', 'Successful connects', () => u().connects);
    m.counter('vitalseal_agent_uplink_connect_failures_total', 'Failed connects', () => u().connectFailures);
    m.counter('vitalseal_agent_uplink_failovers_total', 'Switches to the failover transport', () => u().failovers);
    m.counter('vitalseal_agent_uplink_send_timeouts_total', 'Sends not answered in time', () => u().sendTimeouts);
    m.gauge('vitalseal_agent_uplink_connected', 'Uplink connected (1) or not (0)', () => (this.#runner.core.status().link === 'connected' ? 1 : 0));
    m.gauge('vitalseal_agent_uplink_last_ack_timestamp_seconds', 'When the receiver last acknowledged a message', () => {
      const at = this.#runner.core.status().lastAckAt;
      return at === undefined ? undefined : at / 1000;
    });
    m.gauge('vitalseal_agent_sealing_epoch_age_seconds', 'Age of the current sealing epoch', () => {
      const e = this.#session.epoch();
      return e === undefined ? undefined : (this.#clock.now() - e.startedAt) / 1000;
    });
    m.counter('vitalseal_agent_sealing_epochs_total', 'Sealing epochs started', () => this.#session.epochsStarted);
    m.gauge('vitalseal_agent_certificate_expiry_timestamp_seconds', 'Device certificate notAfter', () => {
      const n = this.#cert?.status().notAfter;
      return n === undefined ? undefined : n / 1000;
    });
    this.#cert?.registerMetrics(m);
    const h = (pick: (c: ReturnType<MllpGateway['counters']>) => number) => () => this.#gateways.map(({ id, gw }) => ({ labels: { source: id }, value: pick(gw.counters()) }));
    m.counter('vitalseal_agent_hl7_connections_total', 'HL7 MLLP connections accepted', h((c) => c.connections));
    m.counter('vitalseal_agent_hl7_connections_refused_total', 'HL7 MLLP connections refused (too many)', h((c) => c.connectionsRefused));
    m.counter('vitalseal_agent_hl7_messages_accepted_total', 'HL7 messages answered AA', h((c) => c.messagesAccepted));
    m.counter('vitalseal_agent_hl7_messages_errored_total', 'HL7 messages answered AE', h((c) => c.messagesErrored));
    m.counter('vitalseal_agent_hl7_messages_rejected_total', 'HL7 messages answered AR', h((c) => c.messagesRejected));
    m.counter('vitalseal_agent_hl7_framing_errors_total', 'MLLP framing violations (connection closed)', h((c) => c.framingErrors));
    m.counter('vitalseal_agent_hl7_oversized_frames_total', 'MLLP frames over the size limit (connection closed)', h((c) => c.oversizedFrames));
    m.counter('vitalseal_agent_hl7_idle_timeouts_total', 'HL7 connections closed for idleness', h((c) => c.idleTimeouts));
    m.counter('vitalseal_agent_hl7_frame_timeouts_total', 'HL7 connections closed for a frame not finished in time', h((c) => c.frameTimeouts));
    m.counter('vitalseal_agent_hl7_readings_total', 'Readings taken from HL7 messages', h((c) => c.readings));
    m.counter('vitalseal_agent_hl7_observations_implausible_total', 'HL7 observations skipped as implausible', h((c) => c.observationsImplausible));
  }
}

/** Runs the self-test, opens what the agent needs, and returns it ready to `start()`. */
export async function createAgent(opts: CreateAgentOptions): Promise<Agent> {
  const c = opts.config;
  const clock = opts.clock ?? systemClock;
  const log = (opts.log ?? createLogger({ level: c.log.level, base: { device: c.device.id } })).child({});
  const alg = contentAlgByName(c.sealing.alg);
  if (alg === undefined) throw new ConfigError([`sealing.alg: unknown algorithm ${c.sealing.alg}`]);
  if (c.sources.length === 0 && (opts.sources ?? []).length === 0) {
    throw new ConfigError(['sources: no source of readings: list sources in the configuration (simulated, hl7-mllp) or pass createAgent({ sources })']);
  }
  let provider = opts.crypto;
  if (provider === undefined) {
    const preferred = getProvider(c.sealing.provider);
    provider = preferred.supportsAead(alg.aead) ? preferred : providerForAead(alg.aead);
  }

  // One message a second needs no keyed OpenSSL contexts; not binding them through koffi keeps the
  // FFI module out of an agent whose key store does not load it anyway (measured: docs/agent.md).
  setKeyedContextDefault('per-call', 'the agent seals about one message a second: a cipher per message, no FFI binding');

  // 1. Power-on self-test, before any key is opened.
  let selfTest: SelfTestReport;
  try {
    selfTest = runSelfTest({ aeads: [alg.aead], provider, ecdsa: opts.ecdsa ?? nodeEcdsaP256 });
  } catch (e) {
    log.fatal({ code: e instanceof VitalsealError ? e.code : 'error', err: e }, 'power-on self-test failed; refusing to start');
    throw e;
  }
  log.info({ passed: selfTest.results.map((r) => r.primitive), ms: Math.round(selfTest.durationMs) }, 'power-on self-test passed');

  // 2. The pinned ingest key and the certificate.
  let recipientPublicKey: Uint8Array;
  try {
    recipientPublicKey = x25519PublicFromPem(readFileSync(c.sealing.ingestPublicKeyFile, 'utf8'));
  } catch (e) {
    throw new ConfigError([`sealing.ingestPublicKeyFile: cannot use ${c.sealing.ingestPublicKeyFile} (${(e as NodeJS.ErrnoException).code ?? (e instanceof VitalsealError ? e.code : 'not an X25519 public key PEM')})`]);
  }
  // Loaded only when configured: renewal (EST client, CSR) and the HL7 gateway are code most devices never run.
  const renewer = c.certificate?.renew === undefined ? undefined : (await import('./renewal/renewer.ts')).renewerFromConfig(c, { clock, log: log.child({ part: 'certificate' }), env: opts.env ?? process.env, timers: opts.timers, random: opts.random });
  const cert = c.certificate === undefined ? undefined : new CertificateWatcher({
    file: c.certificate.file, warnDays: c.certificate.warnDays, clock, log: log.child({ part: 'certificate' }), ...(renewer === undefined ? {} : { renewer }),
  });

  // 3. The queue.
  const queue = await openSegmentQueue({
    dir: c.queue.dir, fullPolicy: c.queue.fullPolicy, fsync: c.queue.fsync === 'every-batch' ? 'every-append' : 'never', segmentBytes: c.queue.segmentBytes,
    limits: { capacityBytes: c.queue.capacityBytes, highWater: c.queue.highWater },
  });
  const rec = queue.recovery;
  if (rec.state === 'recovered') log.warn({ truncatedBytes: rec.truncatedBytes, problems: rec.problems }, 'queue recovered from a torn or corrupt tail: the cut record(s) were never acknowledged by an append');
  const st = queue.stats();
  log.info({ depth: st.depth, ackedThrough: st.ackedThrough, nextSeq: st.nextSeq, dir: c.queue.dir }, 'queue opened');
  const rejected = await RejectedStore.open({ dir: join(c.queue.dir, 'rejected'), maxFiles: c.queue.maxRejectedFiles });

  // 4. The uplinks.
  let uplinks = opts.uplinks;
  const built: BuiltUplink[] = [];
  const releaseUplinks = async () => {
    for (const b of built) await b.release();
  };
  try {
    if (uplinks === undefined) {
      const deps = { deviceId: c.device.id, clock, log: log.child({ part: 'transport' }), env: opts.env ?? process.env };
      const primary = await uplinkFromConfig(c.transport.primary, 'transport.primary', deps);
      built.push(primary);
      const failover = c.transport.failover === undefined ? undefined : await uplinkFromConfig(c.transport.failover, 'transport.failover', deps);
      if (failover !== undefined) built.push(failover);
      uplinks = { primary: primary.uplink, ...(failover === undefined ? {} : { failover: failover.uplink }) };
    }
  } catch (e) {
    await releaseUplinks();
    await queue.close();
    throw e;
  }

  const session = new SealingSession({
    alg: alg.name, recipientPublicKey, clock, provider, maxMessages: c.sealing.epochMessages, maxAgeMs: c.sealing.epochSeconds * 1000,
    ...(c.sealing.ingestKeyId === undefined ? {} : { recipientKid: new TextEncoder().encode(c.sealing.ingestKeyId) }),
  });
  return new Agent({
    config: c, selfTest, log, clock, queue, rejected, session, uplinks, cert,
    sources: opts.sources ?? [], random: opts.random ?? Math.random, timers: opts.timers, releaseUplinks,
    ...(c.sources.some((s) => s.type === 'hl7-mllp') ? { Gateway: (await import('./sensors/hl7/gateway.ts')).MllpGateway } : {}),
  });
}
