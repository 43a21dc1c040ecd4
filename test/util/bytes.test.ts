/**
 * allocUninit (src/util/bytes.ts): views carved from shared 8 KiB slabs must never overlap, keep
 * Node's 8-byte alignment, and not be detachable by transferring one view's buffer.
 */
import assert from 'node:assert/strict';
import { MessageChannel } from 'node:worker_threads';
import { it } from 'node:test';
import { allocUninit } from '../../src/util/bytes.ts';

it('views of every size up to half a slab never overlap and stay 8-byte aligned', () => {
  const views: Uint8Array[] = [];
  for (let i = 0; i < 3000; i++) {
    const v = allocUninit(1 + ((i * 977) % 4096));
    assert.equal(v.byteOffset % 8, 0);
    v.fill(i & 0xff);
    views.push(v);
  }
  for (const [i, v] of views.entries()) assert.ok(v.every((b) => b === (i & 0xff)), `view ${i} was overwritten`);
});

it('refuses a length that is not a whole number of bytes, as Buffer.allocUnsafe did', () => {
  for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) assert.throws(() => allocUninit(bad), RangeError, String(bad));
});

it('an empty array and a large one get buffers of their own', () => {
  assert.equal(allocUninit(0).buffer.byteLength, 0);
  const big = allocUninit(4097);
  assert.equal(big.length, 4097);
  assert.equal(big.byteOffset, 0);
  assert.equal(big.buffer.byteLength, 4097);
});

it("transferring one view's buffer detaches no other view", () => {
  const a = allocUninit(16).fill(1);
  const b = allocUninit(16).fill(2);
  assert.equal(a.buffer, b.buffer);
  const { port1, port2 } = new MessageChannel();
  try {
    port1.postMessage(a, [a.buffer as ArrayBuffer]);
  } catch {
    // Newer Node versions refuse the transfer outright; either way nothing may be detached.
  } finally {
    port1.close();
    port2.close();
  }
  assert.equal(b.length, 16);
  assert.ok(b.every((x) => x === 2));
  assert.ok(a.every((x) => x === 1));
});
