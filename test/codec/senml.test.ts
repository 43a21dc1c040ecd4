import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { encodeCbor } from '../../src/codec/cbor.ts';
import { decodeSenmlCbor, decodeSenmlJson, encodeSenmlCbor, resolveSenml, type SenmlPack } from '../../src/codec/senml.ts';
import { decodeVitalsPack, encodeVitalsPack, type VitalsBatch } from '../../src/codec/vitals.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { DecodeError } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';

interface SenmlVector { id: string; json: unknown; json_text_as_printed: string; cbor?: string; resolves_from?: string }
const vectors = loadVectors<SenmlVector>('senml.json');

describe('SenML (RFC 8428) examples', () => {
  it('every §5 example reads through the JSON decoder and resolves', () => {
    for (const v of vectors.vectors) {
      const pack = decodeSenmlJson(JSON.stringify(v.json));
      assert.equal(pack.length, (v.json as unknown[]).length, v.id);
      const text = decodeSenmlJson(v.json_text_as_printed);
      assert.deepEqual(text, pack, `${v.id}: printed text and parsed JSON agree`);
      assert.ok(resolveSenml(pack).length >= pack.length - 1, v.id);
    }
  });

  it('§6 CBOR example (5.1.2-b) decodes to the JSON pack and re-encodes to the same bytes', () => {
    const v = vectors.vectors.find((x) => x.id === 'rfc8428-5.1.2-b') as SenmlVector;
    const fromCbor = decodeSenmlCbor(fromHex(v.cbor as string));
    const fromJson = decodeSenmlJson(JSON.stringify(v.json));
    // The RFC's CBOR writes t: 0 on the last record where the JSON leaves it out.
    assert.deepEqual(resolveSenml(fromCbor), resolveSenml(fromJson));
    assert.equal(toHex(encodeSenmlCbor(fromCbor)), v.cbor);
  });

  it('5.1.3 resolves to the 5.1.4 resolved pack, from JSON and from CBOR', () => {
    const src = vectors.vectors.find((x) => x.id === 'rfc8428-5.1.3') as SenmlVector;
    const want = vectors.vectors.find((x) => x.id === 'rfc8428-5.1.4') as SenmlVector;
    const expected = resolveSenml(decodeSenmlJson(JSON.stringify(want.json)));
    assert.deepEqual(resolveSenml(decodeSenmlJson(JSON.stringify(src.json))), expected);
    assert.deepEqual(resolveSenml(decodeSenmlCbor(fromHex(src.cbor as string))), expected);
  });
});

describe('SenML strictness', () => {
  const bad: [string, unknown, string][] = [
    ['not an array', new Map([[0, 'x']]), 'senml-not-a-pack'],
    ['empty pack', [], 'senml-empty'],
    ['record not a map', [5], 'senml-not-a-record'],
    ['unknown label', [new Map<number, unknown>([[0, 'a'], [2, 1], [99, 1]])], 'senml-unknown-label'],
    ['string label in CBOR', [new Map<unknown, unknown>([['n', 'a'], [2, 1]])], 'senml-unknown-label'],
    ['value of wrong type', [new Map<number, unknown>([[0, 'a'], [2, 'high']])], 'senml-field-type'],
    ['version too new', [new Map<number, unknown>([[-1, 11], [0, 'a'], [2, 1]])], 'senml-version'],
  ];
  for (const [what, value, code] of bad) {
    it(`refuses ${what}`, () => {
      assert.throws(() => decodeSenmlCbor(encodeCbor(value)), (e) => e instanceof DecodeError && e.code === code);
    });
  }
  it('a base-only record contributes its bases and resolves to nothing (RFC 8428 §5.1.7)', () => {
    const r = resolveSenml([{ bn: 'dev:' }, { n: 'temp', u: 'Cel', v: 23.1 }]);
    assert.deepEqual(r, [{ n: 'dev:temp', t: 0, u: 'Cel', v: 23.1 }]);
  });
  it('refuses bad names, records without a value, two values, mixed versions at resolution', () => {
    const cases: [SenmlPack, string][] = [
      [[{ n: '-bad', v: 1 }], 'senml-name'],
      [[{ n: 'sp ace', v: 1 }], 'senml-name'],
      [[{ n: 'x' }], 'senml-no-value'],
      [[{ n: 'x', v: 1, vs: 'a' }], 'senml-values'],
      [[{ bver: 5, n: 'x', v: 1 }, { bver: 6, n: 'y', v: 1 }], 'senml-version'],
    ];
    for (const [pack, code] of cases) assert.throws(() => resolveSenml(pack), (e) => e instanceof DecodeError && e.code === code, code);
  });
  it('checks the whole name (base name + name) by the §4.5.1 rule, however the base name changes', () => {
    const bad: SenmlPack[] = [
      [{ bn: 'dev:', n: 'sp ace', v: 1 }],
      [{ bn: '-dev:', n: 'temp', v: 1 }],
      [{ bn: 'dev ice:', n: 'temp', v: 1 }],
      [{ bn: 'dev:', n: 'a', v: 1 }, { bn: '_x:', n: 'b', v: 1 }],
      [{ bn: 'dev:', n: 'a', v: 1 }, { bn: '', n: '/b', v: 1 }],
      [{ bn: '', n: '', v: 1 }],
    ];
    for (const pack of bad) assert.throws(() => resolveSenml(pack), (e) => e instanceof DecodeError && e.code === 'senml-name', JSON.stringify(pack));
    // A valid base name makes any name of the allowed characters valid, even one starting with '-'.
    assert.deepEqual(resolveSenml([{ bn: 'dev:', n: '-x', v: 1 }, { n: '', v: 2 }, { bn: 'b/', n: 'y', v: 3 }]).map((r) => r.n), ['dev:-x', 'dev:', 'b/y']);
  });
  it('bounds the number of records', () => {
    const pack = Array.from({ length: 10 }, () => ({ n: 'x', v: 1 }));
    assert.throws(() => decodeSenmlCbor(encodeSenmlCbor(pack), { maxRecords: 5 }), (e) => e instanceof DecodeError && e.code === 'senml-too-many-records');
  });
});

