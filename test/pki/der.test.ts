import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  bits, DerReader, namedBits, oid, parseOne, readBitString, readBoolean, readIntegerBytes, readOid, readSmallInt, readString, readTime,
  TAG, time, tlv, uint, uintBytes,
} from '../../src/pki/der.ts';
import { derOrPem, pemDecode, pemEncode } from '../../src/pki/pem.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { CertificateError } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';

const malformed = (e: unknown) => e instanceof CertificateError && e.code === 'malformed';

function twosComplement(v: Uint8Array): bigint {
  let n = 0n;
  for (const b of v) n = (n << 8n) | BigInt(b);
  return ((v[0] as number) & 0x80) !== 0 ? n - (1n << BigInt(8 * v.length)) : n;
}

describe('DER known answers (X.690, Layman\'s Guide)', () => {
  const { vectors } = loadVectors<{ kind: string; value: string; der: string; where: string }>('der-x690.json');
  for (const v of vectors) {
    it(`${v.kind} ${JSON.stringify(v.value)} (${v.where})`, () => {
      const der = fromHex(v.der);
      const t = new DerReader(der, 'kat').read();
      switch (v.kind) {
        case 'oid':
          assert.equal(readOid(t, 'kat'), v.value);
          assert.equal(toHex(oid(v.value)), v.der);
          break;
        case 'bits': {
          const b = readBitString(t, 'kat');
          let text = '';
          for (let i = 0; i < b.bytes.length * 8 - b.unusedBits; i++) text += ((b.bytes[i >> 3] as number) >> (7 - (i & 7))) & 1;
          assert.equal(text, v.value);
          break;
        }
        case 'int': {
          assert.equal(twosComplement(readIntegerBytes(t, 'kat')), BigInt(v.value));
          if (!v.value.startsWith('-')) assert.equal(toHex(uint(Number(v.value))), v.der);
          break;
        }
        case 'printable':
        case 'ia5':
          assert.equal(readString(t, 'kat'), v.value);
          break;
        case 'null':
          assert.equal(t.tag, TAG.NULL);
          assert.equal(t.value.length, 0);
          break;
        default:
          assert.fail(`unknown kind ${v.kind}`);
      }
    });
  }
});

describe('DER reader refuses what is not DER', () => {
  const cases: [string, string][] = [
    ['indefinite length', '3080'],
    ['non-minimal short length in long form', '04810500000000'],
    ['length with a leading zero octet', '0482000100'],
    ['length of 5 octets', '04850000000001'],
    ['length past the end', '040500'],
    ['missing length', '04'],
    ['high-number tag', '1f2001ff'],
  ];
  for (const [name, hex] of cases) {
    it(name, () => assert.throws(() => new DerReader(fromHex(hex), 't').read(), malformed));
  }

  const valueCases: [string, string, (t: ReturnType<DerReader['read']>) => unknown][] = [
    ['non-minimal positive INTEGER', '02020001', (t) => readIntegerBytes(t, 't')],
    ['non-minimal negative INTEGER', '0202ff80', (t) => readIntegerBytes(t, 't')],
    ['empty INTEGER', '0200', (t) => readIntegerBytes(t, 't')],
    ['negative small int', '0201ff', (t) => readSmallInt(t, 't', 10)],
    ['small int above its bound', '02010b', (t) => readSmallInt(t, 't', 10)],
    ['BOOLEAN 0x01', '010101', (t) => readBoolean(t, 't')],
    ['BOOLEAN of two octets', '0102ffff', (t) => readBoolean(t, 't')],
    ['BIT STRING with non-zero unused bits', '03020101', (t) => readBitString(t, 't')],
    ['BIT STRING with 8 unused bits', '03020800', (t) => readBitString(t, 't')],
    ['empty BIT STRING claiming unused bits', '030101', (t) => readBitString(t, 't')],
    ['OID with a 0x80 leading subidentifier octet', '06022a80', (t) => readOid(t, 't')],
    ['OID ending inside a subidentifier', '060181', (t) => readOid(t, 't')],
    ['empty OID', '0600', (t) => readOid(t, 't')],
    ['UTCTime without seconds', '170b323030313031303030305a', (t) => readTime(t, 't')],
    ['UTCTime in local time', '170d3230303130313030303030ff', (t) => readTime(t, 't')],
    ['UTCTime month 13', '170d3230313330313030303030 5a'.replace(' ', ''), (t) => readTime(t, 't')],
    ['UTCTime 30 February', '170d3230303233303030303030 5a'.replace(' ', ''), (t) => readTime(t, 't')],
    ['GeneralizedTime with fractions', '181332303530303130313030303030302e355a', (t) => readTime(t, 't')],
    ['PrintableString with @', '130161'.slice(0, 4) + '40', (t) => readString(t, 't')],
    ['IA5String with a high byte', '1601ff', (t) => readString(t, 't')],
    ['UTF8String with a bad sequence', '0c01ff', (t) => readString(t, 't')],
  ];
  for (const [name, hex, fn] of valueCases) {
    it(name, () => assert.throws(() => fn(new DerReader(fromHex(hex), 't').read()), malformed));
  }

  it('trailing bytes after a single element', () => {
    assert.throws(() => parseOne(fromHex('05000500'), TAG.NULL, 't'), malformed);
  });
});

