/**
 * Power-on self-test, in the manner of FIPS 140-3 (ISO/IEC 19790 §7.10, pre-operational and
 * conditional self-tests): before any key is opened, every primitive the process is about to use
 * runs a known-answer test (KAT) against a published vector, plus a negative check (a flipped bit
 * must be refused) so that a primitive that "succeeds" at everything also fails the test.
 *
 * On any mismatch `runSelfTest` throws `SelfTestFailure`, naming the primitive and the provider;
 * the caller (the device agent, the ingest service) refuses to start.
 *
 * Vectors, each cited on its line: RFC 8439 §2.8.2 (ChaCha20-Poly1305), RFC 3610 §8 packet vector
 * #1 (AES-128-CCM, 8-byte tag), Wycheproof aes_ccm_test.json tcId 267 (AES-128-CCM, 16-byte tag),
 * the GCM specification (McGrew & Viega) test cases 4 and 16 (AES-128/256-GCM), RFC 7748 §6.1
 * (X25519), RFC 5869 A.1 (HKDF-SHA256), FIPS 180-2 Appendix B.1 (SHA-256) and RFC 6979 A.2.5
 * (ECDSA P-256 with SHA-256), and RFC 9001 A.2/A.5 for the record-number masks. When the keyed
 * contexts run on libcrypto (src/crypto/keyed.ts), the AEAD and mask KATs run through them as well.
 * The same values are in test/vectors/ with their sources, and a test
 * checks that the two copies agree.
 *
 * @example
 *   const report = runSelfTest({ aeads: ['chacha20-poly1305'], ecdsa: nodeEcdsaP256 });
 *   log.info({ selfTest: report.results.map((r) => r.primitive) }, 'self-test passed');
 */
import { createPublicKey, generateKeyPairSync, sign as nodeSign, verify as nodeVerify, type KeyObject } from 'node:crypto';
import { equalBytes, fromHex, utf8, zeroize } from '../util/bytes.ts';
import { CryptoError } from '../util/errors.ts';
import { hkdf } from './hkdf.ts';
import { aeadOpenContext, aeadSealContext, keyedContextStatus, recordMaskContext, type KeyedContextStatus, type MaskKind } from './keyed.ts';
import { nodeProvider } from './node.ts';
import type { CryptoProvider } from './provider.ts';
import { providerForAead } from './registry.ts';
import { AEAD_IDS, type AeadId } from './suites.ts';

/** ECDSA over P-256 with SHA-256, signatures in IEEE P1363 form (r || s, 64 bytes). */
export interface EcdsaP256 {
  readonly name: string;
  /** `publicKey` is the uncompressed SEC 1 point (0x04 || x || y). */
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
  /** A fresh key pair for the pairwise-consistency (sign then verify) test; destroyed after use. */
  generate(): EcdsaTestKey;
}

export interface EcdsaTestKey {
  readonly publicKey: Uint8Array;
  sign(message: Uint8Array): Uint8Array;
  destroy(): void;
}

function spki(publicKey: Uint8Array): KeyObject {
  if (publicKey.length !== 65 || publicKey[0] !== 0x04) throw new RangeError('P-256 public key must be a 65-byte uncompressed point');
  const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64url');
  return createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: b64(publicKey.subarray(1, 33)), y: b64(publicKey.subarray(33)) }, format: 'jwk' });
}

/** ECDSA P-256 through node:crypto (OpenSSL). */
export const nodeEcdsaP256: EcdsaP256 = Object.freeze({
  name: 'node',
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
    return nodeVerify('sha256', message, { key: spki(publicKey), dsaEncoding: 'ieee-p1363' }, signature);
  },
  generate(): EcdsaTestKey {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const jwk = publicKey.export({ format: 'jwk' });
    const point = new Uint8Array(65);
    point[0] = 0x04;
    point.set(Buffer.from(String(jwk.x), 'base64url'), 1);
    point.set(Buffer.from(String(jwk.y), 'base64url'), 33);
    let key: KeyObject | undefined = privateKey;
    return {
      publicKey: point,
      sign(message) {
        if (key === undefined) throw new CryptoError('key-destroyed', 'self-test ECDSA key was destroyed');
        return new Uint8Array(nodeSign('sha256', message, { key, dsaEncoding: 'ieee-p1363' }));
      },
      destroy() {
        key = undefined;
      },
    };
  },
});

