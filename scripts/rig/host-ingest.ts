/**
 * The rig's host side of the device path: the whole installation of scripts/lib/stack.ts (a
 * development fleet CA, mosquitto, the ingest service with its HTTPS/enrolment, MQTT and CoAPS
 * listeners) on 127.0.0.1, for a device that is not on this host but in the ARM virtual machine.
 *
 * The guest reaches the host's loopback as 10.0.2.2: QEMU's user-mode network (libslirp) turns a
 * guest connection or datagram to the gateway address into a host socket to 127.0.0.1, TCP and UDP
 * alike, so the services stay on loopback. What the guest sees is the name 10.0.2.2, so the
 * services' certificates carry it as an IP SAN (`serviceNames`), and the broker lets the guest's
 * device id publish (`extraMqttDevices`).
 *
 * It composes the guest's `agent.yaml` per transport, issues the one-time enrolment token when the
 * guest asks (never logged), watches the ingest for the guest's readings phase by phase (through
 * the HTTPS API with a reader token), and at the end collects what the ingest holds: the device's
 * registry entry (its enrolled SPKI), its posture, and decrypted readings as SenML JSON.
 *
 * @example
 *   const ingest = await startRigIngest({ deviceId: 'rig-arm64', transports: ['coaps'], log });
 *   // job.device = ingest.deviceJob; job server: enrolToken: ingest.enrolToken, phaseDone: ingest.phaseDone
 *   const evidence = await ingest.evidence();
 *   await ingest.stop();
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startStack, type Stack } from '../lib/stack.ts';
import { HOST_FROM_GUEST } from './config.ts';
import type { AgentPhase, DeviceJob, RigTransport } from './protocol.ts';

/** Where the guest keeps what the agent reads and writes (the Raspberry Pi profile's layout). */
export const GUEST_PATHS = {
  rootCa: '/etc/vitalseal/fleet-root.pem',
  ingestPublicKey: '/etc/vitalseal/ingest.pub.pem',
  /** Under the unit's StateDirectory: the only place ProtectSystem=strict leaves writable, so renewal can replace the files. */
  identityDir: '/var/lib/vitalseal/identity',
  keystoreDir: '/var/lib/vitalseal/tpm',
  queueDir: '/var/lib/vitalseal/queue',
  statusSocket: '/var/lib/vitalseal/agent.sock',
  /** tpm2-abrmd on the system bus, as the Raspberry Pi profile configures the agent (MQTTS needs it). */
  tcti: 'tabrmd:bus_type=system',
  keyLabel: 'device-identity',
} as const;

/** The guest's agent.yaml for one transport. */
export function guestAgentConfig(o: { deviceId: string; transport: RigTransport; port: number; enrolUrl: string; host?: string }): string {
  const host = o.host ?? HOST_FROM_GUEST;
  return `# /etc/vitalseal/agent.yaml, written by the rig's host (scripts/rig/host-ingest.ts)
device: { id: ${o.deviceId} }
sealing: { alg: chacha20-poly1305, ingestPublicKeyFile: ${GUEST_PATHS.ingestPublicKey} }
sources: [{ type: simulated, id: patient, seed: 7 }]
queue: { dir: ${GUEST_PATHS.queueDir} }
transport:
  primary:
    kind: ${o.transport}
    host: ${host}
    port: ${o.port}
    caFile: ${GUEST_PATHS.rootCa}
    certFile: ${GUEST_PATHS.identityDir}/chain.pem
    identity:
      keystore: { kind: tpm, tcti: "${GUEST_PATHS.tcti}", dir: ${GUEST_PATHS.keystoreDir} }
      keyLabel: ${GUEST_PATHS.keyLabel}
uplink: { backoffInitialMs: 1000, backoffMaxMs: 10000 }
certificate:
  file: ${GUEST_PATHS.identityDir}/device.pem
  renew: { url: "${o.enrolUrl}", renewDays: 30 }
status: { socket: ${GUEST_PATHS.statusSocket} }
`;
}

