/**
 * The IngestStorage contract; every backend runs it:
 *   runStorageContract('sqlite', async () => new SqliteStorage({ path: ':memory:' }));
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DeviceRegistration, IngestStorage, StoredMessage } from '../../../src/ingest/storage/index.ts';
import { ApiMisuse, KeyStoreError } from '../../../src/util/errors.ts';

let unique = 0;
const deviceId = () => `dev-${process.pid}-${unique++}`;

function msg(dev: string, seq: number, over: Partial<StoredMessage> = {}): StoredMessage {
  return {
    deviceId: dev, seq, receivedAt: 1_700_000_000_000 + seq, firstTime: 1_700_000_000_000 + seq * 1000,
    lastTime: 1_700_000_000_000 + seq * 1000 + 999, keyVersion: 1, nonce: Uint8Array.of(seq & 0xff, 1, 2),
    ciphertext: Uint8Array.from({ length: 40 }, (_, i) => (i * seq) & 0xff), ...over,
  };
}

function reg(id: string, over: Partial<DeviceRegistration> = {}): DeviceRegistration {
  return { deviceId: id, credential: 'certificate', credentialSha256: 'ab'.repeat(32), status: 'active', enrolledAt: 1000, ...over };
}

export function runStorageContract(name: string, factory: () => Promise<IngestStorage>): void {
  describe(`IngestStorage contract: ${name}`, () => {
    const open = async () => {
      const s = await factory();
      await s.init();
      await s.init(); // idempotent
      return s;
    };

    it('devices: register, get, list, status with registry version, rejections', async () => {
      const s = await open();
      const id = deviceId();
      const v0 = await s.registryVersion();
      await s.upsertDevice(reg(id, { certSerial: '4a01', certNotAfter: 9000 }));
      assert.deepEqual(await s.getDevice(id), {
        ...reg(id), certSerial: '4a01', certNotAfter: 9000, statusChangedAt: 1000, rejections: 0,
      });
      const v1 = await s.registryVersion();
      assert.ok(v1 > v0, 'a registration bumps the registry version');
      assert.equal(await s.setDeviceStatus(id, 'suspended', 2000), true);
      assert.equal(await s.setDeviceStatus('no-such-device', 'revoked', 2000), false);
      const v2 = await s.registryVersion();
      assert.ok(v2 > v1, 'a status change bumps the registry version');
      await s.setDeviceStatus('no-such-device', 'revoked', 2000);
      assert.equal(await s.registryVersion(), v2, 'an unknown device changes nothing');
      await s.addRejections(id, 3, 2500, 'identity-mismatch');
      await s.addRejections(id, 2, 2400, 'decrypt-failed');
      const d = await s.getDevice(id);
      assert.equal(d?.status, 'suspended');
      assert.equal(d?.statusChangedAt, 2000);
      assert.equal(d?.rejections, 5);
      assert.equal(d?.lastRejectionAt, 2500);
      assert.equal(d?.lastRejectionReason, 'decrypt-failed');
      // Re-registration (renewal) keeps activity and the status-change time when the status stays.
      await s.upsertDevice(reg(id, { status: 'suspended', credentialSha256: 'cd'.repeat(32), enrolledAt: 3000 }));
      const r = await s.getDevice(id);
      assert.equal(r?.credentialSha256, 'cd'.repeat(32));
      assert.equal(r?.statusChangedAt, 2000);
      assert.equal(r?.rejections, 5);
      assert.equal(r?.certSerial, undefined);
      assert.ok((await s.listDevices()).some((x) => x.deviceId === id));
      assert.equal(await s.getDevice('missing'), undefined);
      await s.close();
    });

    it('registers a device with its wrapped credential key in one transaction, or neither', async () => {
      const s = await open();
      const id = deviceId();
      const key = { keyId: `psk.${id}`, version: 1, kekName: 'ingest-kek', wrapped: Uint8Array.from({ length: 60 }, (_, i) => i), createdAt: 1500 };
      const v0 = await s.registryVersion();
      await s.registerDeviceWithKey(reg(id, { credential: 'psk', credentialSha256: 'ef'.repeat(32) }), key);
      assert.ok((await s.registryVersion()) > v0, 'the registration bumps the registry version');
      assert.deepEqual(await s.getDevice(id), { ...reg(id, { credential: 'psk', credentialSha256: 'ef'.repeat(32) }), statusChangedAt: 1000, rejections: 0 });
      assert.deepEqual(await s.keyRecords().get(key.keyId, 1), key);
      // The device exists: nothing more is written (the other key id stays absent).
      const other = { ...key, keyId: `psk.${id}-2` };
      await assert.rejects(s.registerDeviceWithKey(reg(id, { credential: 'psk' }), other), (e: unknown) => e instanceof ApiMisuse && e.code === 'exists');
      assert.equal(await s.keyRecords().get(other.keyId, 1), undefined);
      // The key record exists: the new device is not registered.
      const id2 = deviceId();
      const v1 = await s.registryVersion();
      await assert.rejects(s.registerDeviceWithKey(reg(id2, { credential: 'psk' }), key), (e: unknown) => e instanceof KeyStoreError && e.code === 'exists');
      assert.equal(await s.getDevice(id2), undefined);
      assert.equal(await s.registryVersion(), v1, 'a refused registration changes nothing');
      await s.close();
    });

    it('stores each (device, seq) exactly once, reads back the same bytes, and moves last-seen forward only', async () => {
      const s = await open();
      const id = deviceId();
      await s.upsertDevice(reg(id));
      const act = (seenAt: number, epoch?: string) => ({ seenAt, transport: 'coaps', suite: `suite-${seenAt}`, ...(epoch === undefined ? {} : { sealingEpoch: epoch, epochStartedAt: seenAt - 1 }) });
      assert.equal(await s.storeMessage(msg(id, 1), act(5000, 'e1')), 'stored');
      assert.equal(await s.storeMessage(msg(id, 1, { ciphertext: Uint8Array.of(9) }), act(5100)), 'duplicate');
      assert.equal(await s.storeMessage(msg(id, 2), act(4000, 'e0')), 'stored');
      const d = await s.getDevice(id);
      assert.equal(d?.lastSeenAt, 5100);
      assert.equal(d?.suite, 'suite-5100');
      assert.equal(d?.sealingEpoch, 'e1', 'an older message does not rewind the epoch');
      assert.equal(d?.epochStartedAt, 4999);
      const other = deviceId();
      assert.equal(await s.storeMessage(msg(other, 1)), 'stored', 'seq is per device; activity is optional');
      assert.equal(await s.countMessages(id), 2);
      const got = await s.readMessages(id, 0, Number.MAX_SAFE_INTEGER);
      assert.deepEqual(got, [msg(id, 1), msg(id, 2)]);
      await s.close();
    });

    it('stores a batch in one transaction: results in order, repeats once, last-seen from the latest activity', async () => {
      const s = await open();
      const id = deviceId();
      const other = deviceId();
      await s.upsertDevice(reg(id));
      await s.upsertDevice(reg(other));
      assert.equal(await s.storeMessage(msg(id, 2)), 'stored');
      const act = (seenAt: number) => ({ seenAt, transport: 'mqtts', suite: `s${seenAt}`, sealingEpoch: `e${seenAt}`, epochStartedAt: seenAt });
      const results = await s.storeMessages([
        { message: msg(id, 1), activity: act(30) }, { message: msg(id, 2), activity: act(10) }, { message: msg(other, 1), activity: act(5) },
        { message: msg(id, 3), activity: act(20) }, { message: msg(id, 1, { ciphertext: Uint8Array.of(1) }), activity: act(25) },
      ]);
      assert.deepEqual(results, ['stored', 'duplicate', 'stored', 'stored', 'duplicate']);
      assert.deepEqual((await s.readMessages(id, 0, Number.MAX_SAFE_INTEGER)).map((m) => m.seq), [1, 2, 3]);
      assert.deepEqual((await s.readMessages(id, 0, Number.MAX_SAFE_INTEGER))[0]?.ciphertext, msg(id, 1).ciphertext, 'the first of a repeat is the one kept');
      const d = await s.getDevice(id);
      assert.equal(d?.lastSeenAt, 30);
      assert.equal(d?.suite, 's30');
      assert.equal((await s.getDevice(other))?.lastSeenAt, 5);
      assert.deepEqual(await s.storeMessages([]), []);
      await s.close();
    });

    it('stores batches of any size the same way: every size, repeats across and within batches, gaps kept', async () => {
      const s = await open();
      const ids = [deviceId(), deviceId(), deviceId()];
      for (const id of ids) await s.upsertDevice(reg(id));
      // Sizes the group commit makes (1..128), one larger than any single statement, and sizes seen before again.
      let next = 1;
      for (const size of [1, 3, 128, 600, 3, 1]) {
        const batch = Array.from({ length: size }, (_, i) => ({ message: msg(ids[i % 3] as string, next + Math.floor(i / 3)), activity: { seenAt: next + i, transport: 'mqtts', suite: 's' } }));
        const repeat = batch[0] as (typeof batch)[number];
        const results = await s.storeMessages([...batch, repeat]);
        assert.deepEqual(results, [...batch.map(() => 'stored'), 'duplicate'], `batch of ${size}`);
        assert.deepEqual(await s.storeMessages([repeat]), ['duplicate']);
        next += Math.ceil(size / 3) + 1; // skips one seq per device: a gap after every batch
      }
      const gaps = await s.gaps(ids[0] as string);
      assert.equal(gaps.length, 5);
      assert.equal(await s.countMessages(ids[0] as string) + await s.countMessages(ids[1] as string) + await s.countMessages(ids[2] as string), 1 + 3 + 128 + 600 + 3 + 1);
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

    it('re-key work list and conditional rewrite', async () => {
      const s = await open();
      const id = deviceId();
      for (let seq = 1; seq <= 5; seq++) await s.storeMessage(msg(id, seq));
      assert.deepEqual((await s.messagesBelowKeyVersion(id, 2, 3)).map((m) => m.seq), [1, 2, 3]);
      assert.equal(await s.rewriteMessage(id, 1, 1, 2, Uint8Array.of(7), Uint8Array.of(8)), true);
      assert.equal(await s.rewriteMessage(id, 1, 1, 2, Uint8Array.of(7), Uint8Array.of(8)), false, 'already moved');
      const m1 = (await s.readMessages(id, 0, Number.MAX_SAFE_INTEGER))[0];
      assert.equal(m1?.keyVersion, 2);
      assert.deepEqual(m1?.ciphertext, Uint8Array.of(8));
      assert.deepEqual((await s.messagesBelowKeyVersion(id, 2, 10)).map((m) => m.seq), [2, 3, 4, 5]);
      // A cursor along the key: strictly after the given seq.
      assert.deepEqual((await s.messagesBelowKeyVersion(id, 2, 2, 3)).map((m) => m.seq), [4, 5]);
      assert.deepEqual((await s.messagesBelowKeyVersion(id, 2, 10, 5)).map((m) => m.seq), []);
      assert.deepEqual((await s.messagesBelowKeyVersion(id, 2, 1, 0)).map((m) => m.seq), [2], 'seq 1 is no longer below version 2');
      await s.close();
    });

    it('pages through every message in (device, seq) order and imports them into another database', async () => {
      const s = await open();
      const a = `${deviceId()}-A`;
      const b = `${deviceId()}-B`;
      for (const [dev, seq] of [[b, 2], [a, 3], [b, 1], [a, 1], [a, 10]] as const) await s.storeMessage(msg(dev, seq));
      const all = [];
      let cursor: { deviceId: string; seq: number } | undefined;
      for (;;) {
        const page = await s.listMessages(cursor, 2);
        if (page.length === 0) break;
        all.push(...page);
        const last = page[page.length - 1] as StoredMessage;
        cursor = { deviceId: last.deviceId, seq: last.seq };
      }
      const mine = all.filter((m) => m.deviceId === a || m.deviceId === b).map((m) => `${m.deviceId === a ? 'A' : 'B'}${m.seq}`);
      assert.deepEqual(mine, ['A1', 'A3', 'A10', 'B1', 'B2']);
      for (let i = 1; i < all.length; i++) {
        const p = all[i - 1] as StoredMessage;
        const q = all[i] as StoredMessage;
        assert.ok(p.deviceId < q.deviceId || (p.deviceId === q.deviceId && p.seq < q.seq), 'strict byte order of device ids');
      }
      const c = `${deviceId()}-C`;
      await s.importMessages([msg(c, 1), msg(c, 2)]);
      assert.equal(await s.countMessages(c), 2);
      await assert.rejects(s.importMessages([msg(c, 3), msg(c, 2)]), 'an import never overwrites');
      assert.equal(await s.countMessages(c), 2, 'the failed import is rolled back whole');
      await s.close();
    });

    it('imports devices with every field (restore), refusing an existing id', async () => {
      const s = await open();
      const id = deviceId();
      const full = { ...reg(id), statusChangedAt: 1500, certSerial: '40aa', certNotAfter: 9e12, lastSeenAt: 2000, transport: 'mqtts', suite: 'TLSv1.3', sealingEpoch: 'ab', epochStartedAt: 1900, rejections: 7, lastRejectionAt: 1999, lastRejectionReason: 'decrypt-failed' };
      const v = await s.registryVersion();
      await s.importDevices([full]);
      assert.deepEqual(await s.getDevice(id), full);
      assert.ok((await s.registryVersion()) > v);
      await assert.rejects(s.importDevices([full]));
      await s.close();
    });

    it('enrolment tokens are consumed once, and not after expiry', async () => {
      const s = await open();
      const id = deviceId();
      const h = (n: number) => `${id}-${n}`.padEnd(64, '0');
      await s.putEnrolToken({ tokenSha256: h(1), deviceId: id, createdAt: 1000, expiresAt: 5000 });
      await s.putEnrolToken({ tokenSha256: h(2), deviceId: id, createdAt: 1000, expiresAt: 2000 });
      const results = await Promise.all(Array.from({ length: 8 }, () => s.consumeEnrolToken(h(1), 1500)));
      assert.equal(results.filter((r) => r.status === 'ok').length, 1, 'exactly one caller wins');
      assert.ok(results.filter((r) => r.status !== 'ok').every((r) => r.status === 'used'));
      const ok = results.find((r) => r.status === 'ok');
      assert.ok(ok?.status === 'ok' && ok.token.deviceId === id && ok.token.usedAt === 1500);
      assert.equal((await s.consumeEnrolToken(h(2), 2000)).status, 'expired', 'expiry is exclusive');
      assert.equal((await s.consumeEnrolToken(h(3), 1500)).status, 'unknown');
      await s.close();
    });

    it('API tokens: store, look up, list, revoke by name', async () => {
      const s = await open();
      const name = `alice-${deviceId()}`;
      const h = `${name}`.padEnd(64, 'f');
      await s.putApiToken({ tokenSha256: h, name, role: 'reader', createdAt: 10, expiresAt: 99 });
      await s.putApiToken({ tokenSha256: h.replace(/f$/, 'e'), name, role: 'admin', createdAt: 11 });
      assert.deepEqual(await s.getApiToken(h), { tokenSha256: h, name, role: 'reader', createdAt: 10, expiresAt: 99 });
      assert.equal(await s.getApiToken('0'.repeat(64)), undefined);
      assert.equal((await s.listApiTokens()).filter((t) => t.name === name).length, 2);
      assert.equal(await s.revokeApiToken(name, 50), 2);
      assert.equal(await s.revokeApiToken(name, 60), 0, 'already revoked');
      assert.equal((await s.getApiToken(h))?.revokedAt, 50);
      await s.close();
    });

    it('leases: one holder at a time until expiry', async () => {
      const s = await open();
      const lease = `rekey-${deviceId()}`;
      assert.equal(await s.tryLease(lease, 'a', 1000, 500), true);
      assert.equal(await s.tryLease(lease, 'b', 1200, 500), false, 'held by a');
      assert.equal(await s.tryLease(lease, 'a', 1300, 500), true, 'a extends');
      assert.equal(await s.tryLease(lease, 'b', 1700, 500), false, 'a extended to 1800');
      assert.equal(await s.tryLease(lease, 'b', 1801, 500), true, 'expired: b takes over');
      await s.releaseLease(lease, 'a');
      assert.equal(await s.tryLease(lease, 'a', 1900, 500), false, 'a cannot release what b holds');
      await s.releaseLease(lease, 'b');
      assert.equal(await s.tryLease(lease, 'a', 1900, 500), true);
      await s.close();
    });

    it('many concurrent writers of the same messages store each once', async () => {
      const s = await open();
      const id = deviceId();
      await s.upsertDevice(reg(id));
      const results = await Promise.all(Array.from({ length: 60 }, (_, i) => s.storeMessage(msg(id, (i % 20) + 1), { seenAt: i, transport: 'mqtts', suite: 's' })));
      assert.equal(results.filter((r) => r === 'stored').length, 20);
      assert.equal(await s.countMessages(id), 20);
      assert.equal((await s.getDevice(id))?.lastSeenAt, 59);
      await s.close();
    });

    it('refuses calls after close', async () => {
      const s = await open();
      await s.close();
      await assert.rejects(s.countMessages(), (e: unknown) => (e as { code?: string }).code === 'storage-closed');
      await s.close(); // idempotent
    });
  });
}
