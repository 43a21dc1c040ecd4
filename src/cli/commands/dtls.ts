/**
 * `vitalseal dtls client|server`: DTLS 1.3 endpoints for operators, in the spirit of
 * `openssl s_client` / `s_server`. They print the negotiated version, suite, group, authentication
 * mode and peer identity, then copy stdin to the peer and the peer's data to stdout; a failed
 * handshake exits non-zero naming the alert.
 *
 *   vitalseal dtls server --port 5684 --cert server.pem --key server.key --ca fleet-ca.pem --require-client-cert
 *   vitalseal dtls client 127.0.0.1:5684 --ca fleet-ca.pem --cert device.pem --key device.key
 *   vitalseal dtls client 127.0.0.1:5684 --psk-identity device-17 --psk-hex 0011...
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { keyObjectSigner, type Signer } from '../../keystore/signer.ts';
import { fromHex, toHex, utf8, zeroize } from '../../util/bytes.ts';
import { VitalsealError } from '../../util/errors.ts';
import { alertFor, PeerAlert } from '../../dtls/errors.ts';
import type { CommonConfig, ExternalPsk, ResumptionTicket } from '../../dtls/config.ts';
import type { SessionInfo } from '../../dtls/connection.ts';
import { CIPHER_SUITE_NAMES, isCipherSuiteName } from '../../dtls/suites.ts';
import type { CipherSuiteName, NamedGroupName } from '../../dtls/messages/constants.ts';
import { X509PeerVerifier } from '../../dtls/peer-verifier.ts';
import { DtlsClientSocket, DtlsServer, type DtlsServerSession } from '../../dtls/udp.ts';
import { parse } from '../args.ts';
import { UsageError, type CliIo, type CommandModule } from '../types.ts';

const SUITE_ALIASES: Readonly<Record<string, CipherSuiteName>> = {
  'aes128gcm': 'TLS_AES_128_GCM_SHA256',
  'chacha20': 'TLS_CHACHA20_POLY1305_SHA256',
  'aes128ccm': 'TLS_AES_128_CCM_SHA256',
  'aes128ccm8': 'TLS_AES_128_CCM_8_SHA256',
};

const HELP = `usage:
  vitalseal dtls client HOST:PORT [options]
  vitalseal dtls server --port N [--host ADDR] [options] [--require-client-cert] [--echo] [--once]
options:
  --ca FILE            PEM root certificate(s) to verify the peer's certificate with
  --cert FILE          our PEM certificate chain (leaf first); --key FILE its PEM private key (P-256 or Ed25519)
  --psk-identity TEXT  external PSK identity (UTF-8); --psk-hex HEX its 32-byte key
  --suites LIST        comma-separated, in preference order: ${Object.keys(SUITE_ALIASES).join(', ')} (or TLS_* names)
  --groups LIST        comma-separated: x25519, secp256r1
  --cid N              client: ask for an N-byte Connection ID; server: hand out N-byte CIDs (0: none)
  --mtu N              largest datagram to send (default 1200)
  --server-name NAME   client: the name or address the server certificate must carry (default: HOST)
  --reconnect          client: after the first handshake, wait for a session ticket, close, and
                       resume with it (like s_client -reconnect); the resumed session carries the data
  --echo               server: send every message back to its sender
  --once               server: exit after the first session ends
The session summary goes to stderr; data read from the peer goes to stdout; stdin goes to the peer.
`;

const COMMON_OPTIONS = {
  ca: { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
  'psk-identity': { type: 'string' },
  'psk-hex': { type: 'string' },
  suites: { type: 'string' },
  groups: { type: 'string' },
  cid: { type: 'string' },
  mtu: { type: 'string' },
} as const;

type CommonValues = { [K in keyof typeof COMMON_OPTIONS]?: string | undefined };

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

function pemCertificates(path: string): Uint8Array[] {
  const pems = readText(path, 'certificate file').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (pems.length === 0) throw new UsageError(`${path} holds no PEM certificate`);
  return pems.map((p) => new Uint8Array(new X509Certificate(p).raw));
}

function signerFrom(path: string): Signer {
  try {
    return keyObjectSigner(createPrivateKey(readText(path, 'key file')));
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${path}: not a P-256 or Ed25519 private key in PEM`);
  }
}

function intOption(value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in [${min}, ${max}]`);
  return n;
}

function common(v: CommonValues, purpose: 'server' | 'client', serverName?: string): CommonConfig & { psk?: ExternalPsk } {
  const out: { -readonly [K in keyof (CommonConfig & { psk?: ExternalPsk })]: (CommonConfig & { psk?: ExternalPsk })[K] } = {};
  if (v.suites !== undefined) {
    out.cipherSuites = v.suites.split(',').map((s) => {
      const name = SUITE_ALIASES[s.trim().toLowerCase()] ?? s.trim();
      if (!isCipherSuiteName(name)) throw new UsageError(`unknown suite ${s}; one of ${Object.keys(SUITE_ALIASES).join(', ')} or ${CIPHER_SUITE_NAMES.join(', ')}`);
      return name;
    });
  }
  if (v.groups !== undefined) {
    out.groups = v.groups.split(',').map((g) => {
      const name = g.trim();
      if (name !== 'x25519' && name !== 'secp256r1') throw new UsageError(`unknown group ${g}; x25519 or secp256r1`);
      return name as NamedGroupName;
    });
  }
  const mtu = intOption(v.mtu, 'mtu', 256, 65507);
  if (mtu !== undefined) out.mtu = mtu;
  if ((v.cert === undefined) !== (v.key === undefined)) throw new UsageError('--cert and --key go together');
  if (v.cert !== undefined && v.key !== undefined) {
    out.certificateChain = pemCertificates(v.cert);
    out.signer = signerFrom(v.key);
  }
  if (v.ca !== undefined) {
    const opts = serverName === undefined ? {} : { serverName };
    out.verifier = new X509PeerVerifier({ roots: [readText(v.ca, 'CA file')], purpose, ...opts });
  }
  if ((v['psk-identity'] === undefined) !== (v['psk-hex'] === undefined)) throw new UsageError('--psk-identity and --psk-hex go together');
  if (v['psk-identity'] !== undefined && v['psk-hex'] !== undefined) {
    let key: Uint8Array;
    try {
      key = fromHex(v['psk-hex']);
    } catch {
      throw new UsageError('--psk-hex is not hex');
    }
    if (key.length !== 32) throw new UsageError(`--psk-hex must be 32 bytes (64 hex digits), got ${key.length}`);
    out.psk = { identity: utf8(v['psk-identity']), key };
  }
  return out;
}

function describe(role: string, info: SessionInfo, peerLabel: string): string {
  const peer = info.peer !== undefined ? `peer ${info.peer.subject.replace(/\n/g, ', ')} (SPKI sha256 ${info.peer.spkiSha256.slice(0, 16)}…)`
    : info.pskIdentity !== undefined ? `PSK identity ${JSON.stringify(new TextDecoder().decode(info.pskIdentity))}` : 'peer not authenticated by certificate';
  const cid = info.receiveCid.length + info.sendCid.length > 0 ? `, CID in ${toHex(info.receiveCid) || '-'} out ${toHex(info.sendCid) || '-'}` : '';
  return `${role}: ${info.version} with ${peerLabel}: ${info.suite}, ${info.group ?? 'no (EC)DHE'}, auth ${info.authMode}, ${peer}${cid}\n`;
}

/** An open stdin would keep the process alive after the session ends. */
function stopReading(io: CliIo): void {
  const stdin = io.stdin as NodeJS.ReadableStream & { destroy?: () => void };
  stdin.destroy?.();
}

