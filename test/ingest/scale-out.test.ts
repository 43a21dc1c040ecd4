/**
 * Scale-out: two `vitalseal ingest run` processes share the broker's stream through one shared
 * subscription ($share/vitalseal/vitals/+/v1) and one PostgreSQL database, while a load generator
 * (its own process) streams simulated devices: real device certificates and uplinks, QoS 1, one
 * second of vitals per message sealed with a real COSE_Encrypt, kept and sent again like the agent
 * does until the broker acknowledges it.
 *
 *   kill -9    one instance is SIGKILLed mid-stream (messages in its hands unacknowledged, some
 *              stored but not yet acknowledged), the other keeps storing its share, the killed one
 *              comes back under its client id and receives what its session kept
 *   restart    one instance is stopped (SIGTERM: stop taking, drain, disconnect) mid-stream and
 *              started again
 *
 * After each: every sequence number the broker acknowledged to a device is in the database, none
 * twice (no (device, seq) with more than one row), and nothing the devices never sent.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startLoadGenerator, type LoadGeneratorHandle, type Progress, type RunReport } from '../../scripts/lib/load-generator.ts';
import { startMqttIngestSite, type MqttIngestSite } from '../../scripts/lib/mqtt-ingest-site.ts';
import { startPostgres, type PostgresServer } from '../../scripts/lib/postgres-server.ts';
import { PostgresStorage } from '../../src/ingest/storage/postgres.ts';
import { createApiToken } from '../../src/ingest/tokens.ts';
import { httpsRequest } from './support/https.ts';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
const DEVICES = Array.from({ length: 20 }, (_, i) => `bed-${String(i + 1).padStart(2, '0')}`);

interface IngestProcess {
  readonly name: string;
  readonly child: ChildProcess;
  log(): string;
  /** Resolves once its MQTT listener holds the subscription. */
  readonly subscribed: Promise<void>;
  readonly exited: Promise<number | null>;
  url(): string;
}

function startIngestProcess(site: MqttIngestSite, name: string, cfg: string): IngestProcess {
  const child = spawn(process.execPath, [bin, 'ingest', 'run', '--config', cfg], { cwd: site.dir, env: site.env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  let url = '';
  let markSubscribed: () => void = () => undefined;
  let failSubscribed: (e: Error) => void = () => undefined;
  const subscribed = new Promise<void>((resolve, reject) => {
    markSubscribed = resolve;
    failSubscribed = reject;
  });
  subscribed.catch(() => undefined);
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    log = (log + d).slice(-200_000);
    url ||= /"url":"(https:\/\/[^"]+)"/.exec(log)?.[1] ?? '';
    if (/"msg":"MQTT listener subscribed"/.test(log)) markSubscribed();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => {
    failSubscribed(new Error(`${name} exited (${code}) before subscribing:\n${log.slice(-3000)}`));
    resolve(code);
  }));
  return { name, child, log: () => log, subscribed, exited, url: () => url };
}

