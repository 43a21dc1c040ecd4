/**
 * The TPM backend's pure parts, without a TPM: return-code mapping, the TPM2B_PUBLIC reader, object
 * Names, FAPI paths, Fapi_GetInfo parsing and the KEK wrap format (cross-checked with @noble).
 */
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { gcm } from '@noble/ciphers/aes.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { KeyStoreError, DecodeError } from '../../src/util/errors.ts';
import { errorFromRc, decodeRc, fapiRc, BASE, TPM_RC, TpmKeyStoreError } from '../../src/keystore/tpm/errors.ts';
import { ALG, ATTR, ECC_NIST_P256, isP256SigningKey, isSealedData, objectName, p256Spki, parseTpm2bPublic } from '../../src/keystore/tpm/tpm-public.ts';
import { checkObjectPath, nameOfPath, pathForName, withoutProfile } from '../../src/keystore/tpm/paths.ts';
import { parseTpmInfo } from '../../src/keystore/tpm/tpm-info.ts';
import { srkHandleFromProfile } from '../../src/keystore/tpm/fapi-config.ts';
import { unwrapWithKek, wrapWithKek } from '../../src/keystore/tpm/wrap.ts';

const u16 = (n: number) => [n >>> 8, n & 0xff];
const u32 = (n: number) => [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
const b2 = (b: Uint8Array) => [...u16(b.length), ...b];

/** A TPMT_PUBLIC for an unrestricted P-256 signing key, laid out as TPM 2.0 Part 2 §12.2.4 says. */
function eccSigningArea(x: Uint8Array, y: Uint8Array, attrs = ATTR.sign | ATTR.noDA | ATTR.userWithAuth | ATTR.fixedTPM | ATTR.fixedParent | ATTR.sensitiveDataOrigin): Uint8Array {
  return Uint8Array.from([
    ...u16(ALG.ECC), ...u16(ALG.SHA256), ...u32(attrs),
    ...u16(0), // authPolicy: empty
    ...u16(ALG.NULL), // symmetric
    ...u16(ALG.NULL), // scheme (chosen at signing time)
    ...u16(ECC_NIST_P256),
    ...u16(ALG.NULL), // kdf
    ...b2(x), ...b2(y),
  ]);
}

function sealedArea(digest: Uint8Array): Uint8Array {
  return Uint8Array.from([
    ...u16(ALG.KEYEDHASH), ...u16(ALG.SHA256), ...u32(ATTR.noDA | ATTR.userWithAuth | ATTR.fixedTPM | ATTR.fixedParent),
    ...u16(0), ...u16(ALG.NULL), ...b2(digest),
  ]);
}

const tpm2b = (area: Uint8Array) => Uint8Array.from(b2(area));

describe('TSS2 return codes', () => {
  it('splits layers and format-one codes (TPM 2.0 Part 2 §6.6.2)', () => {
    assert.deepEqual(decodeRc(0x1df), { layer: 0, code: TPM_RC.INTEGRITY, subject: 'parameter 1' });
    assert.deepEqual(decodeRc(0x98e), { layer: 0, code: TPM_RC.AUTH_FAIL, subject: 'session 1' });
    assert.deepEqual(decodeRc(0x18b), { layer: 0, code: TPM_RC.HANDLE, subject: 'handle 1' });
    assert.deepEqual(decodeRc(0x921), { layer: 0, code: TPM_RC.LOCKOUT });
    assert.deepEqual(decodeRc(0x902), { layer: 0, code: TPM_RC.OBJECT_MEMORY });
    assert.deepEqual(decodeRc(0x60020), { layer: 6, code: BASE.KEY_NOT_FOUND });
    assert.deepEqual(decodeRc(0xa000a), { layer: 10, code: BASE.IO_ERROR });
    // tpm2-abrmd passes TPM codes up in its own layer.
    assert.deepEqual(decodeRc(0xc0921), { layer: 12, code: TPM_RC.LOCKOUT });
  });

  it('maps every case the store promises to a typed KeyStoreError with a human message', () => {
    const cases: [number, string, RegExp][] = [
      [fapiRc(BASE.PATH_ALREADY_EXISTS), 'exists', /already exists at \/HS\/SRK\/x/],
      [fapiRc(BASE.KEY_NOT_FOUND), 'not-found', /no object/],
      [fapiRc(BASE.PATH_NOT_FOUND), 'not-found', /no object/],
      [0x921, 'lockout', /dictionary-attack lockout.*tpm2_dictionarylockout --clear-lockout/],
      [0xc0921, 'lockout', /lockout/],
      [0x98e, 'auth-failed', /refused the authorization/],
      [0x9a2, 'auth-failed', /refused the authorization/],
      [0x1df, 'tpm-mismatch', /another TPM/],
      [0x902, 'tpm-busy', /resource manager/],
      [0x922, 'tpm-busy', /try again/],
      [0x100, 'no-tpm', /TPM2_Startup/],
      [0x101, 'no-tpm', /failure mode/],
      [0xa000a, 'no-tpm', /no TPM reachable through TCTI "swtpm:port=1"/],
      [0xa0015, 'config', /not a usable TCTI/],
      [fapiRc(BASE.NO_CERT), 'no-ek-certificate', /ek_cert_less/],
      [fapiRc(BASE.NOT_PROVISIONED), 'not-provisioned', /not provisioned/],
      [fapiRc(BASE.AUTHORIZATION_UNKNOWN), 'auth-required', /password or policy/],
      [fapiRc(BASE.NO_CONFIG), 'config', /config/],
      [fapiRc(BASE.IO_ERROR), 'io-error', /keystore/],
      [fapiRc(BASE.NO_TPM), 'no-tpm', /no TPM present/],
      [0x70001, 'tpm-error', /failed/],
      [0x8b0, 'tpm-error', /failed/],
    ];
    for (const [rc, code, text] of cases) {
      const e = errorFromRc(rc, { operation: 'unseal', path: '/HS/SRK/x', tcti: 'swtpm:port=1' });
      assert.ok(e instanceof KeyStoreError && e instanceof TpmKeyStoreError, `0x${rc.toString(16)}`);
      assert.equal(e.code, code, `0x${rc.toString(16)}: ${e.message}`);
      assert.equal(e.rc, rc);
      assert.match(e.message, text);
      assert.match(e.message, new RegExp(`0x${rc.toString(16).padStart(5, '0')}`));
    }
  });

  it("uses libtss2-rc's text when given", () => {
    const e = errorFromRc(0x1df, { operation: 'unseal', decoded: 'tpm:parameter(1):integrity check failed' });
    assert.match(e.message, /integrity check failed\]$/);
  });
});

