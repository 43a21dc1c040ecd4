/**
 * An HL7 v2 gateway in front of a bedside monitor.
 *
 * Many monitors already send their numbers as HL7 v2 ORU^R01 over MLLP, in clear, on the ward's
 * network. A small box next to the monitor runs the agent with its HL7 gateway source: it accepts
 * the monitor's messages, maps the observations (LOINC or IEEE 11073 MDC codes, UCUM or MDC units)
 * to vitals, seals them, and answers AA only once the sealed readings are durable in its queue;
 * from there they go to the ingest over MQTTS or CoAPS, with the box's own certificate (enrolled on
 * first boot through the ingest's enrolment endpoint, lib/enrol.ts). The monitor's messages never
 * cross the network in clear beyond the box; patient fields (PID) are parsed but never kept.
 *
 * Try it on this machine (a CA, mosquitto and the ingest on 127.0.0.1; a simulated monitor,
 * scripts/lib/hl7-monitor.ts, sends one ORU^R01 a second; everything stops at the end):
 *
 *   npx tsx examples/hl7-gateway.ts --local --seconds 10 [--transport mqtts|coaps]
 *
 * On the gateway box (the configuration's `sources` holds `{ type: hl7-mllp, id: monitor, listen:
 * "10.0.5.2:2575", acceptSenders: [MONITOR] }`; `localCertAgentConfig` in lib/local.ts shows the
 * rest of its shape; the token file only on first boot; without --seconds it runs until SIGTERM):
 *
 *   npx tsx examples/hl7-gateway.ts --config /etc/vitalseal/gateway.yaml [--enrol-token-file /run/vitalseal/enrol.token] \
 *     [--seconds N] [--api https://ingest.ward7:8443/ --api-token-file reader.token --api-ca-file fleet-root.pem]
 *
 * It prints the gateway's address, its HL7 answers, the agent's totals and what the ingest stored:
 *
 *   enrolled monitor-gw: certificate .../monitor-gw-identity/chain.pem
 *   gateway monitor: listening on 127.0.0.1:38205 for HL7 v2 ORU^R01 over MLLP
 *   HL7 monitor: 3 messages answered AA, 0 AE, 0 AR; 15 readings taken
 *   agent monitor-gw: 3 messages sealed (15 readings), 3 acknowledged, 0 left in the queue; mqtts to 127.0.0.1:43919, TLSv1.3 TLS_AES_256_GCM_SHA384
 *   monitor-gw: stored 3 messages (15 readings) at the ingest; last heart rate 79 beat/min, SpO2 97 %, respiration 15 /min, temperature 36.9 °C, NIBP ...
 */
import { createAgent, createLogger, loadAgentConfig, type AgentStatus } from 'vitalseal/agent';
import { runMonitor } from '../scripts/lib/hl7-monitor.ts';
import { describeAgent } from './lib/agent-report.ts';
import { enrolOnFirstBoot } from './lib/enrol.ts';
import { describeStored } from './lib/ingest-api.ts';
import { localCertAgentConfig, localSoftwareKeystore, parseExampleArgs, runFor, sayLocal, startLocalSite, type LocalSite } from './lib/local.ts';

// ───────────────────────────── the part to copy ─────────────────────────────

/** One line per HL7 source from `agent.status().hl7`. */
export function describeHl7(s: AgentStatus): string[] {
  return Object.entries(s.hl7).map(([id, c]) => `HL7 ${id}: ${c['messagesAccepted'] ?? 0} messages answered AA, ${c['messagesErrored'] ?? 0} AE, `
    + `${c['messagesRejected'] ?? 0} AR; ${c['readings'] ?? 0} readings taken`);
}

/**
 * The gateway program: enrol on first boot (when `tokenFile` is given and there is no certificate
 * yet), then run the agent configured by `configFile` (its HL7 gateway source listening for the
 * monitor) for `seconds` or until SIGINT/SIGTERM. On stop the gateway stops accepting and finishes
 * the messages it is storing, so the monitor gets its answer for each. `onListening` is called with
 * the gateways' bound addresses (a port of 0 in the configuration picks a free one).
 */
