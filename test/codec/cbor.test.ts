import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decode as cborgDecode, encode as cborgEncode } from 'cborg';
import fc from 'fast-check';
import { CborTag, decodeCbor, encodeCbor } from '../../src/codec/cbor.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { DecodeError } from '../../src/util/errors.ts';

// RFC 8949 Appendix A (examples of encoded items), the ones within what vitalseal accepts.
const APPENDIX_A: [unknown, string][] = [
  [0, '00'], [1, '01'], [10, '0a'], [23, '17'], [24, '1818'], [25, '1819'], [100, '1864'], [1000, '1903e8'],
  [1000000, '1a000f4240'], [1000000000000, '1b000000e8d4a51000'], [-1, '20'], [-10, '29'], [-100, '3863'], [-1000, '3903e7'],
  [1.1, 'fb3ff199999999999a'], [1.5, 'f93e00'], [100000.0 + 0.5, 'fa47c35040'], [-4.1, 'fbc010666666666666'],
  [false, 'f4'], [true, 'f5'], [null, 'f6'],
  [new Uint8Array(0), '40'], [Uint8Array.of(1, 2, 3, 4), '4401020304'],
  ['', '60'], ['a', '6161'], ['IETF', '6449455446'], ['"\\', '62225c'], ['\u00fc', '62c3bc'], ['\u6c34', '63e6b0b4'],
  [[], '80'], [[1, 2, 3], '83010203'], [[1, [2, 3], [4, 5]], '8301820203820405'],
  [new Map(), 'a0'], [new Map([[1, 2], [3, 4]]), 'a201020304'],
  [new Map<unknown, unknown>([['a', 1], ['b', [2, 3]]]), 'a26161016162820203'],
];

