/**
 * Embedding the device agent in a device maker's own program.
 *
 * The program owns its sensor (here a body-temperature probe behind a driver class), hands it to
 * `createAgent` as a `SensorSource`, and gets everything else from the agent: the power-on
 * self-test, sealing to the ingest's pinned key, the crash-safe queue, the uplink with back-off.
 * It reads `agent.status()` and the Prometheus metrics for its own display, and stops gracefully on
 * SIGTERM (what systemd sends): the last batch is sealed and queued, the queue position saved.
 *
 * The probe is read the way Linux exposes most temperature sensors, an IIO or hwmon sysfs file in
 * millidegrees Celsius (e.g. /sys/bus/iio/devices/iio:device0/in_temp_object_input of an infrared
 * thermometer, or a hwmon temp1_input of a skin probe). A real I2C or SPI part would replace
 * `SysfsMilliCelsius` and keep the rest.
 *
 * Try it on this machine (a local installation on 127.0.0.1, the device a CoAPS PSK device, the
 * probe a file that a simulated patient's temperature is written to; stop it with Ctrl-C, or
 * SIGTERM to its node process, or give --seconds):
 *
 *   npx tsx examples/embed-create-agent.ts --local
 *
 * On a device (any agent configuration, docs/agent.md; `sources` may be left out of it, since the
 * program brings its own; without --seconds it runs until SIGTERM):
 *
 *   npx tsx examples/embed-create-agent.ts --config /etc/vitalseal/agent.yaml --probe /sys/class/hwmon/hwmon2/temp1_input \
 *     [--seconds N] [--api https://ingest.ward7:8443/ --api-token-file reader.token --api-ca-file fleet-root.pem]
 *
 * It prints a status line every 2 s from `agent.status()` and the metrics endpoint, then, after the
 * stop, the agent's totals and what the ingest's API stored:
 *
 *   status: probe 36.9 °C ok; 3 messages sealed, 3 acknowledged, queue 0; coaps connected; readings_total 6, uplink_acknowledged_total 3
 *   ...
 *   stopped (SIGTERM); queue state saved
 *   agent temp-1: 5 messages sealed (10 readings), 5 acknowledged, 0 left in the queue; coaps to 127.0.0.1:41213, DTLSv1.3 TLS_AES_128_GCM_SHA256
 *   temp-1: stored 5 messages (10 readings) at the ingest; last temperature 36.9 °C
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { createAgent, createLogger, loadAgentConfig, type Agent, type AgentStatus } from 'vitalseal/agent';
import { VITAL_UNITS, type SensorHealth, type SensorReadout, type SensorSource, type VitalSample } from 'vitalseal/agent/sensors';
import { describeAgent } from './lib/agent-report.ts';
import { describeStored } from './lib/ingest-api.ts';
import { localPskAgentConfig, parseExampleArgs, runFor, startLocalSite, type LocalSite } from './lib/local.ts';

// ───────────────────────────── the part to copy ─────────────────────────────

/** Where the driver gets a raw value: one read of the sensor, in millidegrees Celsius. */
export interface TemperatureBus {
  readMilliCelsius(): number;
}

/** A Linux IIO/hwmon sysfs attribute: a decimal number of millidegrees, e.g. "36912\n". */
export class SysfsMilliCelsius implements TemperatureBus {
  constructor(readonly path: string) {}

  readMilliCelsius(): number {
    const text = readFileSync(this.path, 'latin1');
    // Strict: a short or garbled read is an error, never a reading.
    if (!/^-?\d{1,7}\n?$/.test(text)) throw new Error('not a sysfs millidegree value');
    return Number.parseInt(text, 10);
  }
}

/**
 * The driver: polls the probe every `periodMs`, keeps at most one reading per period, and reports
 * its condition. The agent's pipeline calls `read(now)` several times a second and seals what it
 * returns (values outside the body-temperature range, 15-47 °C, are dropped and counted there).
 */
export class TemperatureProbe implements SensorSource {
  #pending: VitalSample[] = [];
  #nextAt = 0;
  #last: number | undefined;
  #failures = 0;
  #lastError: string | undefined;

  constructor(readonly id: string, readonly bus: TemperatureBus, readonly periodMs = 1000) {}

  start(now: number): void {
    this.#nextAt = now;
  }

