/**
 * ORU^R01 (HL7 v2.5.1 §7.3.1, "unsolicited transmission of an observation message") to vitals.
 *
 * Structure checked: MSH first; MSH-9 is ORU^R01; MSH-12 is a 2.x version; every OBX follows an
 * OBR. PID is allowed and parsed but never used or logged: the agent's device identity, not the
 * patient identity in the monitor's message, names the stream (the ingest service links device to
 * patient).
 *
 * Observations are recognised by OBX-3 (primary or alternate coding): LOINC ("LN") or ISO/IEEE
 * 11073-10101 ("MDC", as IHE PCD-01 monitors send), see `OBSERVATION_CODES`. OBX-6 must name a
 * unit we understand for that vital (UCUM or MDC dimension), converted to the clinical unit. A
 * numeric value (OBX-2 NM, or SN with no comparator) is required.
 *
 * Outcome per OBX: mapped; ignored (a code we do not carry, or result status X/D/W/N: no value);
 * implausible (outside the vitals profile's range, e.g. a monitor's "not available" sentinel such as
 * -999: skipped and counted); or an error that rejects the whole message (a unit we cannot
 * interpret, a non-numeric value, a bad time): we never guess at clinical data.
 */
import { VITALS, type VitalKind, type VitalReading } from '../../../codec/vitals.ts';
import { component, components, type Hl7Message, type Hl7Segment } from './message.ts';

/** HL7 table 0357 message error condition codes used in ERR-3. */
export type Hl7ErrorCode = 100 | 101 | 102 | 103 | 200 | 203 | 207;

export const HL7_ERROR_TEXT: Readonly<Record<Hl7ErrorCode, string>> = Object.freeze({
  100: 'Segment sequence error',
  101: 'Required field missing',
  102: 'Data type error',
  103: 'Table value not found',
  200: 'Unsupported message type',
  203: 'Unsupported version id',
  207: 'Application internal error',
});

/**
 * A message the gateway will not accept. `ack` is the acknowledgement code to answer with:
 * AR (reject: not a message type/version we process) or AE (error in its content or in storing it).
 * `reason` is safe to log and to send back: it never holds a value or a patient field.
 */
export class Hl7Rejection extends Error {
  override name = 'Hl7Rejection';
  constructor(
    readonly ack: 'AE' | 'AR',
    readonly hl7Code: Hl7ErrorCode,
    readonly code: string,
    readonly reason: string,
  ) {
    super(reason);
  }
}

interface CodeEntry {
  readonly kind: VitalKind;
  /** Lower wins when two observations in one message give the same vital at the same time. */
  readonly priority: number;
}

/**
 * OBX-3 codes recognised. LOINC: 8867-4 heart rate, 59408-5 / 2708-6 SpO2 (pulse oximetry /
 * arterial), 9279-1 respiratory rate, 8310-5 body temperature, 8480-6 / 8462-4 / 8478-0 systolic,
 * diastolic, mean blood pressure. MDC (11073-10101 partition 2, code = 2^17 + term code):
 * MDC_ECG_HEART_RATE, MDC_PULS_OXIM_PULS_RATE (pulse rate, used for heart-rate only when the
 * message has no ECG heart rate), MDC_PULS_OXIM_SAT_O2, MDC_RESP_RATE / MDC_TTHOR_RESP_RATE /
 * MDC_CO2_RESP_RATE, MDC_TEMP_BODY / MDC_TEMP, MDC_PRESS_BLD_NONINV_{SYS,DIA,MEAN} and
 * MDC_PRESS_CUFF_{SYS,DIA,MEAN}.
 */
