/**
 * Simulated devices for the scale-out test and the end-to-end benchmark: each one a real MQTT v5
 * connection to the broker (the device `Uplink` over mutual TLS 1.3 with its own certificate, or,
 * for the benchmark's baseline, plaintext MQTT with mqtt.js), publishing QoS 1 one second of a
 * simulated patient per message (vitals and a 250 Hz ECG strip, as the agent batches them),
 * sealed with a real COSE_Encrypt to the ingest's static key at the moment it is sent.
 *
 * Devices behave like the agent's uplink scheduler: a message stays with the device until the
 * broker acknowledges it; a transport failure (connection lost, PUBACK 0x10 before any ingest
 * subscribed, timeout) puts it back, first in line, and the device reconnects with a back-off and
 * sends the same sealed bytes again. So "acknowledged" here means exactly what it means for an
 * agent: the broker took it.
 *
 * It runs in its own process (load-generator-process.ts), driven over IPC by `startLoadGenerator`,
 * so its CPU is not the measuring process's.
 *
 * @example
 *   const gen = await startLoadGenerator({ host, port, serverName: '127.0.0.1', rootPem, staticPublicKey, devices });
 *   await gen.connect('mqtts');
 *   const report = await gen.run({ mode: 'mqtts', perDevice: 200, window: 4, collectAcked: true });
 *   await gen.close();
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { MqttClient, type IClientOptions } from 'mqtt';
import { SimulatedPatient } from '../../src/agent/sensors/simulated-patient.ts';
import { encodeVitalsPack, type VitalsBatch } from '../../src/codec/vitals.ts';
import { Header } from '../../src/cose/headers.ts';
import { SealingSession } from '../../src/cose/sealing-session.ts';
import { inProcessTls } from '../../src/transport/mqtts/connector.ts';
import { trustFromPem } from '../../src/transport/mqtts/tls.ts';
import { contentTypeFor, vitalsTopic } from '../../src/transport/mqtts/topics.ts';
import { createMqttsUplink } from '../../src/transport/mqtts/uplink.ts';
import type { Uplink, UplinkMessage } from '../../src/transport/types.ts';
import { systemClock } from '../../src/util/clock.ts';
import { TransportError, UplinkRejected } from '../../src/util/errors.ts';

export type LoadMode = 'mqtts' | 'plain';

export interface LoadDevice {
  readonly id: string;
  /** Device certificate + issuing CA (mqtts). */
  readonly certChainPem?: string;
  /** Its private key, PKCS#8 PEM (test keys generated at test time). */
  readonly keyPem?: string;
}

export interface LoadGeneratorConfig {
  readonly host: string;
  /** The broker's TLS listener (mqtts mode). */
  readonly port: number;
  /** A plaintext listener (plain mode, benchmark baseline only). */
  readonly plainPort?: number;
  readonly serverName: string;
  readonly rootPem: string;
  /** The ingest's static X25519 public key, base64. */
  readonly staticPublicKey: string;
  readonly devices: readonly LoadDevice[];
  /** Connections opened at once (default 32). */
  readonly connectConcurrency?: number;
  /** One-second packs prepared per device and cycled (default 8); sealing is per message. */
  readonly packPool?: number;
}

export interface RunOptions {
  readonly mode: LoadMode;
  /** Messages in flight per device. */
  readonly window: number;
  /** Stop after this many new messages per device (every one acknowledged before `run` ends). */
  readonly perDevice?: number;
  /** Or: send new messages for this long; then wait for those in flight. */
  readonly durationMs?: number;
  /** Messages per second per device (default: as fast as the window allows). */
  readonly ratePerDevice?: number;
  /** Report every acknowledged sequence number per device. */
  readonly collectAcked?: boolean;
  /** Report [device index, seq, sent at (ms since the epoch)] of every acknowledged message. */
  readonly collectTimes?: boolean;
}

