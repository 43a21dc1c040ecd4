/**
 * The examples' scaffolding for trying them on one machine (not the part a device maker copies).
 *
 * `--local` starts a whole installation on 127.0.0.1 with scripts/lib/stack.ts, as `npm run demo`
 * does but with no devices of its own (the example is the device): a development fleet CA,
 * mosquitto (TLS 1.3, client certificates), the ingest service (HTTPS API, enrolment endpoint,
 * MQTT and CoAPS listeners), and a reader API token. Every secret is generated on the spot in the
 * site's directory (0700), and `stop()` stops every process and removes the directory.
 *
 * Without `--local`, an example takes the real endpoints and files from its flags; the same flags
 * shape is parsed here so every example reads alike.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { stringify } from 'yaml';
import { startStack, type Stack, type StackOptions } from '../../scripts/lib/stack.ts';
import { IngestApi } from './ingest-api.ts';

export interface LocalSite {
  readonly stack: Stack;
  /** A directory (0700) for the example's own device files: queue, keys, configuration. */
  readonly dir: string;
  /** The ingest's API with the site's reader token. */
  readonly api: IngestApi;
  stop(): Promise<void>;
}

/** Progress of the local scaffolding, on stderr so that stdout holds what the example reports. */
export const sayLocal = (line: string): void => void process.stderr.write(`local: ${line}\n`);

/** Starts the local installation; by default with no devices of its own (the example is the device). */
export async function startLocalSite(o: Omit<StackOptions, 'devices' | 'progress'> & { readonly devices?: StackOptions['devices'] } = {}): Promise<LocalSite> {
  sayLocal('starting a local installation on 127.0.0.1 (scripts/lib/stack.ts)');
  const stack = await startStack({ ...o, devices: o.devices ?? [], progress: sayLocal });
  const dir = join(stack.dir, 'example');
  mkdirSync(dir, { mode: 0o700 });
  const api = new IngestApi({ url: stack.httpsUrl, token: stack.readerToken, caPem: readFileSync(stack.rootCaFile, 'utf8') });
  sayLocal(`ingest ${stack.httpsUrl} (CoAPS udp/${stack.coapsPort}, MQTTS tcp/${stack.broker.port}); directory ${stack.dir}`);
  return {
    stack, dir, api,
    async stop() {
      if (!stack.ingest.alive) {
        // Say why before the directory goes: the ingest's log holds codes and events, never secrets or readings.
        sayLocal(`the ingest service had exited (${String(await stack.ingest.exited)}); the end of its log:`);
        const lines = readFileSync(join(stack.dir, 'ingest', 'ingest.log'), 'utf8').trim().split('\n');
        for (const l of lines.slice(-12)) sayLocal(`  ${l.slice(0, 600)}`);
      }
      sayLocal('stopping the local installation');
      await stack.stop();
    },
  };
}

/** Writes an agent configuration (YAML) and returns its path: the file a device keeps in /etc/vitalseal. */
export function writeAgentConfig(path: string, doc: Record<string, unknown>): string {
  writeFileSync(path, `# written by the example's --local set-up; docs/agent.md has the reference\n${stringify(doc)}`, { mode: 0o600 });
  return path;
}

/**
 * The local half of a PSK device: registers `deviceId` with the local ingest (`vitalseal ingest
 * devices add-psk`, the key written once to a 0600 file) and writes the agent configuration a CoAPS
 * PSK device keeps: device id, pinned ingest key, queue, `transport.primary: { kind: coaps, psk }`.
 * `over` replaces or adds top-level sections (`sealing`, `metrics`, ...).
 */
export async function localPskAgentConfig(site: LocalSite, deviceId: string, over: Record<string, unknown> = {}): Promise<string> {
  const pskFile = join(site.dir, `${deviceId}.psk`);
  await site.stack.addPskDevice(deviceId, pskFile);
  return writeAgentConfig(join(site.dir, `${deviceId}.yaml`), {
    device: { id: deviceId },
    sealing: { ingestPublicKeyFile: site.stack.ingestPublicKeyFile },
    queue: { dir: join(site.dir, `${deviceId}-queue`) },
    transport: { primary: { kind: 'coaps', host: '127.0.0.1', port: site.stack.coapsPort, psk: { keyFile: pskFile } } },
    uplink: { backoffInitialMs: 200, backoffMaxMs: 2000 },
    metrics: { listen: false },
    status: { socket: join(site.dir, `${deviceId}.sock`) },
    ...over,
  });
}

/**
 * The local half of a certificate device: a one-time enrolment token from the local ingest (in a
 * 0600 file, for `enrolOnFirstBoot`) and the agent configuration: its key in `keystore`, its
 * certificate to come from enrolment (`<dir>/<id>-identity/chain.pem`), renewed at the ingest.
 * An MQTTS device's id must be among the stack's `extraMqttDevices` (the broker's topic rules).
 */
