import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { formatPkcs11Uri, MAX_TEXT_BYTES, MAX_URI_LENGTH, parsePkcs11Uri, type Pkcs11Uri } from '../../src/keystore/pkcs11/uri.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';

interface UriVector {
  uri: string;
  expect?: Record<string, unknown>;
  refused?: string;
}

/** The parsed value in the vector file's JSON shape (id as hex, slotId as a string). */
function plain(u: Pkcs11Uri): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(u)) {
    if (v instanceof Uint8Array) out[k] = toHex(v);
    else if (typeof v === 'bigint') out[k] = v.toString();
    else if (k === 'libraryVersion') out[k] = { major: (v as { major: number }).major, minor: (v as { minor: number }).minor };
    else out[k] = v;
  }
  return out;
}

const invalid = (e: unknown): boolean => {
  assert.ok(e instanceof KeyStoreError, `expected KeyStoreError, got ${String(e)}`);
  assert.equal(e.code, 'invalid-uri');
  return true;
};

describe('PKCS #11 URI (RFC 7512)', () => {
  const { vectors } = loadVectors<UriVector>('pkcs11-uri-rfc7512.json');

  it('parses the RFC 7512 §3 examples to the values the grammar gives', () => {
    let accepted = 0;
    for (const v of vectors) {
      if (v.expect === undefined) continue;
      assert.deepEqual(plain(parsePkcs11Uri(v.uri)), v.expect, v.uri);
      accepted++;
    }
    assert.equal(accepted, 11);
  });

  it('refuses the two examples that carry a PIN value or vendor attributes, saying why', () => {
    for (const v of vectors) {
      if (v.refused === undefined) continue;
      assert.throws(() => parsePkcs11Uri(v.uri), (e) => invalid(e) && (e as Error).message.includes(v.refused as string), v.uri);
    }
  });

  it('formats every accepted example canonically, and the canonical form parses to the same values', () => {
    for (const v of vectors) {
      if (v.expect === undefined) continue;
      const parsed = parsePkcs11Uri(v.uri);
      const text = formatPkcs11Uri(parsed);
      assert.deepEqual(parsePkcs11Uri(text), parsed, text);
      assert.equal(formatPkcs11Uri(parsePkcs11Uri(text)), text, 'canonical form is a fixed point');
    }
    assert.equal(formatPkcs11Uri({ token: 'vitalseal', object: 'device-identity', type: 'private' }),
      'pkcs11:token=vitalseal;object=device-identity;type=private');
    assert.equal(formatPkcs11Uri({ id: fromHex('0aff') }), 'pkcs11:id=%0A%FF');
    assert.equal(formatPkcs11Uri({ token: 'a b;c' }), 'pkcs11:token=a%20b%3Bc');
  });

  it('takes the scheme in any case (RFC 3986 §3.1), percent-escapes in either case, and an empty query', () => {
    assert.equal(parsePkcs11Uri('PKCS11:token=x').token, 'x');
    assert.deepEqual(parsePkcs11Uri('pkcs11:token=x?'), { token: 'x' }); // pk11-query may be empty
    assert.equal(parsePkcs11Uri('pkcs11:token=%4a%4A').token, 'JJ');
  });

  it('refuses what the grammar does not allow', () => {
    const bad = [
      '', 'pkcs11', 'pkcs12:token=x', 'http://x', 'pkcs11:token=x#frag', 'pkcs11:token', 'pkcs11:=x', 'pkcs11:token=x;',
      'pkcs11:;token=x', 'pkcs11:token=x;;object=y', 'pkcs11:token=x?&module-name=m', 'pkcs11:token=x?module-name=m&',
      'pkcs11:token=a b', 'pkcs11:token=a/b', 'pkcs11:token=a?b=c', 'pkcs11:token=%', 'pkcs11:token=%4', 'pkcs11:token=%zz',
      'pkcs11:token=\u00e1', 'pkcs11:token=%C3', 'pkcs11:token=a%00b', 'pkcs11:Token=x', 'pkcs11:x-vendor=1',
      'pkcs11:token=a;token=b', 'pkcs11:?module-name=a&module-name=b', 'pkcs11:type=key', 'pkcs11:type=', 'pkcs11:library-version=1.bar',
      'pkcs11:library-version=', 'pkcs11:library-version=256', 'pkcs11:library-version=1.2.3', 'pkcs11:slot-id=foo', 'pkcs11:slot-id=',
      'pkcs11:slot-id=18446744073709551616', 'pkcs11:slot-id=-1', 'pkcs11:?module-path=relative/lib.so', 'pkcs11:?module-name=a/b',
      'pkcs11:?module-name=', 'pkcs11:?pin-value=1234', 'pkcs11:?pin-source=a&pin-value=b', 'pkcs11:?vendor=1',
      'pkcs11:?module-path=/a b', 'pkcs11:token=x?module-path=/lib#x',
    ];
    for (const uri of bad) assert.throws(() => parsePkcs11Uri(uri), invalid, JSON.stringify(uri));
  });

  it('is bounded: the URI and each value have a maximum size', () => {
    assert.throws(() => parsePkcs11Uri(`pkcs11:object=${'a'.repeat(MAX_URI_LENGTH)}`), invalid);
    assert.equal(parsePkcs11Uri(`pkcs11:object=${'o'.repeat(MAX_TEXT_BYTES)}`).object?.length, MAX_TEXT_BYTES);
    for (const attr of ['token', 'manufacturer', 'serial', 'model', 'object', 'slot-description', 'library-description']) {
      assert.throws(() => parsePkcs11Uri(`pkcs11:${attr}=${'t'.repeat(MAX_TEXT_BYTES + 1)}`), invalid, attr);
    }
    assert.throws(() => parsePkcs11Uri(`pkcs11:token=${'%C3%A1'.repeat(128)}`), invalid, '256 UTF-8 bytes in 128 characters');
    assert.throws(() => parsePkcs11Uri(`pkcs11:?pin-source=/${'p'.repeat(4096)}`), invalid);
    assert.throws(() => parsePkcs11Uri(`pkcs11:id=${'%00'.repeat(256)}`), invalid);
    assert.equal(parsePkcs11Uri('pkcs11:slot-id=18446744073709551615').slotId, 0xffff_ffff_ffff_ffffn);
    assert.throws(() => formatPkcs11Uri({ token: 'x'.repeat(MAX_TEXT_BYTES + 1) }), invalid, 'the formatter refuses what the parser would');
  });

  it('every prefix either fails with invalid-uri or is itself a consistent URI', () => {
    for (const v of vectors) {
      for (let n = 0; n < v.uri.length; n++) {
        const prefix = v.uri.slice(0, n);
        let parsed: Pkcs11Uri;
        try {
          parsed = parsePkcs11Uri(prefix);
        } catch (e) {
          invalid(e);
          continue;
        }
        assert.ok(n >= 7, 'nothing shorter than "pkcs11:" parses');
        assert.deepEqual(parsePkcs11Uri(formatPkcs11Uri(parsed)), parsed, prefix);
      }
    }
  });

  it('random mutations never throw anything but invalid-uri, and what parses round-trips', () => {
    const base = vectors.filter((v) => v.expect !== undefined).map((v) => v.uri);
    const alphabet = [...'abcz09-._~%;?&=#/:[]@!$\'()*+, |\u0000\u00e1\u20ac"<>\\'];
    fc.assert(fc.property(
      fc.constantFrom(...base),
      fc.array(fc.tuple(fc.nat(), fc.constantFrom(...alphabet), fc.constantFrom('replace', 'insert', 'delete')), { minLength: 1, maxLength: 6 }),
      (uri, edits) => {
        let s = uri;
        for (const [pos, ch, op] of edits) {
          const i = s.length === 0 ? 0 : pos % s.length;
          s = op === 'replace' ? s.slice(0, i) + ch + s.slice(i + 1) : op === 'insert' ? s.slice(0, i) + ch + s.slice(i) : s.slice(0, i) + s.slice(i + 1);
        }
        let parsed: Pkcs11Uri;
        try {
          parsed = parsePkcs11Uri(s);
        } catch (e) {
          return invalid(e);
        }
        assert.deepEqual(parsePkcs11Uri(formatPkcs11Uri(parsed)), parsed);
        return true;
      },
    ), { numRuns: 3000 });
  });

  it('format then parse is the identity on arbitrary attribute values', () => {
    const text = (maxBytes: number) => fc.string({ unit: 'grapheme', maxLength: maxBytes })
      .filter((s) => !s.includes('\u0000') && new TextEncoder().encode(s).length <= maxBytes);
    const arb = fc.record({
      token: text(32), manufacturer: text(32), serial: text(16), model: text(16), libraryManufacturer: text(32),
      libraryDescription: text(32), object: text(MAX_TEXT_BYTES), slotDescription: text(64), slotManufacturer: text(32),
      type: fc.constantFrom('public', 'private', 'cert', 'secret-key', 'data'),
      id: fc.uint8Array({ maxLength: 255 }),
      libraryVersion: fc.record({ major: fc.integer({ min: 0, max: 255 }), minor: fc.integer({ min: 0, max: 255 }) }),
      slotId: fc.bigInt({ min: 0n, max: 0xffff_ffff_ffff_ffffn }),
      pinSource: text(200), modulePath: text(200).map((s) => `/${s}`),
      moduleName: text(100).filter((s) => s.length > 0 && !s.includes('/')),
    }, { requiredKeys: [] });
    fc.assert(fc.property(arb, (u) => {
      const uri = u as Pkcs11Uri;
      assert.deepEqual(plain(parsePkcs11Uri(formatPkcs11Uri(uri))), plain(uri));
    }), { numRuns: 500 });
  });
});
