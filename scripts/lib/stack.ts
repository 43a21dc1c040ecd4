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
 * machine reaching this loopback through QEMU's user-mode network) are named in `externalDevices`
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
import type { CoseAlgName } from '../../src/cose/algorithms.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa, type DevCa } from '../../src/pki/dev-ca.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { startMosquitto, type MosquittoBroker } from './mosquitto.ts';
import { freePort } from './ports.ts';
import { ProcessGroup, VITALSEAL_BIN, type Managed } from './processes.ts';
import { startSwtpm, type Swtpm } from './swtpm.ts';

const run = promisify(execFile);

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
}

export interface StackOptions {
  readonly devices: readonly StackDevice[];
  /** The stack's directory (made 0700; removed by `stop` unless `keep`). Default: a new temp dir. */
  readonly dir?: string;
  /** HTTPS port of the ingest (API, dashboard, enrolment); default a free one. */
  readonly httpsPort?: number;
  readonly keep?: boolean;
  /** Progress lines ("starting mosquitto ..."). */
  readonly progress?: (line: string) => void;
  /** Seconds of sealing window per batch in the agents (default 1000 ms). */
  readonly batchWindowMs?: number;
  /**
   * Names besides localhost/127.0.0.1 that the broker's and the ingest's HTTPS/CoAPS certificates
   * carry: how devices elsewhere address this loopback (10.0.2.2 from a QEMU guest).
   */
  readonly serviceNames?: { readonly dnsNames?: readonly string[]; readonly ipAddresses?: readonly string[] };
  /** Devices the stack does not run but the broker must let publish (they enrol themselves). */
  readonly externalDevices?: readonly string[];
}

export interface RunningDevice {
  readonly spec: StackDevice;
  readonly dir: string;
  readonly agent: Managed;
  /** The agent's status socket (`vitalseal agent status --socket`). */
  readonly statusSocket: string;
}

