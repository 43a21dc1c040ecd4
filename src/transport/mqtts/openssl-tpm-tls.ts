/**
 * TLS with a device key that never leaves the TPM, run by `openssl s_client` with the `tpm2`
 * provider (tpm2-openssl): one s_client process per connection relays plaintext MQTT over its
 * stdin/stdout, and OpenSSL signs CertificateVerify with TPM2_Sign.
 *
 * Why another process: node:tls has no hook for an external signer, and the provider can only be
 * used by a process whose every algorithm fetch prefers the TPM (`TPM2_PROPERTY_QUERY`), where the
 * agent's own cryptography must not run. Why s_client: a second Node process costs ~54 MiB of RSS,
 * s_client with the provider ~12 MiB, which is what keeps an agent with its key in the TPM within
 * the device's memory budget (docs/agent.md, "With the device key in the TPM").
 *
 * How it is run: `-quiet` (s_client writes only the peer's data to stdout), `-no_ign_eof` (the end
 * of our writes closes the connection with close_notify), `-nocommands` (no line of MQTT is taken
 * for an interactive command), TLS 1.3 only, X25519 only, the pinned roots as the only CA file,
 * `-verify_return_error` with the server name (`-verify_hostname`/`-verify_ip`), `-propquery` as
 * above (TPM for the key operations, software for digests, the RNG and ciphers). `-msg` writes the
 * handshake to a FIFO in a private directory; `SClientTrace` reads the broker's chain and the
 * negotiated suite from it, and `validateChain` checks that chain again with our pins and fleet
 * profile before a byte of MQTT is written, as the in-process path does.
 *
 * The key file is a TSS2 PRIVATE KEY PEM (TPM-wrapped; it loads only in this TPM), written with
 * the certificates into a 0700 temporary directory that `close()` removes.
 *
 * @example
 *   const key = await readLoadableKeyWithTools(config, 'device-identity');
 *   const tls = opensslTpmTls({ certChainPem, key, trust });
 *   const uplink = createMqttsUplink({ deviceId: 'bed-7', host, port, tls });
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Duplex } from 'node:stream';
import type { TpmLoadableKey } from '../../keystore/tpm/store.ts';
import { pemDecode, pemEncode } from '../../pki/pem.ts';
import { validateServerChain } from '../../pki/node-tls.ts';
import { systemClock, type Clock } from '../../util/clock.ts';
import { ApiMisuse, CertificateError, DecodeError, KeyStoreError, TransportError, VitalsealError } from '../../util/errors.ts';
import type { TlsConnection, TlsConnector, TlsTarget } from './connector.ts';
import { SClientTrace } from './s-client-trace.ts';
import { isIpLiteral, mapConnectionError, rootsPem, type MqttsTrust, type TlsSessionInfo } from './tls.ts';
import { findTpm2Provider, TPM2_PROPERTY_QUERY, tpmRmHint } from './tpm2-provider.ts';

export interface OpensslTpmTlsOptions {
  /** The device certificate and its issuing CA, PEM (leaf first). */
  readonly certChainPem: string;
  /** From `readLoadableKeyWithTools` or `TpmKeyStore.loadableKey`. */
  readonly key: TpmLoadableKey;
  readonly trust: MqttsTrust;
  readonly clock?: Clock;
  /** Overrides the key's TCTI (e.g. `device:/dev/tpmrm0`). */
  readonly tcti?: string;
  /** Extra environment for s_client (tpm2-abrmd's D-Bus address in tests). */
  readonly env?: Readonly<Record<string, string>>;
  /** tpm2-openssl's module (default: found under /usr/lib/<multiarch>/ossl-modules/). */
  readonly providerPath?: string;
  /** The openssl program (default `openssl` on PATH). */
  readonly openssl?: string;
  /**
   * The handshake, including loading the key into the TPM, must finish within this (default
   * 60 s; an emulated board's TPM is slow, a hung one is still caught).
   */
  readonly handshakeTimeoutMs?: number;
}

