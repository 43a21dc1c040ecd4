/**
 * kill -9 of device agents at random moments while they stream (sealing, appending, sending,
 * connecting, starting up), each restarted as systemd's Restart=on-failure would: every message that
 * entered an agent's queue is stored by the ingest exactly once, across MQTTS (through mosquitto)
 * and CoAPS (certificate and PSK).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startStack, type Stack } from '../../scripts/lib/stack.ts';
import { delay, drainedAll, DuplicateTally, report } from './support/accounting.ts';
import { answering, delivering, killAndRestart, seeded } from './support/scenario.ts';

const KILLS_PER_DEVICE = Number(process.env['VITALSEAL_E2E_AGENT_KILLS'] ?? 6);
const DEVICES = ['bed-1', 'bed-2', 'oxi-3'];

describe('e2e: kill -9 of agents mid-stream', () => {
  let stack: Stack | undefined;
  before(async () => {
    stack = await startStack({
      batchWindowMs: 250,
      devices: [
        { id: 'bed-1', transport: 'mqtts', keyStore: 'software', source: 'simulated', seed: 1 },
        { id: 'bed-2', transport: 'coaps', keyStore: 'software', source: 'simulated', seed: 2 },
        { id: 'oxi-3', transport: 'coaps', keyStore: 'software', auth: 'psk', source: 'simulated', seed: 3 },
      ],
    });
  });
  after(async () => {
    await stack?.stop();
  });

  it(`${KILLS_PER_DEVICE} SIGKILLs per agent at random moments: every queued message stored exactly once`, { timeout: 600_000 }, async () => {
    const s = stack as Stack;
    const started = Date.now();
    const { seed, between } = seeded('agent-kill');
    await delivering(s, DEVICES);

    // Each device on its own schedule, concurrently: kill, restart after 0.5 s, let it run
    // between 0.2 and 5 s after it answers again (sometimes less: a kill during start-up).
    let kills = 0;
    let killedStarting = 0;
    let lastRestart = 0;
    await Promise.all(DEVICES.map(async (id) => {
      const device = s.device(id);
      for (let k = 0; k < KILLS_PER_DEVICE; k++) {
        if (between(0, 1) < 0.2) {
          // A kill while the agent is still starting (self-test, key store, queue recovery).
          await delay(between(100, 1500));
          killedStarting += 1;
        } else {
          await answering(device);
          await delay(between(200, 5000));
        }
        await killAndRestart(device, 500);
        lastRestart = Date.now();
        kills += 1;
      }
      await answering(device);
    }));

    const duplicates = new DuplicateTally(s);
    const { figures, recovery } = await drainedAll(s, DEVICES, { at: lastRestart, after: 'the last agent restart' });
    await duplicates.sample();
    const recovered = DEVICES.reduce((n, id) => n + (readFileSync(s.device(id).logFile, 'utf8').match(/queue recovered/gi)?.length ?? 0), 0);

    report({
      scenario: 'agent-kill', title: 'kill -9 of agents at random moments, restarted as systemd would',
      devices: figures, duplicatesRemoved: duplicates.total,
      details: { kills, 'kills during start-up': killedStarting, 'torn queue tails recovered': recovered, seed },
      recovery,
      seconds: (Date.now() - started) / 1000,
    });
    for (const f of figures) {
      assert.equal(f.lost, 0, `${f.device}: acknowledged messages missing at the ingest: ${JSON.stringify(f.gaps)}`);
      assert.equal(f.stored, f.sent, `${f.device}: every message that entered the queue is stored (gaps ${JSON.stringify(f.gaps)})`);
      assert.equal(f.dropped, 0, `${f.device}: nothing dropped by the capacity policy`);
      assert.deepEqual(f.gaps, [], `${f.device}: no gaps`);
      assert.ok(f.sent > 0);
    }
    assert.equal(kills, KILLS_PER_DEVICE * DEVICES.length);
  });
});
