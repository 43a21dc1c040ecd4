import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { getProvider, OneShotSealer } from '../../src/crypto/index.ts';
import {
  COSE_CONTENT_ALGS, ecdhEsRecipients, encStructure, EpochKeyCache, Header, openCose, parseCoseEncrypt, sealEncrypt, sealEncrypt0, SealingSession, x25519Recipient,
} from '../../src/cose/index.ts';
import { serializeEncryptWithIv } from '../../src/cose/message.ts';
import { CborTag, decodeCbor, encodeCbor } from '../../src/codec/cbor.ts';
import { toHex } from '../../src/util/bytes.ts';
import { ManualClock } from '../../src/util/clock.ts';
import { ApiMisuse, CryptoError, DecodeError, Unsupported } from '../../src/util/errors.ts';
import { libcryptoContextsLive } from '../../src/crypto/libcrypto/contexts.ts';

const p = getProvider();
const ingest = p.x25519Generate();
const recipient = x25519Recipient(p, ingest.privateKey);
const text = (s: string) => new TextEncoder().encode(s);

describe('sealing epochs', () => {
  for (const alg of COSE_CONTENT_ALGS) {
    it(`${alg.name}: one ephemeral key per epoch, unique IVs, one derivation per epoch at the receiver`, () => {
      const clock = new ManualClock(1_000_000);
      const session = new SealingSession({ alg: alg.name, recipientPublicKey: ingest.publicKey, clock, maxMessages: 10, maxAgeMs: 60_000 });
      const cache = new EpochKeyCache(100);
      const ivs = new Set<string>();
      const epochs = new Set<string>();
      for (let i = 0; i < 35; i++) {
        const msg = session.seal(text(`reading ${i}`), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-7'], [Header.SEQUENCE, i + 1]]) });
        const parsed = parseCoseEncrypt(msg);
        ivs.add(toHex(parsed.unprotected.get(Header.IV) as Uint8Array));
        const opened = openCose(msg, { recipient, cache });
        assert.equal(new TextDecoder().decode(opened.plaintext), `reading ${i}`);
        assert.equal(opened.protected.get(Header.SEQUENCE), i + 1);
        assert.equal(opened.protected.get(Header.DEVICE_ID), 'bed-7');
        epochs.add(opened.epoch as string);
      }
      assert.equal(ivs.size, 35, 'no IV repeats');
      assert.equal(epochs.size, 4, '35 messages at 10 per epoch');
      assert.equal(session.epochsStarted, 4);
      assert.deepEqual(cache.stats, { hits: 31, misses: 4 });
    });
  }

  it('rotates by time with an injected clock, and on demand', () => {
    const clock = new ManualClock(0);
    const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: ingest.publicKey, clock, maxAgeMs: 1000 });
    session.seal(text('a'));
    const first = session.epoch()?.id;
    clock.advance(999);
    session.seal(text('b'));
    assert.equal(session.epoch()?.id, first);
    clock.advance(1);
    session.seal(text('c'));
    assert.notEqual(session.epoch()?.id, first);
    const second = session.epoch()?.id;
    session.rotate();
    session.seal(text('d'));
    assert.notEqual(session.epoch()?.id, second);
    assert.equal(session.epochsStarted, 3);
  });

  it('the receiver cache is bounded and evicts the least recently used epoch', () => {
    const cache = new EpochKeyCache(2);
    const clock = new ManualClock(0);
    const sessions = [0, 1, 2].map(() => new SealingSession({ alg: 'a128gcm', recipientPublicKey: ingest.publicKey, clock }));
    for (const s of sessions) openCose(s.seal(text('x')), { recipient, cache });
    assert.equal(cache.size, 2);
    openCose((sessions[0] as SealingSession).seal(text('y')), { recipient, cache });
    assert.deepEqual(cache.stats, { hits: 0, misses: 4 });
  });

  it('a hit keeps an old entry from eviction; the cache zeroises what it evicts', () => {
    const cache = new EpochKeyCache(4);
    const keys = ['a', 'b', 'c', 'd', 'e', 'f'].map((id) => [id, new Uint8Array(16).fill(id.charCodeAt(0))] as const);
    const get = (i: number) => cache.getOrDerive((keys[i] as readonly [string, Uint8Array])[0], () => (keys[i] as readonly [string, Uint8Array])[1]);
    for (let i = 0; i < 4; i++) get(i);
    get(0); // 'a' has drifted into the older half: this hit moves it to the newest end
    get(4); // full: evicts the least recently used, 'b'
    get(5); // then 'c'
    assert.equal(cache.size, 4);
    assert.deepEqual(cache.stats, { hits: 1, misses: 6 });
    get(0);
    assert.deepEqual(cache.stats, { hits: 2, misses: 6 }, "'a' survived");
    assert.ok((keys[1] as readonly [string, Uint8Array])[1].every((b) => b === 0), "evicted 'b' was zeroised");
    assert.ok((keys[2] as readonly [string, Uint8Array])[1].every((b) => b === 0), "evicted 'c' was zeroised");
    assert.ok((keys[3] as readonly [string, Uint8Array])[1].every((b) => b === 0x64), "'d' is still cached and intact");
  });

  it('a cached epoch opens through one keyed context, freed when the epoch leaves the cache; a forged message still fails and forgets the epoch', () => {
    const before = libcryptoContextsLive();
    const cache = new EpochKeyCache(2);
    const clock = new ManualClock(0);
    for (const alg of ['chacha20-poly1305', 'aes-ccm-16-64-128'] as const) {
      const session = new SealingSession({ alg, recipientPublicKey: ingest.publicKey, clock });
      for (let i = 0; i < 5; i++) assert.equal(new TextDecoder().decode(openCose(session.seal(text(`hr ${70 + i}`)), { recipient, cache, provider: p }).plaintext), `hr ${70 + i}`);
      session.destroy();
    }
    assert.deepEqual(cache.stats, { hits: 8, misses: 2 });
    // Two epochs cached (one context each), plus none left by the sealing sessions.
    assert.equal(libcryptoContextsLive() - before, 2);
    const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: ingest.publicKey, clock });
    openCose(session.seal(text('ok')), { recipient, cache, provider: p });
    const forged = session.seal(text('hr 250'));
    forged[forged.length - 3] = (forged[forged.length - 3] as number) ^ 1;
    assert.throws(() => openCose(forged, { recipient, cache, provider: p }), (e: unknown) => e instanceof CryptoError && e.code === 'cose-decrypt-failed');
    assert.equal(cache.size, 1, 'the epoch that failed is forgotten (and an older one was evicted to make room)');
    cache.clear();
    session.destroy();
    assert.equal(libcryptoContextsLive(), before, 'every context freed');
  });

  it('noble opens what node seals (cross-provider)', () => {
    const noble = getProvider('noble');
    const msg = sealEncrypt({ alg: 'chacha20-poly1305', recipientPublicKey: ingest.publicKey, plaintext: text('hr 72'), provider: p });
    const opened = openCose(msg, { recipient: x25519Recipient(noble, ingest.privateKey), provider: noble });
    assert.equal(new TextDecoder().decode(opened.plaintext), 'hr 72');
  });
});

