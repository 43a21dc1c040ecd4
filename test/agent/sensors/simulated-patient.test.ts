import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SimulatedPatient } from '../../../src/agent/sensors/simulated-patient.ts';
import type { VitalSample, WaveformChunk } from '../../../src/agent/sensors/types.ts';

const T0 = Date.UTC(2026, 10, 24, 12, 0, 0);

function run(p: SimulatedPatient, seconds: number, stepMs = 1000): { vitals: VitalSample[]; ecg: WaveformChunk[] } {
  p.start(T0);
  const vitals: VitalSample[] = [];
  const ecg: WaveformChunk[] = [];
  for (let t = T0 + stepMs; ; t += stepMs) {
    const r = p.read(Math.min(t, T0 + seconds * 1000));
    vitals.push(...r.vitals);
    ecg.push(...r.waveforms);
    if (t >= T0 + seconds * 1000) break;
  }
  return { vitals, ecg };
}

describe('simulated patient', () => {
  it('is reproducible for a seed and differs across seeds', () => {
    const a = run(new SimulatedPatient({ id: 'a', seed: 1 }), 20);
    const b = run(new SimulatedPatient({ id: 'b', seed: 1 }), 20);
    const c = run(new SimulatedPatient({ id: 'c', seed: 2 }), 20);
    assert.deepEqual(a.vitals, b.vitals);
    assert.deepEqual(a.ecg.map((w) => Array.from(w.samples)), b.ecg.map((w) => Array.from(w.samples)));
    assert.notDeepEqual(a.vitals, c.vitals);
  });

  it('gives 1 Hz vitals in physiological ranges with SenML-registry units, and a 250 Hz ECG without gaps', () => {
    const { vitals, ecg } = run(new SimulatedPatient({ id: 'p', seed: 3 }), 60, 700);
    const by = (n: string) => vitals.filter((v) => v.name === n);
    assert.equal(by('heart-rate').length, 60);
    for (const v of by('heart-rate')) assert.ok(v.value >= 55 && v.value <= 95, `HR ${v.value}`);
    for (const v of by('spo2')) assert.ok(v.value >= 93 && v.value <= 100, `SpO2 ${v.value}`);
    for (const v of by('respiration-rate')) assert.ok(v.value >= 8 && v.value <= 22, `RR ${v.value}`);
    for (const v of by('body-temperature')) assert.ok(v.value >= 36 && v.value <= 37.6, `T ${v.value}`);
    assert.deepEqual([...new Set(vitals.map((v) => v.unit))].sort(), ['%', '/min', 'Cel', 'beat/min', 'mmHg']);
    const total = ecg.reduce((n, w) => n + w.samples.length, 0);
    assert.ok(Math.abs(total - 60 * 250) <= 1, `ECG samples ${total}`);
    for (let i = 1; i < ecg.length; i++) {
      const prev = ecg[i - 1] as WaveformChunk, cur = ecg[i] as WaveformChunk;
      assert.ok(Math.abs(cur.start - (prev.start + prev.samples.length * 4)) < 1e-6, 'chunks are contiguous');
    }
  });

  it('NIBP mean is diastolic + (systolic - diastolic) / 3', () => {
    const { vitals } = run(new SimulatedPatient({ id: 'p', seed: 4, nibpIntervalMs: 10_000 }), 60);
    const sys = vitals.filter((v) => v.name === 'nibp-systolic');
    const dia = vitals.filter((v) => v.name === 'nibp-diastolic');
    const map = vitals.filter((v) => v.name === 'nibp-mean');
    assert.ok(sys.length >= 5);
    sys.forEach((s, i) => {
      const d = (dia[i] as VitalSample).value;
      assert.equal((map[i] as VitalSample).value, Math.round(d + (s.value - d) / 3));
      assert.ok(s.value > d);
    });
  });

  it("the ECG's R-peaks fall on the simulated beats and match the reported heart rate", () => {
    const p = new SimulatedPatient({ id: 'p', seed: 5, heartRate: 80 });
    p.start(T0);
    const ecg: WaveformChunk[] = [];
    const hr: number[] = [];
    const beatsSeen = new Set<number>();
    for (let t = T0 + 500; t <= T0 + 30_000; t += 500) {
      const r = p.read(t);
      ecg.push(...r.waveforms);
      hr.push(...r.vitals.filter((v) => v.name === 'heart-rate').map((v) => v.value));
      for (const b of p.beatTimes()) if (b <= t) beatsSeen.add(b);
    }
    // R-peaks: local maxima above 0.8 mV over the whole (contiguous) strip.
    const strip = ecg.flatMap((w) => Array.from(w.samples));
    const start = (ecg[0] as WaveformChunk).start;
    const peaks: number[] = [];
    for (let i = 1; i + 1 < strip.length; i++) {
      const s = strip[i] as number;
      if (s > 0.8 && s >= (strip[i - 1] as number) && s > (strip[i + 1] as number)) peaks.push(start + i * 4);
    }
    const beats = [...beatsSeen].filter((b) => b > T0 + 600 && b < T0 + 29_400);
    for (const b of beats) assert.ok(peaks.some((pk) => Math.abs(pk - b) <= 4), `no R-peak within 4 ms of beat at ${b - T0} ms`);
    const peakRate = (60_000 * (peaks.length - 1)) / ((peaks.at(-1) as number) - (peaks[0] as number));
    const meanHr = hr.reduce((a, b) => a + b, 0) / hr.length;
    assert.ok(Math.abs(peakRate - meanHr) < 4, `ECG rate ${peakRate.toFixed(1)} vs reported ${meanHr.toFixed(1)}`);
    assert.ok(Math.abs(meanHr - 80) < 6);
  });

  it('scripted tachycardia and desaturation move the vitals and recover', () => {
    const { vitals } = run(new SimulatedPatient({
      id: 'p', seed: 6,
      events: [{ kind: 'tachycardia', atMs: 20_000, durationMs: 60_000 }, { kind: 'desaturation', atMs: 100_000, durationMs: 40_000 }],
    }), 200);
    const at = (name: string, sec: number) => (vitals.find((v) => v.name === name && v.time === T0 + sec * 1000) as VitalSample).value;
    assert.ok(at('heart-rate', 10) < 95);
    assert.ok(at('heart-rate', 50) > 120, `HR mid-event ${at('heart-rate', 50)}`);
    assert.ok(at('heart-rate', 95) < 95);
    assert.ok(at('spo2', 120) < 90, `SpO2 mid-event ${at('spo2', 120)}`);
    assert.ok(at('spo2', 180) >= 93);
  });

  it('returns nothing before start, after stop, or when time does not advance', () => {
    const p = new SimulatedPatient({ id: 'p', seed: 7 });
    assert.deepEqual(p.read(T0), { vitals: [], waveforms: [] });
    p.start(T0);
    p.read(T0 + 1000);
    assert.deepEqual(p.read(T0 + 1000), { vitals: [], waveforms: [] });
    p.stop();
    assert.equal(p.health().ok, false);
    assert.deepEqual(p.read(T0 + 5000), { vitals: [], waveforms: [] });
  });
});
