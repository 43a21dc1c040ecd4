/**
 * A pulse oximeter over CoAPS with a pre-shared key.
 *
 * The serial oximeter driver of serial-pulse-oximeter.ts (`OximeterProtocol`, a sans-I/O parser of
 * the 5-byte frames) feeds an agent embedded in this program. The agent seals each second of
 * readings (COSE, to the ingest's pinned X25519 key), keeps it in its durable queue, and sends it as
 * CoAP over DTLS 1.3 authenticated with an external PSK: no certificate, no private key operation,
 * for the most constrained devices. The operator registers the device and writes its key once, to
 * a 0600 file that goes onto the device:
 *
 *   vitalseal ingest devices add-psk --config ingest.yaml --device-id oxi-1 --key-out psk.key
 *
 * Try it on this machine (starts a CA, mosquitto and the ingest on 127.0.0.1, registers the PSK,
 * feeds a simulated oximeter through a FIFO, stops everything at the end):
 *
 *   npx tsx examples/pulse-oximeter-coaps-psk.ts --local --seconds 10
 *
 * On a device (`localPskAgentConfig` in lib/local.ts shows the configuration's shape; set the line up first with
 * `stty -F /dev/ttyUSB0 19200 raw -echo`; without --seconds it runs until SIGTERM):
 *
 *   npx tsx examples/pulse-oximeter-coaps-psk.ts --config /etc/vitalseal/oximeter.yaml --serial /dev/ttyUSB0 \
 *     [--seconds N] [--api https://ingest.ward7:8443/ --api-token-file reader.token --api-ca-file fleet-root.pem]
 *
 * It prints what the device knows (messages sealed and acknowledged, the DTLS suite) and what the
 * ingest's API says it stored, decrypted:
 *
 *   agent oxi-1: 5 messages sealed (14 readings), 4 acknowledged, 1 left in the queue; coaps to 127.0.0.1:33569, DTLSv1.3 TLS_AES_128_GCM_SHA256
 *   oxi-1: stored 4 messages (12 readings) at the ingest; last heart rate 72 beat/min, SpO2 97 %
 *
 * (The last batch is sealed as the agent stops; it stays in the queue and goes out at the next start.)
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, createReadStream, openSync } from 'node:fs';
import { join } from 'node:path';
import { createAgent, createLogger, loadAgentConfig, type AgentStatus } from 'vitalseal/agent';
import { StreamSensorSource } from 'vitalseal/agent/sensors';
import { describeAgent } from './lib/agent-report.ts';
import { describeStored } from './lib/ingest-api.ts';
import { localPskAgentConfig, parseExampleArgs, runFor, startLocalSite, type LocalSite } from './lib/local.ts';
import { OximeterProtocol, simulate } from './serial-pulse-oximeter.ts';

// ───────────────────────────── the part to copy ─────────────────────────────

/**
 * The device program: the oximeter on `serialPath`, an embedded agent configured by `configFile`
 * (device id, pinned ingest key, queue, `transport.primary: { kind: coaps, psk: { keyFile } }`).
 * Runs for `seconds` (or until SIGINT/SIGTERM), stops gracefully: the last batch is sealed and
 * queued, what was not acknowledged stays in the queue for the next start.
 */
export async function runOximeter(configFile: string, serialPath: string, seconds: number | undefined): Promise<{ final: AgentStatus; running: AgentStatus }> {
  const config = loadAgentConfig(configFile, process.env, { sourcesOptional: true }); // the oximeter is ours, not the file's
  const oximeter = new StreamSensorSource({
    id: 'oximeter',
    driver: new OximeterProtocol(), // one heart rate and one SpO2 a second, from ~60 frames
    open: () => createReadStream(serialPath),
    clock: { now: () => Date.now() },
  });
  // JSON log lines (never a reading, a key or a payload) on stderr, where the service manager keeps them.
  const log = createLogger({ level: config.log.level, destination: process.stderr, base: { device: config.device.id } });
  // Self-test, pinned ingest key, durable queue, the CoAPS uplink with the PSK read from its file.
  const agent = await createAgent({ config, sources: [oximeter], log });
  await agent.start();
  await runFor(seconds);
  const running = agent.status(); // the link's peer and DTLS suite, while it is up
  await agent.stop();
  return { final: agent.status(), running };
}

// ─────────────── local try-out scaffolding (not for copying) ───────────────

const USAGE = `usage:
  npx tsx examples/pulse-oximeter-coaps-psk.ts --local [--seconds 10]
  npx tsx examples/pulse-oximeter-coaps-psk.ts --config FILE --serial /dev/ttyUSB0 [--seconds N]
      [--api URL --api-token-file FILE --api-ca-file ROOT.pem]
`;

async function main(): Promise<number> {
  const { common, values } = parseExampleArgs(USAGE, { serial: { type: 'string' } });
  if (!common.local && typeof values['serial'] !== 'string') {
    process.stderr.write(`--serial DEVICE is required without --local\n\n${USAGE}`);
    return 2;
  }
  let site: LocalSite | undefined;
  let fifo: string | undefined;
  try {
    let configFile = common.config ?? '';
    let serial = String(values['serial']);
    let api = common.api;
    let fed: Promise<void> | undefined;
    if (common.local) {
      site = await startLocalSite();
      // COSE with AES-CCM and an 8-byte tag: the suite of devices with AES hardware and little else.
      configFile = await localPskAgentConfig(site, 'oxi-1', { sealing: { alg: 'aes-ccm-16-64-128', ingestPublicKeyFile: site.stack.ingestPublicKeyFile } });
      serial = fifo = join(site.dir, 'ttyV0');
      execFileSync('mkfifo', [serial]); // a FIFO stands in for the serial line
      fed = simulate(serial, common.seconds ?? 86_400);
      api = site.api;
    }
    const startedAt = Date.now();
    const { final, running } = await runOximeter(configFile, serial, common.seconds);
    await fed;
    console.log(describeAgent(final, running));
    if (api !== undefined) console.log(describeStored(await api.stored(final.device, startedAt - 1000)));
    return 0;
  } catch (e) {
    process.stderr.write(`pulse-oximeter-coaps-psk: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  } finally {
    // If the agent never opened the line, the simulator still waits to open its end: let it go.
    if (fifo !== undefined) {
      try {
        closeSync(openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK));
      } catch {
        // already gone
      }
    }
    await site?.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main();