describe('hardened decode', () => {
  const msg = sealEncrypt({ alg: 'aes-ccm-16-64-128', recipientPublicKey: ingest.publicKey, plaintext: text('spo2 97') });

  it('a wrong key fails as decryption failure', () => {
    const other = x25519Recipient(p, p.x25519Generate().privateKey);
    assert.throws(() => openCose(msg, { recipient: other }), (e) => e instanceof CryptoError && e.code === 'cose-decrypt-failed');
  });

  it('every flipped bit is refused with a typed error, never opened', () => {
    fc.assert(fc.property(fc.nat(), fc.integer({ min: 0, max: 7 }), (pos, bit) => {
      const bad = Uint8Array.from(msg);
      bad[pos % bad.length] = (bad[pos % bad.length] as number) ^ (1 << bit);
      assert.throws(() => openCose(bad, { recipient }), (e) => e instanceof DecodeError || e instanceof CryptoError || e instanceof Unsupported);
    }), { numRuns: 1500, seed: 9052 });
  });

  it('every proper prefix is refused', () => {
    for (let n = 0; n < msg.length; n++) assert.throws(() => openCose(msg.subarray(0, n), { recipient }), DecodeError, `prefix ${n}`);
  });

  it('refuses a wrong tag, an untagged message, an unprotected alg, an unknown crit, a label in both buckets, a bad IV', () => {
    const top = decodeCbor(msg, { allowTags: [96] }) as CborTag;
    const arr = top.value as unknown[];
    const rebuild = (tag: number | undefined, a: unknown[]) => encodeCbor(tag === undefined ? a : new CborTag(tag, a));
    const expectCode = (bytes: Uint8Array, code: string) =>
      assert.throws(() => openCose(bytes, { recipient }), (e) => (e instanceof DecodeError || e instanceof Unsupported) && e.code === code, code);
    expectCode(encodeCbor(new CborTag(16, arr)), 'cose-structure'); // Encrypt body under the Encrypt0 tag: 4 elements
    expectCode(rebuild(undefined, arr), 'cose-tag');
    const algUnprot = [encodeCbor(new Map()), new Map<number, unknown>([[1, 10], [5, (arr[1] as Map<number, unknown>).get(5)]]), arr[2], arr[3]];
    expectCode(rebuild(96, algUnprot), 'cose-alg');
    const crit = [encodeCbor(new Map<number, unknown>([[1, 10], [2, [-70000]], [-70000, 1]])), arr[1], arr[2], arr[3]];
    expectCode(rebuild(96, crit), 'cose-crit');
    const both = [arr[0], new Map<number, unknown>([[1, 10], [5, (arr[1] as Map<number, unknown>).get(5)]]), arr[2], arr[3]];
    expectCode(rebuild(96, both), 'cose-header');
    const shortIv = [arr[0], new Map<number, unknown>([[5, new Uint8Array(12)]]), arr[2], arr[3]];
    expectCode(rebuild(96, shortIv), 'cose-iv');
    const unknownAlg = [encodeCbor(new Map([[1, 2]])), arr[1], arr[2], arr[3]]; // A192GCM: not supported
    expectCode(rebuild(96, unknownAlg), 'cose-alg');
    assert.throws(() => openCose(encodeCbor([1, 2, 3]), { recipient }), (e) => e instanceof DecodeError && e.code === 'cose-tag');
  });

  it('direct-key COSE_Encrypt0 refuses a repeated IV at the sender and a wrong key at the receiver', () => {
    const key = p.randomBytes(32);
    const sealer = new OneShotSealer(p, 'chacha20-poly1305', key);
    const iv = p.randomBytes(12);
    const m = sealEncrypt0(sealer, 'chacha20-poly1305', iv, text('t 36.8'));
    assert.throws(() => sealEncrypt0(sealer, 'chacha20-poly1305', iv, text('t 36.9')), (e) => e instanceof ApiMisuse && e.code === 'nonce-reuse');
    assert.equal(new TextDecoder().decode(openCose(m, { direct: () => key }).plaintext), 't 36.8');
    assert.throws(() => openCose(m, { direct: () => p.randomBytes(32) }), CryptoError);
    assert.throws(() => openCose(m, { direct: () => p.randomBytes(16) }), (e) => e instanceof CryptoError && e.code === 'cose-wrong-key');
  });
});

