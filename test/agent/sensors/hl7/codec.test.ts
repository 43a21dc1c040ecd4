/**
 * MLLP framing, HL7 v2 parsing and ORU^R01 mapping: strict, bounded, every prefix and random
 * mutations handled with typed errors only.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { buildAck, escapeHl7 } from '../../../../src/agent/sensors/hl7/ack.ts';
import { component, parseHl7, unescapeHl7 } from '../../../../src/agent/sensors/hl7/message.ts';
import { encodeMllp, MllpDecoder } from '../../../../src/agent/sensors/hl7/mllp.ts';
import { Hl7Rejection, interpretOru, parseHl7Time } from '../../../../src/agent/sensors/hl7/oru.ts';
import { DecodeError } from '../../../../src/util/errors.ts';
import { obx, oru } from './messages.ts';

const enc = (s: string) => new Uint8Array(Buffer.from(s, 'latin1'));
const NOW = Date.UTC(2025, 5, 10, 12, 0, 0);

describe('MLLP decoder', () => {
  const msgs = [enc('MSH|^~\\&|A\rPID|1\r'), enc('MSH|^~\\&|B\r'), enc('x')];
  const stream = Buffer.concat(msgs.map((m) => Buffer.from(encodeMllp(m))));

  it('reassembles frames split at every possible point, and several frames in one chunk', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const d = new MllpDecoder({ maxFrameBytes: 100 });
      const got = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
      assert.deepEqual(got.map((g) => Buffer.from(g).toString('latin1')), msgs.map((m) => Buffer.from(m).toString('latin1')), `cut ${cut}`);
    }
    const d = new MllpDecoder({ maxFrameBytes: 100 });
    const one: Uint8Array[] = [];
    for (const b of stream) one.push(...d.push(Uint8Array.of(b)));
    assert.equal(one.length, 3);
  });

  it('every strict prefix of a frame yields no frame and no error; CR/LF between frames are tolerated', () => {
    const frame = encodeMllp(msgs[0] as Uint8Array);
    for (let n = 0; n < frame.length; n++) {
      const d = new MllpDecoder({ maxFrameBytes: 100 });
      assert.deepEqual(d.push(frame.subarray(0, n)), []);
      assert.equal(d.inFrame, n > 0);
    }
    const d = new MllpDecoder({ maxFrameBytes: 100 });
    assert.equal(d.push(Buffer.concat([Buffer.from('\r\n'), Buffer.from(frame), Buffer.from('\n')])).length, 1);
  });

  const bad: [string, Uint8Array, string][] = [
    ['bytes before the start block', enc('MSH|x'), 'mllp-no-start-block'],
    ['a start block inside a frame', enc('\x0bMSH\x0bMSH\x1c\r'), 'mllp-nested-start'],
    ['FS not followed by CR', enc('\x0bMSH\x1cX'), 'mllp-bad-end-block'],
    ['a frame over the limit', enc(`\x0b${'A'.repeat(101)}`), 'mllp-frame-too-large'],
  ];
  for (const [what, bytes, code] of bad) {
    it(`refuses ${what} and stays failed`, () => {
      const d = new MllpDecoder({ maxFrameBytes: 100 });
      assert.throws(() => d.push(bytes), (e) => e instanceof DecodeError && e.code === code);
      assert.throws(() => d.push(encodeMllp(enc('MSH'))), (e) => e instanceof DecodeError && e.code === code);
    });
  }

  it('refuses an oversized frame as soon as the limit is passed, before its end arrives', () => {
    const d = new MllpDecoder({ maxFrameBytes: 1000 });
    d.push(enc(`\x0b${'A'.repeat(1000)}`));
    assert.throws(() => d.push(enc('A')), (e) => e instanceof DecodeError && e.code === 'mllp-frame-too-large');
  });

  it('random byte streams only ever produce frames or DecodeError', () => {
    fc.assert(fc.property(fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 8 }), (chunks) => {
      const d = new MllpDecoder({ maxFrameBytes: 64 });
      try {
        for (const c of chunks) for (const f of d.push(c)) assert.ok(f.length <= 64);
      } catch (e) {
        assert.ok(e instanceof DecodeError, String(e));
      }
    }), { numRuns: 500, seed: 11 });
  });
});

describe('HL7 v2 parser', () => {
  it('reads separators from MSH-1/MSH-2, including unusual ones', () => {
    const text = oru([obx(1, '8867-4#Heart rate#LN', '72', '/min#/min#UCUM').replaceAll('|', '$').replaceAll('^', '#')], { seps: '$#*@!' });
    const m = parseHl7(enc(text));
    assert.deepEqual(m.separators, { field: '$', component: '#', repetition: '*', escape: '@', subcomponent: '!' });
    const o = m.segments.find((s) => s.id === 'OBX');
    assert.ok(o);
    assert.equal(component(o, 3, 1), '8867-4');
    assert.equal(component(o, 3, 3), 'LN');
    assert.equal(component(m.segments[0] as never, 9, 2), 'R01');
  });

  it('unescapes \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\X..\\ \\.br\\ and drops highlighting', () => {
    const seps = { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' };
    assert.equal(unescapeHl7('a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f', seps), 'a|b^c&d~e\\f');
    assert.equal(unescapeHl7('\\X414243\\\\.br\\x\\H\\bold\\N\\', seps), 'ABC\nxbold');
    for (const bad of ['\\F', '\\Q\\', '\\X4\\', '\\XZZ\\', '\\FF\\', '\\.zz\\']) {
      assert.throws(() => unescapeHl7(bad, seps), (e) => e instanceof DecodeError && e.code === 'hl7-escape', bad);
    }
    // Round trip through the writer's escaping.
    fc.assert(fc.property(fc.string({ maxLength: 30 }), (s) => {
      const clean = s.replace(/[\r\n]/g, ' ');
      assert.equal(unescapeHl7(escapeHl7(clean), seps), clean);
    }), { numRuns: 300, seed: 3 });
  });

  it('refuses messages without MSH, with bad encoding characters, or with bad segment ids', () => {
    const cases: [string, string][] = [
      ['PID|1\r', 'hl7-no-msh'],
      ['MSH|^~\\\r', 'hl7-encoding-characters'],
      ['MSH|^^\\&|A\r', 'hl7-encoding-characters'],
      ['MSH|^~\\&|A\rpid|1\r', 'hl7-segment-id'],
      ['MSH|^~\\&|A\rMSH|^~\\&|B\r', 'hl7-segment-order'],
      ['MSH|A~\\&|A\r', 'hl7-encoding-characters'],
    ];
    for (const [text, code] of cases) assert.throws(() => parseHl7(enc(text)), (e) => e instanceof DecodeError && e.code === code, JSON.stringify(text));
  });

  it('bounds segments, fields and repetitions', () => {
    assert.throws(() => parseHl7(enc(`MSH|^~\\&|A\r${'NTE|1\r'.repeat(11)}`), { maxSegments: 10, maxFieldsPerSegment: 10, maxRepetitions: 4 }),
      (e) => e instanceof DecodeError && e.code === 'hl7-too-many-segments');
    assert.throws(() => parseHl7(enc(`MSH|^~\\&|A\rNTE${'|x'.repeat(11)}\r`), { maxSegments: 10, maxFieldsPerSegment: 10, maxRepetitions: 4 }),
      (e) => e instanceof DecodeError && e.code === 'hl7-too-many-fields');
    assert.throws(() => parseHl7(enc('MSH|^~\\&|A\rNTE|a~b~c~d~e\r'), { maxSegments: 10, maxFieldsPerSegment: 10, maxRepetitions: 4 }),
      (e) => e instanceof DecodeError && e.code === 'hl7-too-many-repetitions');
  });

  it('every prefix and random mutations of a real message give a result or a typed error, nothing else', () => {
    const full = enc(oru([obx(1, '8867-4^Heart rate^LN', '72', '/min^/min^UCUM'), obx(2, '150456^MDC_PULS_OXIM_SAT_O2^MDC', '97', '262688^MDC_DIM_PERCENT^MDC')]));
    const check = (bytes: Uint8Array) => {
      try {
        interpretOru(parseHl7(bytes), { now: NOW });
      } catch (e) {
        assert.ok(e instanceof DecodeError || e instanceof Hl7Rejection, String(e));
      }
    };
    for (let n = 0; n <= full.length; n++) check(full.subarray(0, n));
    fc.assert(fc.property(fc.array(fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 1 })), { minLength: 1, maxLength: 6 }), (edits) => {
      const m = Uint8Array.from(full);
      for (const [pos, [b]] of edits) m[pos % m.length] = b as number;
      check(m);
    }), { numRuns: 1000, seed: 5 });
  });
});

describe('ORU^R01 to vitals', () => {
  const t = Date.UTC(2025, 5, 10, 11, 59, 30);

  it('maps LOINC and MDC observations with unit conversion into clinical units', () => {
    const msg = parseHl7(enc(oru([
      obx(1, '8867-4^Heart rate^LN', '72', '/min^/min^UCUM'),
      obx(2, '150456^MDC_PULS_OXIM_SAT_O2^MDC', '97', '262688^MDC_DIM_PERCENT^MDC'),
      obx(3, '151562^MDC_RESP_RATE^MDC', '14', '264928^MDC_DIM_RESP_PER_MIN^MDC'),
      obx(4, '8310-5^Body temperature^LN', '98.6', '[degF]^degF^UCUM'),
      obx(5, '150021^MDC_PRESS_BLD_NONINV_SYS^MDC', '16', 'kPa^kPa^UCUM'),
      obx(6, '8462-4^Diastolic^LN', '79', 'mm[Hg]^mmHg^UCUM'),
      obx(7, '^MDC_PRESS_BLD_NONINV_MEAN^MDC', '93', '^MDC_DIM_MMHG^MDC'),
      obx(8, '12345-6^Something else^LN', '5', 'mg'),
    ])));
    const r = interpretOru(msg, { now: NOW });
    assert.equal(r.controlId, 'MSG0001');
    assert.equal(r.ignored, 1);
    const byKind = Object.fromEntries(r.readings.map((x) => [x.kind, x]));
    assert.equal(byKind['heart-rate']?.value, 72);
    assert.equal(byKind['spo2']?.value, 97);
    assert.equal(byKind['respiration-rate']?.value, 14);
    assert.equal(byKind['body-temperature']?.value, 37);
    assert.equal(byKind['nibp-systolic']?.value, 120);
    assert.equal(byKind['nibp-diastolic']?.value, 79);
    assert.equal(byKind['nibp-mean']?.value, 93);
    for (const x of r.readings) assert.equal(x.time, t);
  });

  it('prefers ECG heart rate over pulse rate; skips status X and sentinels; SN values', () => {
    const r = interpretOru(parseHl7(enc(oru([
      obx(1, '149530^MDC_PULS_OXIM_PULS_RATE^MDC', '70', '264864^MDC_DIM_BEAT_PER_MIN^MDC'),
      obx(2, '147842^MDC_ECG_HEART_RATE^MDC', '71', '264864^MDC_DIM_BEAT_PER_MIN^MDC'),
      obx(3, '150456^MDC_PULS_OXIM_SAT_O2^MDC', '8388607', '262688^MDC_DIM_PERCENT^MDC', { status: 'X' }),
      obx(4, '150456^MDC_PULS_OXIM_SAT_O2^MDC', '-999', '262688^MDC_DIM_PERCENT^MDC'),
      obx(5, '9279-1^Resp^LN', '^15', '/min', { type: 'SN' }),
    ]))), { now: NOW });
    assert.deepEqual(r.readings.map((x) => [x.kind, x.value]).sort(), [['heart-rate', 71], ['respiration-rate', 15]]);
    assert.equal(r.implausible, 1);
    assert.equal(r.ignored, 2);
  });

  const refusals: [string, string, 'AE' | 'AR', string][] = [
    ['a message type other than ORU^R01', oru([], { type: 'ADT^A01' }), 'AR', 'hl7-message-type'],
    ['HL7 v3 or unknown versions', oru([], { version: '3.0' }), 'AR', 'hl7-version'],
    ['a missing control id', oru([obx(1, '8867-4^HR^LN', '72', '/min')], { control: '' }), 'AR', 'hl7-no-control-id'],
    ['an ORU without OBX', oru([]), 'AE', 'hl7-no-obx'],
    ['a unit it cannot interpret', oru([obx(1, '8867-4^HR^LN', '72', 'Hz^Hz^UCUM')]), 'AE', 'hl7-unit'],
    ['a non-numeric value', oru([obx(1, '8867-4^HR^LN', '7two', '/min')]), 'AE', 'hl7-value'],
    ['an exponent', oru([obx(1, '8867-4^HR^LN', '7e1', '/min')]), 'AE', 'hl7-value'],
    ['a comparator', oru([obx(1, '8867-4^HR^LN', '>^70', '/min', { type: 'SN' })]), 'AE', 'hl7-value'],
    ['a string value type', oru([obx(1, '8867-4^HR^LN', '72', '/min', { type: 'ST' })]), 'AE', 'hl7-value'],
    ['a time without minutes', oru([obx(1, '8867-4^HR^LN', '72', '/min', { time: '2025061011' })]).replace('20250610115900+0000', '').replace('20250610115959+0000', ''), 'AE', 'hl7-time'],
    ['a time in the future', oru([obx(1, '8867-4^HR^LN', '72', '/min', { time: '20250610130000+0000' })]), 'AE', 'hl7-time-future'],
  ];
  for (const [what, text, ack, code] of refusals) {
    it(`answers ${ack} to ${what}`, () => {
      assert.throws(() => interpretOru(parseHl7(enc(text)), { now: NOW }), (e) => e instanceof Hl7Rejection && e.ack === ack && e.code === code);
    });
  }

  it('an OBX before any OBR is a segment sequence error; a sender not on the accept list is refused', () => {
    const text = ['MSH|^~\\&|MON|ICU|||20250610115959||ORU^R01|1|P|2.5', obx(1, '8867-4^HR^LN', '72', '/min')].join('\r');
    assert.throws(() => interpretOru(parseHl7(enc(text)), { now: NOW }), (e) => e instanceof Hl7Rejection && e.hl7Code === 100);
    assert.throws(() => interpretOru(parseHl7(enc(oru([obx(1, '8867-4^HR^LN', '72', '/min')]))), { now: NOW, acceptSenders: ['OTHER'] }),
      (e) => e instanceof Hl7Rejection && e.code === 'hl7-sender-not-accepted');
  });

  it('HL7 times: offsets, fractions, configured zone, impossible dates', () => {
    assert.equal(parseHl7Time('202506101159+0200'), Date.UTC(2025, 5, 10, 9, 59));
    assert.equal(parseHl7Time('20250610115930.25-0130'), Date.UTC(2025, 5, 10, 13, 29, 30, 250));
    assert.equal(parseHl7Time('20250610115930', 60), Date.UTC(2025, 5, 10, 10, 59, 30));
    for (const bad of ['20250231120000', '2025061012', '202506101260', 'x0250610120000', '20250610120000+2500']) assert.equal(parseHl7Time(bad), undefined, bad);
  });
});

describe('HL7 ACK', () => {
  it('swaps sender and receiver, echoes the control id, and carries ERR for AE', () => {
    const msg = parseHl7(enc(oru([obx(1, '8867-4^HR^LN', '72', '/min')], { control: 'C|1' .replace('|', '\\F\\') })));
    const ack = Buffer.from(buildAck(msg, { code: 'AE', controlId: 'A1', now: new Date(NOW), error: { hl7Code: 207, reason: 'disk full | try later' } })).toString('latin1');
    const back = parseHl7(enc(ack));
    const [msh, msa, err] = back.segments;
    assert.ok(msh && msa && err);
    assert.equal(component(msh, 3), 'VITALSEAL');
    assert.equal(component(msh, 5), 'MONITOR');
    assert.equal(component(msh, 9, 1), 'ACK');
    assert.equal(component(msa, 1), 'AE');
    assert.equal(component(msa, 2), 'C|1');
    assert.equal(component(msa, 3), 'disk full | try later');
    assert.equal(component(err, 3, 1), '207');
    assert.equal(component(err, 4), 'E');
    assert.ok(ack.endsWith('\r') && !ack.includes('\n'));
  });
});
