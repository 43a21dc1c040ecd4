/**
 * COSE sealing as the device and the ingest service do it: a SealingSession (one ECDH per epoch)
 * seals, openCose with an EpochKeyCache opens. Baseline, in the same run: raw node:crypto AEAD seal
 * + open of the same plaintext. Also bytes on the wire: a realistic second of vitals (SenML-CBOR in
 * COSE) against the same readings as plain JSON.
 */
import { randomBytes } from 'node:crypto';
import { SimulatedPatient } from '../../src/agent/sensors/simulated-patient.ts';
import { encodeVitalsPack, type VitalsBatch } from '../../src/codec/vitals.ts';
import { COSE_CONTENT_ALGS, EpochKeyCache, Header, openCose, SealingSession, x25519Recipient } from '../../src/cose/index.ts';
import { getProvider, type AeadId } from '../../src/crypto/index.ts';
import { ManualClock } from '../../src/util/clock.ts';
import { compareRates, SIZES, windows } from './measure.ts';
import { OPENSSL_NAME, rawOpen, rawSeal } from './raw-aead.ts';
import type { BenchContext, BenchResult } from './types.ts';

/** The baseline: raw seal then open of the same plaintext. */
function rawSealOpen(id: AeadId, tagLength: number, key: Buffer, nonce: Buffer, plaintext: Buffer): void {
  rawOpen(id, tagLength, key, nonce, rawSeal(id, tagLength, key, nonce, plaintext));
}

/** One second of a simulated patient: 1 Hz vitals (with an NIBP cycle) and a 250-sample ECG strip. */
export function realisticSecond(): VitalsBatch {
  const start = Date.UTC(2026, 10, 25, 12, 0, 0);
  const patient = new SimulatedPatient({ id: 'bed-7', seed: 7, nibpIntervalMs: 1000 });
  patient.start(start);
  patient.read(start + 1000); // let the first NIBP cycle and the beat history settle
  const r = patient.read(start + 2000);
  return {
    deviceId: 'bed-7',
    readings: r.vitals.map((v) => ({ kind: v.name, time: v.time, value: v.value })),
    ecg: r.waveforms.map((w) => ({ start: w.start, intervalMs: w.intervalMs, samplesMv: w.samples })),
  };
}

/** The same readings as a plain JSON document (ECG in mV to µV precision, the wire's resolution). */
function asJson(b: VitalsBatch): string {
  return JSON.stringify({
    deviceId: b.deviceId,
    readings: b.readings.map((r) => ({ kind: r.kind, time: r.time, value: r.value })),
    ecg: b.ecg.map((e) => ({ start: e.start, intervalMs: e.intervalMs, samplesMv: Array.from(e.samplesMv, (x) => Math.round(x * 1000) / 1000) })),
  });
}

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const out: BenchResult[] = [];
  const w = windows(ctx.quick);
  const p = getProvider('node');
  const ingest = p.x25519Generate();
  const recipient = x25519Recipient(p, ingest.privateKey);
  const clock = new ManualClock(Date.now());

  const batch = realisticSecond();
  const pack = encodeVitalsPack(batch);
  const payloads: [string, Uint8Array][] = [
    ...SIZES.map(([label, size]) => [label, new Uint8Array(randomBytes(size))] as [string, Uint8Array]),
    [`senml-1s (${pack.length} B)`, pack],
  ];

  for (const alg of COSE_CONTENT_ALGS) {
    for (const [label, plaintext] of payloads) {
      // An epoch long enough that the measurement stays inside it; the first seal pays the ECDH.
      const session = new SealingSession({ alg: alg.name, recipientPublicKey: recipient.publicKey, clock, maxMessages: 1e9, maxAgeMs: 1e12 });
      const cache = new EpochKeyCache(64);
      let seq = 0;
      const check = openCose(session.seal(plaintext), { recipient, cache });
      if (Buffer.compare(check.plaintext, plaintext) !== 0) throw new Error(`${alg.name}: round trip failed`);
      const key = randomBytes(alg.keyLength);
      const nonce = randomBytes(12);
      const suiteTag = alg.aead === 'aes-128-ccm-8' ? 8 : 16;
      const ptBuf = Buffer.from(plaintext);
      const r = compareRates(
        () => {
          const msg = session.seal(plaintext, { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-7'], [Header.SEQUENCE, ++seq]]) });
          openCose(msg, { recipient, cache });
        },
        () => rawSealOpen(alg.aead, suiteTag, key, alg.nonceLength === 13 ? randomBytes(13) : nonce, ptBuf),
        w,
      );
      const isTarget = label === '1KiB';
      out.push({
        name: `cose seal+open ${alg.name} ${label}`,
        unit: 'msg/s',
        value: r.value,
        baseline: { name: `node:crypto ${OPENSSL_NAME[alg.aead]} seal+open, same plaintext`, value: r.baseline },
        ratio: r.value / r.baseline,
        ...(isTarget ? { target: { ratio: 0.5, comparison: '>=' as const } } : {}),
        meta: { alg: alg.name, plaintextBytes: plaintext.length, epochsStarted: session.epochsStarted, cache: cache.stats },
      });
      ctx.log(`${alg.name} ${label}: ${Math.round(r.value)}/s vs raw ${Math.round(r.baseline)}/s`);
      session.destroy();
    }
  }

  // Bytes on the wire for the realistic second, sealed as the agent seals it.
  const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: recipient.publicKey, clock });
  const sealed = session.seal(pack, { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-7'], [Header.SEQUENCE, 123456]]) });
  const json = Buffer.byteLength(asJson(batch));
  out.push({
    name: 'wire bytes: 1 s of vitals + 250 Hz ECG, SenML-CBOR sealed in COSE',
    unit: 'bytes',
    value: sealed.length,
    baseline: { name: 'the same readings as plain JSON', value: json },
    ratio: sealed.length / json,
    target: { ratio: 0.5, comparison: '<=' },
    meta: { senmlCborBytes: pack.length, coseOverheadBytes: sealed.length - pack.length, readings: batch.readings.length, ecgSamples: batch.ecg.reduce((n, e) => n + e.samplesMv.length, 0) },
  });
  session.destroy();
  recipient.destroy();
  return out;
}
