/**
 * The server side of scripts/bench/dtls.bench.ts, run in its own process (forked with an IPC
 * channel): a vitalseal DTLS 1.3 server or, as the baselines, a Node TLS 1.3 server over TCP (mutual
 * authentication and session tickets on both) or a bare node:dgram socket with no security at all
 * (the ceiling UDP itself sets). Each acknowledges every `batchBytes` of payload received so the
 * client can measure throughput without overrunning anything.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { DtlsServer, type DtlsServerSession } from '../../src/dtls/udp.ts';

export interface PeerStart {
  readonly cmd: 'start';
  readonly mode: 'dtls' | 'tls' | 'udp';
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
  /** DTLS only: perform the cookie exchange for every handshake (the default, RFC 9147 §5.1). */
  readonly requireCookie?: boolean;
  /** DTLS only: the server's UDP socket (src/dtls/udp-link.ts); the product's default (`auto`) when unset. */
  readonly udp?: 'node' | 'batched';
}

export type PeerCommand = PeerStart | { readonly cmd: 'batch'; readonly bytes: number } | { readonly cmd: 'mem' } | { readonly cmd: 'cpu' } | { readonly cmd: 'stop' };

export interface PeerMemory {
  readonly heapUsed: number;
  readonly external: number;
  readonly rss: number;
  readonly sessions: number;
}

const send = (m: unknown) => process.send?.(m);
let batchBytes = 0;
const ACK = new Uint8Array([0x61]);

async function memory(sessions: number): Promise<PeerMemory> {
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 3; i++) {
    gc?.();
    await new Promise((r) => setImmediate(r));
  }
  const m = process.memoryUsage();
  return { heapUsed: m.heapUsed, external: m.external, rss: m.rss, sessions };
}

async function startDtls(s: PeerStart): Promise<{ port: number; sessions: () => number; stop: () => Promise<void> }> {
  const server = await DtlsServer.listen({
    host: '127.0.0.1',
    port: 0,
    certificateChain: [new Uint8Array(new X509Certificate(s.certPem).raw)],
    signer: keyObjectSigner(createPrivateKey(s.keyPem)),
    verifier: new X509PeerVerifier({ roots: [s.caPem], purpose: 'client' }),
    requireClientCertificate: true,
    requireCookie: s.requireCookie ?? true,
    ...(s.udp === undefined ? {} : { udp: s.udp }),
    cipherSuites: ['TLS_AES_128_GCM_SHA256'],
    limits: { maxSessions: 50_000, maxPendingHandshakes: 1_000, maxPendingPerAddress: 64 },
  });
  const counts = new WeakMap<DtlsServerSession, number>();
  server.on('session', (session) => {
    counts.set(session, 0);
    session.on('data', (d) => {
      const n = (counts.get(session) ?? 0) + d.length;
      if (batchBytes > 0 && n >= batchBytes) {
        counts.set(session, n - batchBytes);
        void session.send(ACK).catch(() => undefined);
      } else counts.set(session, n);
    });
  });
  return { port: server.address().port, sessions: () => server.endpoint.sessionCount, stop: () => server.close() };
}

async function startTls(s: PeerStart): Promise<{ port: number; sessions: () => number; stop: () => Promise<void> }> {
  const sockets = new Set<TLSSocket>();
  const server = createTlsServer({
    key: s.keyPem,
    cert: s.certPem,
    ca: s.caPem,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    ecdhCurve: 'X25519',
    ciphers: 'TLS_AES_128_GCM_SHA256',
  }, (socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    let n = 0;
    socket.on('data', (d: Buffer) => {
      n += d.length;
      while (batchBytes > 0 && n >= batchBytes) {
        n -= batchBytes;
        socket.write(ACK);
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('no TCP address');
  return {
    port: addr.port,
    sessions: () => sockets.size,
    stop: async () => {
      for (const sock of sockets) sock.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Bare UDP: counts payload bytes from its one client, as the DTLS server counts application data. */
async function startUdp(): Promise<{ port: number; sessions: () => number; stop: () => Promise<void> }> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  // The DTLS server's default kernel buffers (src/dtls/udp.ts socketBufferBytes).
  socket.setRecvBufferSize(1 << 20);
  socket.setSendBufferSize(1 << 20);
  let n = 0;
  socket.on('message', (msg, from) => {
    n += msg.length;
    while (batchBytes > 0 && n >= batchBytes) {
      n -= batchBytes;
      socket.send(ACK, from.port, from.address);
    }
  });
  return { port: socket.address().port, sessions: () => 0, stop: async () => void socket.close() };
}

let running: Awaited<ReturnType<typeof startDtls>> | undefined;
process.on('message', (m: PeerCommand) => {
  void (async () => {
    switch (m.cmd) {
      case 'start':
        running = m.mode === 'dtls' ? await startDtls(m) : m.mode === 'tls' ? await startTls(m) : await startUdp();
        send({ port: running.port });
        return;
      case 'batch':
        batchBytes = m.bytes;
        send({ ok: true });
        return;
      case 'mem':
        send(await memory(running?.sessions() ?? 0));
        return;
      case 'cpu':
        send(process.cpuUsage());
        return;
      case 'stop':
        await running?.stop();
        send({ ok: true });
        process.disconnect?.();
        return;
      default: {
        const never: never = m;
        throw new Error(`unknown command ${JSON.stringify(never)}`);
      }
    }
  })();
});
