/**
 * Fuzzing of the DTLS 1.3 server's datagram entry point (`DtlsServerEndpoint.handleDatagram`).
 * Seeds are the datagrams of a real handshake made in memory (ClientHello1, ClientHello2 with a
 * valid cookie, the client's encrypted final flight, ACKs, application data, a KeyUpdate) plus
 * random bytes; each input is a seed mutated by a seeded strategy (bit flips, interesting bytes,
 * truncation, extension, splicing, region copies). Checked: the entry point never throws, no input
 * takes long, sessions and pending handshakes stay within their limits, and the heap stays bounded.
 * Seeds are refreshed as the simulated clock moves so cookies stay valid and sessions exist.
 *
 *   npm run fuzz                      # 1,000,000 inputs, seed 1
 *   npm run fuzz -- --iterations 5e6 --seed 7
 */
import { Prng } from '../../src/agent/sensors/prng.ts';
import { Connection, type ConnectionOutput } from '../../src/dtls/connection.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { DtlsServerEndpoint, type PeerAddress } from '../../src/dtls/server-endpoint.ts';
import { utf8 } from '../../src/util/bytes.ts';
import { issueLeaf, makeCa, type TestCa, type TestLeaf } from '../../test/dtls/support/pki.ts';

export interface FuzzOptions {
  readonly iterations: number;
  readonly seed: number;
  /** Fail when one input takes longer than this (ms). */
  readonly maxInputMs?: number;
  /** Fail when the heap grows past this many bytes above its level after set-up. */
  readonly maxHeapGrowth?: number;
  readonly progress?: (done: number, stats: FuzzStats) => void;
}

export interface FuzzStats {
  inputs: number;
  sessionsCreated: number;
  maxSessions: number;
  maxPending: number;
  slowestInputMs: number;
  heapGrowth: number;
  refreshes: number;
  readonly outcomes: Record<string, number>;
}

interface Credentials {
  readonly ca: TestCa;
  readonly server: TestLeaf;
  readonly device: TestLeaf;
}

const CLIENT: PeerAddress = { address: '198.51.100.7', port: 50_000 };
/** Seed handshakes come from their own address, so fuzzed handshakes pending from CLIENT never block them. */
const SEEDER = '198.51.100.200';
const INTERESTING = [0x00, 0x01, 0x02, 0x10, 0x16, 0x15, 0x17, 0x1a, 0x20, 0x2f, 0x3f, 0x7f, 0x80, 0xfe, 0xfd, 0xfc, 0xff];

/** Runs a real handshake against `endpoint` and returns every datagram the client sent. */
async function seeds(endpoint: DtlsServerEndpoint, creds: Credentials, now: number, from: PeerAddress, connected: Set<number>): Promise<Uint8Array[]> {
  const client = Connection.client({
    verifier: new X509PeerVerifier({ roots: [creds.ca.pem], purpose: 'server' }),
    certificateChain: [creds.device.der],
    signer: creds.device.signer,
    connectionId: 3,
  });
  const sent: Uint8Array[] = [];
  const toServer: Uint8Array[] = [];
  const fromClient = (o: ConnectionOutput) => {
    for (const d of o.datagrams) {
      sent.push(d);
      toServer.push(d);
    }
  };
  fromClient(await client.start(now));
  for (let round = 0; round < 10 && toServer.length > 0; round++) {
    const batch = toServer.splice(0);
    for (const d of batch) {
      const out = await endpoint.handleDatagram(d, from, now);
      for (const e of out.events) if (e.event.type === 'connected') connected.add(e.session.id);
      for (const r of out.datagrams) fromClient(await client.handleDatagram(r.data, now));
    }
  }
  if (client.status !== 'connected') throw new Error(`the seed handshake did not complete (${client.status})`);
  fromClient(await client.send(utf8('heart rate 61'), now));
  fromClient(await client.updateKeys(true, now));
  fromClient(await client.send(utf8('heart rate 62'), now));
  // Both ways until quiet: ticket, KeyUpdates and their ACKs all settle.
  for (let round = 0; round < 10 && toServer.length > 0; round++) {
    for (const d of toServer.splice(0)) {
      const out = await endpoint.handleDatagram(d, from, now);
      for (const r of out.datagrams) fromClient(await client.handleDatagram(r.data, now));
    }
  }
  // The session stays open, so mutated records of it reach decryption (a close_notify would end it).
  return sent;
}

