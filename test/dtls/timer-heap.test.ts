import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { TimerHeap } from '../../src/dtls/connection/timer-heap.ts';

describe('TimerHeap (server session deadlines)', () => {
  it('agrees with a plain map under random set/clear/due operations', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.nat(19), fc.option(fc.nat(1000), { nil: undefined }), fc.boolean()), { maxLength: 300 }), (ops) => {
      const owners = Array.from({ length: 20 }, (_, i) => ({ i }));
      const heap = new TimerHeap<{ i: number }>();
      const model = new Map<{ i: number }, number>();
      let now = 0;
      for (const [who, at, tick] of ops) {
        const o = owners[who] as { i: number };
        heap.set(o, at);
        if (at === undefined) model.delete(o);
        else model.set(o, at);
        const expectedNext = model.size === 0 ? undefined : Math.min(...model.values());
        assert.equal(heap.next(), expectedNext);
        assert.equal(heap.size, model.size);
        if (tick) {
          now += 100;
          const due = heap.due(now);
          const expected = [...model.entries()].filter(([, t]) => t <= now).sort((a, b) => a[1] - b[1]).map(([k]) => k);
          assert.deepEqual(new Set(due), new Set(expected));
          for (const k of expected) model.delete(k);
        }
      }
    }), { seed: 11, numRuns: 300 });
  });
});
