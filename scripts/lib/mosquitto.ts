/**
 * A private mosquitto 2 (Debian's `mosquitto` package) for tests, benchmarks and the demo: loopback
 * ports picked free, everything in a temp directory, configured from `scripts/mosquitto.conf.tmpl`:
 * MQTT v5 over TLS 1.3 only with client certificates (CN = username), the fleet CRL, persistence,
 * and topic access through the dynamic-security plugin (dynsec.json, written here):
 *
 *   device <id>     may publish under vitals/<id>/ and nothing else (no subscriptions, no reads)
 *   ingest <name>   may subscribe to $share/vitalseal/vitals/+/v1 and read vitals/+/v1
 *   anyone else     nothing (a valid certificate alone grants no topic)
 *
 * A plaintext listener (no TLS, no authentication, no topic rules) exists only when a benchmark
 * asks for it (`plaintext: true`), as the baseline for TLS's cost.
 *
 * Revocation: `updateCrl(pem)` writes the new CRL and sends SIGHUP; mosquitto 2.0.11 re-reads its
 * certificates and CRL then and refuses the revoked certificate on every new connection. A
 * connection made before stays up until it ends: `restart()` (or removing the device from dynsec)
 * cuts it off at once.
 *
 * mosquitto started as root drops to the `mosquitto` user before reading its files, so the
 * directory and every file in it are handed to that user (mode 0700/0600): the broker's key is
 * readable by the broker and by no one else.
 *
 * @example
 *   const broker = await startMosquitto({ caChainPem, certChainPem, keyPem, crlPem, devices: ['bed-7'], ingest: ['ingest.example'] });
 *   // mqtts://127.0.0.1:${broker.port}
 *   await broker.updateCrl(newCrlPem);
 *   await broker.restart();
 *   await broker.stop();
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeviceId } from '../../src/util/device-id.ts';
import { freePort } from './ports.ts';

export const TEMPLATE_PATH = fileURLToPath(new URL('../mosquitto.conf.tmpl', import.meta.url));
/** The shared subscription every ingest instance joins (MQTT v5 §4.8.2). */
export const INGEST_SHARE = '$share/vitalseal/vitals/+/v1';

export interface MosquittoOptions {
  /** The CAs client certificates must chain to (issuing + root), PEM. */
  readonly caChainPem: string;
  /** The broker's certificate (serverAuth, SAN 127.0.0.1/localhost) and its issuing CA, PEM. */
  readonly certChainPem: string;
  /** The broker's private key, PEM (PKCS#8). Written 0600 for the broker's user only. */
  readonly keyPem: string;
  /** The fleet CRL, PEM. Required: without a CRL the broker could not refuse a revoked device. */
  readonly crlPem: string;
  /** Device ids allowed to publish under vitals/<id>/. */
  readonly devices: readonly string[];
  /** Certificate CNs of ingest instances (their MQTT usernames). */
  readonly ingest: readonly string[];
  /** Also listen without TLS (no authentication, no topic rules): benchmarks only. */
  readonly plaintext?: boolean;
  /** Default 100 000 messages per offline session. */
  readonly maxQueuedMessages?: number;
  /** Default 256 KiB: the largest MQTT packet a client may send. */
  readonly maxPacketSize?: number;
  /** Seconds between database saves (default 60; a clean shutdown always saves). */
  readonly autosaveSeconds?: number;
  /** Keep the broker's log lines (default true); benchmarks may turn it off. */
  readonly captureLog?: boolean;
  /**
   * The address the TLS listener binds (default 127.0.0.1). The end-to-end suite binds the host
   * end of a private veth pair so devices in a network namespace reach the broker.
   */
  readonly bind?: string;
}