/** What the ingest showed when a phase ended. */
export interface PhaseEvidence {
  readonly transport: RigTransport;
  /** Messages stored for the device when the phase began and when it was declared done. */
  readonly messagesBefore: number;
  readonly messagesAfter: number;
  /** The transport and suite the ingest recorded for the device's last message. */
  readonly seenTransport: string | null;
  readonly seenSuite: string | null;
  /** Seconds from the guest's first poll to done. */
  readonly seconds: number;
  /** False when the phase ran out of time without readings over its transport. */
  readonly arrived: boolean;
}

/** What the ingest holds for the device at the end. */
export interface IngestEvidence {
  readonly deviceId: string;
  readonly phases: readonly PhaseEvidence[];
  /** `vitalseal ingest devices list --json`: the registry entry (credential kind, SPKI SHA-256, status, serial). */
  readonly registry: { readonly credential: string; readonly credentialSha256: string; readonly status: string; readonly certSerial: string | null } | undefined;
  /** GET /api/v1/devices/{id}: the device's posture and message count. */
  readonly posture: Readonly<Record<string, unknown>> | undefined;
  /** GET /api/v1/devices/{id}/readings?limit=20: SenML JSON records (decrypted, resolved) of the last 20 messages. */
  readonly readings: readonly SenmlRecord[];
}

export interface SenmlRecord {
  readonly n?: string;
  readonly u?: string;
  readonly v?: number;
  readonly t?: number;
  readonly [k: string]: unknown;
}

export interface RigIngest {
  readonly stack: Stack;
  readonly deviceJob: DeviceJob;
  /** For the job server's GET /enrol-token: `vitalseal ingest enrol-token` for the device, issued now. */
  enrolToken(): Promise<string>;
  /** For the job server's GET /phase/N. */
  phaseDone(index: number): Promise<boolean>;
  evidence(): Promise<IngestEvidence>;
  /** The ingest service's log so far (JSON lines). */
  serviceLog(): string;
  stop(): Promise<void>;
}

export interface RigIngestOptions {
  readonly deviceId: string;
  readonly transports: readonly RigTransport[];
  readonly log: (line: string) => void;
  /** A phase without readings over its transport for this long is declared done, unarrived (default 10 min). */
  readonly phaseTimeoutMs?: number;
  /** Messages over the phase's transport that make it done (default 3). */
  readonly minMessages?: number;
}

interface Posture {
  readonly transport: string | null;
  readonly suite: string | null;
  readonly messages: number;
}

/**
 * Decides when a phase is over from what the ingest shows: its transport is the phase's and at
 * least `minMessages` more messages are stored than when it began; or its time is up.
 */
export class PhaseTracker {
  readonly #transports: readonly RigTransport[];
  readonly #minMessages: number;
  readonly #timeoutMs: number;
  readonly #started = new Map<number, { at: number; messages: number }>();
  readonly #finished = new Map<number, PhaseEvidence>();

  constructor(transports: readonly RigTransport[], minMessages: number, timeoutMs: number) {
    this.#transports = transports;
    this.#minMessages = minMessages;
    this.#timeoutMs = timeoutMs;
  }

  /** One look at the ingest during phase `index` (its first look is the baseline); true when it is over. */
  observe(index: number, posture: Posture, now: number): boolean {
    const transport = this.#transports[index];
    if (transport === undefined) throw new RangeError(`no phase ${index}`);
    if (this.#finished.has(index)) return true;
    let start = this.#started.get(index);
    if (start === undefined) {
      start = { at: now, messages: posture.messages };
      this.#started.set(index, start);
    }
    const arrived = posture.transport === transport && posture.messages - start.messages >= this.#minMessages;
    if (!arrived && now - start.at < this.#timeoutMs) return false;
    this.#finished.set(index, {
      transport, messagesBefore: start.messages, messagesAfter: posture.messages,
      seenTransport: posture.transport, seenSuite: posture.suite, seconds: (now - start.at) / 1000, arrived,
    });
    return true;
  }

  phase(index: number): PhaseEvidence | undefined {
    return this.#finished.get(index);
  }

  /** Finished phases, in order. */
  get phases(): PhaseEvidence[] {
    return this.#transports.flatMap((_, i) => {
      const p = this.#finished.get(i);
      return p === undefined ? [] : [p];
    });
  }
}

