/**
 * Power loss: torn writes simulated by truncating segment files at random offsets, on a queue of
 * real sealed messages made by the agent's pipeline. Recovery keeps every record that is whole
 * before the cut, loses at most the one record the cut tears (reporting it and the bytes cut),
 * never returns a damaged record, and never hands out a sequence number again.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { silentLogger } from '../../src/agent/log.ts';
import { Pipeline } from '../../src/agent/pipeline.ts';
import { openSegmentQueue } from '../../src/agent/queue/index.ts';
import { SimulatedPatient } from '../../src/agent/sensors/simulated-patient.ts';
import { EpochKeyCache, Header, openCose, SealingSession, x25519Recipient } from '../../src/cose/index.ts';
import { getProvider } from '../../src/crypto/registry.ts';
import { decodeVitalsPack } from '../../src/codec/vitals.ts';
import { ManualClock } from '../../src/util/clock.ts';

const root = mkdtempSync(join(tmpdir(), 'vitalseal-powerloss-'));
after(() => rmSync(root, { recursive: true, force: true }));

describe('agent queue: power loss (torn writes)', () => {
  it('truncating any segment at random offsets loses at most the torn record, reports it, and keeps numbering', async () => {
    const p = getProvider();
    const ingest = p.x25519Generate();
    const recipient = x25519Recipient(p, ingest.privateKey);
    const clock = new ManualClock(1_750_000_000_000);
    const base = join(root, 'base');
    const queue = await openSegmentQueue({ dir: base, segmentBytes: 8 * 1024 });
    const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: recipient.publicKey, clock, maxMessages: 10 });
    const pipeline = new Pipeline({ deviceId: 'bed-7', session, queue, clock, log: silentLogger(), windowMs: 1000 });
    pipeline.addSource(new SimulatedPatient({ id: 'p', seed: 3 }));
    pipeline.start(clock.now());
    for (let i = 0; i < 40; i++) {
      clock.advance(1000);
      await pipeline.tick(clock.now());
    }
    await pipeline.stop(clock.now());
    await queue.ack(5); // some acknowledged, as on a device
    await queue.close();
    const nextSeq = queue.stats().nextSeq;
    const segs = readdirSync(base).filter((f) => f.endsWith('.seg')).sort();
    assert.ok(segs.length >= 3, `several segments (${segs.length})`);

    // Where each record ends, per segment (16-byte header + payload).
    const ends = new Map<string, number[]>();
    for (const f of segs) {
      const d = readFileSync(join(base, f));
      const e: number[] = [];
      for (let off = 0; off < d.length;) e.push((off += 16 + d.readUInt32BE(off)));
      ends.set(f, e);
    }
    const cache = new EpochKeyCache();
    let seed = 99;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    let torn = 0;
    for (let trial = 0; trial < 120; trial++) {
      const dir = join(root, `t${trial}`);
      cpSync(base, dir, { recursive: true });
      // Mostly the newest segment (the one being written when power fails), sometimes any.
      const f = trial % 4 === 0 ? (segs[Math.floor(rand() * segs.length)] as string) : (segs.at(-1) as string);
      const size = (ends.get(f) as number[]).at(-1) as number;
      const cut = Math.floor(rand() * (size + 1));
      truncateSync(join(dir, f), cut);
      const e = ends.get(f) as number[];
      const wholeBefore = e.filter((x) => x <= cut).length;
      const tornHere = !e.includes(cut) && cut !== 0 && cut < size;

      const q = await openSegmentQueue({ dir, segmentBytes: 8 * 1024 });
      assert.equal(q.recovery.state, tornHere ? 'recovered' : 'clean', `trial ${trial}: cut ${cut} of ${f}`);
      if (tornHere) {
        torn++;
        assert.equal(q.recovery.truncatedBytes, cut - (e[wholeBefore - 1] ?? 0), 'reports exactly the torn bytes');
        assert.match(q.recovery.problems.join(' '), new RegExp(f));
      }
      // Every record left is whole, opens with the ingest key and carries its own sequence number.
      const msgs = await q.peek(10_000);
      for (const m of msgs) {
        const o = openCose(m.payload, { recipient, cache });
        assert.equal(o.protected.get(Header.SEQUENCE), m.seq);
        assert.equal(decodeVitalsPack(o.plaintext).deviceId, 'bed-7');
      }
      // Nothing whole before the cut was dropped: only records at or after it are missing.
      const firstSeq = Number(f.slice(0, 16));
      const missing = Array.from({ length: nextSeq - 6 }, (_, k) => k + 6).filter((s) => !msgs.some((m) => m.seq === s));
      for (const s of missing) assert.ok(s >= firstSeq + wholeBefore, `record ${s} was whole before the cut and was lost`);
      const goneHere = missing.filter((s) => s >= firstSeq && s < firstSeq + e.length);
      const expectGone = Array.from({ length: e.length - wholeBefore }, (_, k) => firstSeq + wholeBefore + k).filter((s) => s >= 6);
      assert.deepEqual(goneHere, expectGone, 'exactly the records at or after the cut are gone');
      assert.deepEqual(missing.filter((s) => s < firstSeq || s >= firstSeq + e.length), [], 'other segments untouched');
      // Numbering never goes back: the next append gets a number never used before.
      const [next] = await q.append([msgs[0]?.payload ?? new Uint8Array([0xd0, 0x80])]);
      assert.ok((next as number) >= nextSeq, `trial ${trial}: next seq ${next} < ${nextSeq}`);
      await q.close();
      rmSync(dir, { recursive: true, force: true });
    }
    assert.ok(torn >= 60, `most cuts tore a record (${torn})`);
    recipient.destroy();
    session.destroy();
  });
});