/** X509_V_ERR_* numbers (OpenSSL's x509_vfy.h) as node:tls names them, for `mapConnectionError`. */
const VERIFY_ERRORS: Readonly<Record<number, string>> = {
  2: 'UNABLE_TO_GET_ISSUER_CERT',
  7: 'CERT_SIGNATURE_FAILURE',
  9: 'CERT_NOT_YET_VALID',
  10: 'CERT_HAS_EXPIRED',
  18: 'DEPTH_ZERO_SELF_SIGNED_CERT',
  19: 'SELF_SIGNED_CERT_IN_CHAIN',
  20: 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  21: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  23: 'CERT_REVOKED',
  24: 'INVALID_CA',
  25: 'PATH_LENGTH_EXCEEDED',
  26: 'INVALID_PURPOSE',
  62: 'ERR_TLS_CERT_ALTNAME_INVALID',
  64: 'ERR_TLS_CERT_ALTNAME_INVALID',
};

const ERRNO: Readonly<Record<number, string>> = {
  99: 'EADDRNOTAVAIL',
  101: 'ENETUNREACH',
  104: 'ECONNRESET',
  110: 'ETIMEDOUT',
  111: 'ECONNREFUSED',
  113: 'EHOSTUNREACH',
};

function coded(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * What s_client's stderr says went wrong, as the same typed errors the in-process path gives
 * (`mapConnectionError`), or a key store error when the TPM could not load or use the key.
 */
export function errorFromSClient(stderr: string, where: string, tcti: string): VitalsealError {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  // The provider's own errors first: with `?provider=tpm2` preferred, OpenSSL verifies the broker's
  // chain in the TPM too, so a TPM out of object slots shows as a "certificate signature failure"
  // whose cause is a `tpm2::` line.
  if (/:tpm2::|Could not read (client certificate )?private key|unable to load client certificate private key|key values mismatch|esys|tcti/i.test(stderr)) {
    const detail = lines.filter((l) => !/^depth=/.test(l)).slice(-3).join(' | ').slice(0, 400);
    return new KeyStoreError('tpm-tls-unavailable', `${where}: the TPM could not sign the TLS handshake with the device key (${detail})${tpmRmHint(tcti)}`);
  }
  const verify = /verify error:num=(\d+):(.*)/.exec(stderr);
  if (verify !== null) {
    const name = VERIFY_ERRORS[Number(verify[1])];
    if (name !== undefined) return mapConnectionError(coded((verify[2] as string).trim(), name), where);
    return new CertificateError('malformed', `the broker's certificate was refused by OpenSSL: ${(verify[2] as string).trim()}`);
  }
  const errno = /connect:errno=(\d+)/.exec(stderr);
  if (errno !== null) {
    const name = ERRNO[Number(errno[1])];
    if (name !== undefined) return mapConnectionError(coded(`connect errno ${errno[1] as string}`, name), where);
  }
  if (/BIO_lookup|Name or service not known|nodename nor servname/.test(stderr)) return mapConnectionError(coded('name resolution failed', 'ENOTFOUND'), where);
  // "<id>:error:<code>:SSL routines:<function>:<reason>:<file>:<line>:<detail>"
  const ssl = /:error:[0-9A-F]+:SSL routines:[^:]*:([^:]+):/.exec(stderr);
  if (ssl !== null) {
    const reason = (ssl[1] as string).trim();
    if (/\balert\b/.test(reason)) return mapConnectionError(coded(reason, 'EPROTO'), where);
    return mapConnectionError(coded(reason, `ERR_SSL_${reason.toUpperCase().replace(/[^A-Z0-9]+/g, '_')}`), where);
  }
  const tail = lines.slice(-2).join(' | ').slice(0, 300);
  return new TransportError('connection-failed', `${where}: TLS failed${tail === '' ? '' : ` (${tail})`}`);
}

interface Files {
  readonly dir: string;
  readonly key: string;
  readonly cert: string;
  readonly chain: string | undefined;
  readonly roots: string;
}

interface RelaySettings {
  readonly files: Files;
  readonly openssl: string;
  readonly providerPath: string;
  readonly env: NodeJS.ProcessEnv;
  readonly tcti: string;
  readonly trust: MqttsTrust;
  readonly clock: Clock;
  readonly handshakeTimeoutMs: number;
}

/** s_client's arguments for one connection; the trace goes to `fifo`. */
export function sClientArgs(s: RelaySettings, target: TlsTarget, fifo: string): string[] {
  const host = target.host.includes(':') ? `[${target.host}]` : target.host;
  const name = target.serverName;
  return [
    's_client', '-connect', `${host}:${target.port}`,
    // RFC 6066 §3: SNI carries DNS names only.
    ...(isIpLiteral(name) ? ['-noservername', '-verify_ip', name] : ['-servername', name, '-verify_hostname', name]),
    '-tls1_3', '-groups', 'X25519',
    '-quiet', '-no_ign_eof', '-nocommands', '-verify_quiet', '-verify_return_error',
    '-CAfile', s.files.roots,
    '-cert', s.files.cert, ...(s.files.chain === undefined ? [] : ['-cert_chain', s.files.chain]), '-key', s.files.key,
    '-provider-path', dirname(s.providerPath), '-provider', 'tpm2', '-provider', 'default', '-propquery', TPM2_PROPERTY_QUERY,
    '-msg', '-msgfile', fifo,
  ];
}

function makeFifo(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('mkfifo', ['-m', '600', path], (err) => (err === null ? resolve() : reject(new TransportError('connection-failed', `cannot make the TLS trace FIFO: ${err.message}`))));
  });
}

