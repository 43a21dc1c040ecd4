/**
 * The ingest service embedded in a program of one's own, storing in PostgreSQL.
 *
 * `startIngest` runs what `vitalseal ingest run` runs: the power-on self-test, the key store and the
 * key hierarchy, the device registry, the HTTPS API with the enrolment endpoint and the dashboard,
 * and the transport listeners the program passes (`mqttListener`: one member of the broker's
 * shared subscription; `coapsListener`: CoAP over DTLS 1.3, certificates and PSKs). The program
 * adds what is its own: here a running tally of what was stored, from `core.service.onAccepted`,
 * and a graceful stop on SIGTERM (listeners first, then what is in flight drains, then the database
 * and key store close). The configuration is docs/ingest.md's; PostgreSQL is chosen by
 * `storage: { postgres: { connection: { file: /etc/vitalseal/pg-url } } }` (the connection string
 * in a 0600 file, never in the configuration).
 *
 * Try it on this machine: a private PostgreSQL cluster, a CA, mosquitto, and this program run as
 * the ingest service (with `--config`, as below) by scripts/lib/stack.ts; two devices send to it
 * (an MQTTS bedside monitor enrolled through this program's enrolment endpoint, a CoAPS pulse
 * oximeter with a PSK); the readings are then asked back from its API; everything stops at the end:
 *
 *   npx tsx examples/ingest-on-postgres.ts --local --seconds 10
 *
 * As the service (runs until SIGTERM; `vitalseal ingest keygen --config FILE` once beforehand):
 *
 *   node --no-allocation-site-pretenuring --max-semi-space-size=8 --import tsx examples/ingest-on-postgres.ts --config /etc/vitalseal/ingest.yaml
 *
 * (the flags are the ingest's node options, `INGEST_NODE_OPTIONS`: docs/ingest.md, "Node options").
 *
 * As the service it prints a line when it listens, a tally when it changes (`ingest: stored 11
 * messages: bed-1 6 (mqtts), oxi-2 5 (coaps)`) and a line when it stops; with --local, what the API
 * serves and what the program printed:
 *
 *   API: storage postgres, 2 active devices
 *   bed-1: stored 6 messages (31 readings, 30 ECG strips) at the ingest; last heart rate 72 beat/min, SpO2 97 %, ...
 *   oxi-2: stored 5 messages (27 readings, 25 ECG strips) at the ingest; last heart rate 73 beat/min, SpO2 98 %, ...
 *   the ingest program said: ingest: listening on https://127.0.0.1:36207 with postgres storage, software key store, listeners mqtt, coaps
 *   the ingest program stopped on SIGTERM (exit 0): ingest: stopped after storing 11 messages
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { coapsListener, cryptoSelfTest, INGEST_NODE_OPTIONS, loadIngestConfig, mqttListener, startIngest } from 'vitalseal/ingest';
import { startPostgres, type PostgresServer } from '../scripts/lib/postgres-server.ts';
import { describeStored } from './lib/ingest-api.ts';
import { parseExampleArgs, runFor, sayLocal, startLocalSite, type LocalSite } from './lib/local.ts';

// ───────────────────────────── the part to copy ─────────────────────────────

/** The service program: runs until SIGTERM/SIGINT (or `seconds`), then stops gracefully. */
export async function runIngestService(configFile: string, seconds: number | undefined): Promise<void> {
  const cfg = loadIngestConfig(configFile);
  // JSON lines on stderr; any logger with info/warn/error(fields, message) will do.
  const log = pino({ level: cfg.log.level, base: { service: 'ingest-on-postgres' } }, pino.destination({ dest: 2, sync: true }));
  const running = await startIngest(cfg, {
    env: process.env, // where { env: NAME } secret sources (key store PIN, passphrases) are read
    selfTest: cryptoSelfTest(), // power-on known-answer tests, before any key is opened
    log,
    listeners: { mqtt: mqttListener, coaps: coapsListener }, // the ones the configuration has sections for start
  });
  const listeners = [cfg.mqtt === undefined ? [] : ['mqtt'], cfg.coaps === undefined ? [] : ['coaps']].flat();
  console.log(`ingest: listening on ${running.http?.url ?? '(no https)'} with ${running.core.storage.kind} storage, `
    + `${running.core.keyStore.describe().kind} key store, listeners ${listeners.join(', ') || 'none'}`);

  // The program's own use of what is stored: a tally per device (the batch holds the decrypted readings).
  const perDevice = new Map<string, { messages: number; transport: string }>();
  let total = 0;
  let shown = 0;
  const unsubscribe = running.core.service?.onAccepted((e) => {
    const d = perDevice.get(e.deviceId) ?? { messages: 0, transport: e.transport };
    d.messages += 1;
    perDevice.set(e.deviceId, d);
    total += 1;
  });
  const tally = setInterval(() => {
    if (total === shown) return;
    shown = total;
    console.log(`ingest: stored ${total} messages: ${[...perDevice].map(([id, d]) => `${id} ${d.messages} (${d.transport})`).join(', ')}`);
  }, 2000);

  await runFor(seconds);
  clearInterval(tally);
  unsubscribe?.();
  await running.stop(); // listeners stop taking messages, in-flight ones are stored, then everything closes
  console.log(`ingest: stopped after storing ${total} messages`);
}

