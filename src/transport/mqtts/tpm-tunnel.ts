/**
 * TLS with a device key that never leaves the TPM: the connection runs in a child process whose
 * OpenSSL loads the `tpm2` provider (tpm2-openssl), so CertificateVerify is signed by TPM2_Sign;
 * this process keeps the MQTT session and sees only plaintext MQTT bytes, relayed over IPC.
 *
 * Why a child process: node:tls has no hook for an external signer, and Node 20 bundles OpenSSL 3
 * without engines, so the provider must be loaded into the process's OpenSSL at start-up. In that
 * process every algorithm fetch prefers the TPM (`default_properties = ?provider=tpm2`): software
 * P-256 key generation then fails, and without excluding the TPM's RNG Node hangs or aborts at
 * start (../shared/notes/keystores.md). The agent's own crypto (COSE, X25519, HKDF, ChaCha20)
 * must not live there; only the TLS connection does.
 *
 * The key: the device identity key made by the TPM key store (FAPI, under the persistent SRK),
 * expressed as a TSS2 PRIVATE KEY PEM (`TpmKeyStore.loadableKey`): its public and TPM-wrapped
 * private blobs, which tpm2-openssl loads with TPM2_Load under the same SRK. The same key signs the
 * device's CSR, audit checkpoints and DTLS handshakes through the store's Signer.
 *
 * The child needs a TCTI that several clients may share (`/dev/tpmrm0` on a device, tpm2-abrmd in
 * tests): the agent's FAPI context and the child's OpenSSL both talk to the TPM.
 *
 * @example
 *   const key = await tpmStore.loadableKey('device-identity');
 *   const tls = tpmTls({ certChainPem, key, trust });
 *   const uplink = createMqttsUplink({ deviceId: 'bed-7', host, port, tls });
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join } from 'node:path';
import { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { validateChain } from '../../pki/validate.ts';
import type { TpmLoadableKey } from '../../keystore/tpm/store.ts';
import { systemClock, type Clock } from '../../util/clock.ts';
import { ApiMisuse, CertificateError, KeyStoreError, TransportError, type VitalsealError } from '../../util/errors.ts';
import type { TlsConnection, TlsConnector, TlsTarget } from './connector.ts';
import { findTpm2Provider, tpmRmHint } from './tpm2-provider.ts';
import { mapConnectionError, rootsPem, type MqttsTrust, type TlsSessionInfo } from './tls.ts';
import { MAX_CHUNK, parseToParent, type ToChild, type ToParent, type WireError } from './tunnel-protocol.ts';

export interface TpmTlsOptions {
  /** The device certificate and its issuing CA, PEM. */
  readonly certChainPem: string;
  /** From `TpmKeyStore.loadableKey(name)`. */
  readonly key: TpmLoadableKey;
  readonly trust: MqttsTrust;
  readonly clock?: Clock;
  /** Overrides the key's TCTI for the child (e.g. `device:/dev/tpmrm0`). */
  readonly tcti?: string;
  /** Extra environment for the child (tpm2-abrmd's D-Bus address in tests). */
  readonly env?: Readonly<Record<string, string>>;
  /** tpm2-openssl's module (default: found under /usr/lib/<multiarch>/ossl-modules/). */
  readonly providerPath?: string;
  /**
   * Child start-up and key loading must finish within this (default 120 s). A hung child is still
   * caught; a slow one is not mistaken for it: loading Node and the provider took over 20 s on an
   * emulated Cortex-A72 (docs/hardware.md), and every retry would start it afresh.
   */
  readonly startTimeoutMs?: number;
}

/**
 * The child's OpenSSL configuration. Node reads the `nodejs_conf` section (not `openssl_conf`)
 * from `--openssl-config`. The provider is fetched first for every algorithm, except digests, the
 * RNG and ciphers, which stay in software: TLS record protection and transcript hashing through
 * the TPM would be slow, and the TPM's RNG hangs Node at start-up.
 */