export interface RunReport {
  readonly mode: LoadMode;
  readonly sent: number;
  readonly acked: number;
  readonly readingsAcked: number;
  readonly rejected: number;
  readonly transportErrors: number;
  readonly reconnects: number;
  readonly startedAt: number;
  readonly endedAt: number;
  /** Present with `collectAcked`. */
  readonly ackedSeqs?: Record<string, number[]>;
  /** Present with `collectTimes`: flattened triples. */
  readonly times?: number[];
}

/** What the process reports while `run` goes on (every 100 ms). */
export interface Progress {
  readonly acked: number;
  readonly sent: number;
}

// ---------------------------------------------------------------------------------------------
// In the generator process

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A device's wire: the real Uplink, or plaintext mqtt.js for the baseline. */
interface Wire {
  connect(): Promise<void>;
  send(m: UplinkMessage): Promise<void>;
  close(): Promise<void>;
}

function uplinkWire(cfg: LoadGeneratorConfig, d: LoadDevice, trust: ReturnType<typeof trustFromPem>): Wire & { uplink: Uplink } {
  if (d.certChainPem === undefined || d.keyPem === undefined) throw new Error(`device ${d.id}: no certificate or key for mqtts`);
  const tls = inProcessTls({ certChainPem: d.certChainPem, privateKey: createPrivateKey(d.keyPem), trust });
  const uplink = createMqttsUplink({ deviceId: d.id, host: cfg.host, port: cfg.port, serverName: cfg.serverName, tls, clientId: d.id, ackTimeoutMs: 60_000 });
  return {
    uplink,
    connect: () => uplink.connect(),
    send: async (m) => {
      await uplink.send(m);
    },
    close: () => uplink.close(),
  };
}

/**
 * Plaintext MQTT v5 with mqtt.js, QoS 1, the same topic and content type the uplink uses: the
 * baseline's device. Its payload is the plaintext SenML pack (labelled with the COSE content type
 * so the same subscriber code takes it).
 */
function plainWire(cfg: LoadGeneratorConfig, d: LoadDevice): Wire {
  let client: MqttClient | undefined;
  const topic = vitalsTopic(d.id);
  return {
    connect: () => new Promise<void>((resolve, reject) => {
      if (cfg.plainPort === undefined) {
        reject(new Error('plain mode needs plainPort'));
        return;
      }
      const port = cfg.plainPort;
      const options: IClientOptions = { protocolVersion: 5, clientId: `${d.id}-plain`, clean: true, reconnectPeriod: 0, keepalive: 60, connectTimeout: 30_000 };
      const c = new MqttClient(() => {
        const s = netConnect({ host: cfg.host, port });
        s.setNoDelay(true);
        return s;
      }, options);
      c.once('connect', () => {
        client = c;
        resolve();
      });
      c.once('error', (e) => reject(e));
      c.once('close', () => reject(new TransportError('connection-closed', 'plain connection closed')));
    }),
    send: async (m) => {
      if (client === undefined) throw new TransportError('not-connected', 'not connected');
      await client.publishAsync(topic, Buffer.from(m.payload), {
        qos: 1,
        properties: { contentType: contentTypeFor('cose-encrypt'), payloadFormatIndicator: false, userProperties: { seq: String(m.seq) } },
      });
    },
    close: async () => {
      await client?.endAsync(true);
    },
  };
}

interface Pack {
  readonly bytes: Uint8Array;
  readonly readings: number;
}

class SimDevice {
  readonly index: number;
  readonly id: string;
  readonly wires = new Map<LoadMode, Wire>();
  readonly #packs: Pack[];
  #session: SealingSession;
  #nextSeq = 1;
  /** Taken from the device but not acknowledged: sent again, first. */
  readonly #retry: { msg: UplinkMessage; readings: number; sentAt: number }[] = [];
  #reconnecting: Promise<void> | undefined;

