/**
 * The IngestStorage contract; every backend runs it:
 *   runStorageContract('sqlite', async () => new SqliteStorage({ path: ':memory:' }));
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { IngestStorage, StoredMessage } from '../../../src/ingest/storage/index.ts';

let unique = 0;
const deviceId = () => `dev-${process.pid}-${unique++}`;

function msg(dev: string, seq: number, over: Partial<StoredMessage> = {}): StoredMessage {
  return {
    deviceId: dev, seq, receivedAt: 1_700_000_000_000 + seq, firstTime: 1_700_000_000_000 + seq * 1000,
    lastTime: 1_700_000_000_000 + seq * 1000 + 999, keyVersion: 1, nonce: Uint8Array.of(seq & 0xff, 1, 2),
    ciphertext: Uint8Array.from({ length: 40 }, (_, i) => (i * seq) & 0xff), ...over,
  };
}

export function runStorageContract(name: string, factory: () => Promise<IngestStorage>): void {
  describe(`IngestStorage contract: ${name}`, () => {
    const open = async () => {
      const s = await factory();
      await s.init();
      await s.init(); // idempotent
      return s;
    };

    it('devices: upsert, get, list, status, touch', async () => {
      const s = await open();
      const id = deviceId();
      await s.upsertDevice({ deviceId: id, spkiSha256: 'ab'.repeat(32), status: 'active', enrolledAt: 1000 });
      assert.deepEqual(await s.getDevice(id), { deviceId: id, spkiSha256: 'ab'.repeat(32), status: 'active', enrolledAt: 1000 });
      assert.equal(await s.setDeviceStatus(id, 'revoked'), true);
      assert.equal(await s.setDeviceStatus('no-such-device', 'revoked'), false);
      await s.touchDevice(id, 5000, 'epoch-1');
      await s.touchDevice(id, 4000); // older: last seen stays, epoch stays
      const d = await s.getDevice(id);
      assert.equal(d?.status, 'revoked');
      assert.equal(d?.lastSeenAt, 5000);
      assert.equal(d?.sealingEpoch, 'epoch-1');
      assert.ok((await s.listDevices()).some((x) => x.deviceId === id));
      assert.equal(await s.getDevice('missing'), undefined);
      await s.close();
    });

    it('stores each (device, seq) exactly once and reads back the same bytes', async () => {
      const s = await open();
      const id = deviceId();
      assert.equal(await s.storeMessage(msg(id, 1)), 'stored');
      assert.equal(await s.storeMessage(msg(id, 1, { ciphertext: Uint8Array.of(9) })), 'duplicate');
      assert.equal(await s.storeMessage(msg(id, 2)), 'stored');
      const other = deviceId();
      assert.equal(await s.storeMessage(msg(other, 1)), 'stored', 'seq is per device');
      assert.equal(await s.countMessages(id), 2);
      const got = await s.readMessages(id, 0, Number.MAX_SAFE_INTEGER);
      assert.deepEqual(got, [msg(id, 1), msg(id, 2)]);
      await s.close();
    });

    it('time-range reads return overlapping messages in seq order, with a limit', async () => {
      const s = await open();
      const id = deviceId();
      for (const seq of [5, 3, 4, 1, 2]) await s.storeMessage(msg(id, seq));
      const t = (seq: number) => 1_700_000_000_000 + seq * 1000;
      assert.deepEqual((await s.readMessages(id, t(2) + 500, t(4))).map((m) => m.seq), [2, 3, 4]);
      assert.deepEqual((await s.readMessages(id, 0, Number.MAX_SAFE_INTEGER, 2)).map((m) => m.seq), [1, 2]);
      await s.close();
    });

    it('reports gaps and the highest sequence', async () => {
      const s = await open();
      const id = deviceId();
      assert.deepEqual(await s.gaps(id), []);
      assert.equal(await s.highestSeq(id), 0);
      for (const seq of [2, 3, 7, 8, 10]) await s.storeMessage(msg(id, seq));
      assert.deepEqual(await s.gaps(id), [{ from: 1, to: 1 }, { from: 4, to: 6 }, { from: 9, to: 9 }]);
      assert.equal(await s.highestSeq(id), 10);
      await s.close();
    });

    it('data keys and re-key bookkeeping', async () => {
      const s = await open();
      const id = deviceId();
      await s.putDataKey({ deviceId: id, version: 1, wrapped: Uint8Array.of(1), kekName: 'kek', createdAt: 1, state: 'current' });
      await assert.rejects(s.putDataKey({ deviceId: id, version: 1, wrapped: Uint8Array.of(2), kekName: 'kek', createdAt: 2, state: 'current' }));
      await s.putDataKey({ deviceId: id, version: 2, wrapped: Uint8Array.of(2), kekName: 'kek', createdAt: 2, state: 'current' });
      await s.setDataKeyState(id, 1, 'retired');
      await s.setDataKeyState(id, 2, 'current', Uint8Array.of(22));
      assert.deepEqual((await s.dataKeys(id)).map((k) => [k.version, k.state, Array.from(k.wrapped)]), [[1, 'retired', [1]], [2, 'current', [22]]]);
      for (let seq = 1; seq <= 5; seq++) await s.storeMessage(msg(id, seq));
      assert.deepEqual((await s.messagesBelowKeyVersion(id, 2, 3)).map((m) => m.seq), [1, 2, 3]);
      assert.equal(await s.rewriteMessage(id, 1, 1, 2, Uint8Array.of(7), Uint8Array.of(8)), true);
      assert.equal(await s.rewriteMessage(id, 1, 1, 2, Uint8Array.of(7), Uint8Array.of(8)), false, 'already moved');
      const m1 = (await s.readMessages(id, 0, Number.MAX_SAFE_INTEGER))[0];
      assert.equal(m1?.keyVersion, 2);
      assert.deepEqual(m1?.ciphertext, Uint8Array.of(8));
      assert.deepEqual((await s.messagesBelowKeyVersion(id, 2, 10)).map((m) => m.seq), [2, 3, 4, 5]);
      await s.close();
    });

    it('many concurrent writers of the same messages store each once', async () => {
      const s = await open();
      const id = deviceId();
      const results = await Promise.all(Array.from({ length: 60 }, (_, i) => s.storeMessage(msg(id, (i % 20) + 1))));
      assert.equal(results.filter((r) => r === 'stored').length, 20);
      assert.equal(await s.countMessages(id), 20);
      await s.close();
    });
  });
}