export function tpm2OpensslConfig(providerPath: string): string {
  return [
    'nodejs_conf = vitalseal_init',
    '',
    '[vitalseal_init]',
    'providers = vitalseal_providers',
    'alg_section = vitalseal_properties',
    '',
    '[vitalseal_providers]',
    'default = vitalseal_default',
    'tpm2 = vitalseal_tpm2',
    '',
    '[vitalseal_default]',
    'activate = 1',
    '',
    '[vitalseal_tpm2]',
    `module = ${providerPath}`,
    'activate = 1',
    '',
    '[vitalseal_properties]',
    'default_properties = ?provider=tpm2,tpm2.digest!=yes,tpm2.rand!=yes,tpm2.cipher!=yes',
    '',
  ].join('\n');
}

/**
 * V8 options for the child, whatever this process runs with: the ones the Raspberry Pi unit gives
 * the agent (hardware/raspberry-pi/vitalseal-agent.service). The child only relays TLS records (the
 * cryptography is OpenSSL's, in native code), so a young generation allowed to grow towards 16 MiB
 * and helper threads for garbage collection and compilation buy it nothing. At one patient's rate
 * they made no measurable difference to its RSS (docs/agent.md "Footprint": most of the child is
 * Node itself); they bound what a burst, such as a backlog drained after an outage, can leave.
 */
export const TUNNEL_CHILD_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', '--single-threaded'];

/**
 * How the child loads TypeScript: the loader flags this process was started with, or, when it was
 * not started with one (the `vitalseal` command registers tsx from inside), tsx by absolute URL, so
 * the child starts whatever its working directory (a systemd unit's, a service account's home).
 */
function loaderArgs(childPath: string): string[] {
  const out: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (/^--(import|require|loader|experimental-loader)=/.test(a)) out.push(a);
    else if (/^(--import|--require|-r|--loader|--experimental-loader)$/.test(a) && i + 1 < argv.length) out.push(a, argv[++i] as string);
  }
  if (out.length === 0 && childPath.endsWith('.ts')) out.push(`--import=${import.meta.resolve('tsx')}`);
  return out;
}

function errorFrom(w: WireError): Error {
  const e = new Error(w.message);
  if (w.code !== undefined) Object.assign(e, { code: w.code });
  return e;
}

/**
 * The handshake failed on our side, in the TPM: the tpm2 provider could not load or use the key
 * (`ERR_SSL_CANNOT_LOAD_KEY`, "tpm2::..."). Seen after the TPM or its resource manager went away and
 * came back: the provider's TPM context in the child is dead for good ("esapi: Function called in
 * the wrong order"), so that child must be replaced.
 */
export function isTpmKeyFailure(w: WireError): boolean {
  return w.code === 'ERR_SSL_CANNOT_LOAD_KEY' || /:tpm2::/.test(w.message);
}

/** What a tunnelled connection checks the broker against, and the TCTI for error hints. */
interface TunnelChecks {
  readonly trust: MqttsTrust;
  readonly clock: Clock;
  readonly tcti: string;
}

/** One tunnelled TLS connection: a Duplex over the child's socket with the same id. */
class TunnelSocket extends Duplex {
  readonly id: number;
  readonly #child: ChildLink;
  readonly #target: TlsTarget;
  readonly #checks: TunnelChecks;
  #phase: 'handshaking' | 'open' | 'closed' = 'handshaking';
  #held: { data: Buffer | null; cb: (e?: Error | null) => void }[] = [];
  readonly secured: Promise<TlsSessionInfo>;
  #resolve!: (info: TlsSessionInfo) => void;
  #reject!: (e: VitalsealError) => void;

  constructor(id: number, child: ChildLink, target: TlsTarget, checks: TunnelChecks) {
    super({ allowHalfOpen: false });
    this.id = id;
    this.#child = child;
    this.#target = target;
    this.#checks = checks;
    this.secured = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.secured.catch(() => undefined);
  }

