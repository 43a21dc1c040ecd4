/**
 * The QueueStore contract. Every queue implementation runs it:
 *   runQueueContract('segment', (opts) => openSegmentQueue({ dir: tmp(), ...opts }));
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { FullPolicy, QueueLimits, QueueStore } from '../../../src/agent/queue/index.ts';
import { ApiMisuse } from '../../../src/util/errors.ts';

export interface QueueFactoryOptions {
  limits?: Partial<QueueLimits>;
  fullPolicy?: FullPolicy;
}

/** A payload that starts like a tagged COSE_Encrypt0 (0xd0), so stores that insist on sealed data accept it. */
export function sealedLike(n: number, size = 32): Uint8Array {
  const p = new Uint8Array(size);
  p[0] = 0xd0;
  for (let i = 1; i < size; i++) p[i] = (n * 31 + i) & 0xff;
  return p;
}

export function runQueueContract(name: string, factory: (opts?: QueueFactoryOptions) => Promise<QueueStore>): void {
  describe(`QueueStore contract: ${name}`, () => {
    it('numbers messages from 1 in order and returns them oldest first', async () => {
      const q = await factory();
      assert.deepEqual(await q.append([sealedLike(1), sealedLike(2)]), [1, 2]);
      assert.deepEqual(await q.append([sealedLike(3)]), [3]);
      const got = await q.peek(10);
      assert.deepEqual(got.map((m) => m.seq), [1, 2, 3]);
      assert.deepEqual(got[2]?.payload, sealedLike(3));
      assert.equal(q.stats().depth, 3);
      await q.close();
    });

    it('removes only what ack covers; peek after a position', async () => {
      const q = await factory();
      await q.append([1, 2, 3, 4].map((n) => sealedLike(n)));
      await q.ack(2);
      assert.deepEqual((await q.peek(10)).map((m) => m.seq), [3, 4]);
      assert.deepEqual((await q.peek(10, 3)).map((m) => m.seq), [4]);
      assert.deepEqual((await q.peek(1)).map((m) => m.seq), [3]);
      await q.ack(1); // below the position: ignored
      assert.equal(q.stats().ackedThrough, 2);
      await q.ack(4);
      assert.equal(q.stats().depth, 0);
      assert.deepEqual(await q.peek(10), []);
      await q.close();
    });

    it('refuses an ack for a sequence never appended, empty and oversized messages', async () => {
      const q = await factory({ limits: { maxMessageBytes: 100 } });
      await q.append([sealedLike(1)]);
      await assert.rejects(q.ack(2), (e) => e instanceof ApiMisuse && e.code === 'queue-ack-ahead');
      await assert.rejects(q.append([new Uint8Array(0)]), TypeError);
      await assert.rejects(q.append([sealedLike(1, 101)]), (e) => e instanceof ApiMisuse && e.code === 'queue-message-too-large');
      await q.close();
    });

    it('when full keeps the newest, counts the dropped, and raises the alarm first', async () => {
      const q = await factory({ limits: { capacityBytes: 480, highWater: 0.5 } }); // 10 messages of 32+16 bytes
      await q.append([1, 2, 3, 4].map((n) => sealedLike(n)));
      assert.equal(q.stats().nearlyFull, false);
      await q.append([5, 6].map((n) => sealedLike(n)));
      assert.equal(q.stats().nearlyFull, true);
      await q.append([7, 8, 9, 10, 11, 12].map((n) => sealedLike(n)));
      const s = q.stats();
      assert.equal(s.dropped, 2);
      assert.equal(s.depth, 10);
      assert.deepEqual((await q.peek(1))[0]?.seq, 3);
      await q.close();
    });

    it('with reject-new refuses appends when full and keeps what it has', async () => {
      const q = await factory({ limits: { capacityBytes: 96 }, fullPolicy: 'reject-new' });
      await q.append([sealedLike(1), sealedLike(2)]);
      await assert.rejects(q.append([sealedLike(3)]), (e) => e instanceof ApiMisuse && e.code === 'queue-full');
      assert.deepEqual((await q.peek(10)).map((m) => m.seq), [1, 2]);
      await q.close();
    });

    it('appendWith hands build the numbers the messages get, and concurrent appends never share them', async () => {
      const q = await factory();
      await q.append([sealedLike(1)]);
      // Each build waits a different time, so a racing implementation would interleave numbers.
      const tasks = [3, 1, 2, 0].map((delay, k) => q.appendWith(2, async (first) => {
        await new Promise((r) => setTimeout(r, delay));
        return [sealedLike(first), sealedLike(first + 1)];
      }).then((seqs) => ({ k, seqs })));
      const done = await Promise.all(tasks);
      const all = done.flatMap((d) => d.seqs).sort((a, b) => a - b);
      assert.deepEqual(all, [2, 3, 4, 5, 6, 7, 8, 9]);
      for (const m of await q.peek(100)) assert.deepEqual(m.payload, sealedLike(m.seq), `payload of ${m.seq} was built for it`);
      await q.close();
    });

    it('appendWith: a build that throws uses no number; a wrong count is refused', async () => {
      const q = await factory();
      await assert.rejects(q.appendWith(1, () => { throw new Error('seal failed'); }), /seal failed/);
      await assert.rejects(q.appendWith(2, (first) => [sealedLike(first)]), (e) => e instanceof ApiMisuse && e.code === 'queue-build-count');
      await assert.rejects(q.appendWith(0, () => []), RangeError);
      assert.deepEqual(await q.appendWith(1, (first) => [sealedLike(first)]), [1]);
      assert.equal(q.stats().nextSeq, 2);
      await q.close();
    });

    it('refuses use after close', async () => {
      const q = await factory();
      await q.close();
      await assert.rejects(q.append([sealedLike(1)]), (e) => e instanceof ApiMisuse && e.code === 'queue-closed');
    });
  });
}
