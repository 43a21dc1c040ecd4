/**
 * A whole vitalseal installation on loopback, made the way an operator makes one, for the demo,
 * the end-to-end suite and the examples:
 *
 *   1. a development fleet CA (`vitalseal pki` format; passphrase generated, kept in a 0600 file);
 *   2. service certificates for the broker, the ingest's HTTPS/CoAPS endpoint and its MQTT client;
 *   3. mosquitto 2 (TLS 1.3 only, client certificates, CRL, per-device ACL: scripts/lib/mosquitto.ts);
 *   4. the ingest service as its own process (`vitalseal ingest keygen`, then `vitalseal ingest run`:
 *      SQLite, a software key store, HTTPS API and dashboard, enrolment, MQTT and CoAPS listeners);
 *   5. devices, each enrolled through the ingest's enrolment endpoint with a one-time token
 *      (`vitalseal ingest enrol-token`, `vitalseal provision --enrol`), its key in a software store
 *      or in its own TPM (swtpm behind tpm2-abrmd), then `vitalseal agent run` as its own process;
 *      an HL7 gateway device gets a simulated bedside monitor sending ORU^R01 over MLLP.
 *
 * Every secret is generated here and lives in the stack's directory (mode 0700), which `stop`
 * removes. Nothing listens beyond 127.0.0.1. Devices the stack does not run itself (a virtual
 * machine reaching this loopback through QEMU's user-mode network) are named in `extraMqttDevices`
 * and reach the services under the extra names of `serviceNames`.
 *
 * @example
 *   const stack = await startStack({ devices: [{ id: 'bed-1', transport: 'mqtts', keyStore: 'software', source: 'simulated' }] });
 *   console.log(stack.httpsUrl, await stack.api('/api/v1/devices'));
 *   await stack.stop();
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { AgentStatus } from '../../src/agent/agent.ts';
import { readStatus } from '../../src/agent/status-socket.ts';
import type { CoseAlgName } from '../../src/cose/algorithms.ts';
import { INGEST_NODE_OPTIONS } from '../../src/ingest/node-options.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa, type DevCa } from '../../src/pki/dev-ca.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { startMosquitto, type MosquittoBroker } from './mosquitto.ts';
import { freePort } from './ports.ts';
import { ProcessGroup, VITALSEAL_BIN, type Managed } from './processes.ts';
import { startSwtpm, type Swtpm } from './swtpm.ts';

const run = promisify(execFile);

/**
 * The port an agent's HL7 gateway bound, from the agent's log line `hl7 gateway listening`; waits for
 * it (the agent starts its sources after its start-up self-test and key store).
 */
