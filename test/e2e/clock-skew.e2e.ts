/**
 * Devices whose clocks are far off (libfaketime preloaded into the agent: wall-clock time moves,
 * monotonic time does not), the ingest, broker and CA on true time:
 *
 *   ahead-m, ahead-c   +2 days, MQTTS and CoAPS: every certificate is still inside its validity as
 *                      the device sees it (the ingest's and broker's service certificates were
 *                      issued minutes ago, for 397 days): they connect and deliver. The readings
 *                      are stored with the device's own timestamps (two days ahead) beside the
 *                      ingest's receipt time; the readings API finds them in the device's time
 *                      window, not in "the last hour".
 *   behind-m           −2 days, MQTTS: the broker's certificate is not valid yet as the device sees
 *                      it (notBefore = issuance − 5 min): TLS refused on the device, with a clear,
 *                      typed error (`not-yet-valid`), retried with back-off; readings keep queueing.
 *   far-c              +400 days, CoAPS: the ingest's certificate (397 days) has expired as the device
 *                      sees it: DTLS refused on the device (`expired`), the same way.
 *
 * Then the two refused devices get their clocks right (the agent restarted without the offset, as
 * after an NTP fix and a service restart): the backlog is delivered, exactly once, with the
 * timestamps it was sealed with. The ingest's sealing-epoch policy works on its own clock, so the
 * skew raises no epoch alert.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { faketimeEnv } from '../../scripts/lib/faketime.ts';
import { assertWhole, drainedAll, DuplicateTally, report, storedInOrder, waitFor } from './support/accounting.ts';
import { delivering, stackForSuite, unavailable } from './support/scenario.ts';

const DAY = 86_400_000;
const SKEW: Readonly<Record<string, { offset: string; days: number }>> = {
  'ahead-m': { offset: '+2d', days: 2 },
  'ahead-c': { offset: '+2d', days: 2 },
  'behind-m': { offset: '-2d', days: -2 },
  'far-c': { offset: '+400d', days: 400 },
};
const REFUSED: Readonly<Record<string, RegExp>> = {
  'behind-m': /"code":"not-yet-valid"/,
  'far-c': /"code":"expired"/,
};

describe('e2e: device clocks far off', { skip: unavailable(['faketime']) }, () => {
  const stack = stackForSuite({
    devices: Object.entries(SKEW).map(([id, s], i) => ({
      id, transport: id.endsWith('-m') ? 'mqtts' as const : 'coaps' as const, keyStore: 'software' as const, source: 'simulated' as const, seed: i + 1,
      env: faketimeEnv(s.offset),
    })),
  });

  it('within validity: delivered with the device\'s timestamps; beyond it: refused on the device with a clear error, delivered once the clock is right', { timeout: 600_000 }, async () => {
    const s = stack();
    const started = Date.now();
    await delivering(s, ['ahead-m', 'ahead-c']);

    // The refused ones: a typed certificate error, retried, nothing acknowledged, readings queued.
    const refusals: Record<string, string> = {};
    for (const id of Object.keys(REFUSED)) {
      const d = s.device(id);
      await waitFor(`${id} refusing the server's certificate`, 60_000, () => (REFUSED[id]?.test(readFileSync(d.logFile, 'utf8')) === true ? true : undefined));
      // Readings keep being sealed and queued.
      const st = await waitFor(`${id} queueing`, 30_000, async () => {
        const x = await d.status();
        return x.queue.nextSeq > 3 ? x : undefined;
      });
      assert.notEqual(st.transport.link, 'connected');
      assert.equal(st.queue.ackedThrough, 0, `${id}: nothing delivered`);
      const line = readFileSync(d.logFile, 'utf8').split('\n').find((l) => REFUSED[id]?.test(l) === true) ?? '';
      refusals[id] = `${String((JSON.parse(line) as { code: string }).code)}; its own certificate: ${st.certificate?.message ?? 'n/a'}`;
      assert.match(line, /"level":"error"/, `${id}: logged as an error (needs an operator), not as a routine transient failure`);
    }

    // Within validity: stored with the device's timestamps, two days ahead of receipt.
    for (const id of ['ahead-m', 'ahead-c']) {
      const rows = storedInOrder(s.ingestDb, id);
      assert.ok(rows.length > 0);
      for (const r of rows) {
        const skew = (r.firstTime - r.receivedAt) / DAY;
        assert.ok(Math.abs(skew - 2) < 0.01, `${id}: seq ${r.seq} device time ${new Date(r.firstTime).toISOString()} vs received ${new Date(r.receivedAt).toISOString()}`);
      }
      const lastHour = await s.apiText(`/api/v1/devices/${id}/readings`);
      assert.equal(lastHour.headers['x-vitalseal-messages'], '0', `${id}: "the last hour" of ingest time holds none of its readings`);
      const theirs = await s.apiText(`/api/v1/devices/${id}/readings?from=${Date.now() + 2 * DAY - 3_600_000}&to=${Date.now() + 2 * DAY + 3_600_000}&limit=2000`);
      assert.ok(Number(theirs.headers['x-vitalseal-messages']) > 0, `${id}: found in the device's own time window`);
    }

    // The clocks are put right: the backlog goes out, with the timestamps it was sealed with.
    const queuedWhileSkewed: Record<string, number> = {};
    let fixedAt = 0;
    for (const id of Object.keys(REFUSED)) {
      const d = s.device(id);
      assert.equal(await d.agent.stop(), 0);
      queuedWhileSkewed[id] = (JSON.parse(readFileSync(`${d.queueDir}/state.json`, 'utf8')) as { nextSeq: number }).nextSeq - 1;
      d.startAgent({ env: {} });
      fixedAt = Date.now();
    }
    await delivering(s, Object.keys(REFUSED), 120_000, Math.min(...Object.values(queuedWhileSkewed)));

    const duplicates = new DuplicateTally(s);
    const { figures, recovery } = await drainedAll(s, Object.keys(SKEW), { at: fixedAt, after: 'the refused agents restarted on true time' });
    await duplicates.sample();
    for (const id of Object.keys(REFUSED)) {
      const rows = storedInOrder(s.ingestDb, id);
      const skewed = rows.filter((r) => r.seq <= (queuedWhileSkewed[id] ?? 0));
      assert.equal(skewed.length, queuedWhileSkewed[id], `${id}: the whole backlog stored`);
      for (const r of skewed) assert.ok(Math.abs((r.firstTime - r.receivedAt) / DAY - (SKEW[id]?.days ?? 0)) < 0.05, `${id}: seq ${r.seq} keeps the timestamp it was sealed with`);
      for (const r of rows.filter((x) => x.seq > (queuedWhileSkewed[id] ?? 0))) assert.ok(Math.abs(r.firstTime - r.receivedAt) < 60_000, `${id}: seq ${r.seq} after the fix is on true time`);
    }
    const metrics = (await s.apiText('/metrics')).body;
    const alerts = metrics.split('\n').filter((l) => l.startsWith('vitalseal_ingest_alerts_total')).map((l) => l.replace('vitalseal_ingest_alerts_total', '')).join(' ');
    const rejections: number[] = [];
    for (const id of Object.keys(SKEW)) rejections.push((await s.api<{ device: { rejections: number } }>(`/api/v1/devices/${id}`)).device.rejections);

    report({
      scenario: 'clock-skew', title: 'device clocks +2 d (MQTTS, CoAPS), −2 d (MQTTS), +400 d (CoAPS) with libfaketime',
      devices: figures, duplicatesRemoved: duplicates.total,
      details: {
        '+2 d': 'delivered; stored with device timestamps 2 d ahead of receipt',
        '−2 d (MQTTS)': `refused on the device: ${refusals['behind-m'] ?? ''}`,
        '+400 d (CoAPS)': `refused on the device: ${refusals['far-c'] ?? ''}`,
        'backlog after the clock fix': Object.entries(queuedWhileSkewed).map(([id, n]) => `${id} ${n}`).join(' '),
        'ingest rejections': rejections.reduce((a, b) => a + b, 0),
        'ingest alerts': alerts.trim() === '' ? 'none' : alerts.trim(),
      },
      recovery,
      seconds: (Date.now() - started) / 1000,
    });
    assertWhole(figures);
    assert.deepEqual(rejections, [0, 0, 0, 0], 'the ingest refused nothing: device time is the device\'s claim, not a credential');
    assert.doesNotMatch(alerts, /epoch/, 'no sealing-epoch alert: the policy runs on the ingest\'s clock');
  });
});
