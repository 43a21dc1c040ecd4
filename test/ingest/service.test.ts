/**
 * The ingest path (IngestService.accept) over the real parts, on SQLite and on PostgreSQL:
 * accepted, duplicate, replayed, tampered, truncated, mutated, mismatched, unknown, revoked and
 * suspended messages, epoch misuse, static-key rotation, and the CoAP/MQTT mapping of each outcome.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startPostgres, type PostgresServer } from '../../scripts/lib/postgres-server.ts';
import { encodeVitalsPack } from '../../src/codec/vitals.ts';
import { Header } from '../../src/cose/headers.ts';
import { sealEncrypt } from '../../src/cose/encrypt.ts';
import { SealingSession } from '../../src/cose/sealing-session.ts';
import { openAtRest } from '../../src/ingest/at-rest.ts';
import { coapResponseCode, mqttShouldAck, uplinkRejectReason, type AcceptOutcome } from '../../src/ingest/outcome.ts';
import { rotateStaticKey } from '../../src/ingest/static-key.ts';
import { batchFor, startHarness, type Harness } from './support/harness.ts';

let pg: PostgresServer | undefined;
before(async () => {
  pg = await startPostgres();
});
after(async () => {
  await pg?.stop();
});

function auditLines(h: Harness): { op: string; result: string; code?: string; detail?: string; actor: string }[] {
  return readFileSync(join(h.dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { op: string; result: string; actor: string; type: string })
    .filter((l) => (l as { type: string }).type === 'event');
}

function rejected(o: AcceptOutcome, reason: string): void {
  assert.equal(o.status, 'rejected', JSON.stringify(o));
  assert.ok(o.status === 'rejected' && o.reason === reason, `expected ${reason}, got ${JSON.stringify(o)}`);
}

for (const backend of ['sqlite', 'postgres'] as const) {
  describe(`IngestService.accept (${backend})`, () => {
    let h: Harness;
    before(async () => {
      h = await startHarness(backend, pg);
    });
    after(async () => {
      await h?.close();
    });
    const svc = () => {
      const s = h.core.service;
      assert.ok(s);
      return s;
    };

    it('accepts a sealed message, stores it encrypted under the device DEK, and acknowledges a duplicate without storing it twice', async () => {
      const d = await h.enrol('bed-1');
      const msg = d.seal(1);
      const o = await svc().accept({ payload: msg, contentFormat: 96, peer: d.peer });
      assert.deepEqual(o, { status: 'accepted', deviceId: 'bed-1', seq: 1, readings: 3 });
      assert.equal(coapResponseCode(o), '2.04');
      assert.equal(mqttShouldAck(o), true);
      const again = await svc().accept({ payload: msg, contentFormat: 96, peer: d.peer });
      assert.deepEqual(again, { status: 'duplicate', deviceId: 'bed-1', seq: 1 });
      assert.equal(coapResponseCode(again), '2.04');
      assert.equal(await h.core.storage.countMessages('bed-1'), 1);
      const [row] = await h.core.storage.readMessages('bed-1', 0, Number.MAX_SAFE_INTEGER);
      assert.ok(row);
      const pack = encodeVitalsPack(batchFor('bed-1', 1));
      assert.ok(!Buffer.from(row.ciphertext).includes(Buffer.from(pack.subarray(0, 24))), 'no plaintext in the stored row');
      const dek = await h.core.dataKeys.version('bed-1', row.keyVersion);
      assert.deepEqual(openAtRest(h.core.provider, dek, row), pack);
      const dev = await h.core.storage.getDevice('bed-1');
      assert.equal(dev?.transport, 'coaps');
      assert.match(dev?.suite ?? '', /DTLSv1\.3 .* \/ chacha20-poly1305/);
      assert.equal(dev?.sealingEpoch, d.session.epoch()?.id);
      assert.equal(svc().metrics.duplicates.get(), 1);
    });

    it('writes a device\'s activity at most once a second while only the time moves, at once when the sealing epoch changes', async () => {
      const d = await h.enrol('bed-activity', { maxMessages: 3 });
      const dev = () => h.core.storage.getDevice('bed-activity');
      const send = async (seq: number) => assert.equal((await svc().accept({ payload: d.seal(seq), contentFormat: 96, peer: d.peer })).status, 'accepted');
      const t0 = h.clock.now();
      await send(1);
      assert.equal((await dev())?.lastSeenAt, t0);
      const firstEpoch = (await dev())?.sealingEpoch;
      h.clock.advance(400);
      await send(2);
      assert.equal((await dev())?.lastSeenAt, t0, 'within the second: the row is not rewritten');
      h.clock.advance(700);
      await send(3);
      assert.equal((await dev())?.lastSeenAt, t0 + 1100);
      // The fourth message opens a new sealing epoch (maxMessages 3): written at once.
      h.clock.advance(10);
      await send(4);
      const after4 = await dev();
      assert.notEqual(after4?.sealingEpoch, firstEpoch);
      assert.equal(after4?.sealingEpoch, d.session.epoch()?.id);
      assert.equal(after4?.lastSeenAt, t0 + 1110);
      assert.equal(await h.core.storage.countMessages('bed-activity'), 4, 'every message is stored whatever its activity');
    });

    it('detects gaps (metric, and the database query the API serves)', async () => {
      const d = await h.enrol('bed-gaps');
      for (const seq of [1, 2, 5, 6, 9]) assert.equal((await svc().accept({ payload: d.seal(seq), contentFormat: 96, peer: d.peer })).status, 'accepted');
      assert.deepEqual(await h.core.storage.gaps('bed-gaps'), [{ from: 3, to: 4 }, { from: 7, to: 8 }]);
      assert.deepEqual(svc().liveGaps('bed-gaps'), [[3, 4], [7, 8]]);
      await svc().accept({ payload: d.seal(3), contentFormat: 96, peer: d.peer });
      assert.deepEqual(svc().liveGaps('bed-gaps'), [[4, 4], [7, 8]]);
      assert.ok(svc().metrics.gapsOpened.get() >= 2);
      assert.match(svc().metrics.registry.render(), /vitalseal_ingest_missing_sequences \d+/);
    });

    it('refuses a message whose sealed device id is not the authenticated device: 4.03, audited, counted, alerted', async () => {
      const a = await h.enrol('bed-a');
      const b = await h.enrol('bed-b');
      // bed-b's transport identity, a message sealed as bed-a.
      const o = await svc().accept({ payload: a.seal(1), contentFormat: 96, peer: b.peer });
      rejected(o, 'identity-mismatch');
      assert.equal(coapResponseCode(o), '4.03');
      assert.equal(mqttShouldAck(o), true, 'a refusal is consumed, never redelivered');
      assert.equal(o.status === 'rejected' && uplinkRejectReason(o.reason), 'forbidden');
      // The SenML base name is bound too: header says bed-b, the pack says bed-a.
      const inner = b.session.seal(encodeVitalsPack(batchFor('bed-a', 2)), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-b'], [Header.SEQUENCE, 2]]) });
      rejected(await svc().accept({ payload: inner, contentFormat: 96, peer: b.peer }), 'identity-mismatch');
      assert.equal(await h.core.storage.countMessages('bed-a'), 0);
      assert.equal(await h.core.storage.countMessages('bed-b'), 0);
      assert.equal(svc().metrics.rejected.get({ reason: 'identity-mismatch' }), 2);
      assert.equal(svc().metrics.alerts.get({ kind: 'identity-mismatch' }), 1, 'one alert per device and window');
      await h.core.audit.flush();
      const lines = auditLines(h);
      assert.ok(lines.some((l) => l.op === 'reject' && l.code === 'identity-mismatch' && /bed-b via coaps seq 1/.test(l.detail ?? '')));
      assert.ok(lines.some((l) => l.op === 'alert' && l.code === 'identity-mismatch'));
      await svc().flushRejections();
      assert.equal((await h.core.storage.getDevice('bed-b'))?.rejections, 2);
    });

    it('refuses unknown devices and keys that are not the registered one (4.01)', async () => {
      const d = await h.enrol('bed-cred');
      rejected(await svc().accept({ payload: d.seal(1), contentFormat: 96, peer: { ...d.peer, deviceId: 'never-enrolled' } }), 'unknown-device');
      const o = await svc().accept({ payload: d.seal(1), contentFormat: 96, peer: { ...d.peer, spkiSha256: 'ab'.repeat(32) } });
      rejected(o, 'credential-mismatch');
      assert.equal(coapResponseCode(o), '4.01');
      rejected(await svc().accept({ payload: d.seal(1), contentFormat: 96, peer: { kind: 'psk', pskIdentity: 'bed-cred', transport: 'coaps', suite: 'psk' } }), 'credential-mismatch');
      rejected(await svc().accept({ payload: d.seal(1), contentFormat: 96, peer: { kind: 'psk', pskIdentity: '../etc', transport: 'coaps', suite: 'psk' } }), 'unknown-device');
      const ok = await svc().accept({ payload: d.seal(1), contentFormat: undefined, peer: { kind: 'broker', deviceId: 'bed-cred', transport: 'mqtts', suite: 'TLSv1.3' } });
      assert.equal(ok.status, 'accepted', 'the broker-authenticated identity is the topic\'s device');
    });

    it('suspended and revoked devices are refused at once, alerted, and revocation is final', async () => {
      const d = await h.enrol('bed-s');
      assert.equal((await svc().accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer })).status, 'accepted');
      const seen: string[] = [];
      h.core.registry.onStatusChange((id, status) => seen.push(`${id}:${status}`));
      await h.core.registry.setStatus('bed-s', 'suspended', 'test');
      const o = await svc().accept({ payload: d.seal(2), contentFormat: 96, peer: d.peer });
      rejected(o, 'device-suspended');
      assert.equal(coapResponseCode(o), '4.03');
      await h.core.registry.setStatus('bed-s', 'active', 'test');
      assert.equal((await svc().accept({ payload: d.seal(2), contentFormat: 96, peer: d.peer })).status, 'accepted');
      await h.core.registry.setStatus('bed-s', 'revoked', 'test');
      rejected(await svc().accept({ payload: d.seal(3), contentFormat: 96, peer: d.peer }), 'device-revoked');
      rejected(await svc().accept({ payload: d.seal(4), contentFormat: 96, peer: d.peer }), 'device-revoked');
      await assert.rejects(h.core.registry.setStatus('bed-s', 'active', 'test'), (e: unknown) => (e as { code?: string }).code === 'device-revoked');
      assert.deepEqual(seen, ['bed-s:suspended', 'bed-s:active', 'bed-s:revoked']);
      assert.equal(svc().metrics.alerts.get({ kind: 'suspended-device' }), 1);
      assert.equal(svc().metrics.alerts.get({ kind: 'revoked-device' }), 1);
      assert.equal(h.core.registry.revocationStatus({ serialHex: d.cert.serialHex, issuer: '', subject: '', spkiSha256: Buffer.from(d.peer.spkiSha256, 'hex'), deviceId: 'bed-s' }), 'revoked');
      await h.core.audit.flush();
      assert.ok(auditLines(h).some((l) => l.op === 'revoke' && l.actor === 'test' && /bed-s/.test(l.detail ?? '')));
    });

    it('a revocation made elsewhere (another instance, the command line) reaches this instance on refresh', async () => {
      const d = await h.enrol('bed-elsewhere');
      const other = await h.openCore({ auditPath: join(h.dir, 'audit-other.log') });
      try {
        const seen: string[] = [];
        h.core.registry.onStatusChange((id, status) => seen.push(`${id}:${status}`));
        await other.registry.setStatus('bed-elsewhere', 'revoked', 'cli:op');
        assert.equal(await h.core.registry.refresh(), true);
        assert.deepEqual(seen, ['bed-elsewhere:revoked']);
        rejected(await svc().accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer }), 'device-revoked');
      } finally {
        await other.close();
      }
    });
  });
}

describe('IngestService.accept: tampering, truncation, mutation, limits (sqlite)', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('sqlite', undefined);
  });
  after(async () => {
    await h?.close();
  });
  const svc = () => h.core.service as NonNullable<typeof h.core.service>;

  it('a flipped byte in the ciphertext fails decryption (4.00); repeated failures raise an alert', async () => {
    const d = await h.enrol('bed-t');
    const good = d.seal(1);
    for (let i = 0; i < 6; i++) {
      const bad = Uint8Array.from(good);
      const at = (bad.length >> 1) + i; // inside the ciphertext (the recipients array ends the message)
      bad[at] = (bad[at] as number) ^ 0x01;
      const o = await svc().accept({ payload: bad, contentFormat: 96, peer: d.peer });
      assert.equal(o.status, 'rejected');
      assert.ok(o.status === 'rejected' && ['decrypt-failed', 'malformed'].includes(o.reason), JSON.stringify(o));
    }
    assert.ok(svc().metrics.rejected.get({ reason: 'decrypt-failed' }) >= 5);
    assert.equal(svc().metrics.alerts.get({ kind: 'decrypt-failures' }), 1);
    assert.equal((await svc().accept({ payload: good, contentFormat: 96, peer: d.peer })).status, 'accepted', 'the genuine message still goes in');
  });

  it('every truncation of a sealed message is refused, never accepted, never thrown', async () => {
    const d = await h.enrol('bed-trunc');
    const good = d.seal(7);
    for (let n = 0; n < good.length; n++) {
      const o = await svc().accept({ payload: good.subarray(0, n), contentFormat: 96, peer: d.peer });
      assert.equal(o.status, 'rejected', `prefix ${n}`);
    }
    assert.equal(await h.core.storage.countMessages('bed-trunc'), 0);
  });

  it('random byte mutations never crash, and a changed message is never stored', async () => {
    const d = await h.enrol('bed-mut');
    const good = d.seal(1);
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 400; i++) {
      const m = Uint8Array.from(good);
      const flips = 1 + Math.floor(rnd() * 3);
      for (let f = 0; f < flips; f++) m[Math.floor(rnd() * m.length)] = Math.floor(rnd() * 256);
      const o = await svc().accept({ payload: m, contentFormat: 96, peer: d.peer });
      if (Buffer.compare(m, good) !== 0) {
        assert.notEqual(o.status, 'accepted', `mutation ${i} was accepted`);
        assert.notEqual(o.status, 'unavailable', `mutation ${i}: ${JSON.stringify(o)}`);
      }
    }
    assert.ok(await h.core.storage.countMessages('bed-mut') <= 1);
  });

  it('limits and formats: too large (4.13), not cose-encrypt (4.15), COSE_Encrypt0 (4.15), missing headers (4.00)', async () => {
    const d = await h.enrol('bed-lim');
    const big = await svc().accept({ payload: new Uint8Array(64 * 1024 + 1), contentFormat: 96, peer: d.peer });
    rejected(big, 'too-large');
    assert.equal(coapResponseCode(big), '4.13');
    const fmt = await svc().accept({ payload: d.seal(1), contentFormat: 50, peer: d.peer });
    rejected(fmt, 'unsupported-format');
    assert.equal(coapResponseCode(fmt), '4.15');
    assert.equal(fmt.status === 'rejected' && uplinkRejectReason(fmt.reason), 'unsupported-format');
    const e0 = Uint8Array.from([0xd0, 0x83, 0x40, 0xa0, 0x40]); // 16([h'', {}, h''])
    rejected(await svc().accept({ payload: e0, contentFormat: undefined, peer: d.peer }), 'unsupported-format');
    const staticKey = h.core.staticKeys?.current.publicKey as Uint8Array;
    const noSeq = sealEncrypt({ alg: 'chacha20-poly1305', recipientPublicKey: staticKey, plaintext: encodeVitalsPack(batchFor('bed-lim', 1)), protectedExtras: new Map([[Header.DEVICE_ID, 'bed-lim']]) });
    rejected(await svc().accept({ payload: noSeq, contentFormat: 96, peer: d.peer }), 'malformed');
    const badSeq = sealEncrypt({ alg: 'chacha20-poly1305', recipientPublicKey: staticKey, plaintext: encodeVitalsPack(batchFor('bed-lim', 1)), protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-lim'], [Header.SEQUENCE, 0]]) });
    rejected(await svc().accept({ payload: badSeq, contentFormat: 96, peer: d.peer }), 'malformed');
    const notVitals = sealEncrypt({ alg: 'chacha20-poly1305', recipientPublicKey: staticKey, plaintext: Uint8Array.of(0x01), protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-lim'], [Header.SEQUENCE, 5]]) });
    rejected(await svc().accept({ payload: notVitals, contentFormat: 96, peer: d.peer }), 'malformed');
    const otherKey = new SealingSession({ alg: 'aes-ccm-16-64-128', recipientPublicKey: h.core.provider.x25519Generate().publicKey, clock: h.clock });
    const wrongKey = otherKey.seal(encodeVitalsPack(batchFor('bed-lim', 6)), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-lim'], [Header.SEQUENCE, 6]]) });
    rejected(await svc().accept({ payload: wrongKey, contentFormat: 96, peer: d.peer }), 'decrypt-failed');
  });

  it('a replayed message is acknowledged as a duplicate after a restart too (dedupe is in the database)', async () => {
    const d = await h.enrol('bed-replay');
    const m = d.seal(1);
    assert.equal((await svc().accept({ payload: m, contentFormat: 96, peer: d.peer })).status, 'accepted');
    const restarted = await h.openCore({ auditPath: join(h.dir, 'audit-restart.log') });
    try {
      assert.equal((await restarted.service?.accept({ payload: m, contentFormat: 96, peer: d.peer }))?.status, 'duplicate');
    } finally {
      await restarted.close();
    }
    assert.equal(await h.core.storage.countMessages('bed-replay'), 1);
  });

  it('concurrent deliveries of the same messages store each once', async () => {
    const d = await h.enrol('bed-conc');
    const msgs = Array.from({ length: 20 }, (_, i) => d.seal(i + 1));
    const outcomes = await Promise.all([...msgs, ...msgs, ...msgs].map((payload) => svc().accept({ payload, contentFormat: 96, peer: d.peer })));
    assert.equal(outcomes.filter((o) => o.status === 'accepted').length, 20);
    assert.equal(outcomes.filter((o) => o.status === 'duplicate').length, 40);
    assert.equal(await h.core.storage.countMessages('bed-conc'), 20);
  });

  it('sealing-epoch misuse: an epoch shared by two devices is refused; an over-long epoch is stored and alerted', async () => {
    const a = await h.enrol('bed-ep-a');
    const b = await h.enrol('bed-ep-b');
    assert.equal((await svc().accept({ payload: a.seal(1), contentFormat: 96, peer: a.peer })).status, 'accepted');
    // bed-b seals with bed-a's epoch (a cloned sealer), naming itself correctly.
    const cloned = a.session.seal(encodeVitalsPack(batchFor('bed-ep-b', 1)), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-ep-b'], [Header.SEQUENCE, 1]]) });
    const o = await svc().accept({ payload: cloned, contentFormat: 96, peer: b.peer });
    rejected(o, 'epoch-misuse');
    assert.equal(coapResponseCode(o), '4.03');
    assert.equal(svc().metrics.alerts.get({ kind: 'epoch-misuse' }), 1);

    const strict = await h.openCore({ auditPath: join(h.dir, 'audit-strict.log'), epochPolicy: { maxMessages: 3 } });
    try {
      const c = await h.enrol('bed-ep-c');
      for (let seq = 1; seq <= 4; seq++) assert.equal((await strict.service?.accept({ payload: c.seal(seq), contentFormat: 96, peer: c.peer }))?.status, 'accepted');
      assert.equal(strict.metrics.alerts.get({ kind: 'epoch-misuse' }), 1, 'the fourth message of a 3-message epoch is stored and alerted');
      await strict.audit.flush();
      const lines = readFileSync(join(h.dir, 'audit-strict.log'), 'utf8');
      assert.match(lines, /"op":"policy-violation".*"code":"epoch-stale"/);
    } finally {
      await strict.close();
    }
  });

  it('after a static-key rotation, epochs sealed to the old key still open and new ones use the new key', async () => {
    const d = await h.enrol('bed-rot');
    const oldKey = h.core.staticKeys?.current.publicKey as Uint8Array;
    await rotateStaticKey(h.core.hierarchy, h.core.provider);
    const rotated = await h.openCore({ auditPath: join(h.dir, 'audit-rot.log') });
    try {
      assert.equal(rotated.staticKeys?.versions.length, 2);
      assert.notDeepEqual(rotated.staticKeys?.current.publicKey, oldKey);
      assert.equal((await rotated.service?.accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer }))?.status, 'accepted', 'sealed to the old key');
      assert.equal((await rotated.service?.accept({ payload: d.seal(2), contentFormat: 96, peer: d.peer }))?.status, 'accepted', 'same epoch again');
      const fresh = new SealingSession({ alg: 'aes-ccm-16-64-128', recipientPublicKey: rotated.staticKeys?.current.publicKey as Uint8Array, recipientKid: rotated.staticKeys?.current.kid as Uint8Array, clock: h.clock });
      const m = fresh.seal(encodeVitalsPack(batchFor('bed-rot', 3)), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-rot'], [Header.SEQUENCE, 3]]) });
      assert.equal((await rotated.service?.accept({ payload: m, contentFormat: 96, peer: d.peer }))?.status, 'accepted', 'sealed to the new key, picked by kid');
    } finally {
      await rotated.close();
    }
  });

  it('transient failures are unavailable (5.03, not acknowledged), and a draining service takes nothing new', async () => {
    const d = await h.enrol('bed-down');
    const other = await h.openCore({ auditPath: join(h.dir, 'audit-down.log') });
    await other.storage.close();
    const o = await other.service?.accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer }) as AcceptOutcome;
    assert.equal(o.status, 'unavailable', JSON.stringify(o));
    assert.equal(coapResponseCode(o), '5.03');
    assert.equal(mqttShouldAck(o), false, 'left unacknowledged so the broker redelivers');
    await other.close();
    const drained = await other.service?.accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer }) as AcceptOutcome;
    assert.equal(drained.status, 'unavailable');
    assert.equal((await svc().accept({ payload: d.seal(1), contentFormat: 96, peer: d.peer })).status, 'accepted');
  });
});