export interface Stack {
  readonly dir: string;
  readonly httpsUrl: string;
  /** The ingest's CoAPS (UDP) port on 127.0.0.1. */
  readonly coapsPort: number;
  /** The ingest's configuration file (for `vitalseal ingest ... --config`). */
  readonly ingestConfig: string;
  /** The ingest's static X25519 public key (PEM): what devices pin in `sealing.ingestPublicKeyFile`. */
  readonly ingestPublicKeyFile: string;
  /** The fleet root certificate (PEM file): what a browser or curl must trust for the HTTPS API. */
  readonly rootCaFile: string;
  /** A reader API token for this stack's own use (summary, tests); printed only where asked. */
  readonly readerToken: string;
  readonly broker: MosquittoBroker;
  readonly ingest: Managed;
  readonly devices: readonly RunningDevice[];
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

/** Starts everything; on any failure stops what was started and rethrows. */
export async function startStack(opts: StackOptions): Promise<Stack> {
  const say = opts.progress ?? (() => undefined);
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
    const served = { dnsNames: ['localhost', ...(opts.serviceNames?.dnsNames ?? [])], ipAddresses: ['127.0.0.1', ...(opts.serviceNames?.ipAddresses ?? [])] };
    const https = await serviceIdentity(ca, svc, 'ingest-https', served);
    const mqttClient = await serviceIdentity(ca, svc, 'ingest-mqtt', { dnsNames: [STACK_INGEST_NAME], clientAuth: true });
    const brokerId = await serviceIdentity(ca, svc, 'broker', served);

    // 3. The broker.
    const mqttDevices = [...opts.devices.filter((d) => d.transport === 'mqtts').map((d) => d.id), ...(opts.externalDevices ?? [])];
    say('starting mosquitto (TLS 1.3 only, client certificates, per-device topics)');
    broker = await startMosquitto({
      caChainPem: readFileSync(ca.paths.chain, 'utf8'), certChainPem: brokerId.chainPem, keyPem: brokerId.keyPem,
      crlPem: readFileSync(ca.paths.crl, 'utf8'), devices: mqttDevices, ingest: [STACK_INGEST_NAME],
    });

    // 4. The ingest service.
    const ingestDir = join(dir, 'ingest');
    mkdirSync(ingestDir, { mode: 0o700 });
    const storePass = secretFile(join(ingestDir, 'keystore.pass'));
    const httpsPort = opts.httpsPort ?? (await freePort());
    const coapsPort = await freePort();
    const cfg = join(ingestDir, 'ingest.yaml');
    writeFileSync(cfg, `# The stack's ingest service (docs/ingest.md has the reference).
storage:
  sqlite: { path: ${join(ingestDir, 'ingest.db')} }
keystore: { kind: software, path: ${join(ingestDir, 'ingest-keys.vsks')}, passphrase: { file: ${storePass} } }
keys: { kek: ingest-kek, auditSigningKey: ingest-audit, backupSigningKey: ingest-backup }
audit: { path: ${join(ingestDir, 'audit.log')} }
pki: { dir: ${join(dir, 'ca')}, passphrase: { file: ${caPass} } }
https:
  host: 127.0.0.1
  port: ${httpsPort}
  certificate: ${https.chain}
  key: ${https.key}
mqtt:
  url: mqtts://127.0.0.1:${broker.port}
  caFile: ${rootCaFile}
  certFile: ${mqttClient.chain}
  keyFile: ${mqttClient.key}
  sharedGroup: vitalseal
  topic: vitals/+/v1
coaps:
  host: 127.0.0.1
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
    say(`starting the ingest service (https://127.0.0.1:${httpsPort}/)`);
    const ingest = procs.spawn('ingest', process.execPath, [VITALSEAL_BIN, 'ingest', 'run', '--config', cfg], { log: join(ingestDir, 'ingest.log'), env, cwd: dir });
    const httpsUrl = `https://127.0.0.1:${httpsPort}/`;
    const rootPem = readFileSync(rootCaFile, 'utf8');
    await waitHttps(httpsUrl, rootPem, 60_000, () => ingest.alive);

    // 5. Devices: enrol, configure, start.
    const devices: RunningDevice[] = [];
    for (const spec of opts.devices) {
      const ddir = join(dir, 'devices', spec.id);
      mkdirSync(ddir, { recursive: true, mode: 0o700 });
      let deviceEnv = env;
      let identity: string;
      if (spec.auth === 'psk') {
        say(`${spec.id}: registering a PSK device (vitalseal ingest devices add-psk; the key is wrapped under the ingest KEK)`);
        const keyFile = join(ddir, 'psk.key');
        await vitalseal(['ingest', 'devices', 'add-psk', '--config', cfg, '--device-id', spec.id, '--key-out', keyFile]);
        identity = `psk: { keyFile: ${keyFile} }`;
      } else {
        let keystore: string;
        let storeArgs: string[];
        if (spec.keyStore === 'tpm') {
          say(`${spec.id}: starting its TPM (swtpm behind tpm2-abrmd)`);
          const tpm = await startSwtpm({ resourceManager: true });
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
        writeFileSync(tokenFile, (await vitalseal(['ingest', 'enrol-token', '--config', cfg, '--device-id', spec.id])).trim(), { mode: 0o600 });
        const idDir = join(ddir, 'identity');
        await vitalseal(['provision', '--device-id', spec.id, '--enrol', httpsUrl.replace(/\/$/, ''), '--token-file', tokenFile, '--ca-file', rootCaFile, '--out', idDir, ...storeArgs], deviceEnv);
        rmSync(tokenFile, { force: true });
        identity = `caFile: ${rootCaFile}
    certFile: ${join(idDir, 'chain.pem')}
    identity: { keystore: ${keystore}, keyLabel: device-identity }`;
      }

      const sources = spec.source === 'hl7'
        ? `[{ type: hl7-mllp, id: monitor, listen: "127.0.0.1:${await freePort()}", acceptSenders: [MONITOR] }]`
        : `[{ type: simulated, id: patient, seed: ${spec.seed ?? 1} }]`;
      const statusSocket = join(ddir, 'agent.sock');
      const agentCfg = join(ddir, 'agent.yaml');
      writeFileSync(agentCfg, `device: { id: ${spec.id} }
sealing: { alg: ${spec.alg ?? 'chacha20-poly1305'}, ingestPublicKeyFile: ${ingestPub} }
sources: ${sources}
batch: { windowMs: ${opts.batchWindowMs ?? 1000} }
queue: { dir: ${join(ddir, 'queue')} }
transport:
  primary:
    kind: ${spec.transport}
    host: 127.0.0.1
    port: ${spec.transport === 'mqtts' ? broker.port : coapsPort}
    serverName: localhost
    ${identity}
uplink: { backoffInitialMs: 200, backoffMaxMs: 5000 }
${spec.auth === 'psk' ? '' : `certificate: { file: ${join(ddir, 'identity', 'device.pem')}, renew: { url: ${httpsUrl.replace(/\/$/, '')}, renewDays: 30 } }\n`}metrics: { listen: false }
status: { socket: ${statusSocket} }
`);
      say(`${spec.id}: starting its agent (${spec.transport}, ${spec.source === 'hl7' ? 'HL7 v2 gateway' : 'simulated patient'})`);
      const agent = procs.spawn(`agent ${spec.id}`, process.execPath, [VITALSEAL_BIN, 'agent', 'run', '--config', agentCfg], { log: join(ddir, 'agent.log'), env: deviceEnv, cwd: dir });
      devices.push({ spec, dir: ddir, agent, statusSocket });
      if (spec.source === 'hl7') {
        const port = /listen: "127\.0\.0\.1:(\d+)"/.exec(sources)?.[1] as string;
        procs.spawn(`monitor ${spec.id}`, process.execPath, [`--import=${import.meta.resolve('tsx')}`, join(import.meta.dirname, 'hl7-monitor.ts'), '--port', port], { log: join(ddir, 'monitor.log'), env, cwd: dir });
      }
    }

    const api = <T>(path: string): Promise<T> => new Promise((resolve, reject) => {
      const req = request(new URL(path, httpsUrl), { ca: rootPem, headers: { authorization: `Bearer ${readerToken}` }, timeout: 10_000 }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          if (res.statusCode !== 200) reject(new Error(`GET ${path}: ${String(res.statusCode)} ${text.slice(0, 200)}`));
          else {
            try {
              resolve(JSON.parse(text) as T);
            } catch {
              reject(new Error(`GET ${path}: not JSON`));
            }
          }
        });
      });
      req.on('error', reject);
      req.on('timeout', () => req.destroy(new Error(`GET ${path}: timed out`)));
      req.end();
    });

    let stopped: Promise<void> | undefined;
    return {
      dir, httpsUrl, coapsPort, ingestConfig: cfg, ingestPublicKeyFile: ingestPub, rootCaFile, readerToken, broker, ingest, devices, api,
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