/** Starts the host-side installation for one guest device. */
export async function startRigIngest(opts: RigIngestOptions): Promise<RigIngest> {
  if (opts.transports.length === 0) throw new RangeError('at least one transport');
  const stack = await startStack({
    devices: [],
    serviceNames: { ipAddresses: [HOST_FROM_GUEST] },
    extraMqttDevices: [opts.deviceId],
    progress: (l) => opts.log(`host: ${l}`),
  });
  const httpsPort = new URL(stack.httpsUrl).port;
  const enrolUrl = `https://${HOST_FROM_GUEST}:${httpsPort}`;
  const phases: AgentPhase[] = opts.transports.map((transport) => ({
    transport,
    agentConfig: guestAgentConfig({ deviceId: opts.deviceId, transport, port: transport === 'coaps' ? stack.coapsPort : stack.broker.port, enrolUrl }),
  }));
  const tracker = new PhaseTracker(opts.transports, opts.minMessages ?? 3, opts.phaseTimeoutMs ?? 10 * 60_000);
  const deviceUrl = `/api/v1/devices/${encodeURIComponent(opts.deviceId)}`;

  const posture = async (): Promise<Posture> => {
    try {
      const { device } = await stack.api<{ device: { transport: string | null; suite: string | null; messages: number } }>(deviceUrl);
      return { transport: device.transport, suite: device.suite, messages: device.messages };
    } catch (e) {
      // 404 until the device has enrolled.
      if (/: 404 /.test((e as Error).message)) return { transport: null, suite: null, messages: 0 };
      throw e;
    }
  };

  return {
    stack,
    deviceJob: {
      deviceId: opts.deviceId,
      enrolUrl,
      rootCaPem: readFileSync(stack.rootCaFile, 'utf8'),
      ingestPublicKeyPem: readFileSync(stack.ingestPublicKeyFile, 'utf8'),
      phases,
    },
    async enrolToken() {
      opts.log(`host: one-time enrolment token for ${opts.deviceId} (vitalseal ingest enrol-token), handed to the guest`);
      return (await stack.vitalseal(['ingest', 'enrol-token', '--config', stack.ingestConfigFile, '--device-id', opts.deviceId, '--ttl', '1h'])).trim();
    },
    async phaseDone(index) {
      if (index < 0 || index >= phases.length) throw new RangeError(`no phase ${index}`);
      const done = tracker.observe(index, await posture(), Date.now());
      if (done) {
        const p = tracker.phase(index);
        opts.log(`host: ${phases[index]?.transport} phase: ${p?.arrived === true ? `${p.messagesAfter - p.messagesBefore} messages stored, suite ${p.seenSuite ?? '?'}` : 'NO readings arrived in time'}`);
      }
      return done;
    },
    async evidence() {
      const list = JSON.parse(await stack.vitalseal(['ingest', 'devices', 'list', '--json', '--config', stack.ingestConfigFile])) as { deviceId: string; credential: string; credentialSha256: string; status: string; certSerial?: string }[];
      const entry = list.find((d) => d.deviceId === opts.deviceId);
      let postureDoc: Record<string, unknown> | undefined;
      try {
        postureDoc = (await stack.api<{ device: Record<string, unknown> }>(deviceUrl)).device;
      } catch {
        postureDoc = undefined;
      }
      const readings = postureDoc === undefined ? [] : await stack.api<SenmlRecord[]>(`${deviceUrl}/readings?limit=20`);
      if (!Array.isArray(readings)) throw new Error('the readings endpoint did not answer a SenML array');
      return {
        deviceId: opts.deviceId,
        phases: tracker.phases,
        registry: entry === undefined ? undefined : { credential: entry.credential, credentialSha256: entry.credentialSha256, status: entry.status, certSerial: entry.certSerial ?? null },
        posture: postureDoc,
        readings,
      };
    },
    serviceLog: () => {
      try {
        return readFileSync(join(stack.dir, 'ingest', 'ingest.log'), 'utf8');
      } catch {
        return '';
      }
    },
    stop: () => stack.stop(),
  };
}
