/**
 * The vitals profile of SenML used on vitalseal's wire: which names, which units, how an ECG strip
 * is carried. The full definition, with the reasons for each unit, is docs/senml-vitals.md.
 *
 * A batch becomes one SenML pack: the first record carries the base name "<device id>/" and the base
 * time (seconds, the batch start); each reading is a record with a relative time in seconds.
 *
 * @example
 *   const bytes = encodeVitalsPack({ deviceId: 'bed-7', readings: [{ kind: 'heart-rate', time: Date.now(), value: 72 }], ecg: [] });
 *   const batch = decodeVitalsPack(bytes);   // same readings back
 */
import { isDeviceId } from '../util/device-id.ts';
import { DecodeError } from '../util/errors.ts';
import { decodeSenmlCbor, encodeSenmlCbor, resolveSenml, type ResolvedRecord, type SenmlLimits, type SenmlRecord } from './senml.ts';

export type VitalKind =
  | 'heart-rate' | 'spo2' | 'respiration-rate' | 'body-temperature' | 'nibp-systolic' | 'nibp-diastolic' | 'nibp-mean';

/** One reading in clinical units: beat/min, % SpO2, breaths/min, °C, mmHg. */
export interface VitalReading {
  readonly kind: VitalKind;
  /** Milliseconds since the Unix epoch. */
  readonly time: number;
  readonly value: number;
}

/** A regularly sampled ECG strip. On the wire: int16 little-endian at `ECG_LSB_VOLTS` per step. */
export interface EcgStrip {
  readonly start: number;
  readonly intervalMs: number;
  /** Millivolts. */
  readonly samplesMv: ArrayLike<number>;
}

export interface VitalsBatch {
  readonly deviceId: string;
  readonly readings: readonly VitalReading[];
  readonly ecg: readonly EcgStrip[];
}

const MMHG_IN_PA = 133.322387415;

interface VitalSpec {
  /** SenML unit symbol (RFC 8428 §12.1). */
  readonly unit: string;
  readonly toWire: (clinical: number) => number;
  readonly fromWire: (wire: number) => number;
  /** Plausible clinical range; readings outside it are refused as corrupt. */
  readonly min: number;
  readonly max: number;
}

const same = (x: number) => x;
const pressure: VitalSpec = {
  unit: 'Pa', min: 0, max: 400,
  toWire: (mmHg) => Math.round(mmHg * MMHG_IN_PA * 10) / 10,
  fromWire: (pa) => Math.round((pa / MMHG_IN_PA) * 10) / 10,
};

/** Units: see docs/senml-vitals.md. '/' is SenML's ratio unit (its '%' is also a ratio, not a percentage). */
export const VITALS: Readonly<Record<VitalKind, VitalSpec>> = Object.freeze({
  'heart-rate': { unit: 'beat/min', toWire: same, fromWire: same, min: 0, max: 400 },
  spo2: { unit: '/', toWire: (pct) => Math.round(pct * 10) / 1000, fromWire: (r) => Math.round(r * 1000) / 10, min: 0, max: 100 },
  'respiration-rate': { unit: '1/min', toWire: same, fromWire: same, min: 0, max: 150 },
  'body-temperature': { unit: 'Cel', toWire: same, fromWire: same, min: 15, max: 47 },
  'nibp-systolic': pressure,
  'nibp-diastolic': pressure,
  'nibp-mean': pressure,
});

const KINDS = new Set(Object.keys(VITALS));
export const ECG_LSB_VOLTS = 1e-6;
const ECG_MAX_SAMPLES = 8192;
/** The device id rule of src/util/device-id.ts; the SenML base name is "<device id>/". */
export const isValidDeviceId = isDeviceId;

/** Seconds relative to `base` with millisecond precision, as SenML times are (§4.5.3). */
function relSeconds(ms: number, baseMs: number): number {
  return (ms - baseMs) / 1000;
}

export function encodeVitalsPack(batch: VitalsBatch): Uint8Array {
  if (!isValidDeviceId(batch.deviceId)) throw new RangeError(`invalid device id ${JSON.stringify(batch.deviceId)}`);
  const times = [...batch.readings.map((r) => r.time), ...batch.ecg.map((e) => e.start)];
  if (times.length === 0) throw new RangeError('encodeVitalsPack: empty batch');
  const base = Math.min(...times);
  const records: SenmlRecord[] = [{ bn: `${batch.deviceId}/`, bt: base / 1000 }];
  const first = records[0] as SenmlRecord;
  let firstUsed = false;
  const add = (r: SenmlRecord) => {
    if (!firstUsed) {
      Object.assign(first, r);
      firstUsed = true;
    } else records.push(r);
  };
  for (const r of batch.readings) {
    const spec = VITALS[r.kind];
    if (spec === undefined) throw new RangeError(`unknown vital ${String(r.kind)}`);
    if (!(r.value >= spec.min && r.value <= spec.max)) throw new RangeError(`${r.kind} value ${r.value} outside ${spec.min}..${spec.max}`);
    const rec: SenmlRecord = { n: r.kind, u: spec.unit, v: spec.toWire(r.value) };
    const t = relSeconds(r.time, base);
    if (t !== 0) rec.t = t;
    add(rec);
  }
  for (const e of batch.ecg) {
    if (e.samplesMv.length === 0 || e.samplesMv.length > ECG_MAX_SAMPLES) throw new RangeError('ECG strip must hold 1..8192 samples');
    const data = new Uint8Array(e.samplesMv.length * 2);
    const view = new DataView(data.buffer);
    for (let i = 0; i < e.samplesMv.length; i++) {
      const steps = Math.round(((e.samplesMv[i] as number) / 1000) / ECG_LSB_VOLTS);
      view.setInt16(i * 2, Math.max(-32768, Math.min(32767, steps)), true);
    }
    const t = relSeconds(e.start, base);
    const at = t !== 0 ? { t } : {};
    add({ n: 'ecg/interval', u: 's', v: e.intervalMs / 1000, ...at });
    records.push({ n: 'ecg/lsb', u: 'V', v: ECG_LSB_VOLTS, ...at });
    records.push({ n: 'ecg', u: 'V', vd: data, ...at });
  }
  return encodeSenmlCbor(records);
}