export const OBSERVATION_CODES: Readonly<Record<'LN' | 'MDC', Readonly<Record<string, CodeEntry>>>> = Object.freeze({
  LN: {
    '8867-4': { kind: 'heart-rate', priority: 0 },
    '59408-5': { kind: 'spo2', priority: 0 },
    '2708-6': { kind: 'spo2', priority: 1 },
    '9279-1': { kind: 'respiration-rate', priority: 0 },
    '8310-5': { kind: 'body-temperature', priority: 0 },
    '8480-6': { kind: 'nibp-systolic', priority: 0 },
    '8462-4': { kind: 'nibp-diastolic', priority: 0 },
    '8478-0': { kind: 'nibp-mean', priority: 0 },
  },
  MDC: {
    '147842': { kind: 'heart-rate', priority: 0 }, // MDC_ECG_HEART_RATE
    '149530': { kind: 'heart-rate', priority: 1 }, // MDC_PULS_OXIM_PULS_RATE
    '150456': { kind: 'spo2', priority: 0 }, // MDC_PULS_OXIM_SAT_O2
    '151562': { kind: 'respiration-rate', priority: 0 }, // MDC_RESP_RATE
    '151578': { kind: 'respiration-rate', priority: 1 }, // MDC_TTHOR_RESP_RATE
    '151594': { kind: 'respiration-rate', priority: 2 }, // MDC_CO2_RESP_RATE
    '150364': { kind: 'body-temperature', priority: 0 }, // MDC_TEMP_BODY
    '150344': { kind: 'body-temperature', priority: 1 }, // MDC_TEMP
    '150021': { kind: 'nibp-systolic', priority: 0 }, // MDC_PRESS_BLD_NONINV_SYS
    '150022': { kind: 'nibp-diastolic', priority: 0 }, // MDC_PRESS_BLD_NONINV_DIA
    '150023': { kind: 'nibp-mean', priority: 0 }, // MDC_PRESS_BLD_NONINV_MEAN
    '150301': { kind: 'nibp-systolic', priority: 1 }, // MDC_PRESS_CUFF_SYS
    '150302': { kind: 'nibp-diastolic', priority: 1 }, // MDC_PRESS_CUFF_DIA
    '150303': { kind: 'nibp-mean', priority: 1 }, // MDC_PRESS_CUFF_MEAN
  },
});

/** MDC reference ids (OBX-3.2) for senders that fill only the text component. */
const MDC_REFIDS: Readonly<Record<string, string>> = Object.freeze({
  MDC_ECG_HEART_RATE: '147842', MDC_PULS_OXIM_PULS_RATE: '149530', MDC_PULS_OXIM_SAT_O2: '150456',
  MDC_RESP_RATE: '151562', MDC_TTHOR_RESP_RATE: '151578', MDC_CO2_RESP_RATE: '151594',
  MDC_TEMP_BODY: '150364', MDC_TEMP: '150344',
  MDC_PRESS_BLD_NONINV_SYS: '150021', MDC_PRESS_BLD_NONINV_DIA: '150022', MDC_PRESS_BLD_NONINV_MEAN: '150023',
  MDC_PRESS_CUFF_SYS: '150301', MDC_PRESS_CUFF_DIA: '150302', MDC_PRESS_CUFF_MEAN: '150303',
});

type UnitFamily = 'per-minute' | 'percent' | 'temperature' | 'pressure';

const FAMILY: Readonly<Record<VitalKind, UnitFamily>> = {
  'heart-rate': 'per-minute', 'respiration-rate': 'per-minute', spo2: 'percent', 'body-temperature': 'temperature',
  'nibp-systolic': 'pressure', 'nibp-diastolic': 'pressure', 'nibp-mean': 'pressure',
};

/** Unit spellings (OBX-6.1 or .2: UCUM, common ASCII, MDC dimension code or reference id) to a converter into the clinical unit. */
const UNITS: Readonly<Record<UnitFamily, Readonly<Record<string, (v: number) => number>>>> = {
  'per-minute': Object.fromEntries(['/min', '1/min', '{beats}/min', '{beat}/min', '{breaths}/min', '{breath}/min', 'bpm', 'beat/min', 'beats/min',
    'brpm', 'rpm', '264864', 'MDC_DIM_BEAT_PER_MIN', '264928', 'MDC_DIM_RESP_PER_MIN', '265216', 'MDC_DIM_PER_MIN'].map((u) => [u, (v: number) => v])),
  percent: Object.fromEntries(['%', '262688', 'MDC_DIM_PERCENT'].map((u) => [u, (v: number) => v])),
  temperature: {
    ...Object.fromEntries(['Cel', 'degC', 'C', '°C', '268192', 'MDC_DIM_DEGC'].map((u) => [u, (v: number) => v])),
    ...Object.fromEntries(['[degF]', 'degF', 'F', '°F', '268160', 'MDC_DIM_FAHR'].map((u) => [u, (v: number) => Math.round(((v - 32) * 5) / 9 * 100) / 100])),
  },
  pressure: {
    ...Object.fromEntries(['mm[Hg]', 'mmHg', '266016', 'MDC_DIM_MMHG'].map((u) => [u, (v: number) => v])),
    ...Object.fromEntries(['kPa', '265987', 'MDC_DIM_KILO_PASCAL'].map((u) => [u, (v: number) => Math.round((v * 1000 / 133.322387415) * 10) / 10])),
  },
};

/** HL7 table 0085 result statuses that carry no usable value. */
const NO_VALUE_STATUS = new Set(['X', 'D', 'W', 'N', 'I', 'O']);