/** Prints the failure with its code and the alert: the one the peer sent, or the one we sent it. */
function failure(io: CliIo, what: string, e: unknown): number {
  const code = e instanceof VitalsealError ? e.code : 'error';
  const sent = e instanceof PeerAlert ? undefined : alertFor(e);
  const alert = e instanceof PeerAlert ? ` (alert received: ${e.code})` : sent === undefined ? '' : ` (alert sent: ${sent})`;
  io.stderr.write(`vitalseal dtls ${what}: ${e instanceof Error ? e.message : String(e)} [${code}]${alert}\n`);
  return 1;
}

async function client(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, { ...COMMON_OPTIONS, 'server-name': { type: 'string' }, reconnect: { type: 'boolean' } });
  const target = positionals[0];
  if (target === undefined || positionals.length > 1) throw new UsageError('client needs one HOST:PORT');
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(target);
  if (m === null) throw new UsageError(`not HOST:PORT: ${target}`);
  const host = m[1] as string;
  const port = intOption(m[2], 'port', 1, 65535) as number;
  const serverName = values['server-name'] ?? host;
  const config = common(values, 'server', serverName);
  const cid = intOption(values.cid, 'cid', 0, 255);
  if (config.verifier === undefined && config.psk === undefined) throw new UsageError('client needs --ca (to verify the server) or --psk-identity/--psk-hex');
  const options = { host, port, ...config, ...(cid === undefined ? {} : { connectionId: cid }) };
  let socket: DtlsClientSocket;
  try {
    socket = await DtlsClientSocket.connect(options);
    if (values.reconnect === true) {
      io.stderr.write(describe('client', socket.info, target));
      const first = socket;
      const ticket = await new Promise<ResumptionTicket | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), 2000);
        first.once('session-ticket', (t) => {
          clearTimeout(timer);
          resolve(t);
        });
      });
      await first.close();
      if (ticket === undefined) throw new UsageError('--reconnect: the server sent no session ticket within 2 s');
      socket = await DtlsClientSocket.connect({ ...options, resumption: ticket });
    }
  } catch (e) {
    if (e instanceof UsageError) throw e;
    return failure(io, 'client: handshake failed', e);
  } finally {
    if (config.psk !== undefined) zeroize(config.psk.key);
  }
  io.stderr.write(describe('client', socket.info, target));
  socket.on('keys-updated', (direction, epoch) => io.stderr.write(`client: keys updated (${direction}, epoch ${epoch})\n`));
  let failed: unknown;
  const done = new Promise<void>((resolve) => {
    socket.on('data', (d) => io.stdout.write(d));
    socket.on('error', (e) => (failed = e));
    socket.on('close', () => resolve());
  });
  const pump = (async () => {
    for await (const chunk of io.stdin) {
      const b = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
      for (let at = 0; at < b.length; at += socket.maxPayload) await socket.send(new Uint8Array(b.subarray(at, at + socket.maxPayload)));
    }
    // stdin ended: let replies in flight arrive, then close_notify.
    await new Promise((r) => setTimeout(r, 300));
    await socket.close();
  })();
  await Promise.race([done, pump.catch((e: unknown) => (failed = e))]);
  await socket.close().catch(() => undefined);
  stopReading(io);
  if (failed !== undefined) return failure(io, 'client', failed);
  return 0;
}

