/**
 * kill -9 of the ingest service mid-stream, several times, and a restart after a random pause:
 * nothing acknowledged is lost, nothing is stored twice. MQTTS devices keep publishing to the broker
 * (the ingest's persistent session holds its share until it returns); CoAPS devices get no answer
 * while it is away, keep their messages and send them again.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { assertWhole, delay, drainedAll, DuplicateTally, report } from './support/accounting.ts';
import { delivering, seeded, stackForSuite, THREE_DEVICES } from './support/scenario.ts';

const KILLS = Number(process.env['VITALSEAL_E2E_INGEST_KILLS'] ?? 4);
const DEVICES = THREE_DEVICES.map((d) => d.id);

describe('e2e: kill -9 of the ingest service mid-stream', () => {
  const stack = stackForSuite({ batchWindowMs: 250, devices: THREE_DEVICES });

  it(`${KILLS} SIGKILLs of the ingest: every acknowledged message stored once`, { timeout: 600_000 }, async () => {
    const s = stack();
    const started = Date.now();
    const { seed, between } = seeded('ingest-kill');
    await delivering(s, DEVICES);
    const duplicates = new DuplicateTally(s);
    let downMs = 0;
    let lastRestart = 0;
    for (let k = 0; k < KILLS; k++) {
      await delay(between(1000, 6000));
      await duplicates.sample();
      const exit = await s.ingest.kill();
      assert.equal(exit, 'SIGKILL');
      const pause = between(500, 4000);
      const t0 = Date.now();
      await delay(pause);
      lastRestart = Date.now();
      await s.startIngest();
      downMs += Date.now() - t0;
    }
    const { figures, recovery } = await drainedAll(s, DEVICES, { at: lastRestart, after: 'the last ingest restart began' });
    await duplicates.sample();

    report({
      scenario: 'ingest-kill', title: 'kill -9 of the ingest service mid-stream, restarted after a random pause',
      devices: figures, duplicatesRemoved: duplicates.total,
      details: { kills: KILLS, 'ingest away (s, incl. start-up)': Math.round(downMs / 100) / 10, seed },
      recovery,
      seconds: (Date.now() - started) / 1000,
    });
    assertWhole(figures);
  });
});