describe('DER writer', () => {
  it('writes minimal lengths and integers', () => {
    assert.equal(toHex(tlv(TAG.OCTET_STRING, new Uint8Array(127))).slice(0, 4), '047f');
    assert.equal(toHex(tlv(TAG.OCTET_STRING, new Uint8Array(128))).slice(0, 6), '048180');
    assert.equal(toHex(tlv(TAG.OCTET_STRING, new Uint8Array(256))).slice(0, 8), '04820100');
    assert.equal(toHex(uintBytes(fromHex('0000ff'))), '020200ff');
    assert.equal(toHex(uintBytes(fromHex('000001'))), '020101');
    assert.equal(toHex(bits(fromHex('abcd'))), '030300abcd');
  });

  it('RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, and both read back', () => {
    const a = Date.UTC(2049, 11, 31, 23, 59, 59);
    const b = Date.UTC(2050, 0, 1, 0, 0, 0);
    assert.equal(toHex(time(a)), `170d${Buffer.from('491231235959Z').toString('hex')}`);
    assert.equal(toHex(time(b)), `180f${Buffer.from('20500101000000Z').toString('hex')}`);
    assert.equal(readTime(new DerReader(time(a), 't').read(), 't'), a);
    assert.equal(readTime(new DerReader(time(b), 't').read(), 't'), b);
    // UTCTime years 50-99 are 19xx.
    assert.equal(readTime(new DerReader(fromHex(`170d${Buffer.from('500101000000Z').toString('hex')}`), 't').read(), 't'), Date.UTC(1950, 0, 1));
  });

  it('named bit lists drop trailing zero bits (X.690 §11.2.2)', () => {
    assert.equal(toHex(namedBits([0])), '03020780'); // digitalSignature
    assert.equal(toHex(namedBits([5, 6])), '03020106'); // keyCertSign, cRLSign
    assert.equal(toHex(namedBits([8])), '0303070080'); // decipherOnly
  });
});

describe('PEM (RFC 7468)', () => {
  const der = fromHex('3003020101');
  it('round-trips and ignores text around blocks', () => {
    const pem = pemEncode('CERTIFICATE', der);
    const [b] = pemDecode(`explanatory text\n${pem}more text\n`, 'CERTIFICATE');
    assert.deepEqual(b?.der, der);
    assert.deepEqual(derOrPem(Buffer.from(pem), 'CERTIFICATE'), [der]);
    assert.deepEqual(derOrPem(der, 'CERTIFICATE'), [der]);
  });
  it('refuses mismatched labels, bad base64, headers and unterminated blocks', () => {
    for (const bad of [
      '-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END X509 CRL-----\n',
      '-----BEGIN CERTIFICATE-----\nMAMC*QE=\n-----END CERTIFICATE-----\n',
      '-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\nMAMCAQE=\n-----END CERTIFICATE-----\n',
      '-----BEGIN CERTIFICATE-----\nMAMCAQE=\n',
      '-----END CERTIFICATE-----\n',
    ]) assert.throws(() => pemDecode(bad), malformed, bad);
  });
});
