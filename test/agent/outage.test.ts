/**
 * Outage: the receiver goes away for a while and comes back on the same port. The backlog built up
 * meanwhile is delivered in order, live data keeps flowing during the drain (interleaved, not
 * waiting behind the backlog), and everything arrives exactly once after dedupe.
 *
 * The receiver is the test fixture over a real loopback socket (test/support/fixture-uplink.ts);
 * with the real transports it becomes the ingest service over MQTTS or CoAPS (docs/agent.md).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { createAgent } from '../../src/agent/agent.ts';
import { parseAgentConfig } from '../../src/agent/config.ts';
import { silentLogger } from '../../src/agent/log.ts';
import { FixtureReceiver, FixtureUplink } from '../support/fixture-uplink.ts';
import { agentTestEnv } from './support.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const waitFor = async (cond: () => boolean, what: string, ms = 15_000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
};

describe('agent: receiver outage', () => {
  const env = agentTestEnv('vitalseal-outage-');
  after(() => env.cleanup());

  it('delivers the backlog in order after the outage while live data continues, each message exactly once', async () => {
    const receiver = new FixtureReceiver({ ingestPrivateKey: env.ingestPrivateKey, deviceId: 'bed-7', serviceMs: 4 });
    await receiver.start();
    const config = parseAgentConfig(env.config({
      batch: { windowMs: 20 },
      uplink: { window: 8, liveSlots: 1, backoffInitialMs: 50, backoffMaxMs: 200 },
      metrics: { listen: false },
    }), { baseDir: env.dir });
    const uplink = new FixtureUplink(() => receiver.port);
    const agent = await createAgent({ config, log: silentLogger(), uplinks: { primary: uplink } });
    let lastAppended = 0;
    agent.on('appended', ({ seq }) => { lastAppended = seq; });
    // Stop everything however the test ends, so a failed assertion reports instead of hanging.
    let stopped = false;
    const stopAll = async () => {
      if (stopped) return;
      stopped = true;
      await agent.stop();
      await receiver.stop();
    };
    let liveFrom = 0;
    try {
      await agent.start();
      await waitFor(() => receiver.messages.size >= 10, 'first deliveries');

      await receiver.stop();
      const connectsBefore = agent.status().uplink['connects'] ?? 0;
      await sleep(1500);
      receiver.markArrivals();
      await receiver.start();
      // Which messages are backlog is the scheduler's decision when it sees the reconnect: read
      // its boundary then (the link may be up a moment before the scheduler knows it).
      await waitFor(() => (agent.status().uplink['connects'] ?? 0) > connectsBefore, 'reconnect');
      liveFrom = agent.status().transport.liveFrom;
      const target = liveFrom + 40;
      await waitFor(() => lastAppended >= target && receiver.messages.has(target), 'live data after the drain');
      assert.equal(agent.status().uplink['connects'], connectsBefore + 1, 'one reconnect: the ordering checks below assume it');
    } finally {
      await stopAll();
    }
    const beforeOutage = receiver.deliveredBeforeMark();
    const backlog = Array.from({ length: liveFrom - 1 }, (_, i) => i + 1).filter((s) => !beforeOutage.has(s));
    assert.ok(backlog.length >= 40, `a real backlog built up (${backlog.length})`);

    assert.deepEqual(receiver.problems, []);
    assert.equal(receiver.corrupt, 0);
    const after = receiver.arrivalsSinceMark();
    const firstSeen = new Map<number, number>();
    after.forEach((s, i) => { if (!firstSeen.has(s)) firstSeen.set(s, i); });
    // In order: the backlog's first arrivals after the outage come oldest first.
    const backlogOrder = after.filter((s, i) => s < liveFrom && firstSeen.get(s) === i);
    assert.deepEqual(backlogOrder, [...backlogOrder].sort((a, b) => a - b), 'backlog delivered in order');
    for (const s of backlog) assert.ok(receiver.messages.has(s), `backlog message ${s} delivered`);
    // Not starved: live messages arrived while the backlog was still draining.
    const lastBacklogAt = Math.max(...backlog.filter((s) => s < liveFrom).map((s) => firstSeen.get(s) ?? -1));
    const liveDuringDrain = [...firstSeen].filter(([s, i]) => s >= liveFrom && i < lastBacklogAt).length;
    assert.ok(liveDuringDrain >= 1, `live data interleaved with the backlog (${liveDuringDrain} live messages before the last backlog one)`);
    // Exactly once after dedupe, nothing missing up to what was acknowledged.
    const got = [...receiver.messages.keys()].sort((a, b) => a - b);
    assert.deepEqual(got, Array.from({ length: got.length }, (_, i) => i + 1));
    const s = agent.status();
    assert.ok(s.uplink['transientErrors'] as number >= 1 && (s.uplink['connects'] as number) >= 2, JSON.stringify(s.uplink));
    receiver.destroy();
  });

  it('fails over to the second transport when the primary is down, and returns to the primary when it is back', async () => {
    const primaryRx = new FixtureReceiver({ ingestPrivateKey: env.ingestPrivateKey, deviceId: 'bed-7' });
    const failoverRx = new FixtureReceiver({ ingestPrivateKey: env.ingestPrivateKey, deviceId: 'bed-7' });
    const primaryPort = await primaryRx.start();
    await primaryRx.stop(); // the primary is down from the start; its port is kept for later
    await failoverRx.start();
    const config = parseAgentConfig(env.config({
      batch: { windowMs: 50 },
      queue: { dir: `${env.dir}/queue-failover` },
      status: { socket: `${env.dir}/failover.sock` },
      uplink: { backoffInitialMs: 20, backoffMaxMs: 50, failoverAfter: 3, primaryProbeSeconds: 1 },
      metrics: { listen: false },
    }), { baseDir: env.dir });
    const agent = await createAgent({ config, log: silentLogger(), uplinks: { primary: new FixtureUplink(() => primaryPort), failover: new FixtureUplink(() => failoverRx.port) } });
    let last = 0;
    agent.on('appended', ({ seq }) => { last = seq; });
    await agent.start();
    await waitFor(() => failoverRx.messages.size >= 5, 'delivery over the failover');
    assert.equal(agent.status().transport.target, 'failover');
    await primaryRx.start();
    await waitFor(() => agent.status().transport.target === 'primary' && primaryRx.messages.size >= 3, 'return to the primary');
    const target = last + 3;
    await waitFor(() => last >= target && [...Array(target).keys()].every((k) => primaryRx.messages.has(k + 1) || failoverRx.messages.has(k + 1)), 'everything delivered');
    await agent.stop();
    await primaryRx.stop();
    await failoverRx.stop();
    assert.deepEqual([...primaryRx.problems, ...failoverRx.problems], []);
    const s = agent.status();
    assert.equal(s.uplink['failovers'], 1);
    primaryRx.destroy();
    failoverRx.destroy();
  });
});
