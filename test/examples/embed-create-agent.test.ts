/**
 * examples/embed-create-agent.ts as a device maker's program runs under a service manager: its own
 * sensor source inside an embedded agent, a status display from agent.status() and the metrics
 * endpoint, and a graceful stop on SIGTERM, after which the ingest's API has the temperatures.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SysfsMilliCelsius, TemperatureProbe } from '../../examples/embed-create-agent.ts';
import { cleanEnd, startExample } from './run-example.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

describe('examples/embed-create-agent.ts', () => {
  it('the probe driver reads millidegrees once per period, refuses garbled reads and reports the fault', () => {
    const dir = mkdtempSync(join(tmpdir(), 'probe-'));
    try {
      const file = join(dir, 'temp1_input');
      const probe = new TemperatureProbe('t', new SysfsMilliCelsius(file), 1000);
      writeFileSync(file, '36912\n');
      probe.start(0);
      assert.deepEqual(probe.read(0).vitals.map((v) => [v.name, v.value, v.unit]), [['body-temperature', 36.9, 'Cel']]);
      assert.deepEqual(probe.read(500).vitals, [], 'one reading per period');
      writeFileSync(file, '36\u00009');
      assert.deepEqual(probe.read(1000).vitals, []);
      assert.equal(probe.health().ok, false);
      assert.match(probe.health().detail, /probe unreadable \(not a sysfs millidegree value; 1 failed reads\)/);
      rmSync(file);
      assert.deepEqual(probe.read(2000).vitals, []);
      assert.match(probe.health().detail, /ENOENT; 2 failed reads/);
      writeFileSync(file, '37100');
      assert.deepEqual(probe.read(3000).vitals.map((v) => v.value), [37.1]);
      assert.equal(probe.health().ok, true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--local: shows status and metrics while running, stops gracefully on SIGTERM, the ingest has the readings', { timeout: 120_000 }, async () => {
    const run = startExample('embed-create-agent.ts', ['--local'], 100_000);
    await run.waitFor(/^running: device temp-1, self-test passed \(\d+ primitives\), sending over coaps$/m, 60_000);
    await run.waitFor(/^status: probe 3\d\.\d °C ok; [1-9]\d* messages sealed, [1-9]\d* acknowledged, queue \d+; coaps connected; readings_total [1-9]\d*, uplink_acknowledged_total [1-9]\d*$/m, 30_000);
    run.child.kill('SIGTERM');
    const r = await run.done;
    assert.equal(cleanEnd(r), undefined);
    assert.match(r.stdout, /^stopped \(SIGTERM\); queue state saved$/m);
    const agent = /^agent temp-1: (\d+) messages sealed \((\d+) readings\), (\d+) acknowledged, \d+ left in the queue; coaps to 127\.0\.0\.1:\d+, DTLSv1\.3 TLS_\w+$/m.exec(r.stdout);
    assert.ok(agent, r.stdout);
    const stored = /^temp-1: stored (\d+) messages \((\d+) readings\) at the ingest; last temperature (3\d\.\d) °C$/m.exec(r.stdout);
    assert.ok(stored, r.stdout);
    // Every acknowledged message is stored; one stored as the agent stopped may have lost its acknowledgement.
    assert.ok(Number(agent[3]) <= Number(stored[1]) && Number(stored[1]) <= Number(agent[1]), `acknowledged ${agent[3]} <= stored ${stored[1]} <= sealed ${agent[1]}`);
    // The simulated probe swings 36.75..37.05 °C; printed to one decimal that is 36.7..37.1.
    const last = Number(stored[3]);
    assert.ok(last >= 36.7 && last <= 37.1, `the simulated probe's range, not ${stored[3]} °C`);
    assert.match(r.stderr, /"msg":"agent stopped; queue state saved"/);
  });
});
