/**
 * kill -9 of the ingest service mid-stream, several times, and a restart after a random pause:
 * nothing acknowledged is lost, nothing is stored twice. MQTTS devices keep publishing to the broker
 * (the ingest's persistent session holds its share until it returns); CoAPS devices get no answer
 * while it is away, keep their messages and send them again.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startStack, type Stack } from '../../scripts/lib/stack.ts';
import { delay, drainedAll, DuplicateTally, report } from './support/accounting.ts';
import { delivering, seeded } from './support/scenario.ts';

const KILLS = Number(process.env['VITALSEAL_E2E_INGEST_KILLS'] ?? 4);
const DEVICES = ['bed-1', 'bed-2', 'oxi-3'];

describe('e2e: kill -9 of the ingest service mid-stream', () => {
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

  it(`${KILLS} SIGKILLs of the ingest: every acknowledged message stored once`, { timeout: 600_000 }, async () => {
    const s = stack as Stack;
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
    for (const f of figures) {
      assert.equal(f.lost, 0, `${f.device}: acknowledged messages missing at the ingest: ${JSON.stringify(f.gaps)}`);
      assert.equal(f.stored, f.sent, `${f.device}: every message that entered the queue is stored`);
      assert.deepEqual(f.gaps, []);
    }
  });
});
