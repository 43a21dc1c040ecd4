/**
 * Sensor sources: where readings enter the agent. A source is sans-I/O with respect to time: the
 * sampler calls `read(now)` and gets everything measured since the previous call, so a simulated
 * patient runs under a fake clock in tests and in real time in the agent.
 *
 * Real sensors (I2C pulse oximeters, serial monitors) implement the same interface; see
 * examples/ for a driver.
 */
import type { VitalKind } from '../../codec/vitals.ts';

export type VitalName = VitalKind;

/**
 * Clinical units sensors report in. The wire uses SenML registry units instead (SpO2 as a ratio,
 * pressures in Pa); src/codec/vitals.ts converts. See docs/senml-vitals.md.
 */
export const VITAL_UNITS: Readonly<Record<VitalName, string>> = Object.freeze({
  'heart-rate': 'beat/min',
  spo2: '%',
  'respiration-rate': '/min',
  'body-temperature': 'Cel',
  'nibp-systolic': 'mmHg',
  'nibp-diastolic': 'mmHg',
  'nibp-mean': 'mmHg',
});

export interface VitalSample {
  readonly name: VitalName;
  /** Milliseconds since the Unix epoch. */
  readonly time: number;
  readonly value: number;
  readonly unit: string;
}

/** A chunk of a regularly sampled waveform. */
export interface WaveformChunk {
  readonly name: 'ecg';
  /** Time of the first sample, ms since the Unix epoch. */
  readonly start: number;
  /** Sample interval in milliseconds (4 ms = 250 Hz). */
  readonly intervalMs: number;
  /** Samples in millivolts. */
  readonly samples: Float32Array;
}

export interface SensorReadout {
  readonly vitals: VitalSample[];
  readonly waveforms: WaveformChunk[];
}

export interface SensorHealth {
  readonly ok: boolean;
  readonly detail: string;
}

export interface SensorSource {
  readonly id: string;
  start(now: number): void;
  /** Everything measured in (previous read, now]. */
  read(now: number): SensorReadout;
  stop(): void;
  health(): SensorHealth;
}