// ─────────────── local try-out scaffolding (not for copying) ───────────────

const USAGE = `usage:
  npx tsx examples/ingest-on-postgres.ts --local [--seconds 10]
  npx tsx examples/ingest-on-postgres.ts --config FILE [--seconds N]
`;

async function local(seconds: number): Promise<void> {
  let pg: PostgresServer | undefined;
  let site: LocalSite | undefined;
  try {
    sayLocal('starting a private PostgreSQL cluster (scripts/lib/postgres-server.ts)');
    pg = await startPostgres();
    const startedAt = Date.now();
    site = await startLocalSite({
      postgres: pg.connectionString,
      // The stack runs this very program as its ingest service, with `--config FILE` appended, and
      // with the ingest's node options (src/ingest/node-options.ts) as any deployment should.
      ingestCommand: { command: process.execPath, args: [...INGEST_NODE_OPTIONS, `--import=${import.meta.resolve('tsx')}`, fileURLToPath(import.meta.url)] },
      devices: [
        { id: 'bed-1', transport: 'mqtts', keyStore: 'software', source: 'simulated', seed: 1 },
        { id: 'oxi-2', transport: 'coaps', keyStore: 'software', auth: 'psk', source: 'simulated', seed: 2 },
      ],
    });
    await runFor(seconds);
    const posture = await site.api.get<{ service: { storage: string; devices: { active: number } } }>('/api/v1/posture');
    console.log(`API: storage ${posture.body.service.storage}, ${posture.body.service.devices.active} active devices`);
    // A device that came up late (a loaded machine) gets a little longer for its first message.
    for (const d of site.stack.devices) console.log(describeStored(await site.api.waitForStored(d.spec.id, startedAt, 1, 30_000)));
    const logFile = join(site.stack.dir, 'ingest', 'ingest.log');
    const code = await site.stack.ingest.stop(); // SIGTERM, as a service manager sends
    // What the program itself printed, as its service manager's journal would show it.
    const own = readFileSync(logFile, 'utf8').split('\n').filter((l) => l.startsWith('ingest: '));
    console.log(`the ingest program said: ${own[0] ?? '(nothing)'}`);
    console.log(`the ingest program stopped on SIGTERM (exit ${String(code)}): ${own.at(-1) ?? '(nothing)'}`);
  } finally {
    await site?.stop();
    await pg?.stop();
  }
}

async function main(): Promise<number> {
  const { common } = parseExampleArgs(USAGE, {});
  try {
    if (common.local) await local(common.seconds ?? 10);
    else await runIngestService(common.config ?? '', common.seconds);
    return 0;
  } catch (e) {
    process.stderr.write(`ingest-on-postgres: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main();
