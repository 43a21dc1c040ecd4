/**
 * Starts a TPM 2.0 simulator (swtpm, from Debian's `swtpm` package) for tests, benchmarks and the
 * demo: socket mode on free loopback ports, state in a temp directory, stopped on `stop()` (and
 * killed if the process exits first). `restart()` stops it cleanly and starts it again over the same
 * state, as a reboot does; `resetState()` starts it over an empty state, as a new chip; `down()` and
 * `up()` take it away and bring it back (a TPM unavailable when a client starts).
 *
 * swtpm serves one client connection at a time and has three transient object slots. With
 * `resourceManager: true` the harness also starts tpm2-abrmd (the access broker and resource
 * manager, as /dev/tpmrm0 is on a device) on a private D-Bus, so several clients can use the TPM at
 * once (our store and tpm2-tools side by side): clients then use `tcti` and need `env` (the private
 * bus address) in their environment.
 *
 * @example
 *   const tpm = await startSwtpm();
 *   const store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.tcti, dir });
 *   ...
 *   await tpm.stop();
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SwtpmOptions {
  /** Use this state directory (kept on stop) instead of a fresh temp dir (removed on stop). */
  readonly stateDir?: string;
  /** Also run tpm2-abrmd on a private D-Bus and hand out its TCTI. */
  readonly resourceManager?: boolean;
  /**
   * With `resourceManager`: transient objects one client may hold (tpm2-abrmd's --max-transients,
   * default 27). 3 is what the kernel's resource manager (/dev/tpmrm0) gives each open file.
   */
  readonly maxTransients?: number;
}

export interface Swtpm {
  /** TCTI for clients: the resource manager's when there is one, swtpm's own otherwise. */
  readonly tcti: string;
  /** swtpm's own TCTI (one client at a time). */
  readonly directTcti: string;
  /** Environment clients of `tcti` need (the private D-Bus address when a resource manager runs). */
  readonly env: Readonly<Record<string, string>>;
  readonly port: number;
  /** The control channel: always `port + 1`, where the swtpm TCTI looks for it. */
  readonly ctrlPort: number;
  readonly stateDir: string;
  /**
   * Clean shutdown (state saved) and start again over the same state, on the same ports. With
   * `next`, tpm2-abrmd comes back with `next.maxTransients` (undefined: its own default).
   */
  restart(next?: { readonly maxTransients?: number | undefined }): Promise<void>;
  /** Stops, empties the state directory, starts again: a TPM that has never been used. */
  resetState(): Promise<void>;
  /**
   * Takes the TPM away (the resource manager and swtpm stop cleanly; the private bus stays), as a
   * TPM that has not come up or a driver that is not loaded: clients fail until `up()`.
   */
  down(): Promise<void>;
  /** Brings it back after `down()`, over the same state. */
  up(): Promise<void>;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // Last resort when a test process ends without stop(): never leave simulators behind.
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
}

function need(binary: string, pkg: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${binary}`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${binary} not found: install the Debian package "${pkg}" (scripts/setup does)`);
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** The kernel's ephemeral port range (bind to port 0, outgoing connections). */
function ephemeralRange(): { low: number; high: number } {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(low) && Number.isInteger(high)) return { low: low as number, high: high as number };
  } catch {
    // not Linux, or /proc not mounted: the kernel's default
  }
  return { low: 32768, high: 60999 };
}

/**
 * Two free consecutive ports: the swtpm TCTI (like mssim's) talks to the control channel on
 * `port + 1`. Picked outside the ephemeral range: there Linux gives bind(0) one parity and outgoing
 * connections the other, so the `+ 1` of a port from bind(0) is the kind other tests' connections
 * take, and 50 tries in a row have failed with test files running alongside.
 */
async function freePortPair(): Promise<number> {
  const { low, high } = ephemeralRange();
  const [from, to] = low > 12_000 ? [10_000, low - 2] : [high + 1, 65_533];
  for (let i = 0; i < 200; i++) {
    const p = from + Math.floor(Math.random() * (to - from));
    if (await portFree(p) && await portFree(p + 1)) return p;
  }
  throw new Error(`no two consecutive free loopback ports in ${from}-${to + 1}`);
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));
}