describe('TPM2B_PUBLIC reader', () => {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const x = Buffer.from(jwk.x as string, 'base64url');
  const y = Buffer.from(jwk.y as string, 'base64url');
  const signing = tpm2b(eccSigningArea(x, y));
  const sealed = tpm2b(sealedArea(randomBytes(32)));

  it('reads a P-256 signing key and gives the same SPKI node:crypto does', () => {
    const pub = parseTpm2bPublic(signing);
    assert.equal(pub.type, 'ecc');
    assert.ok(isP256SigningKey(pub));
    assert.ok(!isSealedData(pub));
    assert.deepEqual(p256Spki(pub), new Uint8Array(publicKey.export({ format: 'der', type: 'spki' })));
  });

  it('pads short coordinates and rejects points off the curve', () => {
    // A TPM may drop leading zero bytes of a coordinate; the SPKI must not change.
    let k = publicKey;
    let kx = x;
    let ky = y;
    while (kx[0] !== 0) {
      k = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
      const j = k.export({ format: 'jwk' });
      kx = Buffer.from(j.x as string, 'base64url');
      ky = Buffer.from(j.y as string, 'base64url');
    }
    const stripped = tpm2b(eccSigningArea(kx.subarray(1), ky));
    assert.deepEqual(p256Spki(parseTpm2bPublic(stripped)), new Uint8Array(k.export({ format: 'der', type: 'spki' })));
    const offCurve = Uint8Array.from(y);
    offCurve[31] = (offCurve[31] as number) ^ 1;
    assert.throws(() => p256Spki(parseTpm2bPublic(tpm2b(eccSigningArea(x, offCurve)))), DecodeError);
  });

  it('tells sealed data from keys, and restricted or decrypt keys from signing keys', () => {
    const pub = parseTpm2bPublic(sealed);
    assert.equal(pub.type, 'keyedhash');
    assert.ok(isSealedData(pub));
    assert.ok(!isP256SigningKey(pub));
    assert.ok(!isP256SigningKey(parseTpm2bPublic(tpm2b(eccSigningArea(x, y, ATTR.sign | ATTR.restricted)))));
    assert.ok(!isP256SigningKey(parseTpm2bPublic(tpm2b(eccSigningArea(x, y, ATTR.decrypt)))));
  });

  it('computes Names as nameAlg || SHA-256(TPMT_PUBLIC) (TPM 2.0 Part 1 §16)', () => {
    const area = sealedArea(new Uint8Array(32));
    const name = objectName(parseTpm2bPublic(tpm2b(area)));
    assert.equal(Buffer.from(name).toString('hex'), `000b${createHash('sha256').update(area).digest('hex')}`);
  });

  it('rejects every truncation and any trailing byte', () => {
    for (const whole of [signing, sealed]) {
      for (let n = 0; n < whole.length; n++) assert.throws(() => parseTpm2bPublic(whole.subarray(0, n)), DecodeError, `prefix ${n}`);
      // Size field consistent but one byte short inside the area, and one extra byte after it.
      const extra = Uint8Array.from([...u16(whole.length - 1), ...whole.subarray(2), 0]);
      assert.throws(() => parseTpm2bPublic(extra), DecodeError);
      assert.throws(() => parseTpm2bPublic(Uint8Array.from([...whole, 0])), DecodeError);
    }
  });

  it('never throws anything but DecodeError on random mutations', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: signing.length - 1 }), fc.integer({ min: 1, max: 255 }), fc.boolean(), (i, flip, useSealed) => {
      const bytes = Uint8Array.from(useSealed ? sealed : signing);
      bytes[i % bytes.length] = (bytes[i % bytes.length] as number) ^ flip;
      try {
        const pub = parseTpm2bPublic(bytes);
        if (isP256SigningKey(pub)) p256Spki(pub);
      } catch (e) {
        if (!(e instanceof DecodeError)) throw e;
      }
    }), { numRuns: 2000 });
  });
});