describe('scale-out: two ingest processes on one PostgreSQL behind a shared subscription', () => {
  let pgServer: PostgresServer;
  let site: MqttIngestSite;
  let pool: pg.Pool;
  let gen: LoadGeneratorHandle;
  let token: string;
  const cfg: Record<'a' | 'b', string> = { a: '', b: '' };
  const live: IngestProcess[] = [];
  /** Every sequence number the broker acknowledged, per device, over both cases. */
  const acked = new Map<string, Set<number>>();
  let sentTotal = 0;

  const start = (which: 'a' | 'b') => {
    const p = startIngestProcess(site, `ingest-${which}`, cfg[which]);
    live.push(p);
    return p;
  };
  const count = async () => Number((await pool.query('SELECT COUNT(*) AS n FROM messages')).rows[0].n);
  const record = (r: RunReport) => {
    assert.equal(r.rejected, 0, 'the broker refused nothing');
    sentTotal += r.acked;
    for (const [id, seqs] of Object.entries(r.ackedSeqs ?? {})) {
      const set = acked.get(id) ?? new Set<number>();
      for (const s of seqs) set.add(s);
      acked.set(id, set);
    }
  };
  const metric = async (p: IngestProcess, name: string): Promise<number> => {
    const text = (await httpsRequest(p.url(), '/metrics', site.rootPem, { token })).text();
    const m = new RegExp(`^${name.replace(/[{}"+]/g, '\\$&')} (\\d+)$`, 'm').exec(text);
    return m === null ? 0 : Number(m[1]);
  };

  /** Waits until the database holds every acknowledged message, then checks exactly-once. */
  const assertExactlyOnce = async () => {
    const expected = [...acked.values()].reduce((n, s) => n + s.size, 0);
    const end = Date.now() + 60_000;
    while ((await count()) < expected && Date.now() < end) await delay(100);
    const dupes = await pool.query('SELECT device_id, seq, COUNT(*) AS n FROM messages GROUP BY device_id, seq HAVING COUNT(*) > 1');
    assert.deepEqual(dupes.rows, [], 'no message stored twice');
    const rows = (await pool.query('SELECT device_id, seq FROM messages')).rows as { device_id: string; seq: string | number }[];
    const stored = new Map<string, Set<number>>();
    for (const r of rows) {
      const set = stored.get(r.device_id) ?? new Set<number>();
      set.add(Number(r.seq));
      stored.set(r.device_id, set);
    }
    for (const [id, seqs] of acked) {
      const have = stored.get(id) ?? new Set<number>();
      const missing = [...seqs].filter((s) => !have.has(s));
      const extra = [...have].filter((s) => !seqs.has(s));
      assert.deepEqual(missing, [], `${id}: acknowledged but not stored`);
      assert.deepEqual(extra, [], `${id}: stored but never acknowledged to the device`);
    }
    assert.equal(rows.length, expected);
  };

  before(async () => {
    pgServer = await startPostgres();
    site = await startMqttIngestSite({ devices: DEVICES });
    for (const which of ['a', 'b'] as const) cfg[which] = site.config(`ingest-${which}`, { postgres: pgServer.connectionString }, { receiveMaximum: 64, drainSeconds: 10 });
    const staticKey = await site.prepare(cfg.a);
    const storage = new PostgresStorage({ connection: pgServer.connectionString, maxConnections: 2 });
    await storage.init();
    token = (await createApiToken(storage, { name: 'scale-out', role: 'reader', now: Date.now() })).token;
    await storage.close();
    pool = new pg.Pool({ connectionString: pgServer.connectionString, max: 2 });
    gen = await startLoadGenerator({
      host: site.broker.host, port: site.broker.port, serverName: '127.0.0.1', rootPem: site.rootPem,
      staticPublicKey: Buffer.from(staticKey).toString('base64'), devices: site.loadDevices(), packPool: 4,
    });
    await gen.connect('mqtts');
  });

  after(async () => {
    for (const p of live) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await gen?.close();
    await pool?.end();
    await site?.stop();
    await pgServer?.stop();
  });

  it('kill -9 of one instance mid-stream: every message the broker acknowledged is stored exactly once', async (t) => {
    const a = start('a');
    const b = start('b');
    await Promise.all([a.subscribed, b.subscribed]);
    const perDevice = 200;
    const total = perDevice * DEVICES.length;
    let phase: 'before' | 'killed' | 'restarted' = 'before';
    let atKill = 0;
    let atRestart = 0;
    let a2: IngestProcess | undefined;
    const actions: Promise<unknown>[] = [];
    const onProgress = (p: Progress) => {
      if (phase === 'before' && p.acked >= total * 0.3) {
        phase = 'killed';
        a.child.kill('SIGKILL');
        actions.push(a.exited, count().then((n) => (atKill = n)));
      } else if (phase === 'killed' && p.acked >= total * 0.6) {
        phase = 'restarted';
        actions.push(count().then((n) => (atRestart = n)));
        a2 = start('a');
      }
    };
    const report = await gen.run({ mode: 'mqtts', window: 4, perDevice, collectAcked: true }, onProgress);
    await Promise.all(actions);
    assert.equal(phase, 'restarted', 'the stream outlasted the kill and the restart');
    assert.equal(report.acked, total);
    record(report);
    assert.ok(a2 !== undefined);
    await a2.subscribed;
    await assertExactlyOnce();
    assert.equal(await a.exited, null, 'killed by a signal');
    assert.ok(atRestart > atKill, `the other instance kept storing while one was dead (${atKill} → ${atRestart})`);
    // The returning instance got what its session kept while it was dead.
    const a2Received = await metric(a2, 'vitalseal_ingest_messages_received_total{transport="mqtts"}');
    assert.ok(a2Received > 0);
    t.diagnostic(`${total} messages; stored at the kill ${atKill}, at the restart ${atRestart}; the returning instance received ${a2Received} (${await metric(a2, 'vitalseal_ingest_messages_duplicate_total')} already stored: committed before the kill, never acknowledged)`);
    assert.ok(await metric(b, 'vitalseal_ingest_messages_accepted_total{transport="mqtts"}') > 0);
    assert.doesNotMatch(site.broker.log(), /dropped/i, 'the broker dropped nothing from a queue');
  });

  it('an instance stopped (SIGTERM) and started again mid-stream loses nothing acknowledged', async () => {
    const [a, b] = [live.at(-1), live.find((p) => p.name === 'ingest-b')];
    assert.ok(a !== undefined && b !== undefined && a.name === 'ingest-a');
    const perDevice = 120;
    const total = perDevice * DEVICES.length;
    let phase: 'before' | 'stopped' | 'restarted' = 'before';
    let b2: IngestProcess | undefined;
    const actions: Promise<unknown>[] = [];
    const onProgress = (p: Progress) => {
      if (phase === 'before' && p.acked >= total * 0.3) {
        phase = 'stopped';
        b.child.kill('SIGTERM');
        actions.push(b.exited.then((code) => assert.equal(code, 0, `a graceful stop exits 0:\n${b.log().slice(-2000)}`)));
      } else if (phase === 'stopped' && p.acked >= total * 0.6) {
        phase = 'restarted';
        // The new process starts once the old one has exited (one process per client id).
        actions.push(b.exited.then(async () => {
          b2 = start('b');
          await b2.subscribed;
        }));
      }
    };
    const report = await gen.run({ mode: 'mqtts', window: 4, perDevice, collectAcked: true }, onProgress);
    await Promise.all(actions);
    assert.equal(phase, 'restarted');
    assert.equal(report.acked, total);
    record(report);
    await assertExactlyOnce();
    assert.match(b.log(), /"msg":"MQTT listener stopped"[\s\S]*"msg":"ingest service stopped"/);
    assert.ok(b2 !== undefined);
    assert.ok(sentTotal === [...acked.values()].reduce((n, s) => n + s.size, 0));
    for (const p of [a, b2]) {
      p.child.kill('SIGTERM');
      assert.equal(await p.exited, 0);
    }
  });
});
