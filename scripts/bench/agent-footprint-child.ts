/**
 * The process whose footprint agent.bench.ts measures: a real agent (createAgent) with one
 * simulated patient (1 Hz vitals, 250 Hz ECG, 1 s batches), the segment queue with fsync per
 * batch, and the transport its configuration names (MQTTS to mosquitto, or CoAPS over DTLS 1.3),
 * built from that configuration as `vitalseal agent run` builds it.
 *
 *   node --import tsx scripts/bench/agent-footprint-child.ts CONFIG.json
 *   node --import tsx scripts/bench/agent-footprint-child.ts --idle      (the baseline: same runtime, no agent)
 */
import { createAgent } from '../../src/agent/agent.ts';
import { loadAgentConfig } from '../../src/agent/config.ts';
import { silentLogger } from '../../src/agent/log.ts';

const [configPath] = process.argv.slice(2);
process.on('SIGTERM', () => process.exit(0));
if (configPath === '--idle') {
  setInterval(() => undefined, 1000);
  process.stdout.write('ready\n');
} else {
  if (configPath === undefined) throw new Error('usage: agent-footprint-child CONFIG | --idle');
  const agent = await createAgent({ config: loadAgentConfig(configPath), log: silentLogger() });
  process.removeAllListeners('SIGTERM');
  process.on('SIGTERM', () => void agent.stop().then(() => process.exit(0)));
  await agent.start();
  process.stdout.write('ready\n');
}