export interface OruOptions {
  /** The agent's clock, to refuse readings stamped in the future. */
  readonly now: number;
  /** Readings more than this far ahead of `now` are refused (clock skew). Default 10 minutes. */
  readonly maxFutureMs?: number;
  /** UTC offset (minutes) for times that carry none; default: this process's local time zone. */
  readonly utcOffsetMinutes?: number;
  /** If set, MSH-3 (sending application, first component) must be one of these. */
  readonly acceptSenders?: readonly string[];
}

export interface OruResult {
  readonly controlId: string;
  readonly readings: VitalReading[];
  /** OBX segments not carried (unknown code, no-value status). */
  readonly ignored: number;
  /** OBX segments with a value outside the plausible range: skipped. */
  readonly implausible: number;
}

/** Reads MSH-10 (message control id) if the MSH got that far; for ACKs of refused messages. */
export function controlIdOf(msg: Hl7Message): string {
  const msh = msg.segments[0];
  return msh === undefined ? '' : component(msh, 10);
}

export function interpretOru(msg: Hl7Message, opts: OruOptions): OruResult {
  const msh = msg.segments[0] as Hl7Segment;
  const controlId = component(msh, 10);
  if (controlId === '') throw new Hl7Rejection('AR', 101, 'hl7-no-control-id', 'MSH-10 (message control id) is empty');
  const type = components(msh, 9);
  if (type[0] !== 'ORU' || type[1] !== 'R01') throw new Hl7Rejection('AR', 200, 'hl7-message-type', `message type ${sanitize(type.slice(0, 2).join('^'))} is not ORU^R01`);
  const version = component(msh, 12);
  if (!/^2\.[1-9](\.\d+)?$/.test(version)) throw new Hl7Rejection('AR', 203, 'hl7-version', `version ${sanitize(version)} is not HL7 v2.x`);
  const processing = component(msh, 11);
  if (processing !== '' && !['P', 'T', 'D'].includes(processing)) throw new Hl7Rejection('AR', 103, 'hl7-processing-id', 'MSH-11 processing id is not P, T or D');
  if (opts.acceptSenders !== undefined && !opts.acceptSenders.includes(component(msh, 3))) {
    throw new Hl7Rejection('AR', 207, 'hl7-sender-not-accepted', 'MSH-3 sending application is not on this gateway\'s accept list');
  }
  const mshTime = component(msh, 7);
  let obrTime: string | undefined;
  let sawObr = false;
  let sawObx = false;
  let ignored = 0;
  let implausible = 0;
  const best = new Map<string, { reading: VitalReading; priority: number }>();
  for (const [index, seg] of msg.segments.entries()) {
    if (index === 0) continue;
    if (seg.id === 'OBR') {
      sawObr = true;
      obrTime = component(seg, 7);
      continue;
    }
    if (seg.id !== 'OBX') continue;
    sawObx = true;
    const where = `OBX ${index + 1}`;
    if (!sawObr) throw new Hl7Rejection('AE', 100, 'hl7-segment-order', `${where} comes before any OBR`);
    const entry = codeOf(seg);
    const status = component(seg, 11);
    const rawValue = valueOf(seg, where, entry !== undefined);
    if (entry === undefined || NO_VALUE_STATUS.has(status) || rawValue === undefined) {
      ignored++;
      continue;
    }
    const unitConvert = unitOf(seg, FAMILY[entry.kind]);
    if (unitConvert === undefined) throw new Hl7Rejection('AE', 103, 'hl7-unit', `${where} (${entry.kind}): unit ${sanitize(components(seg, 6).slice(0, 2).join('^'))} is not understood`);
    const value = unitConvert(rawValue);
    const spec = VITALS[entry.kind];
    if (!(value >= spec.min && value <= spec.max)) {
      implausible++;
      continue;
    }
    const stamp = component(seg, 14) || obrTime || mshTime;
    const time = parseHl7Time(stamp, opts.utcOffsetMinutes);
    if (time === undefined) throw new Hl7Rejection('AE', 102, 'hl7-time', `${where} (${entry.kind}): no usable observation time (OBX-14, OBR-7 or MSH-7)`);
    if (time > opts.now + (opts.maxFutureMs ?? 600_000)) throw new Hl7Rejection('AE', 102, 'hl7-time-future', `${where} (${entry.kind}): observation time is in the future`);
    const key = `${entry.kind}@${time}`;
    const prev = best.get(key);
    if (prev === undefined || entry.priority < prev.priority) {
      if (prev !== undefined) ignored++;
      best.set(key, { reading: { kind: entry.kind, time, value }, priority: entry.priority });
    } else {
      ignored++;
    }
  }
  if (!sawObx) throw new Hl7Rejection('AE', 101, 'hl7-no-obx', 'ORU^R01 without any OBX segment');
  return { controlId, readings: [...best.values()].map((b) => b.reading), ignored, implausible };
}

