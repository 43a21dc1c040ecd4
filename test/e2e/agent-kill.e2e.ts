/**
 * kill -9 of device agents at random moments while they stream (sealing, appending, sending,
 * connecting, starting up), each restarted as systemd's Restart=on-failure would: every message that
 * entered an agent's queue is stored by the ingest exactly once, across MQTTS (through mosquitto)
 * and CoAPS (certificate and PSK).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { assertWhole, delay, drainedAll, DuplicateTally, report } from './support/accounting.ts';
import { answering, delivering, killAndRestart, seeded, stackForSuite, THREE_DEVICES } from './support/scenario.ts';

const KILLS_PER_DEVICE = Number(process.env['VITALSEAL_E2E_AGENT_KILLS'] ?? 6);
const DEVICES = THREE_DEVICES.map((d) => d.id);

describe('e2e: kill -9 of agents mid-stream', () => {
  const stack = stackForSuite({ batchWindowMs: 250, devices: THREE_DEVICES });

  it(`${KILLS_PER_DEVICE} SIGKILLs per agent at random moments: every queued message stored exactly once`, { timeout: 600_000 }, async () => {
    const s = stack();
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
    assertWhole(figures);
    assert.equal(kills, KILLS_PER_DEVICE * DEVICES.length);
  });
});