describe('CBOR (RFC 8949)', () => {
  it('Appendix A examples decode and encode byte for byte', () => {
    for (const [value, hex] of APPENDIX_A) {
      assert.deepEqual(decodeCbor(fromHex(hex)), value, hex);
      assert.equal(toHex(encodeCbor(value)), hex, String(hex));
    }
  });

  it('byte strings decode as copies by default, as views of the input on request; plain Uint8Array either way', () => {
    const input = Buffer.from('83430102034102f6', 'hex');
    const [a, b] = decodeCbor(input) as [Uint8Array, Uint8Array];
    assert.equal(Object.getPrototypeOf(a), Uint8Array.prototype);
    assert.deepEqual(a, Uint8Array.of(1, 2, 3));
    assert.deepEqual(b, Uint8Array.of(2));
    const [va] = decodeCbor(input, { views: true }) as [Uint8Array];
    assert.equal(Object.getPrototypeOf(va), Uint8Array.prototype);
    assert.equal(va.buffer, input.buffer, 'a view shares the input memory');
    input.fill(0);
    assert.deepEqual(a, Uint8Array.of(1, 2, 3), 'a copy outlives its input');
    assert.deepEqual(va, Uint8Array.of(0, 0, 0), 'a view does not (documented)');
  });

  it('-0 keeps its sign (a half float), not the integer 0', () => {
    assert.equal(toHex(encodeCbor(-0)), 'f98000');
    assert.ok(Object.is(decodeCbor(fromHex('f98000')), -0));
  });

  it('maps keep insertion order when encoded (COSE needs it)', () => {
    assert.equal(toHex(encodeCbor(new Map([[5, 1], [1, 2]]))), 'a205010102');
  });

  it('top-level tags encode and decode only when allowed', () => {
    const tagged = encodeCbor(new CborTag(16, [Uint8Array.of(0xa0), new Map(), null]));
    assert.equal(toHex(tagged), 'd08341a0a0f6');
    const d = decodeCbor(tagged, { allowTags: [16] });
    assert.ok(d instanceof CborTag && d.tag === 16);
    assert.throws(() => decodeCbor(tagged), (e) => e instanceof DecodeError && e.code === 'cbor-tag');
    assert.throws(() => decodeCbor(fromHex('c11a514b67b0')), (e) => e instanceof DecodeError && e.code === 'cbor-tag'); // RFC 8949 A: epoch time tag
  });

  it('refuses what it does not accept, with a code naming why', () => {
    const cases: [string, string][] = [
      ['', 'cbor-truncated'],
      ['1a0000', 'cbor-truncated'],
      ['5f42010243030405ff', 'cbor-indefinite'], // indefinite byte string (RFC 8949 A)
      ['9fff', 'cbor-indefinite'],
      ['1c', 'cbor-reserved'],
      ['f7', 'cbor-simple'], // undefined
      ['f0', 'cbor-simple'],
      ['f820', 'cbor-simple'],
      ['0102', 'cbor-trailing-bytes'],
      ['a201020103', 'cbor-duplicate-key'],
      ['1800', 'cbor-non-minimal'],
      ['62c328', 'cbor-utf8'],
      ['f97e00', 'cbor-float'], // NaN
      ['f97c00', 'cbor-float'], // Infinity
      ['1bffffffffffffffff', 'cbor-int-range'],
      ['9a00ffffff00', 'cbor-truncated'], // array claiming 16M items
      ['5affffffff', 'cbor-too-large'], // byte string claiming 4 GiB
    ];
    for (const [hex, code] of cases) {
      assert.throws(() => decodeCbor(fromHex(hex)), (e) => e instanceof DecodeError && e.code === code, `${hex} → ${code}`);
    }
  });

  it('bounds depth, items and total size', () => {
    const deep = fromHex('81'.repeat(17) + '00');
    assert.throws(() => decodeCbor(deep), (e) => e instanceof DecodeError && e.code === 'cbor-too-deep');
    assert.deepEqual(decodeCbor(fromHex('81'.repeat(16) + '00'), { maxDepth: 16 }) !== undefined, true);
    const many = encodeCbor(Array.from({ length: 100 }, (_, i) => i));
    assert.throws(() => decodeCbor(many, { maxItems: 50 }), (e) => e instanceof DecodeError && e.code === 'cbor-too-many-items');
    assert.throws(() => decodeCbor(new Uint8Array(10), { maxBytes: 5 }), (e) => e instanceof DecodeError && e.code === 'cbor-too-large');
  });

  it('every proper prefix of a valid item is rejected as truncated', () => {
    const item = encodeCbor(new Map<unknown, unknown>([[1, 24], [-1, [Uint8Array.of(1, 2, 3), 'text', 1.5, -7]], [5, new Map([[2, true]])]]));
    for (let n = 0; n < item.length; n++) {
      assert.throws(() => decodeCbor(item.subarray(0, n)), (e) => e instanceof DecodeError, `prefix ${n}`);
    }
  });

  it('random bytes and mutations only ever give DecodeError (fast-check)', () => {
    const base = encodeCbor([new Map<number, unknown>([[1, Uint8Array.of(9, 9)], [2, 'x']]), [1, 2, [3]], 1.25]);
    fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), fc.nat(), fc.nat(255), (bytes, pos, val) => {
      const mutated = Uint8Array.from(base);
      mutated[pos % mutated.length] = val;
      for (const input of [bytes, mutated]) {
        try {
          decodeCbor(input, { allowTags: [16, 96] });
        } catch (e) {
          assert.ok(e instanceof DecodeError, String(e));
        }
      }
    }), { numRuns: 5000, seed: 42 });
  });
});

describe('CBOR cross-check against cborg (an independent implementation)', () => {
  const key = fc.oneof(fc.integer({ min: -1000, max: 1_000_000 }), fc.string({ maxLength: 8 }));
  const leaf = fc.oneof(
    fc.integer(),
    fc.maxSafeInteger(),
    // -0 is left out: cborg writes it as the integer 0 (losing the sign); we write a half float.
    fc.double({ noNaN: true, noDefaultInfinity: true }).filter((x) => !Object.is(x, -0)),
    fc.float({ noNaN: true, noDefaultInfinity: true }).filter((x) => !Object.is(x, -0)),
    fc.string({ maxLength: 40 }),
    fc.uint8Array({ maxLength: 300 }),
    fc.boolean(),
    fc.constant(null),
  );
  const { value } = fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: 'small' }, leaf, tie('array'), tie('map')),
    array: fc.array(tie('value'), { maxLength: 6 }),
    map: fc.uniqueArray(fc.tuple(key, tie('value')), { maxLength: 6, selector: ([k]) => k }).map((entries) => new Map(entries)),
  }));

  it('encodes byte for byte as cborg does, and decodes what cborg writes to the same values', () => {
    fc.assert(fc.property(value, (v) => {
      const ours = encodeCbor(v);
      const theirs = cborgEncode(v, { float64: false, mapSorter: undefined });
      assert.equal(toHex(ours), toHex(theirs));
      assert.deepEqual(decodeCbor(ours, { maxDepth: 64 }), cborgDecode(theirs, { useMaps: true }));
    }), { numRuns: 3000, seed: 8949 });
  });
});