  constructor(index: number, d: LoadDevice, staticPublicKey: Uint8Array, poolSize: number) {
    this.index = index;
    this.id = d.id;
    this.#session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: staticPublicKey, clock: systemClock, maxMessages: 1000 });
    const patient = new SimulatedPatient({ id: d.id, seed: index + 1, nibpIntervalMs: 60_000 });
    const start = Date.now() - poolSize * 1000;
    patient.start(start);
    this.#packs = [];
    for (let s = 1; s <= poolSize; s++) {
      const r = patient.read(start + s * 1000);
      const batch: VitalsBatch = {
        deviceId: d.id,
        readings: r.vitals.map((v) => ({ kind: v.name, time: v.time, value: v.value })),
        ecg: r.waveforms.map((w) => ({ start: w.start, intervalMs: w.intervalMs, samplesMv: w.samples })),
      };
      this.#packs.push({ bytes: encodeVitalsPack(batch), readings: batch.readings.length + batch.ecg.length });
    }
  }

  /** The next message: one waiting to be sent again, or a new one (sealed now, or plaintext). */
  take(mode: LoadMode, limit: number): { msg: UplinkMessage; readings: number; sentAt: number } | undefined {
    const again = this.#retry.shift();
    if (again !== undefined) return again;
    if (this.#nextSeq > limit) return undefined;
    const seq = this.#nextSeq++;
    const pack = this.#packs[seq % this.#packs.length] as Pack;
    const sentAt = Date.now();
    const payload = mode === 'plain'
      ? pack.bytes
      : this.#session.seal(pack.bytes, { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, this.id], [Header.SEQUENCE, seq]]) });
    return { msg: { deviceId: this.id, seq, payload, contentFormat: 'cose-encrypt' }, readings: pack.readings, sentAt };
  }

  /** Seals to another ingest key from now on (a new sealing epoch). */
  sealTo(staticPublicKey: Uint8Array): void {
    this.#session.rotate();
    this.#session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: staticPublicKey, clock: systemClock, maxMessages: 1000 });
  }

  /** The sequence number the next new message gets. */
  get nextSeq(): number {
    return this.#nextSeq;
  }

  putBack(m: { msg: UplinkMessage; readings: number; sentAt: number }): void {
    this.#retry.unshift(m);
  }

  get pendingRetries(): number {
    return this.#retry.length;
  }

  /** Reconnects with a back-off (100 ms doubling to 2 s), once for all of the device's senders. */
  reconnect(mode: LoadMode, onAttempt: () => void): Promise<void> {
    this.#reconnecting ??= (async () => {
      const wire = this.wires.get(mode) as Wire;
      for (let wait = 100; ; wait = Math.min(2000, wait * 2)) {
        await delay(wait);
        onAttempt();
        try {
          await wire.connect();
          return;
        } catch {
          // try again
        }
      }
    })().finally(() => {
      this.#reconnecting = undefined;
    });
    return this.#reconnecting;
  }
}

/** The generator itself (used inside the generator process). */
export class LoadGenerator {
  readonly #cfg: LoadGeneratorConfig;
  readonly #devices: SimDevice[];
  readonly #trust: ReturnType<typeof trustFromPem>;
  #stopNew = false;
  #counters = { sent: 0, acked: 0 };

  constructor(cfg: LoadGeneratorConfig) {
    this.#cfg = cfg;
    this.#trust = trustFromPem(cfg.rootPem);
    const key = new Uint8Array(Buffer.from(cfg.staticPublicKey, 'base64'));
    this.#devices = cfg.devices.map((d, i) => new SimDevice(i, d, key, cfg.packPool ?? 8));
  }