/** Which primitive a result is about; also what `SelfTestFailure.primitive` names. */
export type SelfTestPrimitive = `aead:${AeadId}` | `record-mask:${MaskKind}` | 'x25519' | 'hkdf-sha256' | 'sha256' | 'ecdsa-p256-verify' | 'ecdsa-p256-sign-verify';

export interface SelfTestResult {
  readonly primitive: SelfTestPrimitive;
  readonly provider: string;
}

export interface SelfTestReport {
  readonly results: readonly SelfTestResult[];
  /** Which implementation keyed AEAD contexts (the DTLS record layer) use, and why. */
  readonly keyedContexts: KeyedContextStatus;
  readonly durationMs: number;
}

/** A known-answer test failed: the process must not use this primitive (and should not start). */
export class SelfTestFailure extends CryptoError {
  readonly primitive: SelfTestPrimitive;
  readonly provider: string;
  constructor(primitive: SelfTestPrimitive, provider: string, what: string, options?: { cause?: unknown }) {
    super('self-test-failed', `power-on self-test failed: ${primitive} (provider ${provider}): ${what}`, options);
    this.primitive = primitive;
    this.provider = provider;
  }
}

export interface SelfTestOptions {
  /** AEAD suites about to be used (default: all). */
  readonly aeads?: readonly AeadId[];
  /** The provider under test; default: the one the registry would pick for each suite. */
  readonly provider?: CryptoProvider;
  /** ECDSA P-256 implementation under test; `false` skips it (no certificate in use). Default node. */
  readonly ecdsa?: EcdsaP256 | false;
}

interface AeadKat {
  readonly source: string;
  readonly key: string;
  readonly nonce: string;
  readonly aad: string;
  readonly plaintext: string;
  /** ciphertext || tag */
  readonly sealed: string;
}

const AEAD_KATS: Readonly<Record<AeadId, AeadKat>> = {
  // RFC 8439 §2.8.2: AEAD_CHACHA20_POLY1305 test vector ("Ladies and Gentlemen of the class of '99...").
  'chacha20-poly1305': {
    source: 'RFC 8439 §2.8.2',
    key: '808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f',
    nonce: '070000004041424344454647',
    aad: '50515253c0c1c2c3c4c5c6c7',
    plaintext: '4c616469657320616e642047656e746c656d656e206f662074686520636c617373206f66202739393a204966204920636f756c64206f6666657220796f75206f6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73637265656e20776f756c642062652069742e',
    sealed: 'd31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116' +
      '1ae10b594f09e26a7e902ecbd0600691',
  },
  // RFC 3610 §8, Packet Vector #1: M = 8, L = 2 (13-byte nonce), as COSE AES-CCM-16-64-128 uses.
  'aes-128-ccm-8': {
    source: 'RFC 3610 §8 Packet Vector #1',
    key: 'c0c1c2c3c4c5c6c7c8c9cacbcccdcecf',
    nonce: '00000003020100a0a1a2a3a4a5',
    aad: '0001020304050607',
    plaintext: '08090a0b0c0d0e0f101112131415161718191a1b1c1d1e',
    sealed: '588c979a61c663d2f066d0c2c0f989806d5f6b61dac384' + '17e8d12cfdf926e0',
  },
  // Wycheproof aes_ccm_test.json tcId 267: M = 16, 13-byte nonce (COSE AES-CCM-16-128-128).
  'aes-128-ccm-16': {
    source: 'Wycheproof aes_ccm_test.json tcId 267',
    key: '7c5aa1cd2fc171d5bb91ee74f31e1a63',
    nonce: '70a2a5303734517827faa7ee78',
    aad: '',
    plaintext: '4bd1d3427e0735a08f475bc73ec3648c',
    sealed: '9ab61214ea6611510706315f0fc9bd65' + 'a2b3fc3c1349cbfd9ded7cc32effb389',
  },
  // The Galois/Counter Mode of Operation (McGrew & Viega), Test Case 4 (AES-128).
  'aes-128-gcm': {
    source: 'GCM specification Test Case 4',
    key: 'feffe9928665731c6d6a8f9467308308',
    nonce: 'cafebabefacedbaddecaf888',
    aad: 'feedfacedeadbeeffeedfacedeadbeefabaddad2',
    plaintext: 'd9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39',
    sealed: '42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091' +
      '5bc94fbc3221a5db94fae95ae7121a47',
  },
  // The same document, Test Case 16 (AES-256).
  'aes-256-gcm': {
    source: 'GCM specification Test Case 16',
    key: 'feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308',
    nonce: 'cafebabefacedbaddecaf888',
    aad: 'feedfacedeadbeeffeedfacedeadbeefabaddad2',
    plaintext: 'd9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39',
    sealed: '522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662' +
      '76fc6ece0f4e1768cddf8853bb2d551b',
  },
};

