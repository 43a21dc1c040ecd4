/**
 * examples/ingest-on-postgres.ts as its header says to try it: the program itself runs as the
 * ingest service (startIngest with both listeners) on a private PostgreSQL cluster, an MQTTS device
 * enrolled through it and a CoAPS PSK device send to it, its API serves their readings, it stops
 * cleanly on SIGTERM, and nothing is left running (PostgreSQL included).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cleanEnd, runExample } from './run-example.ts';

describe('examples/ingest-on-postgres.ts', () => {
  it('--local --seconds 6: the embedded ingest on PostgreSQL stores both devices\' readings and serves them', { timeout: 150_000 }, async () => {
    const r = await runExample('ingest-on-postgres.ts', ['--local', '--seconds', '6'], 140_000);
    assert.equal(cleanEnd(r), undefined);
    assert.match(r.stdout, /^API: storage postgres, 2 active devices$/m);
    const counts: number[] = [];
    for (const id of ['bed-1', 'oxi-2']) {
      const m = new RegExp(`^${id}: stored (\\d+) messages \\((\\d+) readings, \\d+ ECG strips\\) at the ingest; last heart rate \\d+ beat/min, SpO2 \\d+ %`, 'm').exec(r.stdout);
      assert.ok(m, `${id}:\n${r.stdout}`);
      assert.ok(Number(m[1]) >= 1);
      counts.push(Number(m[1]));
    }
    assert.match(r.stdout, /^the ingest program said: ingest: listening on https:\/\/127\.0\.0\.1:\d+ with postgres storage, software key store, listeners mqtt, coaps$/m);
    const stopped = /^the ingest program stopped on SIGTERM \(exit 0\): ingest: stopped after storing (\d+) messages$/m.exec(r.stdout);
    assert.ok(stopped, r.stdout);
    assert.ok(Number(stopped[1]) >= counts.reduce((a, b) => a + b), 'it stored at least what the API served before the stop');
  });

  it('as the service, a missing configuration is a clear error and exit code 1', async () => {
    const r = await runExample('ingest-on-postgres.ts', ['--config', 'test/examples/no-such-ingest.yaml']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^ingest-on-postgres: .*no-such-ingest\.yaml/m);
  });
});
