/**
 * vitalseal/agent/sensors: where readings enter the agent. `SensorSource` is the interface a real
 * sensor driver implements; `SimulatedPatient` is a seeded, physiologically plausible source for
 * demos and tests.
 *
 * @example
 *   import { SimulatedPatient } from 'vitalseal/agent/sensors';
 *   const patient = new SimulatedPatient({ id: 'bed-7', seed: 42 });
 *   patient.start(Date.now());
 *   const { vitals, waveforms } = patient.read(Date.now() + 1000);
 */
export { SimulatedPatient, type PatientEvent, type PatientEventKind, type SimulatedPatientOptions } from './simulated-patient.ts';
export { StreamSensorSource, type DriverOutput, type DriverStats, type SensorDriver, type StreamSensorSourceOptions } from './driver.ts';
export { VITAL_UNITS, type SensorHealth, type SensorReadout, type SensorSource, type VitalName, type VitalSample, type WaveformChunk } from './types.ts';