export async function localCertAgentConfig(site: LocalSite, deviceId: string, o: {
  readonly transport: 'mqtts' | 'coaps';
  readonly keystore: Record<string, unknown>;
  readonly sources: readonly Record<string, unknown>[];
}): Promise<{ configFile: string; tokenFile: string }> {
  const tokenFile = join(site.dir, `${deviceId}.token`);
  writeFileSync(tokenFile, await site.stack.enrolToken(deviceId), { mode: 0o600 });
  const idDir = join(site.dir, `${deviceId}-identity`);
  const configFile = writeAgentConfig(join(site.dir, `${deviceId}.yaml`), {
    device: { id: deviceId },
    sealing: { ingestPublicKeyFile: site.stack.ingestPublicKeyFile },
    sources: o.sources,
    queue: { dir: join(site.dir, `${deviceId}-queue`) },
    transport: {
      primary: {
        kind: o.transport, host: '127.0.0.1', port: o.transport === 'mqtts' ? site.stack.broker.port : site.stack.coapsPort, serverName: 'localhost',
        caFile: site.stack.rootCaFile, certFile: join(idDir, 'chain.pem'), identity: { keystore: o.keystore, keyLabel: 'device-identity' },
      },
    },
    uplink: { backoffInitialMs: 200, backoffMaxMs: 2000 },
    certificate: { file: join(idDir, 'device.pem'), renew: { url: site.stack.httpsUrl.replace(/\/$/, ''), renewDays: 30 } },
    metrics: { listen: false },
    status: { socket: join(site.dir, `${deviceId}.sock`) },
  });
  return { configFile, tokenFile };
}

/** A development software key store (encrypted file; its passphrase generated into a 0600 file). */
export function localSoftwareKeystore(site: LocalSite, deviceId: string): Record<string, unknown> {
  const pass = join(site.dir, `${deviceId}-keystore.pass`);
  writeFileSync(pass, randomBytes(24).toString('base64url'), { mode: 0o600 });
  return { kind: 'software', path: join(site.dir, `${deviceId}-keys.vsks`), passphrase: { file: pass } };
}

let stopRequested: Promise<string> | undefined;

/**
 * Resolves with the signal's name on the first SIGINT or SIGTERM. Installed at start-up so that a
 * signal at any moment leads to the graceful path (stop the agent, then the local installation).
 */
export function stopSignal(): Promise<string> {
  stopRequested ??= new Promise((resolve) => {
    const on = (sig: string) => () => resolve(sig);
    process.once('SIGINT', on('SIGINT'));
    process.once('SIGTERM', on('SIGTERM'));
  });
  return stopRequested;
}

/** Waits `seconds` (or until SIGINT/SIGTERM when `seconds` is undefined or a signal comes first). */
export async function runFor(seconds: number | undefined): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = seconds === undefined ? new Promise<string>(() => undefined) : new Promise<string>((r) => (timer = setTimeout(() => r(`${seconds} s`), seconds * 1000)));
  try {
    return await Promise.race([timeout, stopSignal()]);
  } finally {
    clearTimeout(timer);
  }
}

const COMMON = {
  local: { type: 'boolean' },
  seconds: { type: 'string' },
  config: { type: 'string' },
  api: { type: 'string' },
  'api-token-file': { type: 'string' },
  'api-ca-file': { type: 'string' },
  help: { type: 'boolean' },
} as const;

export interface CommonArgs {
  readonly local: boolean;
  /** Undefined: run until SIGINT/SIGTERM. */
  readonly seconds: number | undefined;
  readonly config: string | undefined;
  /** The ingest's API, to show what it stored (optional without --local). */
  readonly api: IngestApi | undefined;
}

/**
 * Parses the flags every example shares (`--local`, `--seconds`, `--config`, `--api`,
 * `--api-token-file`, `--api-ca-file`) plus the example's own. Prints `usage` and exits 2 on a
 * mistake, 0 on `--help`.
 */
export function parseExampleArgs<O extends ParseArgsConfig['options']>(usage: string, own: O): { common: CommonArgs; values: Record<string, string | boolean | undefined> } {
  const fail = (why: string): never => {
    process.stderr.write(`${why}\n\n${usage}`);
    process.exit(2);
  };
  let values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    values = parseArgs({ options: { ...COMMON, ...own }, strict: true }).values;
  } catch (e) {
    return fail((e as Error).message);
  }
  void stopSignal(); // from here on, Ctrl-C or SIGTERM takes the graceful path
  if (values['help'] === true) {
    process.stdout.write(usage);
    process.exit(0);
  }
  const seconds = values['seconds'] === undefined ? undefined : Number(values['seconds']);
  if (seconds !== undefined && !(Number.isFinite(seconds) && seconds > 0 && seconds <= 86_400)) fail('--seconds must be a number from 1 to 86400');
  const local = values['local'] === true;
  const apiFlags = [values['api'], values['api-token-file'], values['api-ca-file']];
  if (apiFlags.some((v) => v !== undefined) && apiFlags.some((v) => v === undefined)) fail('--api needs --api-token-file and --api-ca-file too');
  if (local && (values['config'] !== undefined || values['api'] !== undefined)) fail('--local makes its own configuration and API token: leave out --config and --api');
  if (!local && values['config'] === undefined) fail('give --local to try it on this machine, or --config FILE for a real installation');
  const api = !local && typeof values['api'] === 'string'
    ? IngestApi.fromFiles(values['api'], String(values['api-token-file']), String(values['api-ca-file']))
    : undefined;
  const flat: Record<string, string | boolean | undefined> = {};
  for (const [k, v] of Object.entries(values)) if (!Array.isArray(v)) flat[k] = v;
  return { common: { local, seconds, config: typeof values['config'] === 'string' ? values['config'] : undefined, api }, values: flat };
}