  progress(): Progress {
    return { ...this.#counters };
  }

  /** Seals to another ingest's static key from now on (base64 X25519 public key). */
  sealTo(staticPublicKey: string): void {
    const key = new Uint8Array(Buffer.from(staticPublicKey, 'base64'));
    for (const d of this.#devices) d.sealTo(key);
  }

  /** Opens every device's connection in this mode (`connectConcurrency` at a time, retrying). */
  async connect(mode: LoadMode): Promise<{ connected: number; ms: number }> {
    const t0 = performance.now();
    let next = 0;
    let connected = 0;
    const worker = async () => {
      for (;;) {
        const i = next++;
        const dev = this.#devices[i];
        if (dev === undefined) return;
        const d = this.#cfg.devices[i] as LoadDevice;
        let wire = dev.wires.get(mode);
        if (wire === undefined) {
          wire = mode === 'mqtts' ? uplinkWire(this.#cfg, d, this.#trust) : plainWire(this.#cfg, d);
          dev.wires.set(mode, wire);
        }
        for (let attempt = 0; ; attempt++) {
          try {
            await wire.connect();
            break;
          } catch (e) {
            if (e instanceof UplinkRejected || attempt >= 20) throw e;
            await delay(100 * Math.min(10, attempt + 1));
          }
        }
        connected++;
      }
    };
    await Promise.all(Array.from({ length: this.#cfg.connectConcurrency ?? 32 }, worker));
    return { connected, ms: performance.now() - t0 };
  }

  /** Streams as `o` says; resolves when every device has nothing in flight and nothing to retry. */
  async run(o: RunOptions): Promise<RunReport> {
    this.#stopNew = false;
    const startedAt = Date.now();
    let sent = 0;
    let acked = 0;
    let readingsAcked = 0;
    let rejected = 0;
    let transportErrors = 0;
    let reconnects = 0;
    const ackedSeqs: Record<string, number[]> = {};
    const times: number[] = [];
    const stopTimer = o.durationMs === undefined ? undefined : setTimeout(() => {
      this.#stopNew = true;
    }, o.durationMs);
    const interval = o.ratePerDevice === undefined ? 0 : 1000 / o.ratePerDevice;

    const device = async (dev: SimDevice) => {
      const wire = dev.wires.get(o.mode);
      if (wire === undefined) throw new Error(`device ${dev.id} is not connected in ${o.mode} mode`);
      if (o.collectAcked === true) ackedSeqs[dev.id] = [];
      // Sequence numbers go on from the previous run.
      const limit = o.perDevice === undefined ? Number.MAX_SAFE_INTEGER : dev.nextSeq - 1 + o.perDevice;
      // Paced devices start at a random point of their first interval, as real devices would.
      let due = performance.now() + Math.random() * interval;
      let healthy = true;
      const sender = async () => {
        for (;;) {
          if (!healthy) {
            await dev.reconnect(o.mode, () => {
              reconnects++;
            });
            healthy = true;
          }
          if (this.#stopNew && dev.pendingRetries === 0) return;
          if (interval > 0) {
            const wait = due - performance.now();
            due = Math.max(due, performance.now()) + interval;
            if (wait > 0) await delay(wait);
            if (this.#stopNew && dev.pendingRetries === 0) return;
          }
          const m = dev.take(o.mode, limit);
          if (m === undefined) return;
          sent++;
          this.#counters.sent++;
          try {
            await wire.send(m.msg);
            acked++;
            this.#counters.acked++;
            readingsAcked += m.readings;
            if (o.collectAcked === true) (ackedSeqs[dev.id] as number[]).push(m.msg.seq);
            if (o.collectTimes === true) times.push(dev.index, m.msg.seq, m.sentAt);
          } catch (e) {
            if (e instanceof UplinkRejected) {
              rejected++;
              continue;
            }
            transportErrors++;
            dev.putBack(m);
            healthy = false;
          }
        }
      };
      await Promise.all(Array.from({ length: o.window }, sender));
    };
    await Promise.all(this.#devices.map(device));
    if (stopTimer !== undefined) clearTimeout(stopTimer);
    return {
      mode: o.mode, sent, acked, readingsAcked, rejected, transportErrors, reconnects, startedAt, endedAt: Date.now(),
      ...(o.collectAcked === true ? { ackedSeqs } : {}),
      ...(o.collectTimes === true ? { times } : {}),
    };
  }

  /** Stops making new messages (those in flight and those to send again still finish). */
  stopNew(): void {
    this.#stopNew = true;
  }

  async close(): Promise<void> {
    for (const d of this.#devices) for (const w of d.wires.values()) await w.close().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// In the driving process

export interface LoadGeneratorHandle {
  readonly pid: number | undefined;
  connect(mode: LoadMode): Promise<{ connected: number; ms: number }>;
  /** `onProgress` is called about every 100 ms while the run goes on. */
  run(o: RunOptions, onProgress?: (p: Progress) => void): Promise<RunReport>;
  stopNew(): void;
  /** Seals to another ingest's static key from now on. */
  sealTo(staticPublicKey: Uint8Array): Promise<void>;
  /** Resident memory of the generator process (bytes). */
  rss(): Promise<number>;
  close(): Promise<void>;
}

type FromChild =
  | { type: 'ready' }
  | { type: 'connected'; id: number; result: { connected: number; ms: number } }
  | { type: 'report'; id: number; report: RunReport }
  | { type: 'progress'; progress: Progress }
  | { type: 'rss'; id: number; rss: number }
  | { type: 'sealing'; id: number }
  | { type: 'error'; id: number; message: string }
  | { type: 'closed'; id: number };

/** Starts the generator process and hands it the devices (`profileDir`: write a V8 CPU profile there). */
export async function startLoadGenerator(cfg: LoadGeneratorConfig, opts: { profileDir?: string } = {}): Promise<LoadGeneratorHandle> {
  const entry = fileURLToPath(new URL('./load-generator-process.ts', import.meta.url));
  const execArgv = ['--import', 'tsx', ...(opts.profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${opts.profileDir}`])];
  const child: ChildProcess = fork(entry, [], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
  let seq = 0;
  const waiting = new Map<number, { resolve: (m: FromChild) => void; reject: (e: Error) => void }>();
  let onProgress: ((p: Progress) => void) | undefined;
  let exited = false;
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (raw) => {
      const m = raw as FromChild;
      if (m.type === 'ready') {
        resolve();
        return;
      }
      if (m.type === 'progress') {
        onProgress?.(m.progress);
        return;
      }
      const w = waiting.get(m.id);
      if (w === undefined) return;
      waiting.delete(m.id);
      if (m.type === 'error') w.reject(new Error(`load generator: ${m.message}`));
      else w.resolve(m);
    });
    child.once('exit', (code, signal) => {
      exited = true;
      const e = new Error(`the load generator exited (${code ?? signal})`);
      reject(e);
      for (const w of waiting.values()) w.reject(e);
      waiting.clear();
    });
  });
  const ask = (msg: object): Promise<FromChild> => {
    if (exited) return Promise.reject(new Error('the load generator has exited'));
    const id = ++seq;
    return new Promise((resolve, reject) => {
      waiting.set(id, { resolve, reject });
      child.send({ ...msg, id });
    });
  };
  child.send({ type: 'init', config: cfg });
  await ready;
  return {
    pid: child.pid,
    async connect(mode) {
      return ((await ask({ type: 'connect', mode })) as Extract<FromChild, { type: 'connected' }>).result;
    },
    async run(o, progress) {
      onProgress = progress;
      try {
        return ((await ask({ type: 'run', options: o })) as Extract<FromChild, { type: 'report' }>).report;
      } finally {
        onProgress = undefined;
      }
    },
    stopNew() {
      if (!exited) child.send({ type: 'stopNew' });
    },
    async sealTo(key) {
      await ask({ type: 'sealTo', key: Buffer.from(key).toString('base64') });
    },
    async rss() {
      return ((await ask({ type: 'rss' })) as Extract<FromChild, { type: 'rss' }>).rss;
    },
    async close() {
      if (exited) return;
      await ask({ type: 'close' }).catch(() => undefined);
      const gone = new Promise<void>((r) => (exited ? r() : child.once('exit', () => r())));
      child.disconnect();
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    },
  };
}
