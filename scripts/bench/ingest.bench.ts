/**
 * The ingest path's throughput, per storage backend: `IngestService.accept()` of sealed messages
 * (a second of a simulated patient each: vitals and a 250 Hz ECG strip, ~2 KiB) from many devices,
 * with a number of messages in flight, into SQLite (WAL, synchronous=FULL) and into PostgreSQL.
 *
 * Baseline, in the same run and the same database: the same plaintext packs inserted as rows
 * (device, seq, time, payload) with the same concurrency and durability, as a plain "subscriber that
 * writes what it gets" would. Rounds alternate candidate and baseline; medians are reported.
 *
 * What accept() adds over the baseline: the registry check, COSE parsing and opening (an epoch-cache
 * hit for all but the first message of an epoch), strict SenML decoding, AES-256-GCM at rest, and
 * the device's last-seen update in the same transaction.
 *
 * End to end through mosquitto with 1000 device connections: ingest-load.bench.ts; the scale-out
 * kill test: test/ingest/scale-out.test.ts (docs/scaling.md).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { SimulatedPatient } from '../../src/agent/sensors/simulated-patient.ts';
import { encodeVitalsPack, type VitalsBatch } from '../../src/codec/vitals.ts';
import { Header } from '../../src/cose/headers.ts';
import { SealingSession } from '../../src/cose/sealing-session.ts';
import { openIngestCore, type IngestCore } from '../../src/ingest/core.ts';
import type { CertificatePeer } from '../../src/ingest/outcome.ts';
import { cryptoSelfTest } from '../../src/ingest/selftest.ts';
import { rotateStaticKey } from '../../src/ingest/static-key.ts';
import { PostgresStorage } from '../../src/ingest/storage/postgres.ts';
import { SqliteStorage } from '../../src/ingest/storage/sqlite.ts';
import type { IngestStorage } from '../../src/ingest/storage/types.ts';
import { openSoftwareKeyStore } from '../../src/keystore/software/store.ts';
import { ManualClock } from '../../src/util/clock.ts';
import { startPostgres } from '../lib/postgres-server.ts';
import { median } from './measure.ts';
import type { BenchContext, BenchResult } from './types.ts';

interface Msg {
  readonly deviceId: string;
  readonly seq: number;
  readonly payload: Uint8Array;
  readonly plain: Uint8Array;
  readonly readings: number;
}

const SPKI = 'ab'.repeat(32);

function peer(deviceId: string): CertificatePeer {
  return { kind: 'certificate', deviceId, spkiSha256: SPKI, transport: 'coaps', suite: 'bench' };
}


/** `count` sealed messages spread over `devices` devices, each device's in sequence. */
function workload(core: IngestCore, clock: ManualClock, devices: number, perDevice: number, start: number): Msg[] {
  const out: Msg[] = [];
  const pub = core.staticKeys?.current.publicKey as Uint8Array;
  for (let d = 0; d < devices; d++) {
    const id = `bench-${d}`;
    const patient = new SimulatedPatient({ id, seed: d + 1, nibpIntervalMs: 60_000 });
    patient.start(start);
    const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: pub, clock, maxMessages: 1000 });
    for (let s = 1; s <= perDevice; s++) {
      const r = patient.read(start + s * 1000);
      const batch: VitalsBatch = {
        deviceId: id,
        readings: r.vitals.map((v) => ({ kind: v.name, time: v.time, value: v.value })),
        ecg: r.waveforms.map((w) => ({ start: w.start, intervalMs: w.intervalMs, samplesMv: w.samples })),
      };
      const plain = encodeVitalsPack(batch);
      out.push({ deviceId: id, seq: s, plain, readings: batch.readings.length + batch.ecg.length, payload: session.seal(plain, { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, id], [Header.SEQUENCE, s]]) }) });
    }
  }
  // Interleave devices, as a broker delivers them.
  return out.sort((a, b) => a.seq - b.seq || (a.deviceId < b.deviceId ? -1 : 1));
}

/** Runs `fn` over `items` with `inFlight` at a time; returns per-item latencies (ms). */
async function pump<T>(items: readonly T[], inFlight: number, fn: (x: T) => Promise<void>): Promise<number[]> {
  const lat: number[] = [];
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      const t0 = performance.now();
      await fn(items[i] as T);
      lat.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return lat;
}

function p99(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))] ?? 0;
}

interface Baseline {
  insert(m: Msg, round: number): Promise<void>;
  close(): Promise<void>;
}

function sqliteBaseline(path: string): Baseline {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('busy_timeout = 5000');
  db.exec('CREATE TABLE IF NOT EXISTS bench_plain (device_id TEXT NOT NULL, seq INTEGER NOT NULL, received_at INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (device_id, seq))');
  const stmt = db.prepare('INSERT INTO bench_plain (device_id, seq, received_at, payload) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING');
  return {
    async insert(m, round) {
      stmt.run(m.deviceId, round * 1_000_000 + m.seq, Date.now(), Buffer.from(m.plain));
    },
    async close() {
      db.close();
    },
  };
}