// RFC 7748 §6.1: Alice's private key, Bob's public key, and their shared secret.
const X25519_KAT = {
  alicePrivate: '77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a',
  alicePublic: '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a',
  bobPublic: 'de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f',
  shared: '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742',
};

// RFC 5869 Appendix A.1: basic test case with SHA-256.
const HKDF_KAT = {
  ikm: '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b',
  salt: '000102030405060708090a0b0c',
  info: 'f0f1f2f3f4f5f6f7f8f9',
  okm: '3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865',
};

// FIPS 180-2 Appendix B.1: SHA-256("abc").
const SHA256_KAT = { message: 'abc', digest: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad' };

// RFC 6979 Appendix A.2.5: P-256 key pair and the SHA-256 signature of "sample" (r || s).
const ECDSA_KAT = {
  publicKey: '04' + '60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6' + '7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299',
  message: 'sample',
  signature: 'efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716' + 'f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8',
};

// RFC 9001 Appendix A.2 (AES-128-ECB, client Initial) and A.5 (ChaCha20): header-protection
// masks, the construction RFC 9147 §4.2.3 uses for DTLS record numbers.
const MASK_KATS: Readonly<Record<MaskKind, { source: string; key: string; sample: string; mask: string }>> = {
  'aes-ecb': { source: 'RFC 9001 A.2', key: '9f50449e04a0e810283a1e9933adedd2', sample: 'd1b1c98dd7689fb8ec11d242b123dc9b', mask: '437b9aec36' },
  chacha20: { source: 'RFC 9001 A.5', key: '25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4', sample: '5e5cd55c41f69080575d7999c25a5bfb', mask: 'aefefe7d03' },
};

/** The embedded vectors, for the test that checks them against test/vectors/. */
export const SELF_TEST_VECTORS = Object.freeze({ aead: AEAD_KATS, mask: MASK_KATS, x25519: X25519_KAT, hkdf: HKDF_KAT, sha256: SHA256_KAT, ecdsa: ECDSA_KAT });

function flip(b: Uint8Array, index = 0): Uint8Array {
  const c = Uint8Array.from(b);
  c[index] = (c[index] as number) ^ 0x01;
  return c;
}

/** Runs `check`; any exception or `false` becomes a SelfTestFailure for `primitive`. */
function expect(primitive: SelfTestPrimitive, provider: string, what: string, check: () => boolean): void {
  let ok: boolean;
  try {
    ok = check();
  } catch (cause) {
    throw new SelfTestFailure(primitive, provider, `${what} threw ${cause instanceof Error ? cause.name : 'an error'}`, { cause });
  }
  if (!ok) throw new SelfTestFailure(primitive, provider, what);
}

function refuses(fn: () => unknown): boolean {
  try {
    fn();
    return false;
  } catch {
    return true;
  }
}

function aeadKat(p: CryptoProvider, id: AeadId): void {
  const primitive: SelfTestPrimitive = `aead:${id}`;
  const v = AEAD_KATS[id];
  if (!p.supportsAead(id)) throw new SelfTestFailure(primitive, p.name, 'suite not offered by this provider');
  const key = fromHex(v.key);
  const nonce = fromHex(v.nonce);
  const aad = fromHex(v.aad);
  const sealed = fromHex(v.sealed);
  try {
    expect(primitive, p.name, `seal does not match ${v.source}`, () => equalBytes(p.aeadSeal(id, key, nonce, fromHex(v.plaintext), aad), sealed));
    expect(primitive, p.name, `seal into a buffer does not match ${v.source}`, () => {
      // At an offset, with bytes on both sides that must stay untouched (the DTLS record layer's use).
      const out = new Uint8Array(sealed.length + 7).fill(0xa5);
      p.aeadSealInto(id, key, nonce, fromHex(v.plaintext), aad, out, 5);
      return equalBytes(out.subarray(5, 5 + sealed.length), sealed) && out.subarray(0, 5).every((b) => b === 0xa5) && out.subarray(5 + sealed.length).every((b) => b === 0xa5);
    });
    expect(primitive, p.name, `open does not match ${v.source}`, () => equalBytes(p.aeadOpen(id, key, nonce, sealed, aad), fromHex(v.plaintext)));
    expect(primitive, p.name, 'a flipped tag bit was not refused', () => refuses(() => p.aeadOpen(id, key, nonce, flip(sealed, sealed.length - 1), aad)));
  } finally {
    zeroize(key);
  }
}

/**
 * The keyed contexts on libcrypto (src/crypto/libcrypto/) are a second implementation of every
 * AEAD, outside node:crypto: the same KATs run through them, twice on one context (a reused
 * context must give the same answer with a fresh IV each time).
 */
function libcryptoAeadKat(id: AeadId): void {
  const primitive: SelfTestPrimitive = `aead:${id}`;
  const v = AEAD_KATS[id];
  const key = fromHex(v.key);
  const nonce = fromHex(v.nonce);
  const aad = fromHex(v.aad);
  const sealed = fromHex(v.sealed);
  const plaintext = fromHex(v.plaintext);
  const opts = { nonceLength: nonce.length, implementation: 'libcrypto' as const };
  let tx, rx;
  try {
    tx = aeadSealContext(nodeProvider, id, key, opts);
    rx = aeadOpenContext(nodeProvider, id, key, opts);
  } catch (cause) {
    throw new SelfTestFailure(primitive, 'libcrypto', 'context set-up failed', { cause });
  } finally {
    zeroize(key);
  }
  const seal = tx;
  const open = rx;
  try {
    for (let round = 0; round < 2; round++) {
      expect(primitive, 'libcrypto', `keyed seal does not match ${v.source}`, () => {
        const out = new Uint8Array(sealed.length);
        seal.sealInto(nonce, plaintext, aad, out, 0);
        return equalBytes(out, sealed);
      });
      expect(primitive, 'libcrypto', `keyed open does not match ${v.source}`, () => {
        const out = new Uint8Array(plaintext.length);
        return open.openInto(nonce, sealed, aad, out, 0) === plaintext.length && equalBytes(out, plaintext);
      });
      expect(primitive, 'libcrypto', 'a flipped tag bit was not refused', () =>
        refuses(() => open.openInto(nonce, flip(sealed, sealed.length - 1), aad, new Uint8Array(plaintext.length), 0)));
    }
  } finally {
    seal.destroy();
    open.destroy();
  }
}

function libcryptoMaskKat(kind: MaskKind): void {
  const v = MASK_KATS[kind];
  const key = fromHex(v.key);
  let ctx;
  try {
    ctx = recordMaskContext(nodeProvider, kind, key, { implementation: 'libcrypto' });
  } catch (cause) {
    throw new SelfTestFailure(`record-mask:${kind}`, 'libcrypto', 'context set-up failed', { cause });
  } finally {
    zeroize(key);
  }
  const mask = ctx;
  try {
    expect(`record-mask:${kind}`, 'libcrypto', `mask does not match ${v.source}`, () =>
      equalBytes(mask.mask(fromHex(v.sample)).subarray(0, 5), fromHex(v.mask)) && equalBytes(mask.mask(fromHex(v.sample)).subarray(0, 5), fromHex(v.mask)));
  } finally {
    mask.destroy();
  }
}

function x25519Kat(p: CryptoProvider): void {
  const priv = fromHex(X25519_KAT.alicePrivate);
  try {
    expect('x25519', p.name, 'public key does not match RFC 7748 §6.1', () => equalBytes(p.x25519PublicKey(priv), fromHex(X25519_KAT.alicePublic)));
    expect('x25519', p.name, 'shared secret does not match RFC 7748 §6.1', () => equalBytes(p.x25519(priv, fromHex(X25519_KAT.bobPublic)), fromHex(X25519_KAT.shared)));
    // RFC 7748 §6.1: an all-zero output (low-order point u = 0) must be refused.
    expect('x25519', p.name, 'a low-order public key was not refused', () => refuses(() => p.x25519(priv, new Uint8Array(32))));
  } finally {
    zeroize(priv);
  }
}

function hkdfKat(p: CryptoProvider): void {
  const okm = fromHex(HKDF_KAT.okm);
  expect('hkdf-sha256', p.name, 'output does not match RFC 5869 A.1', () =>
    equalBytes(hkdf(p, fromHex(HKDF_KAT.salt), fromHex(HKDF_KAT.ikm), fromHex(HKDF_KAT.info), okm.length), okm));
}

function sha256Kat(p: CryptoProvider): void {
  expect('sha256', p.name, 'digest does not match FIPS 180-2 B.1', () => equalBytes(p.sha256(utf8(SHA256_KAT.message)), fromHex(SHA256_KAT.digest)));
}

function ecdsaKat(e: EcdsaP256): void {
  const pub = fromHex(ECDSA_KAT.publicKey);
  const msg = utf8(ECDSA_KAT.message);
  const sig = fromHex(ECDSA_KAT.signature);
  expect('ecdsa-p256-verify', e.name, 'RFC 6979 A.2.5 signature did not verify', () => e.verify(pub, msg, sig));
  expect('ecdsa-p256-verify', e.name, 'a flipped signature bit was accepted', () => !e.verify(pub, msg, flip(sig, 40)));
  expect('ecdsa-p256-verify', e.name, 'a changed message was accepted', () => !e.verify(pub, utf8('samplf'), sig));
  // FIPS 140-3 pairwise consistency: sign with a fresh key, verify with its public half.
  const key = e.generate();
  try {
    const m = utf8('vitalseal power-on self-test');
    const s = key.sign(m);
    expect('ecdsa-p256-sign-verify', e.name, 'a fresh signature did not verify', () => e.verify(key.publicKey, m, s));
    expect('ecdsa-p256-sign-verify', e.name, 'a fresh signature verified for another message', () => !e.verify(key.publicKey, flip(m), s));
  } finally {
    key.destroy();
  }
}

/**
 * Runs every KAT for the primitives about to be used; throws `SelfTestFailure` on the first
 * mismatch. Uses no key other than the published test keys.
 */
export function runSelfTest(opts: SelfTestOptions = {}): SelfTestReport {
  const started = performance.now();
  const results: SelfTestResult[] = [];
  const aeads = opts.aeads ?? AEAD_IDS;
  const seen = new Set<CryptoProvider>();
  for (const id of aeads) {
    let p: CryptoProvider;
    try {
      p = opts.provider ?? providerForAead(id);
    } catch (cause) {
      throw new SelfTestFailure(`aead:${id}`, 'none', 'no provider offers this suite', { cause });
    }
    aeadKat(p, id);
    results.push({ primitive: `aead:${id}`, provider: p.name });
    seen.add(p);
  }
  // The record layer's keyed contexts use libcrypto when it loaded (and node:crypto otherwise,
  // which the KATs above cover): test that path too before any key is used with it.
  const keyedContexts = keyedContextStatus();
  const nodeInUse = [...seen].some((p) => p.name === 'node') || (opts.provider === undefined && aeads.length === 0);
  if (keyedContexts.backend === 'libcrypto' && nodeInUse) {
    for (const id of aeads) {
      libcryptoAeadKat(id);
      results.push({ primitive: `aead:${id}`, provider: 'libcrypto' });
    }
    for (const kind of ['aes-ecb', 'chacha20'] as const) {
      libcryptoMaskKat(kind);
      results.push({ primitive: `record-mask:${kind}`, provider: 'libcrypto' });
    }
  }
  if (seen.size === 0) seen.add(opts.provider ?? providerForAead('chacha20-poly1305'));
  for (const p of seen) {
    sha256Kat(p);
    results.push({ primitive: 'sha256', provider: p.name });
    hkdfKat(p);
    results.push({ primitive: 'hkdf-sha256', provider: p.name });
    x25519Kat(p);
    results.push({ primitive: 'x25519', provider: p.name });
  }
  const ecdsa = opts.ecdsa ?? nodeEcdsaP256;
  if (ecdsa !== false) {
    ecdsaKat(ecdsa);
    results.push({ primitive: 'ecdsa-p256-verify', provider: ecdsa.name }, { primitive: 'ecdsa-p256-sign-verify', provider: ecdsa.name });
  }
  return { results, keyedContexts, durationMs: performance.now() - started };
}