export interface MosquittoBroker {
  readonly host: string;
  /** The MQTT v5 over TLS 1.3 listener. */
  readonly port: number;
  /** The plaintext listener, when asked for. */
  readonly plainPort: number | undefined;
  /** The broker's private directory (config, certificates, database). */
  readonly dir: string;
  /** The broker's process id while it runs (for the benchmark's CPU accounting). */
  readonly pid: number | undefined;
  /**
   * `<dir>/mosquitto.pid`, rewritten after every start with the running broker's process id, as a
   * service manager's PIDFile would be (mosquitto writes its own `pid_file` only when it daemonises).
   */
  readonly pidFile: string;
  /** The broker's log so far (the last 256 KiB). */
  log(): string;
  /** Waits until `re` matches the log (the broker writes it asynchronously), up to `ms`. */
  waitForLog(re: RegExp, ms?: number): Promise<boolean>;
  /** Installs a new CRL and has the broker read it (SIGHUP). */
  updateCrl(crlPem: string): Promise<void>;
  /** Clean shutdown (the database is saved) and start again on the same port. */
  restart(): Promise<void>;
  /** SIGKILL, as a crash: whatever the broker had not saved is gone. Then start again. */
  crashAndRestart(): Promise<void>;
  /** Clean shutdown, leaving everything in place for `up()`: the broker is away until then. */
  down(): Promise<void>;
  /** Starts again after `down()`, on the same port, over the saved database. */
  up(): Promise<void>;
  /** SIGSTOP: connections stay open but nothing is answered until the returned thaw (SIGCONT). */
  freeze(): () => void;
  stop(): Promise<void>;
}

const LOG_LIMIT = 256 * 1024;
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // Last resort when a test process ends without stop(): never leave brokers behind.
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
}

function need(binary: string, pkg: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${binary}`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${binary} not found: install the Debian package "${pkg}" (scripts/setup does)`);
}

/** Where Debian puts the dynamic-security plugin (multiarch directory). */
export function dynsecPluginPath(): string {
  const candidates: string[] = [];
  for (const lib of ['/usr/lib', '/usr/local/lib']) {
    if (!existsSync(lib)) continue;
    candidates.push(join(lib, 'mosquitto_dynamic_security.so'));
    for (const sub of readdirSync(lib)) candidates.push(join(lib, sub, 'mosquitto_dynamic_security.so'));
  }
  const found = candidates.find((p) => existsSync(p));
  if (found === undefined) throw new Error('mosquitto_dynamic_security.so not found: install the Debian package "mosquitto" (2.0 or later)');
  return found;
}

/** Fills `{{NAME}}` placeholders; a placeholder without a value is an error, never left in. */
export function renderTemplate(template: string, values: Readonly<Record<string, string>>): string {
  const out = template.replace(/\{\{([A-Z0-9_]+)\}\}/g, (_m, name: string) => {
    const v = values[name];
    if (v === undefined) throw new Error(`mosquitto template: no value for {{${name}}}`);
    return v;
  });
  return out;
}

/** The dynamic-security plugin's configuration: one role per device, one for the ingest. */
export function dynsecConfig(devices: readonly string[], ingest: readonly string[]): object {
  const seen = new Set<string>();
  for (const name of [...devices, ...ingest]) {
    // Devices and services share one username space (the certificate CN): a device named like the
    // ingest would get the ingest's rights, so the broker refuses the overlap outright.
    if (seen.has(name)) throw new Error(`mosquitto: ${JSON.stringify(name)} is listed twice (a device id must never equal an ingest identity)`);
    seen.add(name);
  }
  for (const id of devices) {
    if (!isDeviceId(id)) throw new Error(`mosquitto: ${JSON.stringify(id)} is not a device id`);
  }
  for (const name of ingest) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) throw new Error(`mosquitto: ${JSON.stringify(name)} is not a usable ingest identity`);
  }
  return {
    // Everything not granted below is refused, including subscriptions (mosquitto's own default
    // for publishClientReceive is allow).
    defaultACLAccess: { publishClientSend: false, publishClientReceive: false, subscribe: false, unsubscribe: true },
    clients: [
      ...devices.map((id) => ({ username: id, textdescription: 'vitalseal device', roles: [{ rolename: `device-${id}` }] })),
      ...ingest.map((name) => ({ username: name, textdescription: 'vitalseal ingest', roles: [{ rolename: 'ingest' }] })),
    ],
    groups: [],
    roles: [
      ...devices.map((id) => ({
        rolename: `device-${id}`,
        acls: [{ acltype: 'publishClientSend', topic: `vitals/${id}/#`, priority: 0, allow: true }],
      })),
      {
        rolename: 'ingest',
        acls: [
          { acltype: 'subscribeLiteral', topic: INGEST_SHARE, priority: 0, allow: true },
          { acltype: 'publishClientReceive', topic: 'vitals/+/v1', priority: 0, allow: true },
        ],
      },
    ],
  };
}

function mosquittoUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const uid = spawnSync('id', ['-u', 'mosquitto'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'mosquitto'], { encoding: 'utf8' });
  if (uid.status !== 0 || gid.status !== 0) throw new Error('running as root, but there is no "mosquitto" user for the broker to drop to (Debian\'s mosquitto package creates it)');
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));
}

class BrokerProcess implements MosquittoBroker {
  readonly host: string;
  readonly dir: string;
  readonly #owner: { uid: number; gid: number } | undefined;
  readonly #capture: boolean;
  #child: ChildProcess | undefined;
  #log = '';
  port = 0;
  plainPort: number | undefined;
  #values: Record<string, string> = {};
  #stopped = false;

  constructor(dir: string, owner: { uid: number; gid: number } | undefined, capture: boolean, host: string) {
    this.dir = dir;
    this.host = host;
    this.#owner = owner;
    this.#capture = capture;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get pidFile(): string {
    return join(this.dir, 'mosquitto.pid');
  }

  log(): string {
    return this.#log;
  }

  async waitForLog(re: RegExp, ms = 5000): Promise<boolean> {
    for (let waited = 0; !re.test(this.#log) && waited < ms; waited += 25) await delay(25);
    return re.test(this.#log);
  }

  /** Writes a file for the broker's user only (0600, or 0644 for public material). */
  writePrivate(name: string, data: string, mode = 0o600): void {
    const path = join(this.dir, name);
    const tmp = `${path}.tmp`;
    writeFileSync(tmp, data, { mode });
    chmodSync(tmp, mode);
    if (this.#owner !== undefined) chownSync(tmp, this.#owner.uid, this.#owner.gid);
    renameSync(tmp, path);
  }

  configure(values: Record<string, string>): void {
    this.#values = values;
    this.writePrivate('mosquitto.conf', renderTemplate(readFileSync(TEMPLATE_PATH, 'utf8'), { ...values, TLS_PORT: String(this.port) }));
  }

  async start(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      this.configure({ ...this.#values, PLAINTEXT_LISTENER: this.#plainListener() });
      const child = spawn('mosquitto', ['-c', join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
      track(child);
      child.stderr?.setEncoding('utf8').on('data', (d: string) => {
        if (this.#capture) this.#log = (this.#log + d).slice(-LOG_LIMIT);
      });
      this.#child = child;
      for (let i = 0; i < 200; i++) {
        if (child.exitCode !== null || child.signalCode !== null) break;
        const tls = await canConnect(this.host, this.port);
        const plain = this.plainPort === undefined || await canConnect(this.host, this.plainPort);
        if (tls && plain) {
          this.writePrivate('mosquitto.pid', `${child.pid ?? ''}\n`, 0o644);
          return;
        }
        await delay(25);
      }
      child.kill('SIGKILL');
      await exited(child);
      const bindFailed = /Address already in use/.test(this.#log);
      if (!bindFailed || attempt >= 2) throw new Error(`mosquitto did not start: ${this.#log.trim().split('\n').slice(-8).join('\n')}`);
      // A port taken between freePort() and bind: pick new ones.
      this.port = await freePort();
      if (this.plainPort !== undefined) this.plainPort = await freePort();
    }
  }

  #plainListener(): string {
    if (this.plainPort === undefined) return '';
    return [
      '',
      '# ---- benchmarks only: plaintext MQTT on loopback, the baseline TLS is measured against ----',
      `listener ${this.plainPort} ${this.host}`,
      'protocol mqtt',
      'allow_anonymous true',
      '',
    ].join('\n');
  }

  async #terminate(signal: NodeJS.Signals): Promise<void> {
    const child = this.#child;
    if (child === undefined) return;
    this.#child = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const done = exited(child);
    // A frozen broker must be woken to handle the signal.
    child.kill('SIGCONT');
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await done;
    clearTimeout(timer);
  }

  async updateCrl(crlPem: string): Promise<void> {
    this.writePrivate('crl.pem', crlPem, 0o644);
    const child = this.#child;
    if (child === undefined) return;
    const before = this.#log.length;
    child.kill('SIGHUP');
    // mosquitto logs "Reloading config." once it has handled the signal.
    for (let i = 0; i < 200 && !/Reloading config/.test(this.#log.slice(before)); i++) await delay(10);
  }

  async restart(): Promise<void> {
    // SIGTERM: mosquitto saves its database, then exits.
    await this.#terminate('SIGTERM');
    await this.start();
  }

  async crashAndRestart(): Promise<void> {
    await this.#terminate('SIGKILL');
    await this.start();
  }

  async down(): Promise<void> {
    await this.#terminate('SIGTERM');
  }

  async up(): Promise<void> {
    if (this.#child !== undefined) return;
    await this.start();
  }

  freeze(): () => void {
    const child = this.#child;
    if (child === undefined) throw new Error('mosquitto is not running');
    child.kill('SIGSTOP');
    let thawed = false;
    const thaw = () => {
      if (thawed) return;
      thawed = true;
      child.kill('SIGCONT');
    };
    // Never leave a stopped broker behind (it would not even answer SIGTERM).
    process.once('exit', thaw);
    return thaw;
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#terminate('SIGTERM');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Starts a broker; throws (and leaves nothing behind) if it cannot. */
export async function startMosquitto(opts: MosquittoOptions): Promise<MosquittoBroker> {
  need('mosquitto', 'mosquitto');
  const owner = mosquittoUser();
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-mosquitto-'));
  const broker = new BrokerProcess(dir, owner, opts.captureLog !== false, opts.bind ?? '127.0.0.1');
  try {
    chmodSync(dir, 0o700);
    mkdirSync(join(dir, 'data'), { mode: 0o700 });
    if (owner !== undefined) {
      chownSync(dir, owner.uid, owner.gid);
      chownSync(join(dir, 'data'), owner.uid, owner.gid);
    }
    broker.writePrivate('ca-chain.pem', opts.caChainPem, 0o644);
    broker.writePrivate('broker.pem', opts.certChainPem, 0o644);
    broker.writePrivate('broker.key', opts.keyPem, 0o600);
    broker.writePrivate('crl.pem', opts.crlPem, 0o644);
    broker.writePrivate('dynsec.json', `${JSON.stringify(dynsecConfig(opts.devices, opts.ingest), null, 2)}\n`, 0o600);
    broker.port = await freePort();
    broker.plainPort = opts.plaintext === true ? await freePort() : undefined;
    broker.configure({
      DIR: dir,
      BIND: broker.host,
      AUTOSAVE_SECONDS: String(opts.autosaveSeconds ?? 60),
      MAX_QUEUED_MESSAGES: String(opts.maxQueuedMessages ?? 100_000),
      MAX_PACKET_SIZE: String(opts.maxPacketSize ?? 256 * 1024),
      DYNSEC_PLUGIN: dynsecPluginPath(),
      PLAINTEXT_LISTENER: '',
    });
    await broker.start();
    if (statSync(join(dir, 'broker.key')).mode & 0o077) throw new Error('broker key file is readable by others');
    return broker;
  } catch (e) {
    await broker.stop();
    throw e;
  }
}