function mutate(rng: Prng, pool: readonly Uint8Array[]): Uint8Array {
  const pick = () => pool[Math.floor(rng.next() * pool.length)] as Uint8Array;
  const strategy = Math.floor(rng.next() * 8);
  let d = Uint8Array.from(pick());
  switch (strategy) {
    case 0: {
      // A few bit flips.
      const n = 1 + Math.floor(rng.next() * 8);
      for (let i = 0; i < n && d.length > 0; i++) {
        const at = Math.floor(rng.next() * d.length);
        d[at] = (d[at] as number) ^ (1 << Math.floor(rng.next() * 8));
      }
      return d;
    }
    case 1: {
      // Interesting values at a few places (lengths, types, versions).
      const n = 1 + Math.floor(rng.next() * 4);
      for (let i = 0; i < n && d.length > 0; i++) d[Math.floor(rng.next() * d.length)] = INTERESTING[Math.floor(rng.next() * INTERESTING.length)] as number;
      return d;
    }
    case 2:
      return d.subarray(0, Math.floor(rng.next() * d.length));
    case 3: {
      const extra = new Uint8Array(1 + Math.floor(rng.next() * 64));
      for (let i = 0; i < extra.length; i++) extra[i] = Math.floor(rng.next() * 256);
      const out = new Uint8Array(d.length + extra.length);
      out.set(d);
      out.set(extra, d.length);
      return out;
    }
    case 4: {
      // Splice: the head of one seed and the tail of another (records from different flights).
      const other = pick();
      const cut = Math.floor(rng.next() * d.length);
      const from = Math.floor(rng.next() * other.length);
      const out = new Uint8Array(cut + other.length - from);
      out.set(d.subarray(0, cut));
      out.set(other.subarray(from), cut);
      return out;
    }
    case 5: {
      // Copy a region over another (repeated records, shifted length fields).
      if (d.length < 2) return d;
      const len = 1 + Math.floor(rng.next() * Math.min(32, d.length - 1));
      const src = Math.floor(rng.next() * (d.length - len));
      const dst = Math.floor(rng.next() * (d.length - len));
      d.copyWithin(dst, src, src + len);
      return d;
    }
    case 6: {
      // Random bytes behind a plausible first byte.
      d = new Uint8Array(Math.floor(rng.next() * 300));
      for (let i = 0; i < d.length; i++) d[i] = Math.floor(rng.next() * 256);
      if (d.length > 0) d[0] = INTERESTING[Math.floor(rng.next() * INTERESTING.length)] as number;
      return d;
    }
    default:
      // The seed unchanged: replays and retransmissions.
      return d;
  }
}

export async function makeCredentials(): Promise<Credentials> {
  const ca = await makeCa('fuzz CA');
  return { ca, server: await issueLeaf(ca, 'fuzz-server', { eku: 'server' }), device: await issueLeaf(ca, 'fuzz-device', { eku: 'client' }) };
}