function codeOf(seg: Hl7Segment): CodeEntry | undefined {
  const c = components(seg, 3);
  // CE/CWE: identifier^text^coding system, then alternate identifier^text^coding system.
  for (const [id, text, system] of [[c[0], c[1], c[2]], [c[3], c[4], c[5]]] as const) {
    const sys = (system ?? '').toUpperCase();
    if (sys === 'LN') {
      const e = OBSERVATION_CODES.LN[id ?? ''];
      if (e !== undefined) return e;
    } else if (sys === 'MDC' || sys.startsWith('ISO/IEEE 11073')) {
      const e = OBSERVATION_CODES.MDC[id ?? ''] ?? OBSERVATION_CODES.MDC[MDC_REFIDS[text ?? ''] ?? ''];
      if (e !== undefined) return e;
    } else if (sys === '') {
      // No coding system: accept only an MDC reference id, with no code or its own code beside it.
      const byRef = MDC_REFIDS[text ?? ''];
      if (byRef !== undefined && (id === undefined || id === '' || id === byRef)) return OBSERVATION_CODES.MDC[byRef];
    }
  }
  return undefined;
}

/** OBX-5 as a number; undefined when empty. NM, or SN "^value" / "=^value" (no comparator, no range). */
function valueOf(seg: Hl7Segment, where: string, mapped: boolean): number | undefined {
  const type = component(seg, 2);
  const parts = components(seg, 5);
  let text: string;
  if (type === 'NM' || type === '') {
    text = parts[0] ?? '';
  } else if (type === 'SN') {
    if ((parts[0] ?? '') !== '' && parts[0] !== '=') return refuse(mapped, where, 'structured numeric with a comparator is not a reading');
    if ((parts[2] ?? '') !== '' || (parts[3] ?? '') !== '') return refuse(mapped, where, 'structured numeric ranges are not readings');
    text = parts[1] ?? '';
  } else {
    return refuse(mapped, where, `value type ${sanitize(type)} is not numeric`);
  }
  if (text === '') return undefined;
  // HL7 NM (§2.A.47): optional sign, digits, optional decimal point; no exponent.
  if (!/^[+-]?(\d+\.?\d*|\.\d+)$/.test(text)) return refuse(mapped, where, 'value is not an HL7 number');
  return Number(text);
}

function refuse(mapped: boolean, where: string, what: string): undefined {
  if (mapped) throw new Hl7Rejection('AE', 102, 'hl7-value', `${where}: ${what}`);
  return undefined;
}

function unitOf(seg: Hl7Segment, family: UnitFamily): ((v: number) => number) | undefined {
  const [id, text] = components(seg, 6);
  const table = UNITS[family];
  for (const u of [id, text]) {
    if (u !== undefined && u !== '' && Object.hasOwn(table, u)) return table[u];
  }
  return undefined;
}

/**
 * HL7 DTM (§2.A.22): YYYYMMDDHHMM[SS[.S[S[S[S]]]]][+/-ZZZZ]. Minute precision at least: a vital
 * without a time of day is not a reading.
 */
export function parseHl7Time(s: string, utcOffsetMinutes?: number): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?(?:([+-])(\d{2})(\d{2}))?$/.exec(s);
  if (m === null) return undefined;
  const [, y, mo, d, h, mi, sec, frac, sign, oh, om] = m;
  const nums = [y, mo, d, h, mi].map(Number) as [number, number, number, number, number];
  const secs = sec === undefined ? 0 : Number(sec);
  const ms = frac === undefined ? 0 : Math.round(Number(`0.${frac}`) * 1000);
  const [Y, M, D, H, Mi] = nums;
  if (M < 1 || M > 12 || D < 1 || D > 31 || H > 23 || Mi > 59 || secs > 59) return undefined;
  const utc = Date.UTC(Y, M - 1, D, H, Mi, secs, ms);
  if (new Date(utc).getUTCDate() !== D) return undefined; // 31 February and the like
  let offset: number;
  if (sign !== undefined) {
    const oH = Number(oh);
    const oM = Number(om);
    if (oH > 14 || oM > 59) return undefined;
    offset = (sign === '-' ? -1 : 1) * (oH * 60 + oM);
  } else if (utcOffsetMinutes !== undefined) {
    offset = utcOffsetMinutes;
  } else {
    return new Date(Y, M - 1, D, H, Mi, secs, ms).getTime();
  }
  return utc - offset * 60_000;
}

/** Echoed text from the sender, cut short and stripped of anything but plain printable ASCII. */
function sanitize(s: string): string {
  const clean = s.replace(/[^\x20-\x7e]/g, '?');
  return `'${clean.length > 24 ? `${clean.slice(0, 24)}...` : clean}'`;
}