describe('directly written structures', () => {
  // Byte strings of every head size: immediate, one, two and four length bytes, and their edges.
  const lengths = [0, 1, 23, 24, 255, 256, 65_535, 65_536];
  const bytes = (n: number, fill: number) => new Uint8Array(n).fill(fill);

  it('Enc_structure: the same bytes as encoding the array', () => {
    for (const context of ['Encrypt', 'Encrypt0'] as const) {
      for (const pl of lengths) {
        for (const al of [0, 24, 300]) {
          const prot = bytes(pl, 0xa5);
          const aad = bytes(al, 0x5a);
          assert.equal(toHex(encStructure(context, prot, aad)), toHex(encodeCbor([context, prot, aad])), `${context} ${pl} ${al}`);
        }
      }
    }
  });

  it('COSE_Encrypt with an IV and encoded recipients: the same bytes as encoding the tagged array', () => {
    const recipients = ecdhEsRecipients(ingest.publicKey, text('ingest-2026'));
    for (const cl of lengths) {
      for (const ivl of [12, 13]) {
        const prot = encodeCbor(new Map<number, unknown>([[Header.ALG, 24], [Header.DEVICE_ID, 'bed-7'], [Header.SEQUENCE, cl + 1]]));
        const iv = bytes(ivl, 0x11);
        const ct = bytes(cl, 0x22);
        const expected = encodeCbor(new CborTag(96, [prot, new Map([[Header.IV, iv]]), ct, recipients]));
        assert.equal(toHex(serializeEncryptWithIv(prot, iv, ct, recipients.bytes)), toHex(expected), `${cl} ${ivl}`);
      }
    }
  });
});