  read(now: number): SensorReadout {
    if (now >= this.#nextAt) {
      this.#nextAt = now + this.periodMs;
      try {
        const celsius = Math.round(this.bus.readMilliCelsius() / 100) / 10; // 0.1 °C, what a thermometer shows
        this.#last = celsius;
        this.#lastError = undefined;
        this.#pending.push({ name: 'body-temperature', time: now, value: celsius, unit: VITAL_UNITS['body-temperature'] });
      } catch (e) {
        this.#failures += 1;
        this.#lastError = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      }
    }
    const vitals = this.#pending;
    this.#pending = [];
    return { vitals, waveforms: [] };
  }

  stop(): void {
    this.#pending = [];
  }

  health(): SensorHealth {
    if (this.#lastError !== undefined) return { ok: false, detail: `probe unreadable (${this.#lastError}; ${this.#failures} failed reads)` };
    return { ok: true, detail: this.#last === undefined ? 'probe not read yet' : `probe ${this.#last.toFixed(1)} °C` };
  }
}

/** GET the agent's Prometheus endpoint (what a scraper sees) and pick some series. */
function scrape(address: { host: string; port: number }, names: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    request({ host: address.host, port: address.port, path: '/metrics', timeout: 2000 }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve(names.map((n) => `${n} ${new RegExp(`^vitalseal_agent_${n} (\\S+)$`, 'm').exec(text)?.[1] ?? '?'}`).join(', ')));
    }).on('error', reject).end();
  });
}

/** The program's own status display, from `agent.status()` and the metrics. */
async function statusLine(agent: Agent, probe: TemperatureProbe): Promise<string> {
  const s = agent.status();
  const health = probe.health();
  const metrics = agent.metricsAddress === undefined ? '' : `; ${await scrape(agent.metricsAddress, ['readings_total', 'uplink_acknowledged_total'])}`;
  return `status: ${health.detail} ${health.ok ? 'ok' : 'FAULT'}; ${s.pipeline['messages'] ?? 0} messages sealed, ${s.uplink['acknowledged'] ?? 0} acknowledged, `
    + `queue ${s.queue.depth}; ${s.transport.kind} ${s.transport.link}${metrics}`;
}

/** The device program. Runs until SIGTERM/SIGINT (or `seconds`), then stops the agent gracefully. */
export async function runDevice(configFile: string, probePath: string, seconds: number | undefined): Promise<{ final: AgentStatus; running: AgentStatus; why: string }> {
  const config = loadAgentConfig(configFile, process.env, { sourcesOptional: true }); // the probe is ours, not the file's
  const log = createLogger({ level: config.log.level, destination: process.stderr, base: { device: config.device.id } });
  const probe = new TemperatureProbe('temperature', new SysfsMilliCelsius(probePath));
  const agent = await createAgent({ config, sources: [probe], log });
  await agent.start();
  console.log(`running: device ${config.device.id}, self-test passed (${agent.status().selfTest.passed.length} primitives), sending over ${config.transport.primary.kind}`);
  const display = setInterval(() => void statusLine(agent, probe).then((l) => console.log(l), () => undefined), 2000);
  const why = await runFor(seconds); // SIGTERM or SIGINT ends the wait; see lib/local.ts stopSignal
  clearInterval(display);
  const running = agent.status();
  console.log(`stopping (${why})`);
  await agent.stop(); // last batch sealed and queued, acknowledged position and queue state saved
  console.log(`stopped (${why}); queue state saved`);
  return { final: agent.status(), running, why };
}

// ─────────────── local try-out scaffolding (not for copying) ───────────────

const USAGE = `usage:
  npx tsx examples/embed-create-agent.ts --local [--seconds N]
  npx tsx examples/embed-create-agent.ts --config FILE --probe SYSFS_FILE [--seconds N]
      [--api URL --api-token-file FILE --api-ca-file ROOT.pem]
`;

/** A patient's temperature, written to `path` as a sysfs attribute would show it (atomically). */
function simulateProbe(path: string): () => void {
  const write = () => {
    const milli = Math.round(36_900 + 150 * Math.sin(Date.now() / 20_000));
    writeFileSync(`${path}.tmp`, `${milli}\n`);
    renameSync(`${path}.tmp`, path);
  };
  write();
  const t = setInterval(write, 500);
  return () => clearInterval(t);
}

async function main(): Promise<number> {
  const { common, values } = parseExampleArgs(USAGE, { probe: { type: 'string' } });
  if (!common.local && typeof values['probe'] !== 'string') {
    process.stderr.write(`--probe FILE is required without --local\n\n${USAGE}`);
    return 2;
  }
  let site: LocalSite | undefined;
  let stopProbe = () => undefined as void;
  try {
    let configFile = common.config ?? '';
    let probePath = String(values['probe']);
    let api = common.api;
    if (common.local) {
      site = await startLocalSite();
      // The metrics endpoint on a free loopback port (9464 by default).
      configFile = await localPskAgentConfig(site, 'temp-1', { metrics: { listen: '127.0.0.1:0' } });
      probePath = join(site.dir, 'in_temp_input');
      stopProbe = simulateProbe(probePath);
      api = site.api;
    }
    const startedAt = Date.now();
    const { final, running } = await runDevice(configFile, probePath, common.seconds);
    console.log(describeAgent(final, running));
    if (api !== undefined) console.log(describeStored(await api.stored(final.device, startedAt - 1000)));
    return 0;
  } catch (e) {
    process.stderr.write(`embed-create-agent: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  } finally {
    stopProbe();
    await site?.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main();