async function postgresBaseline(connection: string): Promise<Baseline> {
  const pool = new pg.Pool({ connectionString: connection, max: 10 });
  pool.on('error', () => undefined); // an idle client dropped by the server; the next query reconnects
  await pool.query('CREATE TABLE IF NOT EXISTS bench_plain (device_id TEXT NOT NULL, seq BIGINT NOT NULL, received_at BIGINT NOT NULL, payload BYTEA NOT NULL, PRIMARY KEY (device_id, seq))');
  return {
    async insert(m, round) {
      await pool.query('INSERT INTO bench_plain (device_id, seq, received_at, payload) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING', [m.deviceId, round * 1_000_000 + m.seq, Date.now(), Buffer.from(m.plain)]);
    },
    async close() {
      await pool.end();
    },
  };
}

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const out: BenchResult[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-bench-ingest-'));
  const pgServer = await startPostgres();
  const selfTest = cryptoSelfTest();
  const devices = ctx.quick ? 20 : 100;
  const perRound = ctx.quick ? 4 : 10; // messages per device per round
  const rounds = ctx.quick ? 2 : 5;
  const inFlight = 16;
  try {
    for (const backend of ['sqlite', 'postgres'] as const) {
      const dbPath = join(dir, `${backend}.db`);
      const makeStorage = (): IngestStorage => (backend === 'sqlite' ? new SqliteStorage({ path: dbPath }) : new PostgresStorage({ connection: pgServer.connectionString, maxConnections: 10 }));
      const clock = new ManualClock(Date.UTC(2026, 10, 25, 12));
      const keyPath = join(dir, `${backend}.vsks`);
      const open = (allowNoStaticKey: boolean) => openIngestCore({
        selfTest, openKeyStore: (events) => openSoftwareKeyStore({ path: keyPath, passphrase: 'bench passphrase', scrypt: { logN: 10 }, events }),
        storage: makeStorage(), auditPath: join(dir, `${backend}-audit.log`), kekName: 'ingest-kek', clock, allowNoStaticKey,
      });
      const setup = await open(true);
      await rotateStaticKey(setup.hierarchy, setup.provider);
      await setup.close();
      const core = await open(false);
      const service = core.service;
      if (service === undefined) throw new Error('no service');
      for (let d = 0; d < devices; d++) {
        await core.registry.register({ deviceId: `bench-${d}`, credential: 'certificate', credentialSha256: SPKI, status: 'active', enrolledAt: clock.now() });
      }
      const baseline = backend === 'sqlite' ? sqliteBaseline(dbPath) : await postgresBaseline(pgServer.connectionString);
      try {
      // Every round gets fresh sequence numbers (a later part of each device's stream).
      const all = workload(core, clock, devices, perRound * (rounds + 1), clock.now());
      const slice = (r: number) => all.filter((m) => m.seq > r * perRound && m.seq <= (r + 1) * perRound);
      // Warm-up round: first epochs (one ECDH per device), DEK creation, JIT.
      await pump(slice(0), inFlight, async (m) => { await service.accept({ payload: m.payload, contentFormat: 96, peer: peer(m.deviceId) }); });
      await pump(slice(0), inFlight, (m) => baseline.insert(m, 0));
      const cand: number[] = [];
      const base: number[] = [];
      const latencies: number[] = [];
      let readings = 0;
      let msgs = 0;
      for (let r = 1; r <= rounds; r++) {
        const batch = slice(r);
        const t0 = performance.now();
        const lat = await pump(batch, inFlight, async (m) => {
          const o = await service.accept({ payload: m.payload, contentFormat: 96, peer: peer(m.deviceId) });
          if (o.status !== 'accepted') throw new Error(`bench message refused: ${JSON.stringify(o)}`);
        });
        cand.push(batch.length / ((performance.now() - t0) / 1000));
        latencies.push(...lat);
        readings += batch.reduce((n, m) => n + m.readings, 0);
        msgs += batch.length;
        const t1 = performance.now();
        await pump(batch, inFlight, (m) => baseline.insert(m, r));
        base.push(batch.length / ((performance.now() - t1) / 1000));
      }
      const readingsPerMsg = readings / msgs;
      const value = median(cand);
      const baseValue = median(base);
      const stored = await core.storage.countMessages();
      const rss = process.memoryUsage().rss;
      out.push({
        name: `ingest accept() into ${backend}, ${devices} devices, ${inFlight} in flight`,
        unit: 'msg/s',
        value,
        baseline: { name: `plaintext row inserts into the same ${backend} database`, value: baseValue },
        ratio: value / baseValue,
        target: { ratio: 0.5, comparison: '>=' },
        meta: {
          readingsPerSecond: Math.round(value * readingsPerMsg), baselineReadingsPerSecond: Math.round(baseValue * readingsPerMsg),
          readingsPerMessage: Math.round(readingsPerMsg * 10) / 10, p99LatencyMs: Math.round(p99(latencies) * 100) / 100,
          messagesStored: stored, rounds, rssBytes: rss,
        },
      });
      ctx.log(`${backend}: accept ${Math.round(value)} msg/s vs plaintext inserts ${Math.round(baseValue)} msg/s; p99 ${p99(latencies).toFixed(2)} ms`);
      } finally {
        await baseline.close();
        await core.close();
      }
    }
  } finally {
    await pgServer.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}