describe('FAPI paths', () => {
  it('accepts what tss2_* accepts below the SRK, normalised', () => {
    assert.equal(checkObjectPath('/HS/SRK/device-identity'), '/HS/SRK/device-identity');
    assert.equal(checkObjectPath('HS/SRK/kek_1'), '/HS/SRK/kek_1');
    assert.equal(checkObjectPath('/P_ECCP256SHA256/HS/SRK/a.b'), '/P_ECCP256SHA256/HS/SRK/a.b');
    assert.equal(checkObjectPath('/HS/SRK/parent/child'), '/HS/SRK/parent/child');
    assert.equal(pathForName('queue-kek'), '/HS/SRK/queue-kek');
  });

  it('refuses hierarchy objects, the SRK itself and unsafe elements', () => {
    for (const bad of ['', '/', '/HS', '/HS/SRK', '/HS/SRK/', '/HE/EK', '/LOCKOUT', '/HS/SRK/../x', '/HS/SRK/a b', '/HS/SRK/-x', '/HN/x', 'x', '/HS/SRK//x', `/HS/SRK/${'a'.repeat(64)}`]) {
      assert.throws(() => checkObjectPath(bad), (e: unknown) => e instanceof KeyStoreError && e.code === 'invalid-path', JSON.stringify(bad));
    }
    assert.throws(() => pathForName('a/b'), (e: unknown) => e instanceof KeyStoreError && e.code === 'invalid-name');
  });

  it('reads names back from listed paths', () => {
    assert.equal(withoutProfile('/P_ECCP256SHA256/HS/SRK/x'), '/HS/SRK/x');
    assert.equal(nameOfPath('/P_ECCP256SHA256/HS/SRK/x'), 'x');
    assert.equal(nameOfPath('/P_ECCP256SHA256/HS/SRK/x/y'), undefined);
    assert.equal(nameOfPath('/P_ECCP256SHA256/HS/SRK'), undefined);
    assert.equal(nameOfPath('/P_ECCP256SHA256/HE/EK'), undefined);
  });
});