function fail(code: string, message: string): never {
  throw new DecodeError(code, `vitals: ${message}`);
}

/**
 * A strip's 16-bit little-endian steps of `lsb` volts as millivolts, in single precision as a
 * Float32Array would hold them, in an ordinary array: a typed array of a strip's size gets a buffer
 * outside the heap, which cost twice the conversion itself. A function of its own, so that it
 * compiles to a loop that allocates the array and nothing else: written inline in the decoder, the
 * decoder allocated 4-6 KiB more a pack (18 KiB against 12.8 measured over 2,000 packs).
 */
function ecgMillivolts(vd: Uint8Array, lsb: number): number[] {
  const n = vd.length >> 1;
  const out = new Array<number>(n);
  for (let k = 0; k < n; k++) {
    const step = (((vd[2 * k + 1] as number) << 24) >> 16) | (vd[2 * k] as number); // int16 LE
    out[k] = Math.fround(step * lsb * 1000);
  }
  return out;
}

export function decodeVitalsPack(bytes: Uint8Array, limits: SenmlLimits = {}): VitalsBatch {
  // The ECG bytes are read into new samples below before this returns: views, not copies.
  const pack = decodeSenmlCbor(bytes, limits, true);
  const bn = pack[0]?.bn;
  if (bn === undefined || !bn.endsWith('/') || !isValidDeviceId(bn.slice(0, -1))) fail('vitals-base-name', 'first record must carry bn "<device id>/"');
  for (let i = 1; i < pack.length; i++) if ((pack[i] as SenmlRecord).bn !== undefined) fail('vitals-base-name', 'one device per pack: bn appears twice');
  const deviceId = bn.slice(0, -1);
  const records = resolveSenml(pack);
  const readings: VitalReading[] = [];
  const ecg: EcgStrip[] = [];
  let interval: { t: number; v: number } | undefined;
  let lsb: { t: number; v: number } | undefined;
  for (let i = 0; i < records.length; i++) {
    const r = records[i] as ResolvedRecord;
    const name = r.n.slice(bn.length);
    const timeMs = Math.round(r.t * 1000);
    const spec = KINDS.has(name) ? VITALS[name as VitalKind] : undefined;
    if (spec !== undefined) {
      if (r.u !== spec.unit || r.v === undefined) fail('vitals-record', `record ${i} (${name}) must have unit ${spec.unit} and a numeric value`);
      const value = spec.fromWire(r.v);
      if (!(value >= spec.min && value <= spec.max)) fail('vitals-range', `record ${i} (${name}) value outside ${spec.min}..${spec.max}`);
      readings.push({ kind: name as VitalKind, time: timeMs, value });
    } else if (name === 'ecg/interval' && r.u === 's' && r.v !== undefined && r.v > 0 && r.v <= 1) {
      interval = { t: r.t, v: r.v };
    } else if (name === 'ecg/lsb' && r.u === 'V' && r.v !== undefined && r.v > 0 && r.v <= 1e-3) {
      lsb = { t: r.t, v: r.v };
    } else if (name === 'ecg' && r.u === 'V' && r.vd !== undefined) {
      // The strip's interval and step size come in the two records just before it, at the same time.
      if (interval?.t !== r.t || lsb?.t !== r.t) fail('vitals-ecg', `record ${i}: ECG data without its interval and lsb records`);
      if (r.vd.length === 0 || r.vd.length % 2 !== 0 || r.vd.length / 2 > ECG_MAX_SAMPLES) fail('vitals-ecg', `record ${i}: ECG data length ${r.vd.length}`);
      ecg.push({ start: timeMs, intervalMs: Math.round(interval.v * 1e6) / 1000, samplesMv: ecgMillivolts(r.vd, lsb.v) });
      interval = undefined;
      lsb = undefined;
    } else {
      fail('vitals-unknown-record', `record ${i}: unknown or malformed record ${JSON.stringify(name)}`);
    }
  }
  if (interval !== undefined || lsb !== undefined) fail('vitals-ecg', 'ECG interval/lsb record without data');
  return { deviceId, readings, ecg };
}
