/**
 * The process whose footprint agent.bench.ts measures: a real agent (createAgent) with one
 * simulated patient (1 Hz vitals, 250 Hz ECG, 1 s batches), the segment queue with fsync per
 * batch, and the loopback fixture uplink to the bench's receiver (test/support/fixture-uplink.ts;
 * the CoAPS/MQTTS transports are not built yet).
 *
 *   node --import tsx scripts/bench/agent-footprint-child.ts CONFIG.json RECEIVER_PORT
 *   node --import tsx scripts/bench/agent-footprint-child.ts --idle      (the baseline: same runtime, no agent)
 */
import { createAgent } from '../../src/agent/agent.ts';
import { loadAgentConfig } from '../../src/agent/config.ts';
import { silentLogger } from '../../src/agent/log.ts';
import { FixtureUplink } from '../../test/support/fixture-uplink.ts';

const [configPath, portText] = process.argv.slice(2);
process.on('SIGTERM', () => process.exit(0));
if (configPath === '--idle') {
  setInterval(() => undefined, 1000);
  process.stdout.write('ready\n');
} else {
  if (configPath === undefined || portText === undefined) throw new Error('usage: agent-footprint-child CONFIG PORT | --idle');
  const port = Number(portText);
  const agent = await createAgent({ config: loadAgentConfig(configPath), log: silentLogger(), uplinks: { primary: new FixtureUplink(() => port) } });
  process.removeAllListeners('SIGTERM');
  process.on('SIGTERM', () => void agent.stop().then(() => process.exit(0)));
  await agent.start();
  process.stdout.write('ready\n');
}