const T0 = Date.UTC(2026, 10, 24, 12, 0, 0);
function batch(): VitalsBatch {
  const samplesMv = Float32Array.from({ length: 250 }, (_, i) => Math.sin(i / 10) * 1.2);
  return {
    deviceId: 'bed-7',
    readings: [
      { kind: 'heart-rate', time: T0, value: 72 }, { kind: 'spo2', time: T0, value: 97 },
      { kind: 'respiration-rate', time: T0, value: 14 }, { kind: 'body-temperature', time: T0, value: 36.8 },
      { kind: 'nibp-systolic', time: T0 + 500, value: 121 }, { kind: 'nibp-diastolic', time: T0 + 500, value: 79 },
      { kind: 'nibp-mean', time: T0 + 500, value: 93 },
    ],
    ecg: [{ start: T0 + 4, intervalMs: 4, samplesMv }],
  };
}

describe('vitals profile', () => {
  it('round-trips readings in clinical units and the ECG within one quantisation step (1 µV)', () => {
    const b = batch();
    const d = decodeVitalsPack(encodeVitalsPack(b));
    assert.equal(d.deviceId, 'bed-7');
    assert.deepEqual(d.readings, b.readings);
    const strip = d.ecg[0];
    assert.ok(strip);
    assert.equal(strip.start, T0 + 4);
    assert.equal(strip.intervalMs, 4);
    for (let i = 0; i < 250; i++) assert.ok(Math.abs((strip.samplesMv[i] as number) - (b.ecg[0]?.samplesMv[i] as number)) <= 0.0006);
  });

  it('ECG steps decode with their sign across the whole 16-bit range (both bytes of each step)', () => {
    const steps = [-32768, 32767, -1, 0, 1, 255, 256, -256, -257, 0x7f00, -0x7f01];
    const b: VitalsBatch = { deviceId: 'bed-7', readings: [], ecg: [{ start: T0, intervalMs: 4, samplesMv: steps.map((s) => s / 1000) }] };
    const d = decodeVitalsPack(encodeVitalsPack(b));
    assert.deepEqual(Array.from(d.ecg[0]?.samplesMv ?? []), steps.map((s) => Math.fround(s * 1e-6 * 1000)));
  });

  it('uses SenML registry units on the wire (SpO2 as a ratio, pressure in Pa)', () => {
    const records = resolveSenml(decodeSenmlCbor(encodeVitalsPack(batch())));
    const by = (n: string) => records.find((r) => r.n === `bed-7/${n}`);
    assert.equal(by('spo2')?.u, '/');
    assert.equal(by('spo2')?.v, 0.97);
    assert.equal(by('nibp-systolic')?.u, 'Pa');
    assert.equal(by('heart-rate')?.u, 'beat/min');
    assert.equal(by('body-temperature')?.u, 'Cel');
    assert.equal(by('ecg')?.vd?.length, 500);
  });

  it('refuses out-of-range readings, unknown records and ECG data without its metadata', () => {
    assert.throws(() => encodeVitalsPack({ deviceId: 'bed-7', readings: [{ kind: 'spo2', time: T0, value: 140 }], ecg: [] }), RangeError);
    const pack = (records: SenmlPack) => encodeSenmlCbor(records);
    const cases: [Uint8Array, string][] = [
      [pack([{ bn: 'bed-7/', bt: 1, n: 'heart-rate', u: 'beat/min', v: 900 }]), 'vitals-range'],
      [pack([{ bn: 'bed-7/', bt: 1, n: 'heart-rate', u: 'Hz', v: 1 }]), 'vitals-record'],
      [pack([{ bn: 'bed-7/', bt: 1, n: 'glucose', u: 'mol', v: 1 }]), 'vitals-unknown-record'],
      [pack([{ bn: 'bed-7/', bt: 1, n: 'ecg', u: 'V', vd: Uint8Array.of(1, 2) }]), 'vitals-ecg'],
      [pack([{ bn: 'bed 7/', bt: 1, n: 'heart-rate', u: 'beat/min', v: 60 }]), 'vitals-base-name'],
      [pack([{ n: 'heart-rate', u: 'beat/min', v: 60 }]), 'vitals-base-name'],
    ];
    for (const [bytes, code] of cases) assert.throws(() => decodeVitalsPack(bytes), (e) => e instanceof DecodeError && e.code === code, code);
  });

  it('every proper prefix of a vitals pack is rejected', () => {
    const bytes = encodeVitalsPack(batch());
    for (let n = 0; n < bytes.length; n++) {
      assert.throws(() => decodeVitalsPack(bytes.subarray(0, n)), (e) => e instanceof DecodeError, `prefix ${n}`);
    }
  });

  it('random mutations give a valid batch or a DecodeError, never anything else', () => {
    const bytes = encodeVitalsPack(batch());
    fc.assert(fc.property(fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 }), (edits) => {
      const m = Uint8Array.from(bytes);
      for (const [pos, val] of edits) m[pos % m.length] = val;
      try {
        const d = decodeVitalsPack(m);
        assert.ok(typeof d.deviceId === 'string');
      } catch (e) {
        assert.ok(e instanceof DecodeError, String(e));
      }
    }), { numRuns: 3000, seed: 8428 });
  });
});