async function stopChild(child: ChildProcess, graceful: () => void, ms = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  graceful();
  const done = exited(child);
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  await done;
  clearTimeout(timer);
}

class SwtpmProcess {
  child: ChildProcess | undefined;
  stderr = '';
  constructor(readonly stateDir: string, public port: number) {}

  get ctrlPort(): number {
    return this.port + 1;
  }

  async start(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const child = spawn('swtpm', [
        'socket', '--tpm2',
        '--tpmstate', `dir=${this.stateDir}`,
        '--server', `type=tcp,port=${this.port},bindaddr=127.0.0.1`,
        '--ctrl', `type=tcp,port=${this.ctrlPort},bindaddr=127.0.0.1`,
        // Power on and TPM2_Startup(CLEAR) by itself, as firmware does on a device.
        '--flags', 'not-need-init,startup-clear',
      ], { stdio: ['ignore', 'ignore', 'pipe'] });
      track(child);
      this.stderr = '';
      child.stderr?.on('data', (d: Buffer) => { this.stderr = (this.stderr + d.toString()).slice(-4000); });
      this.child = child;
      for (let i = 0; i < 200; i++) {
        if (child.exitCode !== null) break;
        if (await canConnect(this.ctrlPort)) return;
        await delay(25);
      }
      child.kill('SIGKILL');
      await exited(child);
      if (attempt >= 2) throw new Error(`swtpm did not start: ${this.stderr.trim()}`);
      // Most likely a port taken between freePortPair() and bind: pick new ones.
      this.port = await freePortPair();
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child === undefined) return;
    // CMD_SHUTDOWN on the control channel: swtpm saves its state and exits.
    await stopChild(child, () => {
      const r = spawnSync('swtpm_ioctl', ['--tcp', `127.0.0.1:${this.ctrlPort}`, '-s'], { encoding: 'utf8', timeout: 5000 });
      if (r.status !== 0) child.kill('SIGTERM');
    });
    this.child = undefined;
  }
}

/** Whether a Unix socket accepts a connection now. */
function accepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

class ResourceManager {
  dbus: ChildProcess | undefined;
  abrmd: ChildProcess | undefined;
  readonly busName = 'com.vitalseal.test.Tabrmd';
  constructor(readonly dir: string) {}

  get address(): string {
    return `unix:path=${join(this.dir, 'bus.sock')}`;
  }

  get tcti(): string {
    return `tabrmd:bus_name=${this.busName},bus_type=session`;
  }

  async startBus(): Promise<void> {
    need('dbus-daemon', 'dbus');
    mkdirSync(this.dir, { recursive: true });
    const conf = join(this.dir, 'bus.conf');
    // A private session bus only this test's processes know the address of.
    writeFileSync(conf, `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>${this.address}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`);
    const child = spawn('dbus-daemon', [`--config-file=${conf}`, '--nofork', '--nopidfile'], { stdio: 'ignore' });
    track(child);
    this.dbus = child;
    // The socket file appears at bind(), before listen(): a client connecting in between (a loaded
    // machine widens the gap) is refused, and tpm2-abrmd gives up at once. Ready means accepting.
    const sock = join(this.dir, 'bus.sock');
    const end = Date.now() + 10_000;
    while (!(existsSync(sock) && await accepts(sock))) {
      if (child.exitCode !== null) throw new Error('dbus-daemon exited at start');
      if (Date.now() > end) throw new Error('dbus-daemon: its socket did not accept connections within 10 s');
      await delay(25);
    }
  }

