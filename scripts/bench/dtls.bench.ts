/**
 * DTLS 1.3 against Node's own TLS 1.3 over TCP loopback (OpenSSL), measured in the same run with
 * the client here and each server in its own process (scripts/bench/dtls-peer.ts):
 * - handshake latency and handshakes/s with mutual authentication (P-256 certificates, X25519), and
 *   with resumption (session tickets);
 * - application-data throughput in 200-byte and 1 KiB records (AES-128-GCM on both sides), also
 *   against bare node:dgram carrying the same payloads in the same datagrams with no security at
 *   all (the ceiling a UDP transport in Node can reach), at two PMTUs: the product default (1200
 *   bytes of UDP payload, what a device on an Ethernet/Wi-Fi path uses) and, as an explicitly
 *   configured option, the loopback interface's (65,507 bytes). Both DTLS ends use the product's
 *   default UDP socket (`udp: 'auto'`: batched system calls, src/net/batched-udp, on 64-bit Linux;
 *   node:dgram elsewhere); at the default PMTU once more with both on node:dgram (`udp: 'node'`).
 *   The target row is the default socket against the server that served every handshake phase
 *   before, as Node's TLS server did; the same socket against a server that has served only the
 *   measuring connection is reported beside it (a server whose young generation grew over
 *   thousands of handshakes spent twice the CPU a record until the ingest's node options capped
 *   it, docs/dtls.md), as are the node:dgram server (fresh as well) and the loopback PMTU (on the
 *   server after the handshake phases);
 * - server memory per established idle session with 10,000 sessions.
 * Rounds interleave candidate and baseline so drift hits both alike; medians are reported. Every
 * server process, Node's TLS and bare UDP included, runs with the node options the product's DTLS
 * server runs with in the ingest (src/ingest/node-options.ts): neither side is measured with a
 * heap tuned differently.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import type { ClientConfig, ResumptionTicket } from '../../src/dtls/config.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { DtlsClientSocket, type ClientSocketOptions } from '../../src/dtls/udp.ts';
import { resolveIo } from '../../src/dtls/udp-link.ts';
import { issueLeaf, makeCa } from '../../test/dtls/support/pki.ts';
import { keyedContextStatus } from '../../src/crypto/keyed.ts';
import { INGEST_NODE_OPTIONS } from '../../src/ingest/node-options.ts';
import { median } from './measure.ts';
import type { PeerCommand, PeerMemory } from './dtls-peer.ts';
import type { BenchContext, BenchModule, BenchResult } from './types.ts';

const PEER = fileURLToPath(new URL('./dtls-peer.ts', import.meta.url));
/** Longer than any command takes (opening 10,000 sessions is the client's work, not a command). */
const PEER_TIMEOUT_MS = 120_000;
/** A handshake or a session ticket that has not come by then will not come: the run fails, naming it. */
const STEP_TIMEOUT_MS = 30_000;

