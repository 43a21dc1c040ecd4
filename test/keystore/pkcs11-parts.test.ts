/**
 * The PKCS#11 backend's pure parts, each checked against an independent source: DER conversions
 * against node:crypto, CKR and CK* numbers against pkcs11js's own tables, the PIN reader against real
 * files, token matching against RFC 7512's rules.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign, verify, createPublicKey } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { blobAad, decodeBlob, encodeBlob, BLOB_OVERHEAD } from '../../src/keystore/pkcs11/blob.ts';
import * as ck from '../../src/keystore/pkcs11/constants.ts';
import { ecdsaRawToDer, p256PointToSpki, spkiToPem } from '../../src/keystore/pkcs11/der.ts';
import { CKR_TABLE, ckrName, toKeyStoreError } from '../../src/keystore/pkcs11/errors.ts';
import { missingModuleHint } from '../../src/keystore/pkcs11/module.ts';
import { readPin } from '../../src/keystore/pkcs11/pin.ts';
import { selectToken, uriMatches, type LibraryDescription, type SlotDescription } from '../../src/keystore/pkcs11/token.ts';
import { parsePkcs11Uri } from '../../src/keystore/pkcs11/uri.ts';
import { fromHex, toHex, utf8 } from '../../src/util/bytes.ts';
import { KeyStoreError } from '../../src/util/errors.ts';

const require = createRequire(import.meta.url);
const pkcs11js = require('pkcs11js') as typeof import('pkcs11js') & Record<string, unknown>;

const code = (c: string) => (e: unknown): boolean => {
  assert.ok(e instanceof KeyStoreError, `expected KeyStoreError, got ${String(e)}`);
  assert.equal(e.code, c);
  return true;
};

describe('ECDSA raw r||s to DER (RFC 3279 §2.2.3)', () => {
  it('encodes hand-checked edge cases: leading zeros stripped, a 0x00 pad for a set high bit', () => {
    const one = new Uint8Array(32);
    one[31] = 1;
    const high = new Uint8Array(32);
    high[0] = 0x80;
    assert.equal(toHex(ecdsaRawToDer(Uint8Array.from([...one, ...high]))),
      `3026020101022100${'80'}${'00'.repeat(31)}`);
    const r = Uint8Array.from([0x7f, ...new Array<number>(31).fill(0xff)]);
    const s = Uint8Array.from([0x00, 0x80, ...new Array<number>(30).fill(0)]);
    assert.equal(toHex(ecdsaRawToDer(Uint8Array.from([...r, ...s]))),
      `304402207f${'ff'.repeat(31)}02200080${'00'.repeat(30)}`);
  });

  it('refuses a wrong length and a zero component', () => {
    assert.throws(() => ecdsaRawToDer(new Uint8Array(63)), code('token-error'));
    assert.throws(() => ecdsaRawToDer(new Uint8Array(65)), code('token-error'));
    const zeroR = new Uint8Array(64);
    zeroR[40] = 1;
    assert.throws(() => ecdsaRawToDer(zeroR), code('token-error'));
  });

  it('node:crypto verifies as DER what it signed as IEEE P1363, for many signatures', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (msg) => {
      const raw = sign('sha256', msg, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      const der = ecdsaRawToDer(new Uint8Array(raw));
      assert.ok(verify('sha256', msg, { key: publicKey, dsaEncoding: 'der' }, der));
    }), { numRuns: 300 });
  });
});

describe('CKA_EC_POINT to SubjectPublicKeyInfo (RFC 5480)', () => {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = new Uint8Array(publicKey.export({ format: 'der', type: 'spki' }));
  const jwk = publicKey.export({ format: 'jwk' });
  const point = Uint8Array.from([4, ...Buffer.from(jwk.x as string, 'base64url'), ...Buffer.from(jwk.y as string, 'base64url')]);

  it('gives node:crypto\'s SPKI from the DER OCTET STRING form and from the bare point', () => {
    assert.deepEqual(p256PointToSpki(Uint8Array.from([0x04, 0x41, ...point])), spki);
    assert.deepEqual(p256PointToSpki(point), spki);
    assert.deepEqual(new Uint8Array(createPublicKey(spkiToPem(spki)).export({ format: 'der', type: 'spki' })), spki);
  });

  it('refuses compressed, truncated and off-curve points', () => {
    assert.throws(() => p256PointToSpki(point.subarray(0, 33)), code('token-error'));
    assert.throws(() => p256PointToSpki(Uint8Array.from([0x02, ...point.subarray(1)])), code('token-error'));
    const off = Uint8Array.from(point);
    off[64] = (off[64] as number) ^ 1;
    assert.throws(() => p256PointToSpki(off), code('token-error'));
    for (let n = 0; n < 67; n++) {
      if (n === 65) continue;
      assert.throws(() => p256PointToSpki(Uint8Array.from([0x04, 0x41, ...point]).subarray(0, n)), code('token-error'), `length ${n}`);
    }
  });
});

describe('sealed/wrapped blob layout', () => {
  const iv = fromHex('000102030405060708090a0b');
  const sealed = new Uint8Array(20).fill(7);

  it('is version || IV || ciphertext || tag, and decodes back', () => {
    const blob = encodeBlob(iv, sealed);
    assert.equal(toHex(blob), `01000102030405060708090a0b${'07'.repeat(20)}`);
    const d = decodeBlob(blob, 64, 'test');
    assert.deepEqual(d.iv, iv);
    assert.deepEqual(d.sealed, sealed);
  });

  it('refuses every truncation below the minimum, an unknown version and an oversized blob', () => {
    const blob = encodeBlob(iv, sealed);
    for (let n = 0; n <= BLOB_OVERHEAD; n++) assert.throws(() => decodeBlob(blob.subarray(0, n), 64, 'test'), code('unwrap-failed'), `length ${n}`);
    const v2 = Uint8Array.from(blob);
    v2[0] = 2;
    assert.throws(() => decodeBlob(v2, 64, 'test'), code('unwrap-failed'));
    assert.throws(() => decodeBlob(encodeBlob(iv, new Uint8Array(16 + 65)), 64, 'test'), code('unwrap-failed'));
  });

  it('binds purpose and name in the AAD, with separators that keep them apart', () => {
    assert.equal(toHex(blobAad('wrap', 'k')), toHex(utf8('vitalseal/pkcs11/v1\u0000wrap\u0000k')));
    assert.notDeepEqual(blobAad('wrap', 'k'), blobAad('seal', 'k'));
    assert.notDeepEqual(blobAad('wrap', 'k1'), blobAad('wrap', 'k2'));
  });
});

describe('PKCS#11 numbers and return values', () => {
  it('every CK* constant equals pkcs11js\'s', () => {
    let n = 0;
    for (const [name, value] of Object.entries(ck)) {
      if (!/^CK[A-Z]_/.test(name)) continue;
      assert.equal(value, pkcs11js[name], name);
      n++;
    }
    assert.ok(n >= 50, `${n} constants checked`);
  });

  it('the CKR table names every value pkcs11js knows, with the same number', () => {
    const known = Object.entries(pkcs11js).filter(([k, v]) => k.startsWith('CKR_') && typeof v === 'number' && k !== 'CKR_OK' && k !== 'CKR_VENDOR_DEFINED');
    assert.ok(known.length > 80);
    for (const [name, value] of known) {
      assert.equal(CKR_TABLE.get(value as number)?.name, name, name);
    }
    assert.equal(ckrName(0x80000001), 'CKR 0x80000001 (vendor-defined)');
  });

  it('maps the failures an operator must tell apart to their own codes', () => {
    const err = (name: string, method = 'C_Login') => new pkcs11js.Pkcs11Error(`${name}:${pkcs11js[name] as number}`, pkcs11js[name] as number, method);
    const cases: [string, string][] = [
      ['CKR_PIN_INCORRECT', 'pin-incorrect'], ['CKR_PIN_LOCKED', 'pin-locked'], ['CKR_PIN_EXPIRED', 'pin-expired'],
      ['CKR_PIN_LEN_RANGE', 'pin-invalid'], ['CKR_USER_PIN_NOT_INITIALIZED', 'pin-not-initialized'],
      ['CKR_TOKEN_NOT_PRESENT', 'token-not-present'], ['CKR_DEVICE_REMOVED', 'token-not-present'], ['CKR_DEVICE_ERROR', 'device-error'],
      ['CKR_DEVICE_MEMORY', 'token-full'], ['CKR_MECHANISM_INVALID', 'mechanism-invalid'], ['CKR_SESSION_HANDLE_INVALID', 'session-lost'],
      ['CKR_KEY_HANDLE_INVALID', 'not-found'], ['CKR_ATTRIBUTE_SENSITIVE', 'attribute-sensitive'], ['CKR_TOKEN_WRITE_PROTECTED', 'token-read-only'],
      ['CKR_TEMPLATE_INCONSISTENT', 'template-refused'], ['CKR_KEY_FUNCTION_NOT_PERMITTED', 'key-refused'], ['CKR_GENERAL_ERROR', 'token-error'],
    ];
    for (const [name, want] of cases) {
      const mapped = toKeyStoreError(err(name), { action: 'open pkcs11:token=t' });
      assert.ok(mapped instanceof KeyStoreError);
      assert.equal(mapped.code, want, name);
      assert.match(mapped.message, new RegExp(`^open pkcs11:token=t: .+ \\(${name} from C_Login\\)$`));
    }
    const locked = toKeyStoreError(err('CKR_PIN_LOCKED'), { action: 'log in' });
    assert.match(locked.message, /locked/);
  });

  it('in a decrypt, a bad tag is unwrap-failed but a dead device stays device-error', () => {
    const err = (name: string) => new pkcs11js.Pkcs11Error(`${name}:${pkcs11js[name] as number}`, pkcs11js[name] as number, 'C_Decrypt');
    for (const name of ['CKR_GENERAL_ERROR', 'CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_FUNCTION_FAILED']) {
      assert.equal((toKeyStoreError(err(name), { action: 'unwrap', decrypt: true }) as KeyStoreError).code, 'unwrap-failed', name);
    }
    for (const [name, want] of [['CKR_DEVICE_ERROR', 'device-error'], ['CKR_SESSION_HANDLE_INVALID', 'session-lost'], ['CKR_KEY_HANDLE_INVALID', 'not-found']]) {
      assert.equal((toKeyStoreError(err(name as string), { action: 'unwrap', decrypt: true }) as KeyStoreError).code, want, name);
    }
  });

  it('a missing module names the package to install', () => {
    assert.match(missingModuleHint('/usr/lib/softhsm/libsofthsm2.so'), /"softhsm2"/);
    assert.match(missingModuleHint('/usr/lib/aarch64-linux-gnu/libckteec.so.0'), /"libckteec0".*tee-supplicant/);
    assert.match(missingModuleHint('/opt/vendor/libfoo.so'), /dpkg -S libfoo\.so/);
  });
});

describe('PIN sources', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-pin-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, content: string | Uint8Array, mode = 0o600): string => {
    const p = join(dir, name);
    writeFileSync(p, content, { mode });
    chmodSync(p, mode);
    return p;
  };

  it('reads a 0600 file, dropping one trailing newline', async () => {
    assert.equal(await readPin({ file: file('a', 'pin-1234\n') }), 'pin-1234');
    assert.equal(await readPin({ file: file('b', 'pin-1234\r\n') }), 'pin-1234');
    assert.equal(await readPin({ file: file('c', 'pin-1234') }), 'pin-1234');
  });

  it('refuses a file others can read, a symlink, a directory, a missing or empty file', async () => {
    await assert.rejects(readPin({ file: file('open', 'x1234', 0o644) }), (e) => code('insecure-permissions')(e) && /chmod 600/.test((e as Error).message));
    await assert.rejects(readPin({ file: file('group', 'x1234', 0o640) }), code('insecure-permissions'));
    const target = file('target', 'x1234');
    symlinkSync(target, join(dir, 'link'));
    await assert.rejects(readPin({ file: join(dir, 'link') }), code('not-a-file'));
    mkdirSync(join(dir, 'd'), { mode: 0o700 });
    await assert.rejects(readPin({ file: join(dir, 'd') }), code('not-a-file'));
    await assert.rejects(readPin({ file: join(dir, 'absent') }), code('file-not-found'));
    await assert.rejects(readPin({ file: file('empty', '\n') }), code('secret-missing'));
  });

  it('refuses an over-long PIN, invalid UTF-8 and embedded line breaks', async () => {
    await assert.rejects(readPin({ file: file('long', 'x'.repeat(256)) }), code('pin-invalid'));
    assert.equal((await readPin({ file: file('max', 'x'.repeat(255)) })).length, 255);
    await assert.rejects(readPin({ file: file('huge', 'x'.repeat(100_000)) }), code('file-too-large'));
    await assert.rejects(readPin({ file: file('utf', Uint8Array.of(0x31, 0x32, 0xff, 0x33)) }), code('pin-invalid'));
    await assert.rejects(readPin({ file: file('lines', '12\n34') }), code('pin-invalid'));
  });

  it('reads an environment variable, and names it when it is unset', async () => {
    assert.equal(await readPin({ env: 'VITALSEAL_TEST_PIN_X' }, { VITALSEAL_TEST_PIN_X: 'env-pin-1' }), 'env-pin-1');
    await assert.rejects(readPin({ env: 'VITALSEAL_TEST_PIN_X' }, {}), (e) => code('secret-missing')(e) && /VITALSEAL_TEST_PIN_X/.test((e as Error).message));
    await assert.rejects(readPin({ env: 'bad name' }, {}), code('secret-missing'));
  });
});

describe('choosing the token a URI names (RFC 7512 §2.4)', () => {
  const lib: LibraryDescription = { manufacturer: 'SoftHSM'.padEnd(32), description: 'Implementation of PKCS11'.padEnd(32), version: { major: 2, minor: 6 } };
  const slot = (id: bigint, label: string, serial: string, flags = 0x42d): SlotDescription => ({
    slotId: id, slotDescription: `SoftHSM slot ID 0x${id.toString(16)}`.padEnd(64), slotManufacturer: 'SoftHSM project'.padEnd(32),
    tokenLabel: label.padEnd(32), tokenManufacturer: 'SoftHSM project'.padEnd(32), tokenModel: 'SoftHSM v2'.padEnd(16),
    tokenSerial: serial.padEnd(16), tokenFlags: flags,
  });
  const slots = [slot(1n, 'alpha', 'aaaa'), slot(2n, 'beta', 'bbbb'), slot(3n, 'beta', 'cccc'), slot(4n, '', '', 0x0)];
  const pick = (uri: string) => selectToken(parsePkcs11Uri(uri), uri, slots, lib, '/m.so').slotId;

  it('matches label, serial, model, slot and library attributes, ignoring blank padding', () => {
    assert.equal(pick('pkcs11:token=alpha'), 1n);
    assert.equal(pick('pkcs11:token=beta;serial=cccc'), 3n);
    assert.equal(pick('pkcs11:slot-id=2'), 2n);
    assert.equal(pick('pkcs11:token=alpha;model=SoftHSM%20v2;manufacturer=SoftHSM%20project;library-version=2.6'), 1n);
    assert.ok(!uriMatches(parsePkcs11Uri('pkcs11:token=alpha;library-version=2'), slots[0] as SlotDescription, lib), '"2" means 2.0');
  });

  it('says which tokens exist when none matches, and asks for a serial when several do', () => {
    assert.throws(() => pick('pkcs11:token=gamma'), (e) => code('token-not-found')(e) && /"alpha".*"beta"/.test((e as Error).message));
    assert.throws(() => pick('pkcs11:token=beta'), (e) => code('token-ambiguous')(e) && /serial=/.test((e as Error).message));
  });

  it('never picks an uninitialised token', () => {
    assert.throws(() => pick('pkcs11:slot-id=4'), code('token-not-found'));
    assert.throws(() => pick('pkcs11:token='), code('token-not-found'));
  });
});
