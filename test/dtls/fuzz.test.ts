/**
 * A short seeded slice of `npm run fuzz`: mutated handshake datagrams and random bytes into the
 * server's datagram entry point must never throw, never hang, and never grow state past its
 * limits. The full run (a million inputs and more) is `npm run fuzz`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fuzzDtlsServer } from '../../scripts/fuzz/dtls-server.ts';

describe('DTLS server fuzzing (seeded slice)', () => {
  it('40,000 mutated datagrams: no throw, no hang, limits held', async (t) => {
    // maxInputMs is a hang detector, not a speed check (speed is `npm run fuzz`'s report): it must
    // hold on a loaded CI machine, so it is generous.
    const stats = await fuzzDtlsServer({ iterations: 40_000, seed: 20_240_611, maxInputMs: 15_000 });
    t.diagnostic(JSON.stringify(stats));
    assert.equal(stats.inputs, 40_000);
    assert.ok(stats.sessionsCreated > 0, 'some mutated ClientHellos still made sessions (the deep paths ran)');
    assert.ok((stats.outcomes['answered'] ?? 0) > 0);
  });
});
