/**
 * examples/pulse-oximeter-coaps-psk.ts as its header says to try it: the oximeter driver's readings
 * cross CoAPS with a PSK and come back decrypted from the local ingest's API; nothing is left running.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cleanEnd, runExample } from './run-example.ts';

describe('examples/pulse-oximeter-coaps-psk.ts', () => {
  it('--local --seconds 6: sealed over CoAPS/PSK, stored at the ingest, everything stopped', { timeout: 120_000 }, async () => {
    const r = await runExample('pulse-oximeter-coaps-psk.ts', ['--local', '--seconds', '6']);
    assert.equal(cleanEnd(r), undefined);
    const agent = /^agent oxi-1: (\d+) messages sealed \((\d+) readings\), (\d+) acknowledged, \d+ left in the queue; coaps to 127\.0\.0\.1:\d+, DTLSv1\.3 TLS_\w+$/m.exec(r.stdout);
    assert.ok(agent, r.stdout);
    const stored = /^oxi-1: stored (\d+) messages \((\d+) readings\) at the ingest; last heart rate (\d+) beat\/min, SpO2 (\d+) %$/m.exec(r.stdout);
    assert.ok(stored, r.stdout);
    assert.ok(Number(stored[1]) >= 1, 'at least one message stored');
    assert.equal(stored[1], agent[3], 'every acknowledged message is stored');
    assert.ok(Math.abs(Number(stored[3]) - 72) <= 3, 'the simulated pulse (72 ± 2)');
    assert.equal(stored[4], '97', 'the simulated SpO2');
    assert.match(r.stderr, /"auth":"psk"/, 'the uplink authenticated with the PSK');
  });

  it('without --local it needs --config and --serial, and says so', async () => {
    const r = await runExample('pulse-oximeter-coaps-psk.ts', ['--seconds', '1']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /give --local .* or --config FILE/);
    assert.match(r.stderr, /usage:/);
  });
});