  async startBroker(swtpmTcti: string, maxTransients: number | undefined): Promise<void> {
    need('tpm2-abrmd', 'tpm2-abrmd');
    const args = ['--session', `--dbus-name=${this.busName}`, `--tcti=${swtpmTcti}`, '--flush-all'];
    if (maxTransients !== undefined) args.push(`--max-transients=${maxTransients}`);
    if (process.getuid?.() === 0) args.push('--allow-root');
    let log = '';
    const child = spawn('tpm2-abrmd', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DBUS_SESSION_BUS_ADDRESS: this.address } });
    track(child);
    child.stdout?.on('data', (d: Buffer) => { log = (log + d.toString()).slice(-4000); });
    child.stderr?.on('data', (d: Buffer) => { log = (log + d.toString()).slice(-4000); });
    this.abrmd = child;
    for (let i = 0; i < 200; i++) {
      if (child.exitCode !== null) break;
      const r = spawnSync('tpm2_getrandom', ['-T', this.tcti, '1'], {
        encoding: 'utf8', env: { ...process.env, DBUS_SESSION_BUS_ADDRESS: this.address, TSS2_LOG: 'all+NONE' }, timeout: 5000,
      });
      if (r.status === 0) return;
      await delay(50);
    }
    child.kill('SIGKILL');
    throw new Error(`tpm2-abrmd did not start (install the Debian packages tpm2-abrmd and libtss2-tcti-tabrmd0): ${log.trim()}`);
  }

  async stopBroker(): Promise<void> {
    if (this.abrmd !== undefined) await stopChild(this.abrmd, () => this.abrmd?.kill('SIGTERM'));
    this.abrmd = undefined;
  }

  async stopBus(): Promise<void> {
    if (this.dbus !== undefined) await stopChild(this.dbus, () => this.dbus?.kill('SIGTERM'));
    this.dbus = undefined;
  }
}

/** Starts swtpm (and, if asked, tpm2-abrmd on a private D-Bus). */
export async function startSwtpm(opts: SwtpmOptions = {}): Promise<Swtpm> {
  need('swtpm', 'swtpm');
  need('swtpm_ioctl', 'swtpm-tools');
  const ownDir = opts.stateDir === undefined;
  const base = mkdtempSync(join(tmpdir(), 'vitalseal-swtpm-'));
  const stateDir = opts.stateDir ?? join(base, 'state');
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const tpm = new SwtpmProcess(stateDir, await freePortPair());
  const rm = opts.resourceManager === true ? new ResourceManager(join(base, 'rm')) : undefined;
  let maxTransients = opts.maxTransients;
  const cleanupDirs = () => {
    rmSync(base, { recursive: true, force: true });
    if (ownDir) rmSync(stateDir, { recursive: true, force: true });
  };
  const directTcti = () => `swtpm:host=127.0.0.1,port=${tpm.port}`;
  try {
    await tpm.start();
    if (rm !== undefined) {
      await rm.startBus();
      await rm.startBroker(directTcti(), maxTransients);
    }
  } catch (e) {
    await rm?.stopBroker();
    await rm?.stopBus();
    await tpm.stop();
    cleanupDirs();
    throw e;
  }
  let stopped = false;
  const handle: Swtpm = {
    get tcti() {
      return rm?.tcti ?? directTcti();
    },
    get directTcti() {
      return directTcti();
    },
    env: rm === undefined ? {} : { DBUS_SESSION_BUS_ADDRESS: rm.address },
    get port() {
      return tpm.port;
    },
    get ctrlPort() {
      return tpm.ctrlPort;
    },
    stateDir,
    async restart(next?: { readonly maxTransients?: number | undefined }) {
      if (next !== undefined) maxTransients = next.maxTransients;
      await rm?.stopBroker();
      await tpm.stop();
      await tpm.start();
      await rm?.startBroker(directTcti(), maxTransients);
    },
    async down() {
      await rm?.stopBroker();
      await tpm.stop();
    },
    async up() {
      if (tpm.child !== undefined) return;
      await tpm.start();
      await rm?.startBroker(directTcti(), maxTransients);
    },
    async resetState() {
      await rm?.stopBroker();
      await tpm.stop();
      for (const f of readdirSync(stateDir)) rmSync(join(stateDir, f), { recursive: true, force: true });
      await tpm.start();
      await rm?.startBroker(directTcti(), maxTransients);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await rm?.stopBroker();
      await rm?.stopBus();
      await tpm.stop();
      cleanupDirs();
    },
  };
  return handle;
}