  get #where(): string {
    return `${this.#target.host}:${this.#target.port}`;
  }

  override _read(): void {
    // Data is pushed as the child relays it.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.#phase === 'handshaking') {
      // Nothing leaves before the broker's chain has passed our checks (onSecure).
      this.#held.push({ data: chunk, cb });
      return;
    }
    if (this.#phase === 'closed') {
      cb(new TransportError('connection-lost', `${this.#where}: the TLS connection is closed`));
      return;
    }
    this.#forward(chunk, cb);
  }

  #forward(chunk: Buffer, cb: (e?: Error | null) => void): void {
    for (let at = 0; at < chunk.length; at += MAX_CHUNK) {
      const last = at + MAX_CHUNK >= chunk.length;
      this.#child.send({ t: 'write', id: this.id, data: new Uint8Array(chunk.subarray(at, at + MAX_CHUNK)) }, last ? cb : undefined);
    }
    if (chunk.length === 0) cb();
  }

  override _final(cb: (e?: Error | null) => void): void {
    if (this.#phase === 'handshaking') {
      this.#held.push({ data: null, cb });
      return;
    }
    if (this.#phase === 'open') this.#child.send({ t: 'end', id: this.id });
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (this.#phase !== 'closed') {
      this.#phase = 'closed';
      this.#child.send({ t: 'destroy', id: this.id });
      this.#child.forget(this.id);
    }
    this.#reject(err instanceof Error ? mapConnectionError(err, this.#where) : new TransportError('connection-closed', `${this.#where}: closed before the handshake completed`));
    for (const h of this.#held.splice(0)) h.cb(err ?? new TransportError('connection-lost', `${this.#where}: closed`));
    cb(err);
  }

  onSecure(msg: Extract<ToParent, { t: 'secure' }>): void {
    if (this.#phase !== 'handshaking') return;
    const opts = this.#checks;
    try {
      // The same checks as the in-process path (fleet profile, server name, pins), on the chain the
      // child's OpenSSL has already verified against the pinned roots.
      validateChain([...msg.chain], {
        roots: opts.trust.roots,
        now: opts.clock.now(),
        purpose: 'server',
        expectedServerName: this.#target.serverName,
        ...(opts.trust.spkiPins === undefined ? {} : { spkiPins: opts.trust.spkiPins }),
      });
    } catch (e) {
      this.destroy(e instanceof CertificateError ? e : new CertificateError('malformed', String(e)));
      return;
    }
    this.#phase = 'open';
    this.#resolve({ protocol: msg.protocol, suite: msg.suite, group: msg.group });
    for (const h of this.#held.splice(0)) {
      if (h.data === null) {
        this.#child.send({ t: 'end', id: this.id });
        h.cb();
      } else {
        this.#forward(h.data, h.cb);
      }
    }
  }

  onData(data: Uint8Array): void {
    if (this.#phase === 'open') this.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }

  onEof(): void {
    if (this.#phase === 'open') this.push(null);
  }

  onClosed(error: WireError | undefined): void {
    if (this.#phase === 'closed') return;
    this.#phase = 'closed';
    this.#child.forget(this.id);
    if (error !== undefined && isTpmKeyFailure(error)) {
      this.destroy(new KeyStoreError('tpm-tls-unavailable', `${this.#where}: the TPM could not sign the TLS handshake with the device key (${error.message.trim()}); the next connection starts a new TLS process${tpmRmHint(this.#checks.tcti)}`, { cause: errorFrom(error) }));
    } else if (error !== undefined) {
      this.destroy(errorFrom(error));
    } else {
      this.#reject(new TransportError('connection-closed', `${this.#where}: closed before the handshake completed`));
      this.push(null);
      this.destroy();
    }
  }
}

/** The child process and its IPC channel. */
class ChildLink {
  readonly #child: ChildProcess;
  readonly #sockets = new Map<number, TunnelSocket>();
  #stderr = '';
  #exited = false;
  /** Set once the child's TPM context is known to be dead: no new connections go to it. */
  #retired = false;
  readonly configured: Promise<void>;
  readonly exited: Promise<void>;

  constructor(args: string[], env: NodeJS.ProcessEnv, configure: ToChild, opts: { startTimeoutMs: number }) {
    this.#child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'advanced', env });
    this.#child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.#stderr = (this.#stderr + d).slice(-4000);
    });
    this.exited = new Promise((resolve) => this.#child.once('exit', () => resolve()));
    // Never outlive this process: a child whose parent ended exits on 'disconnect'; this catches the rest.
    const reap = () => this.#child.kill('SIGKILL');
    process.once('exit', reap);
    this.#child.once('exit', () => process.removeListener('exit', reap));
    this.configured = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new KeyStoreError('tpm-tls-unavailable', `the TPM TLS process did not load the key within ${opts.startTimeoutMs} ms${this.#tail()}`));
        this.kill();
      }, opts.startTimeoutMs);
      timer.unref();
      this.#child.on('message', (raw: unknown) => {
        const msg = parseToParent(raw);
        if (msg === undefined) {
          this.#fail(new TransportError('tunnel-protocol', 'the TPM TLS process sent a malformed message'));
          return;
        }
        switch (msg.t) {
          case 'ready':
            this.send(configure);
            return;
          case 'configured':
            clearTimeout(timer);
            resolve();
            return;
          case 'failed':
            clearTimeout(timer);
            // Loading the key failed: the wrong TPM, no resource manager, a missing provider.
            reject(new KeyStoreError('tpm-tls-unavailable', `the TPM TLS process could not load the device key: ${msg.error.message}${this.#tail()}`, { cause: errorFrom(msg.error) }));
            this.kill();
            return;
          default:
            this.#dispatch(msg);
        }
      });
      this.#child.once('exit', (code, signal) => {
        this.#exited = true;
        clearTimeout(timer);
        const e = new TransportError('tunnel-exited', `the TPM TLS process exited (${signal ?? `code ${String(code)}`})${this.#tail()}`);
        reject(e);
        this.#fail(e);
      });
      this.#child.once('error', (e) => {
        clearTimeout(timer);
        reject(new TransportError('tunnel-exited', `the TPM TLS process could not start: ${e.message}`));
      });
    });
    this.configured.catch(() => undefined);
  }

  get alive(): boolean {
    return !this.#exited && !this.#retired;
  }

  #tail(): string {
    const t = this.#stderr.trim();
    return t.length === 0 ? '' : ` (stderr: ${t.split('\n').slice(-3).join(' | ').slice(0, 500)})`;
  }

  #dispatch(msg: Exclude<ToParent, { t: 'ready' | 'configured' | 'failed' }>): void {
    const socket = this.#sockets.get(msg.id);
    if (socket === undefined) return;
    switch (msg.t) {
      case 'secure':
        socket.onSecure(msg);
        return;
      case 'data':
        socket.onData(msg.data);
        return;
      case 'eof':
        socket.onEof();
        return;
      case 'closed':
        socket.onClosed(msg.error);
        if (msg.error !== undefined && isTpmKeyFailure(msg.error)) {
          // Its other connections (normally none) end with it; the next open() starts a new child.
          this.#retired = true;
          this.kill();
        }
        return;
      default: {
        const never: never = msg;
        throw new Error(`unhandled ${String(never)}`);
      }
    }
  }

  #fail(e: VitalsealError): void {
    for (const s of [...this.#sockets.values()]) s.destroy(e);
    this.#sockets.clear();
    if (!this.#exited) this.kill();
  }

  send(msg: ToChild, cb?: (e?: Error | null) => void): void {
    if (this.#exited || !this.#child.connected) {
      cb?.(new TransportError('tunnel-exited', 'the TPM TLS process is gone'));
      return;
    }
    this.#child.send(msg, (e) => cb?.(e ?? null));
  }

  /** Registers `socket` and asks the child to connect it. */
  attach(socket: TunnelSocket, target: TlsTarget): void {
    this.#sockets.set(socket.id, socket);
    this.#holdOpen();
    this.send({ t: 'open', id: socket.id, host: target.host, port: target.port, serverName: target.serverName });
  }

  forget(id: number): void {
    this.#sockets.delete(id);
    this.#holdOpen();
  }

  /** The child keeps this process alive only while it carries a connection (as a socket would). */
  #holdOpen(): void {
    if (this.#exited) return;
    if (this.#sockets.size > 0) {
      this.#child.ref();
      this.#child.channel?.ref();
    } else {
      this.#child.unref();
      this.#child.channel?.unref();
    }
  }

  /** SIGTERM, then SIGKILL if the child has not gone within 2 s (a TPM call can block it). */
  kill(): void {
    if (this.#exited) return;
    this.#child.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (!this.#exited) this.#child.kill('SIGKILL');
    }, 2000);
    timer.unref();
  }
}