export async function fuzzDtlsServer(options: FuzzOptions, creds?: Credentials): Promise<FuzzStats> {
  const c = creds ?? (await makeCredentials());
  const rng = new Prng(options.seed);
  let now = Date.now();
  const endpoint = new DtlsServerEndpoint({
    certificateChain: [c.server.der],
    signer: c.server.signer,
    verifier: new X509PeerVerifier({ roots: [c.ca.pem], purpose: 'client' }),
    requireClientCertificate: true,
    connectionIdLength: 4,
    limits: { maxSessions: 2_000, maxPendingHandshakes: 200, maxPendingPerAddress: 4 },
  }, now);
  const stats: FuzzStats = { inputs: 0, sessionsCreated: 0, maxSessions: 0, maxPending: 0, slowestInputMs: 0, heapGrowth: 0, refreshes: 0, outcomes: {} };
  const connected = new Set<number>();
  let pool = await seeds(endpoint, c, now, { address: SEEDER, port: 40_000 }, connected);
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const heapBase = process.memoryUsage().heapUsed;
  const maxInputMs = options.maxInputMs ?? 2_000;
  for (let i = 0; i < options.iterations; i++) {
    if (i > 0 && i % 20_000 === 0) {
      // Keep cookies valid and a live session to aim at; let timers run.
      now += 30_000;
      for (const { session, event } of (await endpoint.handleTimeout(now)).events) {
        if ((event.type === 'failed' || event.type === 'closed') && connected.has(session.id)) {
          throw new Error(`a timer ended an established session (${event.type === 'failed' ? event.error.code : 'closed'})`);
        }
      }
      // A new session from a new port: the earlier ones stay (their CIDs still route) within the limits.
      pool = [...pool.slice(-64), ...(await seeds(endpoint, c, now, { address: SEEDER, port: 40_001 + stats.refreshes }, connected))];
      stats.refreshes++;
      gc?.();
      stats.heapGrowth = Math.max(stats.heapGrowth, process.memoryUsage().heapUsed - heapBase);
      if (options.maxHeapGrowth !== undefined && stats.heapGrowth > options.maxHeapGrowth) {
        throw new Error(`heap grew by ${stats.heapGrowth} bytes after ${i} inputs`);
      }
      options.progress?.(i, stats);
    }
    now += 1;
    const input = mutate(rng, pool);
    const r = rng.next();
    // Mostly from the handshake's address (so records reach a session), sometimes from elsewhere.
    // From the latest seed handshake's address (cookies valid, records routed by address too), from
    // another client, or from anywhere.
    const from: PeerAddress = r < 0.5 ? { address: SEEDER, port: 40_000 + stats.refreshes }
      : r < 0.8 ? { address: CLIENT.address, port: CLIENT.port + Math.floor(rng.next() * 3) }
        : { address: `203.0.113.${Math.floor(rng.next() * 8)}`, port: 1000 + Math.floor(rng.next() * 50) };
    const started = performance.now();
    const out = await endpoint.handleDatagram(input, from, now);
    const took = performance.now() - started;
    if (took > stats.slowestInputMs) stats.slowestInputMs = took;
    if (took > maxInputMs) throw new Error(`input ${i} took ${took.toFixed(0)} ms`);
    for (const { session, event } of out.events) {
      if (event.type === 'connected') connected.add(session.id);
      // No fuzz input can authenticate: nothing it does may end an established session.
      else if ((event.type === 'failed' || event.type === 'closed') && connected.has(session.id)) {
        throw new Error(`input ${i} ended an established session (${event.type === 'failed' ? event.error.code : 'closed'})`);
      }
    }
    const kind = out.datagrams.length > 0 ? 'answered' : out.events.length > 0 ? 'event' : 'silent';
    stats.outcomes[kind] = (stats.outcomes[kind] ?? 0) + 1;
    stats.inputs++;
    stats.maxSessions = Math.max(stats.maxSessions, endpoint.sessionCount);
    stats.maxPending = Math.max(stats.maxPending, endpoint.pendingCount);
    if (endpoint.sessionCount > endpoint.limits.maxSessions || endpoint.pendingCount > endpoint.limits.maxPendingHandshakes) {
      throw new Error(`limits exceeded: ${endpoint.sessionCount} sessions, ${endpoint.pendingCount} pending`);
    }
  }
  stats.sessionsCreated = endpoint.stats.sessionsCreated;
  // What reached the sessions' record layers (live sessions only).
  for (const session of endpoint.sessions()) {
    const cs = session.connection.stats;
    stats.outcomes['session:records'] = (stats.outcomes['session:records'] ?? 0) + cs.recordsIn;
    for (const [k, v] of Object.entries(cs.dropped)) stats.outcomes[`session:dropped:${k}`] = (stats.outcomes[`session:dropped:${k}`] ?? 0) + (v ?? 0);
  }
  for (const [k, v] of Object.entries(endpoint.stats.dropped)) stats.outcomes[`dropped:${k}`] = v;
  return stats;
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : Number(process.argv[i + 1]);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const iterations = arg('iterations', 1_000_000);
  const seed = arg('seed', 1);
  const started = Date.now();
  const stats = await fuzzDtlsServer({
    iterations,
    seed,
    maxHeapGrowth: 256 * 1024 * 1024,
    progress: (done, s) => process.stderr.write(`fuzz: ${done} inputs, ${s.maxSessions} sessions max, heap +${(s.heapGrowth / 1048576).toFixed(1)} MiB, slowest ${s.slowestInputMs.toFixed(1)} ms\n`),
  });
  process.stdout.write(`${JSON.stringify({ iterations, seed, seconds: (Date.now() - started) / 1000, ...stats }, null, 2)}\n`);
}