export interface SwtpmVmOptions {
  /** Use this state directory (kept on stop) instead of a fresh one (removed on stop). */
  readonly stateDir?: string;
}

/** swtpm as a virtual machine's TPM: QEMU's `-tpmdev emulator` talks to its control socket. */
export interface SwtpmForVm {
  /** The control channel's UNIX socket, for `-chardev socket,id=chrtpm,path=...`. */
  readonly ctrlSocket: string;
  readonly stateDir: string;
  /** swtpm's log (errors only), for a failure report. */
  log(): string;
  /** Resolves with swtpm's exit code when it ends (it ends by itself once QEMU disconnects). */
  readonly exited: Promise<number | null>;
  /** Ends swtpm if it still runs; removes the state directory unless the caller gave one. */
  stop(): Promise<void>;
}

/**
 * Starts swtpm for a QEMU virtual machine: control channel on a UNIX socket (mode 0600) in a fresh
 * directory, no TCP port. QEMU connects to it, hands swtpm the data channel over it and sends
 * CMD_INIT itself, so swtpm is not told to start up on its own (unlike `startSwtpm`): the guest
 * kernel sends TPM2_Startup as firmware would. `--terminate` makes swtpm exit when QEMU
 * disconnects, so a crashed VM leaves no simulator behind.
 *
 * QEMU: `-chardev socket,id=chrtpm,path=${ctrlSocket} -tpmdev emulator,id=tpm0,chardev=chrtpm
 *        -device tpm-tis-device,tpmdev=tpm0` (aarch64 virt) or `-device tpm-tis,...` (x86).
 *
 * @example
 *   const tpm = await startSwtpmForVm();
 *   const qemu = spawn('qemu-system-aarch64', [...,'-chardev', `socket,id=chrtpm,path=${tpm.ctrlSocket}`, ...]);
 *   ...
 *   await tpm.stop();
 */
export async function startSwtpmForVm(opts: SwtpmVmOptions = {}): Promise<SwtpmForVm> {
  need('swtpm', 'swtpm');
  const base = mkdtempSync(join(tmpdir(), 'vitalseal-swtpm-vm-'));
  const stateDir = opts.stateDir ?? join(base, 'state');
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const ctrlSocket = join(base, 'ctrl.sock');
  const logFile = join(base, 'swtpm.log');
  const cleanup = () => {
    rmSync(base, { recursive: true, force: true });
  };
  const child = spawn('swtpm', [
    'socket', '--tpm2',
    '--tpmstate', `dir=${stateDir}`,
    '--ctrl', `type=unixio,path=${ctrlSocket},mode=0600`,
    '--log', `file=${logFile},level=1`,
    '--terminate',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  track(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
  const exited = new Promise<number | null>((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
  const readLog = () => {
    let text = stderr;
    try {
      text += readFileSync(logFile, 'utf8');
    } catch {
      // no log written yet
    }
    return text.slice(-4000).trim();
  };
  // Readiness is the socket file with its final mode (swtpm binds, then chmods it to 0600): a probe
  // connection would count as QEMU's and, closed, end swtpm.
  const ready = () => {
    try {
      return (statSync(ctrlSocket).mode & 0o777) === 0o600;
    } catch {
      return false;
    }
  };
  for (let i = 0; i < 200 && !ready(); i++) {
    if (child.exitCode !== null) break;
    await delay(25);
  }
  if (!existsSync(ctrlSocket)) {
    child.kill('SIGKILL');
    await exited;
    const why = readLog();
    cleanup();
    if (opts.stateDir === undefined) rmSync(stateDir, { recursive: true, force: true });
    throw new Error(`swtpm did not start: ${why}`);
  }
  let stopped = false;
  return {
    ctrlSocket,
    stateDir,
    log: readLog,
    exited,
    async stop() {
      if (stopped) return;
      stopped = true;
      // swtpm writes the TPM's permanent state as it changes, so SIGTERM loses nothing a power cut would not.
      await stopChild(child, () => child.kill('SIGTERM'));
      cleanup();
      if (opts.stateDir === undefined) rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