async function server(args: string[], io: CliIo): Promise<number> {
  const { values } = parse(args, {
    ...COMMON_OPTIONS,
    port: { type: 'string' },
    host: { type: 'string' },
    'require-client-cert': { type: 'boolean' },
    echo: { type: 'boolean' },
    once: { type: 'boolean' },
  });
  const port = intOption(values.port, 'port', 0, 65535);
  if (port === undefined) throw new UsageError('server needs --port N');
  const { psk, ...config } = common(values, 'client');
  const cid = intOption(values.cid, 'cid', 0, 255);
  if (config.certificateChain === undefined && psk === undefined) throw new UsageError('server needs --cert/--key or --psk-identity/--psk-hex');
  if (values['require-client-cert'] === true && config.verifier === undefined) throw new UsageError('--require-client-cert needs --ca');
  const pskIdentity = psk === undefined ? undefined : toHex(psk.identity);
  let srv: DtlsServer;
  try {
    srv = await DtlsServer.listen({
      ...config,
      host: values.host ?? '127.0.0.1',
      port,
      requireClientCertificate: values['require-client-cert'] === true,
      ...(psk === undefined ? {} : { pskLookup: (id: Uint8Array) => (toHex(id) === pskIdentity ? psk.key : undefined) }),
      ...(cid === undefined ? {} : { connectionIdLength: cid }),
    });
  } catch (e) {
    return failure(io, 'server', e);
  }
  const a = srv.address();
  io.stderr.write(`server: listening on ${a.address}:${a.port} (DTLS 1.3)\n`);
  const sessions = new Set<DtlsServerSession>();
  let stop: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  srv.on('handshake-error', (e, from) => io.stderr.write(`server: handshake with ${from.address}:${from.port} failed: ${e.message} [${e.code}]\n`));
  srv.on('session', (s) => {
    sessions.add(s);
    io.stderr.write(describe('server', s.info, `${s.peer.address}:${s.peer.port}`));
    s.on('data', (d) => {
      io.stdout.write(d);
      if (values.echo === true) void s.send(d).catch(() => undefined);
    });
    s.on('error', (e) => io.stderr.write(`server: session ${s.peer.address}:${s.peer.port} failed: ${e.message} [${e.code}]\n`));
    s.on('keys-updated', (direction, epoch) => io.stderr.write(`server: session ${s.peer.address}:${s.peer.port} keys updated (${direction}, epoch ${epoch})\n`));
    s.on('close', () => {
      sessions.delete(s);
      io.stderr.write(`server: session ${s.peer.address}:${s.peer.port} closed\n`);
      if (values.once === true) stop();
    });
  });
  const onSignal = () => stop();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  void (async () => {
    for await (const chunk of io.stdin) {
      const b = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
      for (const s of sessions) await s.send(new Uint8Array(b)).catch(() => undefined);
    }
  })();
  await stopped;
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  await srv.close();
  stopReading(io);
  if (psk !== undefined) zeroize(psk.key);
  return 0;
}

export const command: CommandModule = {
  summary: 'DTLS 1.3 client and server (like openssl s_client/s_server)',
  async run(args, io) {
    const [sub, ...rest] = args;
    if (sub === undefined || sub === '--help' || sub === '-h' || rest.includes('--help')) {
      io.stdout.write(HELP);
      return sub === undefined ? 2 : 0;
    }
    switch (sub) {
      case 'client':
        return client(rest, io);
      case 'server':
        return server(rest, io);
      default:
        throw new UsageError(`unknown sub-command '${sub}'`);
    }
  },
};

