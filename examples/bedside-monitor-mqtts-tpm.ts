/**
 * A bedside monitor over MQTTS with its device key in a TPM.
 *
 * The agent, embedded here, reads a patient (the agent's simulated patient: heart rate, SpO2,
 * respiration, temperature, blood pressure, ECG at 250 Hz; a real monitor would bring its own
 * `SensorSource`, see embed-create-agent.ts), seals each second, and publishes it over MQTT v5 with
 * TLS 1.3 and a client certificate whose private key never leaves the TPM: the TLS handshake is
 * signed inside it. On first boot the device enrols through the ingest's enrolment endpoint with a
 * one-time token (lib/enrol.ts): the key is made in the TPM, the certificate issued for it; after
 * that the agent renews the certificate by itself (`certificate.renew`).
 *
 * Try it on this machine (a CA, mosquitto and the ingest on 127.0.0.1, swtpm behind tpm2-abrmd as
 * the TPM, an enrolment token; everything stops at the end):
 *
 *   npx tsx examples/bedside-monitor-mqtts-tpm.ts --local --seconds 10
 *
 * On a board with a TPM (`identity: { keystore: { kind: tpm, tcti: "device:/dev/tpmrm0" },
 * keyLabel: device-identity }` in the configuration; `localCertAgentConfig` in lib/local.ts shows
 * the rest of its shape; the token file only on first boot; without --seconds it runs until SIGTERM):
 *
 *   npx tsx examples/bedside-monitor-mqtts-tpm.ts --config /etc/vitalseal/agent.yaml [--enrol-token-file /run/vitalseal/enrol.token] \
 *     [--seconds N] [--api https://ingest.ward7:8443/ --api-token-file reader.token --api-ca-file fleet-root.pem]
 *
 * It prints the enrolment, the certificate's state, the agent's totals and what the ingest stored:
 *
 *   enrolled bed-7: identity key made in the tpm key store, certificate .../bed-7-identity/chain.pem
 *   certificate: ok (729 days left), renewal idle
 *   agent bed-7: 7 messages sealed (35 readings), 6 acknowledged, 1 left in the queue; mqtts to 127.0.0.1:38113, TLSv1.3 TLS_AES_256_GCM_SHA384
 *   bed-7: stored 6 messages (31 readings, 30 ECG strips) at the ingest; last heart rate 74 beat/min, SpO2 97 %, respiration 14 /min, ...
 */
import { join } from 'node:path';
import { createAgent, createLogger, loadAgentConfig, type AgentStatus } from 'vitalseal/agent';
import { startSwtpm, type Swtpm } from '../scripts/lib/swtpm.ts';
import { describeAgent } from './lib/agent-report.ts';
import { enrolOnFirstBoot } from './lib/enrol.ts';
import { describeStored } from './lib/ingest-api.ts';
import { localCertAgentConfig, parseExampleArgs, runFor, sayLocal, startLocalSite, type LocalSite } from './lib/local.ts';

// ───────────────────────────── the part to copy ─────────────────────────────

/**
 * The device program: enrol on first boot (when `tokenFile` is given and there is no certificate
 * yet), then run the agent configured by `configFile` for `seconds` (or until SIGINT/SIGTERM).
 */
export async function runBedsideMonitor(configFile: string, tokenFile: string | undefined, seconds: number | undefined): Promise<{ final: AgentStatus; running: AgentStatus }> {
  const config = loadAgentConfig(configFile, process.env);
  const identity = config.transport.primary.identity;
  if (await enrolOnFirstBoot(config, tokenFile)) {
    console.log(`enrolled ${config.device.id}: identity key made in the ${identity?.keystore.kind ?? '?'} key store, certificate ${config.transport.primary.certFile ?? '?'}`);
  }
  const log = createLogger({ level: config.log.level, destination: process.stderr, base: { device: config.device.id } });
  // The sources (a simulated patient) come from the configuration; MQTTS with the TPM key: the
  // TLS connection runs in openssl s_client, whose tpm2 provider signs inside the TPM (docs/transport-mqtts.md).
  const agent = await createAgent({ config, log });
  await agent.start();
  const cert = agent.status().certificate;
  if (cert !== null) console.log(`certificate: ${cert.state} (${String(cert.daysLeft)} days left), renewal ${cert.renewal?.state ?? 'not configured'}`);
  await runFor(seconds);
  const running = agent.status();
  await agent.stop();
  return { final: agent.status(), running };
}

// ─────────────── local try-out scaffolding (not for copying) ───────────────

const USAGE = `usage:
  npx tsx examples/bedside-monitor-mqtts-tpm.ts --local [--seconds 10]
  npx tsx examples/bedside-monitor-mqtts-tpm.ts --config FILE [--enrol-token-file FILE] [--seconds N]
      [--api URL --api-token-file FILE --api-ca-file ROOT.pem]
`;

const DEVICE = 'bed-7';

async function main(): Promise<number> {
  const { common, values } = parseExampleArgs(USAGE, { 'enrol-token-file': { type: 'string' } });
  let site: LocalSite | undefined;
  let tpm: Swtpm | undefined;
  try {
    let configFile = common.config ?? '';
    let tokenFile = typeof values['enrol-token-file'] === 'string' ? values['enrol-token-file'] : undefined;
    let api = common.api;
    if (common.local) {
      site = await startLocalSite({ extraMqttDevices: [DEVICE] });
      sayLocal('starting a TPM 2.0 (swtpm behind tpm2-abrmd, as /dev/tpmrm0 is on a board)');
      tpm = await startSwtpm({ resourceManager: true });
      Object.assign(process.env, tpm.env); // the resource manager's private D-Bus, for this process, tpm2-tools and s_client
      ({ configFile, tokenFile } = await localCertAgentConfig(site, DEVICE, {
        transport: 'mqtts',
        keystore: { kind: 'tpm', tcti: tpm.tcti, dir: join(site.dir, 'tpm') },
        sources: [{ type: 'simulated', id: 'patient', seed: 7 }],
      }));
      api = site.api;
    }
    const startedAt = Date.now();
    const { final, running } = await runBedsideMonitor(configFile, tokenFile, common.seconds);
    console.log(describeAgent(final, running));
    if (api !== undefined) console.log(describeStored(await api.stored(final.device, startedAt - 1000)));
    return 0;
  } catch (e) {
    process.stderr.write(`bedside-monitor-mqtts-tpm: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  } finally {
    await site?.stop();
    await tpm?.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main();