/**
 * A `TlsConnector` whose TLS runs in a child process signing with the TPM. The child starts on the
 * first `open()` and serves every reconnect with the same SecureContext; if it dies, or a handshake
 * fails because the TPM could not use the key (its TPM context is dead after the TPM went away),
 * the next `open()` starts a new one.
 */
export function tpmTls(opts: TpmTlsOptions): TlsConnector {
  const clock = opts.clock ?? systemClock;
  const providerPath = opts.providerPath ?? findTpm2Provider();
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-tpm-tls-'));
  const configPath = join(dir, 'openssl.cnf');
  writeFileSync(configPath, tpm2OpensslConfig(providerPath), { mode: 0o600 });
  const childPath = fileURLToPath(new URL(`./tpm-tunnel-child${extname(fileURLToPath(import.meta.url))}`, import.meta.url));
  const configure: ToChild = { t: 'configure', keyPem: opts.key.pem, certChainPem: opts.certChainPem, caPem: rootsPem(opts.trust) };
  const tcti = opts.tcti ?? opts.key.tcti;
  let link: ChildLink | undefined;
  let nextId = 1;
  let closed = false;

  const start = (): ChildLink => {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...opts.env,
      ...(tcti.length > 0 ? { TPM2OPENSSL_TCTI: tcti } : {}),
      // The TSS's own logging would go to the child's stderr; errors reach us as typed errors.
      TSS2_LOG: process.env['TSS2_LOG'] ?? 'all+NONE',
    };
    delete env['NODE_OPTIONS'];
    delete env['OPENSSL_CONF'];
    return new ChildLink([...TUNNEL_CHILD_NODE_FLAGS, ...loaderArgs(childPath), `--openssl-config=${configPath}`, childPath], env, configure, { startTimeoutMs: opts.startTimeoutMs ?? 120_000 });
  };

  return {
    description: `TLS in a child process; the device key stays in the TPM (tpm2-openssl, TCTI ${tcti || 'default'})`,
    open(target): TlsConnection {
      if (closed) throw new ApiMisuse('closed', 'the TLS connector is closed');
      if (link === undefined || !link.alive) link = start();
      const current = link;
      const socket = new TunnelSocket(nextId++, current, target, { trust: opts.trust, clock, tcti });
      // mqtt.js gets the stream now; its writes are held until the child has started, connected
      // and the broker's chain has passed our checks.
      current.configured.then(
        () => {
          if (!socket.destroyed) current.attach(socket, target);
        },
        (e: unknown) => socket.destroy(e instanceof Error ? e : new Error(String(e))),
      );
      return { stream: socket, secured: socket.secured };
    },
    async close() {
      if (closed) return;
      closed = true;
      if (link !== undefined) {
        link.kill();
        await link.exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
