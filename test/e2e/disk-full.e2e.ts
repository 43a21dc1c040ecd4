/**
 * The device's disk fills up while it cannot deliver (the broker away): its queue on a small tmpfs
 * of its own, which another program's filler file fills long before the queue's own capacity
 * (`queue.capacityBytes`, at least 1 MiB). Each batch that cannot be written is refused with a typed
 * error (`queue-write-failed`, cause ENOSPC), rolled back, logged and counted (`store_errors`, lost
 * readings): nothing half-written stays in the queue and no sequence number is used up. The
 * capacity policy (docs/agent.md) acts at `capacityBytes` and does not apply here: whatever the
 * policy, a file system that is full refuses the newest batch. When the space comes back, appends
 * resume; once the broker is back, everything that was accepted into the queue is stored exactly
 * once, every stored message still opens (the readings API decrypts them) and the queue restarts
 * clean.
 *
 * Reaching the capacity itself (drop-oldest, reject-new) takes over 1 MiB of queued vitals, about
 * ten minutes of a simulated patient: that policy is proven by test/agent/queue/, not here.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mountSmallDisk, type SmallDisk } from '../../scripts/lib/small-disk.ts';
import { startStack, type Stack } from '../../scripts/lib/stack.ts';
import { assertWhole, delay, drainedAll, DuplicateTally, report, waitFor } from './support/accounting.ts';
import { answering, delivering, unavailable } from './support/scenario.ts';

const DEVICES = ['bed-1'];

describe('e2e: disk full on the device', { skip: unavailable(['tmpfs']) }, () => {
  const disks: SmallDisk[] = [];
  let stack: Stack | undefined;

  before(async () => {
    const full = await mountSmallDisk({ sizeBytes: 1 << 20 });
    disks.push(full);
    stack = await startStack({
      batchWindowMs: 250,
      devices: [{ id: 'bed-1', transport: 'mqtts', keyStore: 'software', source: 'simulated', seed: 1, queueDir: join(full.dir, 'queue') }],
    });
  });
  after(async () => {
    await stack?.stop();
    for (const d of disks) await d.unmount();
  });

  it('a full file system refuses batches with a counted, typed error and corrupts nothing; what was queued is delivered once', { timeout: 600_000 }, async () => {
    const s = stack as Stack;
    const [full] = disks as [SmallDisk];
    const started = Date.now();
    await delivering(s, DEVICES);
    const logFrom = readFileSync(s.device('bed-1').logFile, 'utf8').length;

    // Nowhere to deliver: the device queues.
    await s.broker.down();
    // Another program fills bed-1's disk, leaving a few batches' worth.
    full.fill(16 * 1024);
    const errorsAt = await waitFor('bed-1 refusing batches for lack of space', 120_000, async () => {
      const st = await s.device('bed-1').status();
      return (st.pipeline['storeErrors'] ?? 0) > 0 ? Date.now() : undefined;
    });
    // Some seconds on a full disk: the agent keeps running, counting what it cannot keep.
    await delay(Math.max(0, 8000 - (Date.now() - errorsAt)));
    const onFull = await s.device('bed-1').status();
    assert.ok(s.device('bed-1').agent.alive, 'bed-1 still runs on a full disk');
    const storeErrors = onFull.pipeline['storeErrors'] ?? 0;
    const lostReadings = onFull.pipeline['lostReadings'] ?? 0;
    assert.ok(storeErrors > 0 && lostReadings > 0);
    assert.equal(onFull.pipeline['sealErrors'], 0);

    // The space comes back: appends resume.
    full.release();
    const nextAtRelease = onFull.queue.nextSeq;
    await waitFor('bed-1 queueing again', 30_000, async () => ((await s.device('bed-1').status()).queue.nextSeq > nextAtRelease + 2 ? true : undefined));
    const log = readFileSync(s.device('bed-1').logFile, 'utf8').slice(logFrom);
    assert.match(log, /"code":"queue-write-failed".*"cause":"ENOSPC".*batch could not be sealed and queued; its readings are lost/);
    assert.doesNotMatch(log, /uncaught|unhandled/i);

    // Delivery again.
    const brokerUp = Date.now();
    await s.broker.up();
    const duplicates = new DuplicateTally(s);
    const { figures, recovery } = await drainedAll(s, DEVICES, { at: brokerUp, after: 'the broker came back (the disk had space again)' }, () => ({ ms: 180_000 }));
    await duplicates.sample();

    // Nothing corrupt: the ingest opened everything it stored, and bed-1's queue opens clean. The
    // agent is stopped first and the stored count let settle: a live message stored between the
    // two requests below would otherwise make them disagree.
    const d1 = s.device('bed-1');
    assert.equal(await d1.agent.stop(), 0);
    type Bed = { device: { messages: number; rejections: number } };
    let bed1 = await s.api<Bed>('/api/v1/devices/bed-1');
    await waitFor('bed-1\'s stored count to settle', 30_000, async () => {
      await delay(500);
      const again = await s.api<Bed>('/api/v1/devices/bed-1');
      const settled = again.device.messages === bed1.device.messages;
      bed1 = again;
      return settled ? true : undefined;
    });
    const readings = await s.apiText(`/api/v1/devices/bed-1/readings?from=0&to=${Date.now() + 60_000}&limit=2000`);
    assert.equal(readings.status, 200);
    assert.equal(Number(readings.headers['x-vitalseal-messages']), Math.min(bed1.device.messages, 2000), 'every stored message decrypts');
    assert.equal(bed1.device.rejections, 0);
    d1.startAgent();
    await answering(d1);
    const reopened = await d1.status();
    assert.equal(reopened.queue.recovery.state, 'clean', `bed-1's queue after a full disk: ${JSON.stringify(reopened.queue.recovery)}`);

    report({
      scenario: 'disk-full', title: 'queue on a 1 MiB tmpfs filled by another program while the broker is away',
      devices: figures, duplicatesRemoved: duplicates.total,
      details: {
        'batches refused on a full disk (queue-write-failed, ENOSPC)': storeErrors,
        'readings in them (counted as lost_readings)': lostReadings,
        'queue after restart': reopened.queue.recovery.state,
      },
      recovery,
      seconds: (Date.now() - started) / 1000,
    });
    // No gap: a refused batch uses no sequence number.
    assertWhole(figures);
  });
});