/** One connection: a Duplex over one s_client process. */
class RelaySocket extends Duplex {
  readonly #s: RelaySettings;
  readonly #target: TlsTarget;
  readonly #fifo: string;
  #child: ChildProcess | undefined;
  #trace: Socket | undefined;
  readonly #parser = new SClientTrace();
  #phase: 'starting' | 'handshaking' | 'open' | 'closed' = 'starting';
  #held: { data: Buffer | null; cb: (e?: Error | null) => void }[] = [];
  #early: Buffer[] = [];
  #stderr = '';
  #timer: NodeJS.Timeout | undefined;
  readonly secured: Promise<TlsSessionInfo>;
  #resolve!: (info: TlsSessionInfo) => void;
  #reject!: (e: VitalsealError) => void;

  constructor(s: RelaySettings, target: TlsTarget, fifo: string) {
    super({ allowHalfOpen: false });
    this.#s = s;
    this.#target = target;
    this.#fifo = fifo;
    this.secured = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.secured.catch(() => undefined);
    makeFifo(fifo).then(() => this.#start(), (e: unknown) => this.destroy(e as Error));
  }

  get #where(): string {
    return `${this.#target.host}:${this.#target.port}`;
  }

  #start(): void {
    if (this.#phase === 'closed') {
      rmSync(this.#fifo, { force: true });
      return;
    }
    // Read and write ends both held here: the open never blocks, and the reader never sees an end
    // of file between s_client's start and its first write.
    const fd = openSync(this.#fifo, constants.O_RDWR | constants.O_NONBLOCK);
    let trace: Socket;
    try {
      trace = new Socket({ fd, readable: true, writable: false });
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    this.#trace = trace;
    trace.setEncoding('latin1');
    trace.on('data', (text: string) => this.#onTrace(text));
    trace.on('error', () => undefined);
    const child = spawn(this.#s.openssl, sClientArgs(this.#s, this.#target, this.#fifo), { stdio: ['pipe', 'pipe', 'pipe'], env: this.#s.env });
    this.#child = child;
    this.#phase = 'handshaking';
    this.#timer = setTimeout(() => {
      this.destroy(new TransportError('timeout', `${this.#where}: the TLS handshake signed in the TPM did not finish within ${this.#s.handshakeTimeoutMs} ms`));
    }, this.#s.handshakeTimeoutMs);
    this.#timer.unref();
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.#stderr = (this.#stderr + d).slice(-4000);
    });
    child.stdout?.on('data', (d: Buffer) => {
      if (this.#phase === 'open') this.push(d);
      else if (this.#phase === 'handshaking') this.#early.push(d);
    });
    child.stdin?.on('error', () => undefined);
    child.once('error', (e) => {
      const missing = (e as NodeJS.ErrnoException).code === 'ENOENT';
      this.destroy(new TransportError('connection-failed', missing ? `${this.#s.openssl} not found: install the Debian package "openssl"` : `cannot start ${this.#s.openssl}: ${e.message}`));
    });
    // 'close': the process has exited and its stdout has been read to the end.
    child.once('close', (code, signal) => this.#onExit(code, signal));
  }

  #onTrace(text: string): void {
    if (this.#phase !== 'handshaking') return;
    try {
      this.#parser.push(text);
      if (!this.#parser.finished) return;
      const chain = this.#parser.chain;
      const session = this.#parser.session;
      // OpenSSL has verified the chain against the pinned roots and the name; these are the same
      // checks as the in-process path (fleet profile, server name, pins).
      validateServerChain(chain, this.#target.serverName, {
        roots: this.#s.trust.roots,
        clock: this.#s.clock,
        ...(this.#s.trust.spkiPins === undefined ? {} : { spkiPins: this.#s.trust.spkiPins }),
      });
      this.#open(session);
    } catch (e) {
      this.destroy(e instanceof CertificateError ? e : e instanceof DecodeError ? new TransportError('tls-trace', `${this.#where}: ${e.message}`) : new CertificateError('malformed', String(e)));
    }
  }

  #open(session: TlsSessionInfo): void {
    clearTimeout(this.#timer);
    this.#phase = 'open';
    // The trace has served its purpose; the FIFO is drained until the process ends.
    this.#resolve(session);
    for (const d of this.#early.splice(0)) this.push(d);
    for (const h of this.#held.splice(0)) {
      if (h.data === null) {
        this.#child?.stdin?.end();
        h.cb();
      } else {
        this.#forward(h.data, h.cb);
      }
    }
  }

  #onExit(code: number | null, signal: NodeJS.Signals | null): void {
    clearTimeout(this.#timer);
    if (this.#phase === 'closed') return;
    const failed = this.#stderr.includes(':error:') || /verify error/.test(this.#stderr);
    if (this.#phase === 'open' && !failed) {
      this.push(null);
      this.#finish();
      return;
    }
    const e = failed || this.#stderr.trim() !== ''
      ? errorFromSClient(this.#stderr, this.#where, this.#s.tcti)
      : new TransportError('connection-closed', `${this.#where}: the TLS process ended (${signal ?? `code ${String(code)}`}) ${this.#phase === 'open' ? 'during' : 'before the end of'} the handshake`);
    this.destroy(e);
  }

  override _read(): void {
    // Data is pushed as s_client writes it.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.#phase === 'open') this.#forward(chunk, cb);
    else if (this.#phase === 'closed') cb(new TransportError('connection-lost', `${this.#where}: the TLS connection is closed`));
    else this.#held.push({ data: chunk, cb });
  }

  #forward(chunk: Buffer, cb: (e?: Error | null) => void): void {
    const stdin = this.#child?.stdin;
    if (stdin === null || stdin === undefined || stdin.destroyed) {
      cb(new TransportError('connection-lost', `${this.#where}: the TLS process is gone`));
      return;
    }
    stdin.write(chunk, (e) => cb(e === null || e === undefined ? null : new TransportError('connection-lost', `${this.#where}: the TLS process is gone`)));
  }

  override _final(cb: (e?: Error | null) => void): void {
    if (this.#phase === 'open') {
      this.#child?.stdin?.end();
      cb();
    } else if (this.#phase === 'closed') {
      cb();
    } else {
      this.#held.push({ data: null, cb });
    }
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    const was = this.#phase;
    this.#phase = 'closed';
    clearTimeout(this.#timer);
    this.#reject(err instanceof VitalsealError ? err : err !== null ? mapConnectionError(err, this.#where) : new TransportError('connection-closed', `${this.#where}: closed before the handshake completed`));
    for (const h of this.#held.splice(0)) h.cb(err ?? new TransportError('connection-lost', `${this.#where}: closed`));
    const child = this.#child;
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const kill = setTimeout(() => child.kill('SIGKILL'), 2000);
      kill.unref();
      child.once('exit', () => clearTimeout(kill));
    }
    if (was !== 'starting') this.#finish();
    cb(err);
  }

  /** Releases the trace FIFO. */
  #finish(): void {
    this.#trace?.destroy();
    this.#trace = undefined;
    rmSync(this.#fifo, { force: true });
  }
}

function writeFiles(certChainPem: string, key: TpmLoadableKey, trust: MqttsTrust): Files {
  const certs = pemDecode(certChainPem, 'CERTIFICATE');
  const [leaf, ...rest] = certs;
  if (leaf === undefined) throw new ApiMisuse('bad-certificate', 'opensslTpmTls: certChainPem holds no CERTIFICATE');
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-tpm-tls-'));
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode: 0o600 });
    return p;
  };
  return {
    dir,
    key: file('key.pem', key.pem),
    cert: file('cert.pem', pemEncode('CERTIFICATE', leaf.der)),
    chain: rest.length === 0 ? undefined : file('chain.pem', rest.map((c) => pemEncode('CERTIFICATE', c.der)).join('')),
    roots: file('roots.pem', rootsPem(trust)),
  };
}

/**
 * A `TlsConnector` that runs each TLS connection in `openssl s_client`, signing in the TPM. No
 * process runs between connections.
 */
export function opensslTpmTls(opts: OpensslTpmTlsOptions): TlsConnector {
  const providerPath = opts.providerPath ?? findTpm2Provider();
  const tcti = opts.tcti ?? opts.key.tcti;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...opts.env,
    ...(tcti.length > 0 ? { TPM2OPENSSL_TCTI: tcti } : {}),
    // The TSS's own logging would go to stderr; failures reach the caller as typed errors.
    TSS2_LOG: process.env['TSS2_LOG'] ?? 'all+NONE',
  };
  delete env['OPENSSL_CONF'];
  const files = writeFiles(opts.certChainPem, opts.key, opts.trust);
  const settings: RelaySettings = {
    files, env, tcti, providerPath,
    openssl: opts.openssl ?? 'openssl',
    trust: opts.trust,
    clock: opts.clock ?? systemClock,
    handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 60_000,
  };
  const open = new Set<RelaySocket>();
  let nextId = 1;
  let closed = false;
  return {
    description: `TLS in openssl s_client; the device key stays in the TPM (tpm2-openssl, TCTI ${tcti || 'default'})`,
    open(target): TlsConnection {
      if (closed) throw new ApiMisuse('closed', 'the TLS connector is closed');
      const socket = new RelaySocket(settings, target, join(files.dir, `trace-${nextId++}`));
      open.add(socket);
      socket.once('close', () => open.delete(socket));
      return { stream: socket, secured: socket.secured };
    },
    async close() {
      if (closed) return;
      closed = true;
      await Promise.all([...open].map((s) => new Promise<void>((resolve) => {
        s.once('close', () => resolve());
        s.destroy();
      })));
      rmSync(files.dir, { recursive: true, force: true });
    },
  };
}