async function loggedHl7Port(logFile: string, deviceId: string, ms = 60_000): Promise<number> {
  const end = Date.now() + ms;
  for (;;) {
    const text = existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
    for (const line of text.split('\n')) {
      if (!line.includes('"msg":"hl7 gateway listening"')) continue;
      const port = (JSON.parse(line) as { port?: unknown }).port;
      if (typeof port === 'number' && port > 0) return port;
    }
    if (Date.now() > end) throw new Error(`${deviceId}: its agent did not log its HL7 gateway's port within ${ms / 1000} s (see ${logFile})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The name the ingest's MQTT client certificate carries (its broker user name). */
export const STACK_INGEST_NAME = 'ingest.vitalseal.local';

export interface StackDevice {
  readonly id: string;
  readonly transport: 'mqtts' | 'coaps';
  /** Where the device identity key lives (certificate devices). */
  readonly keyStore: 'software' | 'tpm';
  /** coaps only: `psk` registers the device with `vitalseal ingest devices add-psk` instead of enrolling a certificate. */
  readonly auth?: 'certificate' | 'psk';
  /** `hl7`: the agent's HL7 v2/MLLP gateway, fed by a simulated bedside monitor. */
  readonly source: 'simulated' | 'hl7';
  readonly seed?: number;
  readonly alg?: CoseAlgName;
  /** The agent's queue directory (e.g. on a size-limited file system); default `<device dir>/queue`. */
  readonly queueDir?: string;
  /** `queue.capacityBytes` / `queue.fullPolicy` of the agent (docs/agent.md); default the agent's. */
  readonly queue?: { readonly capacityBytes?: number; readonly fullPolicy?: 'drop-oldest' | 'reject-new' };
  /** Where the agent connects instead of the broker or the ingest's CoAPS port (a relay in between). */
  readonly target?: { readonly host: string; readonly port: number };
  /** A command the agent runs under, e.g. `['ip', 'netns', 'exec', NAME]` (a network namespace). */
  readonly wrapper?: readonly string[];
  /** More environment for the agent process only (e.g. libfaketime's LD_PRELOAD and FAKETIME). */
  readonly env?: Readonly<Record<string, string>>;
}

export interface StackOptions {
  readonly devices: readonly StackDevice[];
  /** The stack's directory (made 0700; removed by `stop` unless `keep`). Default: a new temp dir. */
  readonly dir?: string;
  /** HTTPS port of the ingest (API, dashboard, enrolment); default a free one. */
  readonly httpsPort?: number;
  /** UDP port of the ingest's CoAPS listener; default a free one (a relay in front needs it first). */
  readonly coapsPort?: number;
  readonly keep?: boolean;
  /** Progress lines ("starting mosquitto ..."). */
  readonly progress?: (line: string) => void;
  /** Seconds of sealing window per batch in the agents (default 1000 ms). */
  readonly batchWindowMs?: number;
  /** Device ids the broker also lets publish under `vitals/<id>/`: MQTTS devices the caller runs itself (see `enrolToken`). */
  readonly extraMqttDevices?: readonly string[];
  /** Store in PostgreSQL (this connection string, kept in a 0600 file the config names) instead of SQLite. */
  readonly postgres?: string;
  /**
   * Runs this program as the ingest service instead of `vitalseal ingest run`, with `--config FILE`
   * appended (e.g. a program embedding `startIngest`); it must serve the config's HTTPS endpoint.
   */
  readonly ingestCommand?: { readonly command: string; readonly args: readonly string[] };
  /**
   * The address the broker, the ingest's HTTPS API and its CoAPS listener bind (default 127.0.0.1),
   * also named in their certificates. The end-to-end suite uses the host end of a veth pair so that
   * agents in a network namespace reach them.
   */
  readonly bindHost?: string;
  /**
   * Names besides localhost and the bind address that the broker's and the ingest's HTTPS/CoAPS
   * certificates carry: how devices elsewhere address this host (10.0.2.2 from a QEMU guest).
   */
  readonly serviceNames?: { readonly dnsNames?: readonly string[]; readonly ipAddresses?: readonly string[] };
}

export interface RunningDevice {
  readonly spec: StackDevice;
  readonly dir: string;
  /** The current agent process (a new one after `startAgent`). */
  readonly agent: Managed;
  /** The agent's status socket (`vitalseal agent status --socket`). */
  readonly statusSocket: string;
  readonly configFile: string;
  readonly queueDir: string;
  /** The agent's log (every run of it appends). */
  readonly logFile: string;
  /** The device's TPM (keyStore `tpm`). */
  readonly tpm: Swtpm | undefined;
  /**
   * Starts the agent again (as a service manager restarts it) unless one is running; `env`
   * replaces the device's extra environment (`StackDevice.env`) from this start on.
   */
  startAgent(o?: { readonly env?: Readonly<Record<string, string>> }): Managed;
  /** The running agent's status document (`vitalseal agent status --json`). */
  status(): Promise<AgentStatus>;
}

export interface Stack {
  readonly dir: string;
  readonly httpsUrl: string;
  readonly coapsPort: number;
  /** The fleet root certificate (PEM file): what a browser or curl must trust for the HTTPS API. */
  readonly rootCaFile: string;
  /** A reader API token for this stack's own use (summary, tests); printed only where asked. */
  readonly readerToken: string;
  readonly broker: MosquittoBroker;
  /** The current ingest process (a new one after `startIngest`). */
  readonly ingest: Managed;
  /** The ingest's configuration file (for `vitalseal ingest ... --config FILE`). */
  readonly ingestConfigFile: string;
  /** The ingest's static X25519 public key (PEM): what a device pins as `sealing.ingestPublicKeyFile`. */
  readonly ingestPublicKeyFile: string;
  /** A one-time enrolment token for a device the caller runs itself (`vitalseal ingest enrol-token`). */
  enrolToken(deviceId: string): Promise<string>;
  /**
   * Registers a CoAPS PSK device (`vitalseal ingest devices add-psk`); its key is written once to
   * `keyFile` (0600). Resolves once the running ingest has had time to load it (one registry refresh).
   */
  addPskDevice(deviceId: string, keyFile: string): Promise<void>;
  /** The ingest's SQLite database (for checks that read it directly, read-only). */
  readonly ingestDb: string;
  readonly devices: readonly RunningDevice[];
  device(id: string): RunningDevice;
  /** Starts the ingest service again (after it was stopped or killed); resolves once it answers. */
  startIngest(): Promise<void>;
  /** GET on the HTTPS API with the reader token: status and body text (e.g. `/metrics`). */
  apiText(path: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }>;
  /** GET on the ingest's HTTPS API with the reader token; the parsed JSON. */
  api<T = unknown>(path: string): Promise<T>;
  /** Runs a `vitalseal` command with the stack's environment; resolves with stdout. */
  vitalseal(args: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

function secretFile(path: string): string {
  writeFileSync(path, randomBytes(24).toString('base64url'), { mode: 0o600 });
  return path;
}

async function serviceIdentity(ca: DevCa, dir: string, name: string, names: { dnsNames?: string[]; ipAddresses?: string[]; clientAuth?: boolean }): Promise<{ chain: string; key: string; keyPem: string; chainPem: string }> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const csr = await createCsr({ signer: keyObjectSigner(privateKey), subject: {} });
  const cert = await ca.issueService(csr, names, Date.now());
  const chainPem = pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', ca.issuing.der);
  const keyPem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  const chain = join(dir, `${name}-chain.pem`);
  const key = join(dir, `${name}.key`);
  writeFileSync(chain, chainPem);
  writeFileSync(key, keyPem, { mode: 0o600 });
  return { chain, key, keyPem, chainPem };
}

async function waitHttps(url: string, ca: string, ms: number, alive: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const req = request(`${url}healthz`, { ca, timeout: 2000 }, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      });
      req.on('error', () => resolve(false));
      req.on('timeout', () => req.destroy());
      req.end();
    });
    if (ok) return;
    if (!alive()) throw new Error('the ingest service exited during start-up (see ingest.log in the stack directory)');
    if (Date.now() > end) throw new Error(`the ingest service did not answer ${url}healthz within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A device's agent, started now and again whenever `startAgent` is called. */
function deviceHandle(o: {
  spec: StackDevice; dir: string; statusSocket: string; configFile: string; queueDir: string; logFile: string;
  tpm: Swtpm | undefined; procs: ProcessGroup; env: NodeJS.ProcessEnv; cwd: string;
}): RunningDevice {
  const wrapper = o.spec.wrapper ?? [];
  let extraEnv: Readonly<Record<string, string>> = o.spec.env ?? {};
  const spawnAgent = (): Managed => {
    const argv = [process.execPath, VITALSEAL_BIN, 'agent', 'run', '--config', o.configFile];
    const [command, ...args] = [...wrapper, ...argv] as [string, ...string[]];
    return o.procs.spawn(`agent ${o.spec.id}`, command, args, { log: o.logFile, env: { ...o.env, ...extraEnv }, cwd: o.cwd });
  };
  let agent = spawnAgent();
  return {
    spec: o.spec, dir: o.dir, statusSocket: o.statusSocket, configFile: o.configFile, queueDir: o.queueDir, logFile: o.logFile, tpm: o.tpm,
    get agent() {
      return agent;
    },
    startAgent(opts) {
      if (opts?.env !== undefined) extraEnv = opts.env;
      if (!agent.alive) agent = spawnAgent();
      return agent;
    },
    async status() {
      return (await readStatus(o.statusSocket)) as AgentStatus;
    },
  };
}

/** Starts everything; on any failure stops what was started and rethrows. */
export async function startStack(opts: StackOptions): Promise<Stack> {
  const say = opts.progress ?? (() => undefined);
  const host = opts.bindHost ?? '127.0.0.1';
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'vitalseal-stack-'));
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const procs = new ProcessGroup();
  const tpms: Swtpm[] = [];
  let broker: MosquittoBroker | undefined;
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env['NODE_OPTIONS'];

  const cleanup = async () => {
    await procs.stopAll();
    await broker?.stop().catch(() => undefined);
    for (const t of tpms) await t.stop().catch(() => undefined);
    if (opts.keep !== true) rmSync(dir, { recursive: true, force: true });
  };

  const vitalseal = async (args: readonly string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<string> => {
    try {
      const r = await run(process.execPath, [VITALSEAL_BIN, ...args], { env: { ...env, ...extraEnv }, cwd: dir, maxBuffer: 4 << 20 });
      return r.stdout;
    } catch (e) {
      const err = e as { stderr?: string; code?: number };
      throw new Error(`vitalseal ${args.slice(0, 2).join(' ')} failed (exit ${String(err.code)}): ${(err.stderr ?? '').trim().split('\n').slice(-3).join(' / ')}`);
    }
  };

  try {
    for (const d of opts.devices) if (d.auth === 'psk' && d.transport !== 'coaps') throw new Error(`device ${d.id}: a PSK works with coaps only`);

    // 1-2. The fleet CA and the service identities.
    say('creating a development fleet CA and service certificates');
    const caPass = secretFile(join(dir, 'ca.pass'));
    const ca = await initDevCa({ dir: join(dir, 'ca'), organization: 'vitalseal demo fleet', now: Date.now(), passphrase: readFileSync(caPass) });
    const rootCaFile = ca.paths.root;
    const svc = join(dir, 'services');
    mkdirSync(svc, { mode: 0o700 });
    const served = {
      dnsNames: ['localhost', ...(opts.serviceNames?.dnsNames ?? [])],
      ipAddresses: [...new Set(['127.0.0.1', host, ...(opts.serviceNames?.ipAddresses ?? [])])],
    };
    const https = await serviceIdentity(ca, svc, 'ingest-https', served);
    const mqttClient = await serviceIdentity(ca, svc, 'ingest-mqtt', { dnsNames: [STACK_INGEST_NAME], clientAuth: true });
    const brokerId = await serviceIdentity(ca, svc, 'broker', served);

    // 3. The broker.
    const mqttDevices = [...opts.devices.filter((d) => d.transport === 'mqtts').map((d) => d.id), ...(opts.extraMqttDevices ?? [])];
    say('starting mosquitto (TLS 1.3 only, client certificates, per-device topics)');
    broker = await startMosquitto({
      caChainPem: readFileSync(ca.paths.chain, 'utf8'), certChainPem: brokerId.chainPem, keyPem: brokerId.keyPem,
      crlPem: readFileSync(ca.paths.crl, 'utf8'), devices: mqttDevices, ingest: [STACK_INGEST_NAME], bind: host,
    });

    // 4. The ingest service.
    const ingestDir = join(dir, 'ingest');
    mkdirSync(ingestDir, { mode: 0o700 });
    const storePass = secretFile(join(ingestDir, 'keystore.pass'));
    const httpsPort = opts.httpsPort ?? (await freePort());
    const coapsPort = opts.coapsPort ?? (await freePort());
    const cfg = join(ingestDir, 'ingest.yaml');
    let storage = `sqlite: { path: ${join(ingestDir, 'ingest.db')} }`;
    if (opts.postgres !== undefined) {
      const connFile = join(ingestDir, 'postgres.url');
      writeFileSync(connFile, opts.postgres, { mode: 0o600 });
      storage = `postgres: { connection: { file: ${connFile} } }`;
    }
    writeFileSync(cfg, `# The stack's ingest service (docs/ingest.md has the reference).
storage:
  ${storage}
keystore: { kind: software, path: ${join(ingestDir, 'ingest-keys.vsks')}, passphrase: { file: ${storePass} } }
keys: { kek: ingest-kek, auditSigningKey: ingest-audit, backupSigningKey: ingest-backup }
audit: { path: ${join(ingestDir, 'audit.log')} }
pki: { dir: ${join(dir, 'ca')}, passphrase: { file: ${caPass} } }
https:
  host: ${host}
  port: ${httpsPort}
  certificate: ${https.chain}
  key: ${https.key}
mqtt:
  url: mqtts://${host}:${broker.port}
  caFile: ${rootCaFile}
  certFile: ${mqttClient.chain}
  keyFile: ${mqttClient.key}
  sharedGroup: vitalseal
  topic: vitals/+/v1
coaps:
  host: ${host}
  port: ${coapsPort}
  certificate: ${https.chain}
  key: ${https.key}
  clientRoots: [${rootCaFile}]
  psk: true
log: { level: info }
`, { mode: 0o600 });
    say('making the ingest service\'s static X25519 key');
    const ingestPub = join(ingestDir, 'ingest-static.pub.pem');
    await vitalseal(['ingest', 'keygen', '--config', cfg, '--public-out', ingestPub]);
    const readerToken = (await vitalseal(['ingest', 'api-token', 'create', '--config', cfg, '--name', 'stack-reader', '--role', 'reader'])).trim();
    const httpsUrl = `https://${host}:${httpsPort}/`;
    say(`starting the ingest service (${httpsUrl})`);
    const ingestCmd = opts.ingestCommand ?? { command: process.execPath, args: [...INGEST_NODE_OPTIONS, VITALSEAL_BIN, 'ingest', 'run'] };
    const enrolToken = async (deviceId: string) => (await vitalseal(['ingest', 'enrol-token', '--config', cfg, '--device-id', deviceId])).trim();
    const addPskDevice = async (deviceId: string, keyFile: string) => {
      await vitalseal(['ingest', 'devices', 'add-psk', '--config', cfg, '--device-id', deviceId, '--key-out', keyFile]);
    };
    // The running ingest loads a new PSK device at its next registry refresh (ingest.registryRefreshMs,
    // 1 s here): a device connecting before then is refused once and retries after its back-off.
    const addPskDeviceLoaded = async (deviceId: string, keyFile: string) => {
      await addPskDevice(deviceId, keyFile);
      await new Promise((r) => setTimeout(r, 1500));
    };
    const rootPem = readFileSync(rootCaFile, 'utf8');
    let ingest: Managed | undefined;
    const startIngest = async (): Promise<void> => {
      if (ingest?.alive === true) return;
      const current = procs.spawn('ingest', ingestCmd.command, [...ingestCmd.args, '--config', cfg], { log: join(ingestDir, 'ingest.log'), env, cwd: dir });
      ingest = current;
      await waitHttps(httpsUrl, rootPem, 60_000, () => current.alive);
    };
    await startIngest();

    // 5. Devices: enrol, configure, start.
    const devices: RunningDevice[] = [];
    for (const spec of opts.devices) {
      const ddir = join(dir, 'devices', spec.id);
      mkdirSync(ddir, { recursive: true, mode: 0o700 });
      let deviceEnv = env;
      let identity: string;
      let tpm: Swtpm | undefined;
      if (spec.auth === 'psk') {
        say(`${spec.id}: registering a PSK device (vitalseal ingest devices add-psk; the key is wrapped under the ingest KEK)`);
        const keyFile = join(ddir, 'psk.key');
        await addPskDevice(spec.id, keyFile);
        identity = `psk: { keyFile: ${keyFile} }`;
      } else {
        let keystore: string;
        let storeArgs: string[];
        if (spec.keyStore === 'tpm') {
          say(`${spec.id}: starting its TPM (swtpm behind tpm2-abrmd)`);
          tpm = await startSwtpm({ resourceManager: true });
          tpms.push(tpm);
          deviceEnv = { ...env, ...tpm.env };
          keystore = `{ kind: tpm, tcti: "${tpm.tcti}", dir: ${join(ddir, 'tpm')} }`;
          storeArgs = ['--store', 'tpm', '--tcti', tpm.tcti, '--dir', join(ddir, 'tpm')];
        } else {
          const pass = secretFile(join(ddir, 'keystore.pass'));
          keystore = `{ kind: software, path: ${join(ddir, 'keys.vsks')}, passphrase: { file: ${pass} } }`;
          storeArgs = ['--store', 'software', '--file', join(ddir, 'keys.vsks'), '--passphrase-file', pass];
        }
        say(`${spec.id}: enrolling through the ingest service (one-time token, CSR signed in its ${spec.keyStore === 'tpm' ? 'TPM' : 'key store'})`);
        const tokenFile = join(ddir, 'enrol.token');
        writeFileSync(tokenFile, await enrolToken(spec.id), { mode: 0o600 });
        const idDir = join(ddir, 'identity');
        await vitalseal(['provision', '--device-id', spec.id, '--enrol', httpsUrl.replace(/\/$/, ''), '--token-file', tokenFile, '--ca-file', rootCaFile, '--out', idDir, ...storeArgs], deviceEnv);
        rmSync(tokenFile, { force: true });
        identity = `caFile: ${rootCaFile}
    certFile: ${join(idDir, 'chain.pem')}
    identity: { keystore: ${keystore}, keyLabel: device-identity }`;
      }

      const sources = spec.source === 'hl7'
        // Port 0: the agent binds a free port itself and logs it (a port picked here beforehand could
        // be taken by another program before the agent binds it, and the monitor would talk to that).
        ? `[{ type: hl7-mllp, id: monitor, listen: "127.0.0.1:0", acceptSenders: [MONITOR] }]`
        : `[{ type: simulated, id: patient, seed: ${spec.seed ?? 1} }]`;
      const statusSocket = join(ddir, 'agent.sock');
      const agentCfg = join(ddir, 'agent.yaml');
      const queueDir = spec.queueDir ?? join(ddir, 'queue');
      const queueLimits = [
        spec.queue?.capacityBytes === undefined ? '' : `, capacityBytes: ${spec.queue.capacityBytes}`,
        spec.queue?.fullPolicy === undefined ? '' : `, fullPolicy: ${spec.queue.fullPolicy}`,
      ].join('');
      writeFileSync(agentCfg, `device: { id: ${spec.id} }
sealing: { alg: ${spec.alg ?? 'chacha20-poly1305'}, ingestPublicKeyFile: ${ingestPub} }
sources: ${sources}
batch: { windowMs: ${opts.batchWindowMs ?? 1000} }
queue: { dir: ${queueDir}${queueLimits} }
transport:
  primary:
    kind: ${spec.transport}
    host: ${spec.target?.host ?? host}
    port: ${spec.target?.port ?? (spec.transport === 'mqtts' ? broker.port : coapsPort)}
    serverName: localhost
    ${identity}
uplink: { backoffInitialMs: 200, backoffMaxMs: 5000 }
${spec.auth === 'psk' ? '' : `certificate: { file: ${join(ddir, 'identity', 'device.pem')}, renew: { url: ${httpsUrl.replace(/\/$/, '')}, renewDays: 30 } }\n`}metrics: { listen: false }
status: { socket: ${statusSocket} }
`);
      say(`${spec.id}: starting its agent (${spec.transport}, ${spec.source === 'hl7' ? 'HL7 v2 gateway' : 'simulated patient'})`);
      devices.push(deviceHandle({
        spec, dir: ddir, statusSocket, configFile: agentCfg, queueDir, logFile: join(ddir, 'agent.log'), tpm, procs,
        env: deviceEnv, cwd: dir,
      }));
      if (spec.source === 'hl7') {
        const port = await loggedHl7Port(join(ddir, 'agent.log'), spec.id);
        // A restarted agent (startAgent) binds the same port again, where the monitor reconnects.
        writeFileSync(agentCfg, readFileSync(agentCfg, 'utf8').replace('listen: "127.0.0.1:0"', `listen: "127.0.0.1:${port}"`));
        procs.spawn(`monitor ${spec.id}`, process.execPath, [`--import=${import.meta.resolve('tsx')}`, join(import.meta.dirname, 'hl7-monitor.ts'), '--port', String(port)], { log: join(ddir, 'monitor.log'), env, cwd: dir });
      }
    }

    const apiText = (path: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> => new Promise((resolve, reject) => {
      const req = request(new URL(path, httpsUrl), { ca: rootPem, headers: { authorization: `Bearer ${readerToken}` }, timeout: 10_000 }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts).toString('utf8') }));
      });
      req.on('error', reject);
      req.on('timeout', () => req.destroy(new Error(`GET ${path}: timed out`)));
      req.end();
    });
    const api = async <T>(path: string): Promise<T> => {
      const r = await apiText(path);
      if (r.status !== 200) throw new Error(`GET ${path}: ${String(r.status)} ${r.body.slice(0, 200)}`);
      try {
        return JSON.parse(r.body) as T;
      } catch {
        throw new Error(`GET ${path}: not JSON`);
      }
    };

    let stopped: Promise<void> | undefined;
    return {
      dir, httpsUrl, coapsPort, rootCaFile, readerToken, broker, devices, api, apiText, startIngest,
      ingestDb: join(ingestDir, 'ingest.db'),
      ingestConfigFile: cfg, ingestPublicKeyFile: ingestPub, enrolToken, addPskDevice: addPskDeviceLoaded,
      get ingest() {
        return ingest as Managed;
      },
      device(id) {
        const d = devices.find((x) => x.spec.id === id);
        if (d === undefined) throw new Error(`the stack has no device ${id}`);
        return d;
      },
      vitalseal: (args) => vitalseal(args),
      stop() {
        stopped ??= cleanup();
        return stopped;
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** True when `dir` still exists (for tests that check `stop` cleaned up). */
export function stackDirExists(dir: string): boolean {
  return existsSync(dir);
}