function within<T>(p: Promise<T>, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not complete within ${STEP_TIMEOUT_MS / 1000} s`)), STEP_TIMEOUT_MS);
    p.then((v) => {
      clearTimeout(timer);
      resolve(v);
    }, (e: unknown) => {
      clearTimeout(timer);
      reject(e instanceof Error ? e : new Error(String(e)));
    });
  });
}
const HOST = '127.0.0.1';
/** What `udp: 'auto'` (the default) picks in this process: batched system calls on 64-bit Linux. */
const DEFAULT_UDP = resolveIo(undefined);
/** The product's default `mtu` (src/dtls/config.ts): UDP payload that fits any IPv6 path. */
const DEFAULT_MTU = 1200;
/** The loopback interface's MTU (65,536) less IPv4 and UDP headers, capped at UDP's 65,507. */
const LOOPBACK_MTU = 65_507;

class Peer {
  readonly #child: ChildProcess;
  #queue: Promise<unknown> = Promise.resolve();
  #exited: Error | undefined;
  #pending: ((e: Error) => void) | undefined;
  constructor() {
    this.#child = fork(PEER, [], { execArgv: ['--import', 'tsx', '--expose-gc', ...INGEST_NODE_OPTIONS], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.#child.once('exit', (code) => {
      this.#exited = new Error(`bench peer exited (${code})`);
      this.#pending?.(this.#exited);
    });
  }
  request<T>(cmd: PeerCommand): Promise<T> {
    const next = this.#queue.then(() => new Promise<T>((resolve, reject) => {
      if (this.#exited !== undefined) return reject(this.#exited);
      this.#pending = reject;
      // A peer that never answers fails the run with the command named, rather than hanging it.
      const timer = setTimeout(() => reject(new Error(`bench peer did not answer '${cmd.cmd}' within ${PEER_TIMEOUT_MS / 1000} s`)), PEER_TIMEOUT_MS);
      this.#child.once('message', (m) => {
        clearTimeout(timer);
        resolve(m as T);
      });
      this.#child.send(cmd);
    }));
    this.#queue = next.catch(() => undefined);
    return next;
  }
  kill(): void {
    this.#child.kill();
  }
}

interface Side {
  readonly name: string;
  handshake(): Promise<void>;
  resume(): Promise<void>;
  open(): Promise<Conn>;
}

interface Conn {
  /** Sends `count` copies of `record` (the server acknowledges every batch with one byte). */
  send(record: Uint8Array, count: number): Promise<void>;
  /** Resolves true once one more batch has been acknowledged, false if none came in time. */
  acked(): Promise<boolean>;
  close(): Promise<void>;
}

/** Counts one-byte acknowledgements and hands them to whoever waits. */
class Acks {
  #count = 0;
  #waiters: (() => void)[] = [];
  add(n: number): void {
    this.#count += n;
    while (this.#count > 0 && this.#waiters.length > 0) {
      this.#count--;
      (this.#waiters.shift() as () => void)();
    }
  }
  /** Resolves true for an acknowledged batch, false when none came within `timeoutMs` (UDP lost some). */
  next(timeoutMs = 500): Promise<boolean> {
    if (this.#count > 0) {
      this.#count--;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const waiter = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        resolve(false);
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

/** Sequential handshakes for `windowMs`: the median latency. */
async function latency(fn: () => Promise<void>, windowMs: number): Promise<number> {
  const xs: number[] = [];
  const end = performance.now() + windowMs;
  while (performance.now() < end || xs.length < 5) xs.push(await timed(fn));
  return median(xs);
}

/** `concurrency` loops of handshakes for `windowMs`: completed per second. */
async function rate(fn: () => Promise<void>, windowMs: number, concurrency = 8): Promise<number> {
  let done = 0;
  const start = performance.now();
  const end = start + windowMs;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      await fn();
      done++;
    }
  }));
  return (done * 1000) / (performance.now() - start);
}

/**
 * Batches of 32 records with up to 2 batches unacknowledged (the same flow control for both sides).
 * Only acknowledged batches count; a batch whose acknowledgement does not come (a UDP loss) is
 * written off after 500 ms and reported in `lost`.
 */
async function throughput(conn: Conn, size: number, windowMs: number, lost: { batches: number }): Promise<number> {
  const record = new Uint8Array(size).fill(0x42);
  const batch = 32;
  const window = 2;
  let records = 0;
  let inFlight = 0;
  const start = performance.now();
  while (performance.now() - start < windowMs) {
    while (inFlight < window) {
      await conn.send(record, batch);
      inFlight++;
    }
    if (await conn.acked()) records += batch;
    else lost.batches++;
    inFlight--;
  }
  const elapsed = performance.now() - start;
  while (inFlight > 0) {
    await conn.acked();
    inFlight--;
  }
  return (records * 1000) / elapsed;
}

function dtlsSide(port: number, client: Omit<ClientSocketOptions, 'host' | 'port'>): Side & { ticket(): Promise<ResumptionTicket> } {
  let ticket: ResumptionTicket | undefined;
  const opts = { host: HOST, port, ...client };
  const side = {
    name: 'vitalseal DTLS 1.3 (UDP)',
    async handshake() {
      const c = await within(DtlsClientSocket.connect(opts), 'a DTLS handshake');
      void c.close();
    },
    async ticket() {
      if (ticket !== undefined) return ticket;
      const c = await within(DtlsClientSocket.connect(opts), 'a DTLS handshake');
      ticket = await within(new Promise<ResumptionTicket>((resolve) => c.once('session-ticket', resolve)), 'the DTLS session ticket');
      await c.close();
      return ticket;
    },
    async resume() {
      const c = await within(DtlsClientSocket.connect({ ...opts, resumption: await side.ticket() }), 'a DTLS resumption');
      if (c.info.authMode !== 'resumption') throw new Error('DTLS resumption did not resume');
      void c.close();
    },
    async open(): Promise<Conn> {
      const c = await within(DtlsClientSocket.connect(opts), 'a DTLS handshake');
      const acks = new Acks();
      c.on('data', (d) => acks.add(d.length));
      return {
        async send(record, count) {
          // Written back to back as the TLS side writes (sends are queued in order); then waited for.
          const sends: Promise<void>[] = [];
          for (let i = 0; i < count; i++) sends.push(c.send(record));
          await Promise.all(sends);
        },
        acked: () => acks.next(),
        close: () => c.close(),
      };
    },
  };
  return side;
}

function tlsSide(port: number, ctx: SecureContext): Side {
  let session: Buffer | undefined;
  const connect = (extra: { session?: Buffer } = {}) =>
    within(new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect({ host: HOST, port, secureContext: ctx, minVersion: 'TLSv1.3', ...extra });
      s.setNoDelay(true);
      s.once('secureConnect', () => resolve(s));
      s.once('error', reject);
    }), 'a Node TLS handshake');
  const side: Side = {
    name: 'Node TLS 1.3 (TCP, OpenSSL)',
    async handshake() {
      const s = await connect();
      s.destroy();
    },
    async resume() {
      if (session === undefined) {
        const s = await connect();
        session = await within(new Promise<Buffer>((resolve) => s.once('session', resolve)), 'the Node TLS session ticket');
        s.destroy();
      }
      const s = await connect({ session });
      if (!s.isSessionReused()) throw new Error('TLS resumption did not resume');
      s.destroy();
    },
    async open(): Promise<Conn> {
      const s = await connect();
      const acks = new Acks();
      s.on('data', (d: Buffer) => acks.add(d.length));
      return {
        async send(record, count) {
          for (let i = 0; i < count; i++) s.write(record);
        },
        acked: () => acks.next(),
        close: async () => {
          s.destroy();
        },
      };
    },
  };
  return side;
}

/**
 * Bare node:dgram, no security: payloads joined into datagrams up to `mtu` exactly as the DTLS
 * adapter joins records written in one turn of the event loop (src/dtls/udp.ts Outbox).
 */
async function udpConn(port: number, mtu: number): Promise<Conn> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, HOST, () => s.connect(port, HOST, () => resolve())));
  const acks = new Acks();
  s.on('message', (m) => acks.add(m.length));
  return {
    async send(record, count) {
      let parts: Uint8Array[] = [];
      let size = 0;
      for (let i = 0; i < count; i++) {
        if (parts.length > 0 && size + record.length > mtu) {
          s.send(parts);
          parts = [];
          size = 0;
        }
        parts.push(record);
        size += record.length;
      }
      if (parts.length > 0) s.send(parts);
    },
    acked: () => acks.next(),
    close: async () => void s.close(),
  };
}

/** Opens `n` idle connections (16 at a time) and returns what the server's memory grew by, per connection. */
async function memoryPerSession(peer: Peer, n: number, open: () => Promise<() => Promise<void>>): Promise<{ heap: number; rss: number }> {
  // Let connections closed by the earlier phases go before the baseline is taken.
  await new Promise((r) => setTimeout(r, 500));
  const before = await peer.request<PeerMemory>({ cmd: 'mem' });
  const closers: (() => Promise<void>)[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < n) {
      next++;
      closers.push(await open());
    }
  }));
  // The client is connected when it sends its Finished; give the server time to process the last ones.
  let after = await peer.request<PeerMemory>({ cmd: 'mem' });
  for (let i = 0; i < 50 && after.sessions < before.sessions + n; i++) {
    await new Promise((r) => setTimeout(r, 100));
    after = await peer.request<PeerMemory>({ cmd: 'mem' });
  }
  if (after.sessions < before.sessions + n) throw new Error(`only ${after.sessions - before.sessions} of ${n} sessions established`);
  for (let i = 0; i < closers.length; i += 64) await Promise.all(closers.slice(i, i + 64).map((c) => c()));
  return {
    heap: (after.heapUsed + after.external - before.heapUsed - before.external) / n,
    rss: (after.rss - before.rss) / n,
  };
}

export const bench: BenchModule = {
  async run(ctx: BenchContext): Promise<BenchResult[]> {
    const windowMs = ctx.quick ? 400 : 2_000;
    const rounds = ctx.quick ? 1 : 3;
    const sessions = ctx.quick ? 500 : 10_000;

    const ca = await makeCa('bench CA');
    const server = await issueLeaf(ca, 'localhost', { eku: 'server', ip: '127.0.0.1' });
    const device = await issueLeaf(ca, 'bench-device', { eku: 'client' });
    const keyPem = server.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    const start = { cmd: 'start' as const, caPem: ca.pem, certPem: server.pem, keyPem };

    const dtlsPeer = new Peer();
    const tlsPeer = new Peer();
    const noCookiePeer = new Peer();
    const udpPeer = new Peer();
    const nodeUdpPeer = new Peer();
    const freshPeer = new Peer();
    try {
      const { port: udpPort } = await udpPeer.request<{ port: number }>({ ...start, mode: 'udp' });
      const { port: dtlsPort } = await dtlsPeer.request<{ port: number }>({ ...start, mode: 'dtls' });
      const { port: tlsPort } = await tlsPeer.request<{ port: number }>({ ...start, mode: 'tls' });
      const { port: noCookiePort } = await noCookiePeer.request<{ port: number }>({ ...start, mode: 'dtls', requireCookie: false });
      const { port: nodeUdpPort } = await nodeUdpPeer.request<{ port: number }>({ ...start, mode: 'dtls', udp: 'node' });
      const { port: freshPort } = await freshPeer.request<{ port: number }>({ ...start, mode: 'dtls' });
      const dtls = dtlsSide(dtlsPort, {
        verifier: new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: HOST }),
        certificateChain: [device.der],
        signer: keyObjectSigner(device.privateKey),
        cipherSuites: ['TLS_AES_128_GCM_SHA256'],
        groups: ['x25519'],
      });
      const tlsCtx = createSecureContext({
        ca: ca.pem,
        cert: device.pem,
        key: device.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
        minVersion: 'TLSv1.3',
        ecdhCurve: 'X25519',
        ciphersuites: 'TLS_AES_128_GCM_SHA256',
      } as Parameters<typeof createSecureContext>[0]);
      const tls = tlsSide(tlsPort, tlsCtx);
      const noCookie = dtlsSide(noCookiePort, dtlsClientConfig(ca.pem, device));

      // Warm-up: JIT, tickets, sockets.
      for (let i = 0; i < 20; i++) {
        await dtls.handshake();
        await noCookie.handshake();
        await tls.handshake();
      }
      await dtls.resume();
      await tls.resume();

      const results: BenchResult[] = [];
      const pair = (name: string, unit: string, a: number[], b: number[], target?: BenchResult['target'], meta?: Record<string, unknown>): void => {
        const value = median(a);
        const base = median(b);
        ctx.log(`${name}: ${value.toFixed(2)} ${unit} vs ${base.toFixed(2)} (${(value / base).toFixed(2)}×)`);
        results.push({ name, unit, value, baseline: { name: tls.name, value: base }, ratio: value / base, ...(target === undefined ? {} : { target }), ...(meta === undefined ? {} : { meta }) });
      };

      const lat: [number[], number[]] = [[], []];
      const latNoCookie: [number[], number[]] = [[], []];
      const hs: [number[], number[]] = [[], []];
      const rlat: [number[], number[]] = [[], []];
      const rhs: [number[], number[]] = [[], []];
      for (let r = 0; r < rounds; r++) {
        lat[0].push(await latency(() => dtls.handshake(), windowMs));
        lat[1].push(await latency(() => tls.handshake(), windowMs));
        latNoCookie[0].push(await latency(() => noCookie.handshake(), windowMs));
        latNoCookie[1].push(await latency(() => tls.handshake(), windowMs));
        hs[0].push(await rate(() => dtls.handshake(), windowMs));
        hs[1].push(await rate(() => tls.handshake(), windowMs));
        rlat[0].push(await latency(() => dtls.resume(), windowMs));
        rlat[1].push(await latency(() => tls.resume(), windowMs));
        rhs[0].push(await rate(() => dtls.resume(), windowMs));
        rhs[1].push(await rate(() => tls.resume(), windowMs));
      }
      pair('dtls handshake latency (mutual auth, P-256, X25519)', 'ms', lat[0], lat[1], { ratio: 1.5, comparison: '<=' });
      pair('dtls handshake latency without the cookie exchange (server option requireCookie: false)', 'ms', latNoCookie[0], latNoCookie[1], { ratio: 1.5, comparison: '<=' }, { note: 'informational: the default keeps the cookie exchange (RFC 9147 §5.1 SHOULD)' });
      pair('dtls handshakes/s (mutual auth, X25519, 8 concurrent)', 'handshakes/s', hs[0], hs[1], { ratio: 0.5, comparison: '>=' });
      pair('dtls resumption latency (session ticket)', 'ms', rlat[0], rlat[1], { ratio: 1.5, comparison: '<=' });
      pair('dtls resumptions/s (session ticket, 8 concurrent)', 'handshakes/s', rhs[0], rhs[1], { ratio: 0.5, comparison: '>=' });

      ctx.log(`keyed AEAD contexts: ${describeKeyed()}`);
      // The target row runs against the server that served every handshake above (thousands), as
      // Node's TLS server did; `dconn` against one that has served only this connection.
      const dconn = await dtlsSide(freshPort, dtlsClientConfig(ca.pem, device)).open();
      const dconnWarm = await dtls.open();
      const dconnLo = await dtlsSide(dtlsPort, { ...dtlsClientConfig(ca.pem, device), mtu: LOOPBACK_MTU }).open();
      const dconnNodeUdp = await dtlsSide(nodeUdpPort, { ...dtlsClientConfig(ca.pem, device), udp: 'node' }).open();
      const tconn = await tls.open();
      const uconn = await udpConn(udpPort, DEFAULT_MTU);
      const uconnLo = await udpConn(udpPort, LOOPBACK_MTU);
      const conns = [dconn, dconnLo, uconn, uconnLo, tconn, dconnNodeUdp, dconnWarm];
      const peers = [dtlsPeer, tlsPeer, udpPeer, nodeUdpPeer, freshPeer];
      for (const [label, size, target] of [['200B', 200, undefined], ['1KiB', 1024, { ratio: 0.5, comparison: '>=' as const }]] as const) {
        for (const p of peers) await p.request({ cmd: 'batch', bytes: size * 32 });
        const rates: number[][] = conns.map(() => []);
        const lost = { batches: 0 };
        for (const c of conns) await throughput(c, size, 100, lost);
        lost.batches = 0;
        // Interleaved: drift on the shared machine hits every side alike.
        for (let r = 0; r < rounds; r++) {
          for (const [i, c] of conns.entries()) (rates[i] as number[]).push(await throughput(c, size, windowMs, lost));
        }
        const [d, dLo, u, uLo, t, dN, dW] = rates.map((x) => median(x)) as [number, number, number, number, number, number, number];
        const ranges = Object.fromEntries(['dtlsFreshServer', 'dtlsLoopbackMtu', 'rawUdp', 'rawUdpLoopbackMtu', 'tls', 'dtlsNodeUdp', 'dtlsAfterHandshakes'].map((k, i) => [k, [Math.min(...(rates[i] as number[])), Math.max(...(rates[i] as number[]))]]));
        ctx.log(`${label}: DTLS ${dW.toFixed(0)}/s (pmtu ${DEFAULT_MTU}, ${DEFAULT_UDP} UDP, server after the handshake phases), ${d.toFixed(0)}/s (the same, a server that served only this connection), ${dN.toFixed(0)}/s (pmtu ${DEFAULT_MTU}, node:dgram) and ${dLo.toFixed(0)}/s (pmtu ${LOOPBACK_MTU}); raw UDP ${u.toFixed(0)} and ${uLo.toFixed(0)}; Node TLS ${t.toFixed(0)}`);
        const meta = (pmtu: number, raw: number, value: number) => ({
          pmtu,
          pmtuSource: pmtu === DEFAULT_MTU ? 'product default (src/dtls/config.ts mtu)' : 'configured option: the loopback interface MTU, not a path a device has',
          bytesPerSecond: value * size,
          rawUdpRecordsPerSecond: raw,
          ratioToRawUdp: value / raw,
          keyedContexts: describeKeyed(),
          batchesLost: lost.batches,
          rangesPerSide: ranges,
        });
        // Against Node's TLS (the issue's target applies to the product's defaults: PMTU and UDP
        // socket), then against bare UDP at the same PMTU.
        for (const [pmtu, where, value, raw, rowTarget] of [
          [DEFAULT_MTU, `default pmtu ${DEFAULT_MTU}, default UDP socket: ${DEFAULT_UDP === 'batched' ? 'batched system calls' : 'node:dgram'}, server after the handshake phases as Node's TLS server`, dW, u, target],
          [DEFAULT_MTU, `default pmtu ${DEFAULT_MTU}, default UDP socket, a server that served only this connection`, d, u, undefined],
          [DEFAULT_MTU, `default pmtu ${DEFAULT_MTU}, node:dgram (udp: 'node')`, dN, u, undefined],
          [LOOPBACK_MTU, `configured pmtu ${LOOPBACK_MTU}: loopback interface`, dLo, uLo, undefined],
        ] as const) {
          const name = `dtls application data ${label} records (AES-128-GCM, ${where})`;
          results.push({
            name, unit: 'records/s', value, baseline: { name: tls.name, value: t }, ratio: value / t,
            ...(rowTarget === undefined ? {} : { target: rowTarget }), meta: meta(pmtu, raw, value),
          });
          results.push({
            name: `${name} vs raw UDP`, unit: 'records/s', value,
            baseline: { name: `bare node:dgram, same payloads and datagrams, no security (pmtu ${pmtu})`, value: raw }, ratio: value / raw,
          });
        }
      }
      for (const c of conns) await c.close();

      ctx.log(`opening ${sessions} idle DTLS sessions, then ${sessions} idle TLS connections`);
      // The clients' own sockets are node:dgram here: what is measured is the server, and 10,000
      // batched client sockets in this process would hold ~3 GiB of native send/receive buffers.
      const memConfig = { ...dtlsClientConfig(ca.pem, device), udp: 'node' as const };
      const dmem = await memoryPerSession(dtlsPeer, sessions, async () => {
        const c = await DtlsClientSocket.connect({ host: HOST, port: dtlsPort, ...memConfig });
        return () => c.close();
      });
      const tmem = await memoryPerSession(tlsPeer, sessions, async () => {
        const s = await new Promise<TLSSocket>((resolve, reject) => {
          const sock = tlsConnect({ host: HOST, port: tlsPort, secureContext: tlsCtx });
          sock.once('secureConnect', () => resolve(sock));
          sock.once('error', reject);
        });
        return async () => {
          s.destroy();
        };
      });
      ctx.log(`memory per idle session: DTLS heap ${dmem.heap.toFixed(0)} B, RSS ${dmem.rss.toFixed(0)} B; TLS heap ${tmem.heap.toFixed(0)} B, RSS ${tmem.rss.toFixed(0)} B`);
      results.push({
        name: `dtls server memory per idle session (${sessions} sessions, JS heap + buffers)`,
        unit: 'bytes',
        value: dmem.heap,
        baseline: { name: 'budget from issue #4 (16 KiB)', value: 16 * 1024 },
        ratio: dmem.heap / (16 * 1024),
        target: { ratio: 1, comparison: '<=' },
        meta: { rssPerSession: dmem.rss },
      });
      results.push({
        name: `dtls server RSS per idle session (${sessions} sessions)`,
        unit: 'bytes',
        value: dmem.rss,
        baseline: { name: `${tls.name}, RSS per idle connection`, value: tmem.rss },
        ratio: dmem.rss / tmem.rss,
        meta: { tlsHeapPerConnection: tmem.heap },
      });
      return results;
    } finally {
      for (const p of [dtlsPeer, tlsPeer, noCookiePeer, udpPeer, nodeUdpPeer, freshPeer]) {
        await p.request({ cmd: 'stop' }).catch(() => undefined);
        p.kill();
      }
    }
  },
};

function describeKeyed(): string {
  const s = keyedContextStatus();
  if (s.backend !== 'libcrypto') return `node:crypto per record (${s.reason ?? ''})`;
  return `libcrypto ${s.library ?? ''}, ${s.calls === 'addon' ? 'one native call per message (record_cipher addon)' : `koffi calls per message (${s.addonReason ?? ''})`}`;
}

function dtlsClientConfig(caPem: string, device: { der: Uint8Array; privateKey: Parameters<typeof keyObjectSigner>[0] }): ClientConfig {
  return {
    verifier: new X509PeerVerifier({ roots: [caPem], purpose: 'server', serverName: HOST }),
    certificateChain: [device.der],
    signer: keyObjectSigner(device.privateKey),
    cipherSuites: ['TLS_AES_128_GCM_SHA256'],
  };
}

export const run = bench.run;
