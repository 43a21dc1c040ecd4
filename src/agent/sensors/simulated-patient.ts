/**
 * A simulated patient: physiologically plausible, seeded and reproducible.
 *
 * - Heart rate with variability: beat-to-beat RR intervals modulated by respiration (respiratory
 *   sinus arrhythmia), a 0.1 Hz Mayer-wave component and noise; the reported heart rate is the
 *   monitor-style average over the last beats.
 * - SpO2, respiration rate and temperature as bounded slow random walks around set points.
 * - Non-invasive blood pressure (systolic/diastolic/mean) every `nibpIntervalMs`.
 * - A synthetic 250 Hz ECG whose R-peaks fall exactly on the simulated beats: each beat is a sum of
 *   Gaussian P, Q, R, S and T waves (T delayed with the square root of RR, as the QT interval
 *   lengthens at slower rates), plus respiratory baseline wander and noise.
 * - Scripted events (tachycardia, bradycardia, desaturation) for demos and tests.
 *
 * @example
 *   const patient = new SimulatedPatient({ id: 'bed-7', seed: 42 });
 *   patient.start(clock.now());
 *   const { vitals, waveforms } = patient.read(clock.now());
 */
import { Prng } from './prng.ts';
import { VITAL_UNITS, type SensorHealth, type SensorReadout, type SensorSource, type VitalName, type VitalSample, type WaveformChunk } from './types.ts';

export type PatientEventKind = 'tachycardia' | 'bradycardia' | 'desaturation';

export interface PatientEvent {
  readonly kind: PatientEventKind;
  /** Milliseconds after start. */
  readonly atMs: number;
  readonly durationMs: number;
}

export interface SimulatedPatientOptions {
  readonly id: string;
  readonly seed: number;
  readonly heartRate?: number;
  readonly spo2?: number;
  readonly respirationRate?: number;
  readonly temperature?: number;
  readonly systolic?: number;
  readonly diastolic?: number;
  /** Interval of vital-sign readings (default 1000 ms). */
  readonly vitalsIntervalMs?: number;
  /** Interval of NIBP measurements (default 15 minutes, as bedside monitors cycle). */
  readonly nibpIntervalMs?: number;
  /** ECG sample rate in Hz (default 250); 0 disables the waveform. */
  readonly ecgHz?: number;
  readonly events?: readonly PatientEvent[];
}

interface Wave {
  readonly offset: number; // seconds relative to the R peak
  readonly amplitude: number; // mV
  readonly width: number; // seconds (Gaussian sigma)
  readonly scalesWithQt: boolean;
}

const PQRST: readonly Wave[] = [
  { offset: -0.16, amplitude: 0.15, width: 0.025, scalesWithQt: false },
  { offset: -0.025, amplitude: -0.1, width: 0.01, scalesWithQt: false },
  { offset: 0, amplitude: 1.2, width: 0.01, scalesWithQt: false },
  { offset: 0.03, amplitude: -0.25, width: 0.01, scalesWithQt: false },
  { offset: 0.28, amplitude: 0.3, width: 0.05, scalesWithQt: true },
];

const EVENT_TARGET: Record<PatientEventKind, { heartRate?: number; spo2?: number }> = {
  tachycardia: { heartRate: 145 },
  bradycardia: { heartRate: 42 },
  desaturation: { spo2: 84 },
};

export class SimulatedPatient implements SensorSource {
  readonly id: string;
  readonly #opts: Required<Omit<SimulatedPatientOptions, 'events' | 'id' | 'seed'>> & { events: readonly PatientEvent[] };
  readonly #rng: Prng;
  #startedAt: number | undefined;
  #lastRead = 0;
  #nextVitalAt = 0;
  #nextNibpAt = 0;
  #nextEcgAt = 0;
  /** Beat (R-peak) times in ms, kept from one second before the last read to one second ahead. */
  #beats: number[] = [];
  #rrHistory: number[] = [];
  #spo2: number;
  #resp: number;
  #temp: number;