export async function runGateway(
  configFile: string, tokenFile: string | undefined, seconds: number | undefined,
  onListening?: (addresses: Record<string, { host: string; port: number }>) => void,
): Promise<{ final: AgentStatus; running: AgentStatus }> {
  const config = loadAgentConfig(configFile, process.env);
  if (await enrolOnFirstBoot(config, tokenFile)) console.log(`enrolled ${config.device.id}: certificate ${config.transport.primary.certFile ?? '?'}`);
  const log = createLogger({ level: config.log.level, destination: process.stderr, base: { device: config.device.id } });
  const agent = await createAgent({ config, log });
  await agent.start();
  for (const [id, a] of Object.entries(agent.gatewayAddresses)) console.log(`gateway ${id}: listening on ${a.host}:${a.port} for HL7 v2 ORU^R01 over MLLP`);
  onListening?.(agent.gatewayAddresses);
  await runFor(seconds);
  const running = agent.status();
  await agent.stop();
  return { final: agent.status(), running };
}

// ─────────────── local try-out scaffolding (not for copying) ───────────────

const USAGE = `usage:
  npx tsx examples/hl7-gateway.ts --local [--seconds 10] [--transport mqtts|coaps]
  npx tsx examples/hl7-gateway.ts --config FILE [--enrol-token-file FILE] [--seconds N]
      [--api URL --api-token-file FILE --api-ca-file ROOT.pem]
`;

const DEVICE = 'monitor-gw';

async function main(): Promise<number> {
  const { common, values } = parseExampleArgs(USAGE, { 'enrol-token-file': { type: 'string' }, transport: { type: 'string' } });
  const transport = values['transport'] ?? 'mqtts';
  if (transport !== 'mqtts' && transport !== 'coaps') {
    process.stderr.write(`--transport must be mqtts or coaps\n\n${USAGE}`);
    return 2;
  }
  if (!common.local && values['transport'] !== undefined) {
    process.stderr.write(`--transport is for --local; a real gateway's transport is in its configuration\n\n${USAGE}`);
    return 2;
  }
  let site: LocalSite | undefined;
  let monitor: ReturnType<typeof runMonitor> | undefined;
  try {
    let configFile = common.config ?? '';
    let tokenFile = typeof values['enrol-token-file'] === 'string' ? values['enrol-token-file'] : undefined;
    let api = common.api;
    if (common.local) {
      site = await startLocalSite({ extraMqttDevices: [DEVICE] });
      ({ configFile, tokenFile } = await localCertAgentConfig(site, DEVICE, {
        transport,
        keystore: localSoftwareKeystore(site, DEVICE), // development grade; a TPM or PKCS#11 token on a real box
        // Port 0: the gateway takes a free port as it binds and the monitor starts once it is known.
        // A port picked beforehand could be taken meanwhile by another program, which the monitor
        // would then be talking to.
        sources: [{ type: 'hl7-mllp', id: 'monitor', listen: '127.0.0.1:0', acceptSenders: ['MONITOR'] }],
      }));
      api = site.api;
    }
    const startMonitor = (addresses: Record<string, { host: string; port: number }>) => {
      const a = addresses['monitor'];
      if (!common.local || a === undefined) return;
      sayLocal(`starting a simulated bedside monitor: ORU^R01 over MLLP to ${a.host}:${a.port}, one a second`);
      monitor = runMonitor({ host: a.host, port: a.port, intervalMs: 1000, nibpEvery: 5 });
    };
    const startedAt = Date.now();
    const { final, running } = await runGateway(configFile, tokenFile, common.seconds, startMonitor);
    for (const line of describeHl7(final)) console.log(line);
    if (monitor !== undefined) {
      monitor.stop();
      const c = monitor.counts();
      sayLocal(`the simulated monitor sent ${c.sent} messages: ${c.accepted} answered AA, ${c.refused} otherwise`);
    }
    console.log(describeAgent(final, running));
    if (api !== undefined) console.log(describeStored(await api.stored(final.device, startedAt - 1000)));
    return 0;
  } catch (e) {
    process.stderr.write(`hl7-gateway: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  } finally {
    monitor?.stop();
    await site?.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main();