describe('FAPI config and GetInfo', () => {
  it("finds the SRK handle in FAPI's profiles (JSON with trailing commas)", () => {
    const profile = readFileSync('/etc/tpm2-tss/fapi-profiles/P_ECCP256SHA256.json', 'utf8');
    assert.equal(srkHandleFromProfile(profile), 0x81000001);
    assert.equal(srkHandleFromProfile('{ "srk_template": "system,restricted,decrypt,0x81000005", }'), 0x81000005);
    assert.equal(srkHandleFromProfile('{ "srk_template": "system,restricted,decrypt", }'), undefined);
  });

  it('reads manufacturer, simulator, persistent handles and lockout state', () => {
    const prop = (property: string, value: number) => ({ property, value });
    const info = parseTpmInfo(JSON.stringify({
      version: 'tpm2-tss 3.2.1',
      capabilities: [
        { description: 'handles-persistent', info: { capability: 'HANDLES', data: [-2130706431] } },
        { description: 'properties-fixed', info: { data: [prop('MANUFACTURER', 0x49424d00), prop('VENDOR_STRING_1', 0x53572020), prop('VENDOR_STRING_2', 0x2054504d), prop('FIRMWARE_VERSION_1', 0x20191023)] } },
        { description: 'properties-variable', info: { data: [prop('PERMANENT', 0x600), prop('LOCKOUT_COUNTER', 3), prop('MAX_AUTH_FAIL', 3), prop('LOCKOUT_INTERVAL', 7200)] } },
      ],
    }));
    assert.ok(info !== undefined);
    assert.equal(info.manufacturer, 'IBM');
    assert.equal(info.vendor, 'SW TPM');
    assert.ok(info.simulator);
    assert.deepEqual(info.persistentHandles, [0x81000001]);
    assert.deepEqual(info.lockout, { inLockout: true, counter: 3, maxTries: 3, interval: 7200 });
    const chip = parseTpmInfo(JSON.stringify({ capabilities: [{ description: 'properties-fixed', info: { data: [prop('MANUFACTURER', 0x49465800), prop('VENDOR_STRING_1', 0x534c4239), prop('VENDOR_STRING_2', 0x36373000)] } }] }));
    assert.equal(chip?.manufacturer, 'IFX');
    assert.equal(chip?.vendor, 'SLB9 670');
    assert.equal(chip?.simulator, false);
    assert.equal(parseTpmInfo('not json'), undefined);
    assert.equal(parseTpmInfo('{"capabilities": 5}'), undefined);
  });
});

describe('KEK wrap format', () => {
  const kek = randomBytes(32);
  const dek = randomBytes(32);
  const salt = randomBytes(32);

  it('is HKDF-SHA256 + AES-256-GCM as documented: @noble opens what we wrap', () => {
    const blob = wrapWithKek(kek, salt, dek);
    assert.equal(blob.length, 1 + 32 + 32 + 16);
    assert.equal(blob[0], 1);
    assert.deepEqual(blob.subarray(1, 33), new Uint8Array(salt));
    // RFC 5869 HKDF and NIST SP 800-38D GCM from an independent implementation.
    const key = hkdf(sha256, kek, salt, new TextEncoder().encode('vitalseal tpm kek wrap v1'), 32);
    const opened = gcm(key, new Uint8Array(12), blob.subarray(0, 33)).decrypt(blob.subarray(33));
    assert.deepEqual(opened, new Uint8Array(dek));
    assert.deepEqual(unwrapWithKek(kek, blob), new Uint8Array(dek));
  });

  it('gives a different blob for each salt and refuses the wrong KEK', () => {
    const a = wrapWithKek(kek, salt, dek);
    const b = wrapWithKek(kek, randomBytes(32), dek);
    assert.notDeepEqual(a, b);
    assert.throws(() => unwrapWithKek(randomBytes(32), a), (e: unknown) => e instanceof KeyStoreError && e.code === 'unwrap-failed');
  });

  it('rejects every truncation, every single-bit flip and a changed version', () => {
    const blob = wrapWithKek(kek, salt, dek);
    const failed = (e: unknown) => e instanceof KeyStoreError && e.code === 'unwrap-failed';
    for (let n = 0; n < blob.length; n++) assert.throws(() => unwrapWithKek(kek, blob.subarray(0, n)), failed, `prefix ${n}`);
    for (let i = 0; i < blob.length; i++) {
      for (let bit = 0; bit < 8; bit++) {
        const bad = Uint8Array.from(blob);
        bad[i] = (bad[i] as number) ^ (1 << bit);
        assert.throws(() => unwrapWithKek(kek, bad), failed, `byte ${i} bit ${bit}`);
      }
    }
    assert.throws(() => unwrapWithKek(kek, Uint8Array.from([...blob, 0])), failed);
    assert.throws(() => unwrapWithKek(kek, new Uint8Array(2000)), failed);
  });
});