  constructor(opts: SimulatedPatientOptions) {
    this.id = opts.id;
    this.#rng = new Prng(opts.seed);
    this.#opts = {
      heartRate: opts.heartRate ?? 72,
      spo2: opts.spo2 ?? 97.5,
      respirationRate: opts.respirationRate ?? 14,
      temperature: opts.temperature ?? 36.8,
      systolic: opts.systolic ?? 121,
      diastolic: opts.diastolic ?? 79,
      vitalsIntervalMs: opts.vitalsIntervalMs ?? 1000,
      nibpIntervalMs: opts.nibpIntervalMs ?? 15 * 60 * 1000,
      ecgHz: opts.ecgHz ?? 250,
      events: opts.events ?? [],
    };
    this.#spo2 = this.#opts.spo2;
    this.#resp = this.#opts.respirationRate;
    this.#temp = this.#opts.temperature;
  }

  start(now: number): void {
    this.#startedAt = now;
    this.#lastRead = now;
    this.#nextVitalAt = now + this.#opts.vitalsIntervalMs;
    this.#nextNibpAt = now + Math.min(this.#opts.nibpIntervalMs, 5000);
    this.#nextEcgAt = now;
    this.#beats = [now + 300 * this.#rng.next()];
  }

  stop(): void {
    this.#startedAt = undefined;
  }

  health(): SensorHealth {
    return this.#startedAt === undefined ? { ok: false, detail: 'stopped' } : { ok: true, detail: 'simulated patient running' };
  }

  read(now: number): SensorReadout {
    if (this.#startedAt === undefined) return { vitals: [], waveforms: [] };
    if (now <= this.#lastRead) return { vitals: [], waveforms: [] };
    this.#extendBeats(now + 1000);
    const vitals: VitalSample[] = [];
    while (this.#nextVitalAt <= now) {
      vitals.push(...this.#vitalsAt(this.#nextVitalAt));
      this.#nextVitalAt += this.#opts.vitalsIntervalMs;
    }
    while (this.#nextNibpAt <= now) {
      vitals.push(...this.#nibpAt(this.#nextNibpAt));
      this.#nextNibpAt += this.#opts.nibpIntervalMs;
    }
    const waveforms: WaveformChunk[] = [];
    if (this.#opts.ecgHz > 0) {
      const interval = 1000 / this.#opts.ecgHz;
      const count = Math.floor((now - this.#nextEcgAt) / interval) + 1;
      if (count > 0) {
        const samples = new Float32Array(count);
        for (let i = 0; i < count; i++) samples[i] = this.#ecgAt(this.#nextEcgAt + i * interval);
        waveforms.push({ name: 'ecg', start: this.#nextEcgAt, intervalMs: interval, samples });
        this.#nextEcgAt += count * interval;
      }
    }
    this.#lastRead = now;
    // Keep only beats that can still shape future ECG samples or the heart-rate average.
    while (this.#beats.length > 2 && (this.#beats[1] as number) < now - 1500) this.#beats.shift();
    return { vitals, waveforms };
  }

  /** R-peak times (ms) known so far; for tests that check the ECG against the heart rate. */
  beatTimes(): readonly number[] {
    return this.#beats;
  }

  #targets(t: number): { heartRate: number; spo2: number } {
    let heartRate = this.#opts.heartRate;
    let spo2 = this.#opts.spo2;
    const since = t - (this.#startedAt ?? t);
    for (const e of this.#opts.events) {
      if (since < e.atMs || since > e.atMs + e.durationMs) continue;
      // Ramp in over the first 20% of the event and out over the last 20%.
      const x = (since - e.atMs) / e.durationMs;
      const w = Math.min(1, x / 0.2, (1 - x) / 0.2);
      const target = EVENT_TARGET[e.kind];
      if (target.heartRate !== undefined) heartRate += (target.heartRate - heartRate) * w;
      if (target.spo2 !== undefined) spo2 += (target.spo2 - spo2) * w;
    }
    return { heartRate, spo2 };
  }

  #extendBeats(until: number): void {
    let last = this.#beats.at(-1) as number;
    while (last < until) {
      const tSec = last / 1000;
      const hr = this.#targets(last).heartRate;
      const rsa = 0.04 * Math.sin(2 * Math.PI * (this.#resp / 60) * tSec);
      const mayer = 0.02 * Math.sin(2 * Math.PI * 0.1 * tSec);
      const rr = (60000 / hr) * (1 + rsa + mayer + 0.01 * this.#rng.gaussian());
      last += rr;
      this.#beats.push(last);
      this.#rrHistory.push(rr);
      if (this.#rrHistory.length > 8) this.#rrHistory.shift();
    }
  }

  #vitalsAt(t: number): VitalSample[] {
    const { spo2: spo2Target } = this.#targets(t);
    // Mean-reverting walks (Ornstein-Uhlenbeck style), clamped to physiological ranges.
    this.#spo2 += 0.3 * (spo2Target - this.#spo2) + 0.15 * this.#rng.gaussian();
    this.#spo2 = clamp(this.#spo2, 70, 100);
    this.#resp += 0.05 * (this.#opts.respirationRate - this.#resp) + 0.1 * this.#rng.gaussian();
    this.#resp = clamp(this.#resp, 6, 40);
    this.#temp += 0.01 * (this.#opts.temperature - this.#temp) + 0.002 * this.#rng.gaussian();
    const recent = this.#beats.filter((b) => b <= t).slice(-6);
    const hr = recent.length >= 2 ? (60000 * (recent.length - 1)) / ((recent.at(-1) as number) - (recent[0] as number)) : this.#opts.heartRate;
    return [
      sample('heart-rate', t, Math.round(hr)),
      sample('spo2', t, Math.round(this.#spo2)),
      sample('respiration-rate', t, Math.round(this.#resp)),
      sample('body-temperature', t, Math.round(this.#temp * 10) / 10),
    ];
  }

  #nibpAt(t: number): VitalSample[] {
    const sys = Math.round(this.#opts.systolic + 4 * this.#rng.gaussian());
    const dia = Math.round(this.#opts.diastolic + 3 * this.#rng.gaussian());
    // Mean arterial pressure ≈ diastolic + (systolic − diastolic) / 3.
    const map = Math.round(dia + (sys - dia) / 3);
    return [sample('nibp-systolic', t, sys), sample('nibp-diastolic', t, dia), sample('nibp-mean', t, map)];
  }

  #ecgAt(t: number): number {
    let v = 0;
    for (let i = 0; i < this.#beats.length; i++) {
      const beat = this.#beats[i] as number;
      const dt = (t - beat) / 1000;
      if (dt < -0.3 || dt > 0.7) continue;
      const rr = i > 0 ? (beat - (this.#beats[i - 1] as number)) / 1000 : 60 / this.#opts.heartRate;
      for (const w of PQRST) {
        const offset = w.scalesWithQt ? w.offset * Math.sqrt(rr) : w.offset;
        const z = (dt - offset) / w.width;
        v += w.amplitude * Math.exp(-0.5 * z * z);
      }
    }
    const wander = 0.05 * Math.sin(2 * Math.PI * (this.#resp / 60) * (t / 1000));
    return v + wander + 0.01 * this.#rng.gaussian();
  }
}

function sample(name: VitalName, time: number, value: number): VitalSample {
  return { name, time, value, unit: VITAL_UNITS[name] };
}

function clamp(x: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, x));
}
