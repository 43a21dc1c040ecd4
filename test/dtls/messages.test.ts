import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Reader, Writer } from '../../src/dtls/messages/codec.ts';
import { ContentType, ExtensionType, HandshakeType, HRR_RANDOM } from '../../src/dtls/messages/constants.ts';
import {
  encodeConnectionId, encodeCookie, encodeKeyShareClient, encodeKeyShareHrr, encodeKeyShareServer, encodeOfferedPsks,
  encodePskModes, encodeSelectedPsk, encodeSupportedVersionsClient, encodeSupportedVersionsServer, encodeU16List,
  readConnectionId, readCookie, readKeyShareClient, readKeyShareHrr, readKeyShareServer, readOfferedPsks, readPskModes,
  readSelectedPsk, readSupportedVersionsClient, readSupportedVersionsServer, readU16List,
} from '../../src/dtls/messages/extensions.ts';
import {
  decodeHandshake, encodeHandshake, isHelloRetryRequest, readHandshakeBody, serverHello, type HandshakeMessage,
} from '../../src/dtls/messages/handshake.ts';
import {
  encodeAck, encodeAlert, encodeUnifiedHeader, parseDatagram, readAck, readAlert, readHandshakeFragments,
  writeHandshakeFragment, writePlaintextHeader,
} from '../../src/dtls/messages/record.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { VitalsealError } from '../../src/util/errors.ts';
import { loadCapture } from './support/captures.ts';

const bytes = (n: number, fill: number) => new Uint8Array(n).fill(fill);

const SAMPLES: HandshakeMessage[] = [
  {
    type: HandshakeType.clientHello, legacyVersion: 0xfefd, random: bytes(32, 1), legacySessionId: new Uint8Array(0),
    legacyCookie: new Uint8Array(0), cipherSuites: [0x1301, 0x1303], compressionMethods: Uint8Array.of(0),
    extensions: [
      { type: ExtensionType.supportedVersions, data: encodeSupportedVersionsClient([0xfefc]) },
      { type: ExtensionType.keyShare, data: encodeKeyShareClient([{ group: 0x1d, keyExchange: bytes(32, 7) }]) },
      { type: ExtensionType.connectionId, data: encodeConnectionId(bytes(4, 9)) },
    ],
  },
  serverHello({ random: bytes(32, 2), cipherSuite: 0x1301, extensions: [{ type: ExtensionType.supportedVersions, data: encodeSupportedVersionsServer(0xfefc) }] }),
  { type: HandshakeType.encryptedExtensions, extensions: [] },
  { type: HandshakeType.certificateRequest, context: new Uint8Array(0), extensions: [{ type: ExtensionType.signatureAlgorithms, data: encodeU16List([0x0403]) }] },
  { type: HandshakeType.certificate, context: new Uint8Array(0), entries: [{ data: bytes(40, 0x30), extensions: [] }, { data: bytes(3, 0x31), extensions: [] }] },
  { type: HandshakeType.certificateVerify, scheme: 0x0403, signature: bytes(70, 5) },
  { type: HandshakeType.finished, verifyData: bytes(32, 0xaa) },
  { type: HandshakeType.newSessionTicket, lifetime: 7200, ageAdd: 0x12345678, nonce: bytes(8, 1), ticket: bytes(100, 2), extensions: [] },
  { type: HandshakeType.keyUpdate, updateRequested: true },
  { type: HandshakeType.newConnectionId, cids: [bytes(4, 1), bytes(6, 2)], usage: 1 },
  { type: HandshakeType.requestConnectionId, numCids: 2 },
];

function expectTypedError(fn: () => unknown, what: string): void {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof VitalsealError, `${what}: threw ${String(e)} instead of a typed error`);
    return;
  }
  assert.fail(`${what}: did not throw`);
}

describe('DTLS codec: Reader and Writer', () => {
  it('round-trips integers of every width and refuses reads past the end', () => {
    const w = new Writer(1);
    w.u8(0xfe).u16(0xfefc).u24(0x123456).u32(0xdeadbeef).u48(0xffff_ffff_ffff).u64(2 ** 53 - 1);
    const r = new Reader(w.finish());
    assert.equal(r.u8(), 0xfe);
    assert.equal(r.u16(), 0xfefc);
    assert.equal(r.u24(), 0x123456);
    assert.equal(r.u32(), 0xdeadbeef);
    assert.equal(r.u48(), 0xffff_ffff_ffff);
    assert.equal(r.u64(), 2 ** 53 - 1);
    r.expectEnd('all');
    assert.throws(() => r.u8(), (e: unknown) => e instanceof VitalsealError && e.code === 'truncated');
    assert.throws(() => new Reader(fromHex('ffffffffffffffff')).u64(), (e: unknown) => e instanceof VitalsealError && e.code === 'value-too-large');
  });

  it('vectors enforce their bounds and exact consumption', () => {
    assert.throws(() => new Reader(fromHex('0401020304')).opaque(1, 0, 3), (e: unknown) => e instanceof VitalsealError && e.code === 'bad-length');
    assert.throws(() => new Reader(fromHex('0003010203')).vector(2, 0, 10, 'v', (r) => r.u16()), (e: unknown) => e instanceof VitalsealError && e.code === 'trailing-bytes');
    assert.throws(() => new Writer().vector(1, (w) => w.bytes(new Uint8Array(256))), RangeError);
  });
});

describe('DTLS codec: handshake messages (RFC 8446 §4, RFC 9147 §5.3, §9)', () => {
  it('every sample round-trips byte for byte', () => {
    for (const m of SAMPLES) {
      const enc = encodeHandshake(m);
      const dec = decodeHandshake(enc);
      assert.deepEqual(dec, m, `type ${m.type}`);
      assert.equal(toHex(encodeHandshake(dec)), toHex(enc));
    }
  });

  it('every proper prefix of every body is rejected with a typed error', () => {
    for (const m of SAMPLES) {
      const body = encodeHandshake(m).subarray(4);
      for (let n = 0; n < body.length; n++) expectTypedError(() => readHandshakeBody(m.type, body.subarray(0, n)), `type ${m.type} prefix ${n}`);
      // One byte too many is as wrong as one too few.
      expectTypedError(() => readHandshakeBody(m.type, Uint8Array.from([...body, 0])), `type ${m.type} + 1`);
    }
  });

  it('random mutations never throw anything but typed errors', () => {
    const encoded = SAMPLES.map((m) => encodeHandshake(m));
    fc.assert(fc.property(fc.nat(encoded.length - 1), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 }), (which, edits) => {
      const b = Uint8Array.from(encoded[which] as Uint8Array);
      for (const [pos, val] of edits) b[pos % b.length] = val;
      try {
        decodeHandshake(b);
      } catch (e) {
        if (!(e instanceof VitalsealError)) throw e;
      }
    }), { seed: 0x5eed, numRuns: 5000 });
  });

  it('rejects unknown handshake types, repeated extensions and a bad KeyUpdate value', () => {
    expectTypedError(() => readHandshakeBody(3, new Uint8Array(0)), 'hello_verify_request');
    const dup = new Writer();
    dup.vector(2, (v) => v.u16(10).opaque(2, new Uint8Array(0)).u16(10).opaque(2, new Uint8Array(0)));
    assert.throws(() => readHandshakeBody(HandshakeType.encryptedExtensions, dup.finish()), (e: unknown) => e instanceof VitalsealError && e.code === 'duplicate-extension');
    assert.throws(() => readHandshakeBody(HandshakeType.keyUpdate, Uint8Array.of(2)), (e: unknown) => e instanceof VitalsealError && e.code === 'bad-key-update');
  });

  it('recognises a HelloRetryRequest by its random (RFC 8446 §4.1.3)', () => {
    assert.equal(isHelloRetryRequest(serverHello({ random: HRR_RANDOM, cipherSuite: 0x1301, extensions: [] })), true);
    assert.equal(isHelloRetryRequest(serverHello({ random: bytes(32, 0), cipherSuite: 0x1301, extensions: [] })), false);
  });

  it('decodes the real wolfSSL ClientHello, HelloRetryRequest and ServerHello and re-encodes them exactly', () => {
    let seen = 0;
    for (const name of ['dtls13-chacha', 'c-mutual-ecc', 'd-psk-ke', 'e1-hrr-keyshare-cookie']) {
      const cap = loadCapture(name);
      for (const d of cap.datagrams) {
        const { records, error } = parseDatagram(fromHex(d.hex), 0);
        assert.equal(error, undefined, `${name} frame ${d.frame}`);
        for (const rec of records) {
          if (rec.kind !== 'plaintext' || rec.contentType !== ContentType.handshake) continue;
          for (const f of readHandshakeFragments(rec.fragment)) {
            if (f.fragmentOffset !== 0 || f.body.length !== f.length) continue;
            const m = readHandshakeBody(f.msgType, f.body);
            const again = encodeHandshake(m).subarray(4);
            assert.equal(toHex(again), toHex(f.body), `${name} frame ${d.frame} type ${f.msgType}`);
            seen++;
          }
        }
      }
    }
    assert.ok(seen >= 10, `decoded ${seen} plaintext messages`);
  });
});

describe('DTLS codec: extension bodies', () => {
  const cases: [string, Uint8Array, (d: Uint8Array) => unknown, unknown][] = [
    ['supported_versions CH', encodeSupportedVersionsClient([0xfefc, 0xfefd]), readSupportedVersionsClient, [0xfefc, 0xfefd]],
    ['supported_versions SH', encodeSupportedVersionsServer(0xfefc), readSupportedVersionsServer, 0xfefc],
    ['groups', encodeU16List([0x1d, 0x17]), (d) => readU16List(d, 'groups'), [0x1d, 0x17]],
    ['key_share CH', encodeKeyShareClient([{ group: 0x1d, keyExchange: bytes(32, 1) }]), readKeyShareClient, [{ group: 0x1d, keyExchange: bytes(32, 1) }]],
    ['key_share SH', encodeKeyShareServer({ group: 0x17, keyExchange: bytes(65, 4) }), readKeyShareServer, { group: 0x17, keyExchange: bytes(65, 4) }],
    ['key_share HRR', encodeKeyShareHrr(0x17), readKeyShareHrr, 0x17],
    ['cookie', encodeCookie(bytes(40, 3)), readCookie, bytes(40, 3)],
    ['psk modes', encodePskModes([1]), readPskModes, [1]],
    ['pre_shared_key CH', encodeOfferedPsks({ identities: [{ identity: bytes(10, 1), obfuscatedTicketAge: 5 }], binders: [bytes(32, 2)] }), readOfferedPsks,
      { identities: [{ identity: bytes(10, 1), obfuscatedTicketAge: 5 }], binders: [bytes(32, 2)] }],
    ['pre_shared_key SH', encodeSelectedPsk(0), readSelectedPsk, 0],
    ['connection_id', encodeConnectionId(bytes(5, 5)), readConnectionId, bytes(5, 5)],
  ];

  it('round-trip, and every prefix is rejected', () => {
    for (const [name, enc, read, value] of cases) {
      assert.deepEqual(read(enc), value, name);
      for (let n = 0; n < enc.length; n++) expectTypedError(() => read(enc.subarray(0, n)), `${name} prefix ${n}`);
    }
  });

  it('random mutations never throw anything but typed errors', () => {
    fc.assert(fc.property(fc.nat(cases.length - 1), fc.nat(), fc.nat(255), (which, pos, val) => {
      const [, enc, read] = cases[which] as (typeof cases)[number];
      const b = Uint8Array.from(enc);
      b[pos % b.length] = val;
      try {
        read(b);
      } catch (e) {
        if (!(e instanceof VitalsealError)) throw e;
      }
    }), { seed: 42, numRuns: 3000 });
  });

  it('refuses two key shares for one group and a binder count that differs from the identities', () => {
    assert.throws(() => readKeyShareClient(encodeKeyShareClient([{ group: 0x1d, keyExchange: bytes(32, 1) }, { group: 0x1d, keyExchange: bytes(32, 2) }])),
      (e: unknown) => e instanceof VitalsealError && e.code === 'duplicate-key-share');
    assert.throws(() => readOfferedPsks(encodeOfferedPsks({ identities: [{ identity: bytes(10, 1), obfuscatedTicketAge: 5 }], binders: [bytes(32, 2), bytes(32, 3)] })),
      (e: unknown) => e instanceof VitalsealError && e.code === 'psk-binder-count');
  });
});

describe('DTLS codec: records, fragments, ACK, alert (RFC 9147 §4, §5.2, §7)', () => {
  function plaintextDatagram(): Uint8Array {
    const frag = new Writer();
    writeHandshakeFragment(frag, { msgType: 1, length: 10, messageSeq: 0, fragmentOffset: 2, body: bytes(5, 1) });
    const body = frag.finish();
    const w = new Writer();
    writePlaintextHeader(w, ContentType.handshake, 0xfefd, 7, body.length);
    w.bytes(body);
    return w.finish();
  }

  it('parses a DTLSPlaintext record and its fragment', () => {
    const { records, error } = parseDatagram(plaintextDatagram(), 0);
    assert.equal(error, undefined);
    const [rec] = records;
    assert.ok(rec?.kind === 'plaintext');
    assert.equal(rec.sequenceNumber, 7);
    const [f] = readHandshakeFragments(rec.fragment);
    assert.deepEqual(f, { msgType: 1, length: 10, messageSeq: 0, fragmentOffset: 2, body: bytes(5, 1) });
  });

  it('parses unified headers with and without CID, and records packed in one datagram', () => {
    const cid = bytes(4, 0xcc);
    const h1 = encodeUnifiedHeader(2, 0x1234, cid, 20);
    assert.equal(toHex(h1), '3e' + 'cccccccc' + '1234' + '0014');
    const d = Uint8Array.from([...h1, ...bytes(20, 1), ...encodeUnifiedHeader(3, 5, cid, 17), ...bytes(17, 2)]);
    const { records, error } = parseDatagram(d, 4);
    assert.equal(error, undefined);
    assert.equal(records.length, 2);
    const [a, b] = records;
    assert.ok(a?.kind === 'ciphertext' && b?.kind === 'ciphertext');
    assert.equal(a.epochBits, 2);
    assert.equal(b.epochBits, 3);
    assert.deepEqual(a.cid, cid);
    assert.equal(a.seqOffset, 5);
    assert.equal(b.encrypted.length, 17);
    // Minimal header: 8-bit sequence number, no length: the record runs to the datagram's end.
    const minimal = parseDatagram(Uint8Array.from([0x21, 0x99, ...bytes(30, 3)]), 0);
    assert.ok(minimal.records[0]?.kind === 'ciphertext');
    assert.equal(minimal.records[0].seqLength, 1);
    assert.equal(minimal.records[0].encrypted.length, 30);
  });

  it('refuses a CID where none was negotiated and unknown first bytes; reports a record without CID', () => {
    const withCid = Uint8Array.from([...encodeUnifiedHeader(2, 1, bytes(2, 1), 16), ...bytes(16, 0)]);
    assert.equal(parseDatagram(withCid, 0).error?.code, 'unexpected-cid');
    const noCid = Uint8Array.from([...encodeUnifiedHeader(2, 1, undefined, 16), ...bytes(16, 0)]);
    const parsedNoCid = parseDatagram(noCid, 4);
    assert.equal(parsedNoCid.error, undefined);
    assert.ok(parsedNoCid.records[0]?.kind === 'ciphertext' && parsedNoCid.records[0].cid === undefined);
    assert.equal(parseDatagram(Uint8Array.of(23, 0xfe, 0xfd), 0).error?.code, 'bad-record-type');
    assert.equal(parseDatagram(Uint8Array.of(0x80), 0).error?.code, 'bad-record-type');
  });

  it('every prefix of a datagram parses to fewer records or a typed error, never a throw', () => {
    const d = Uint8Array.from([...plaintextDatagram(), ...encodeUnifiedHeader(2, 9, undefined, 24), ...bytes(24, 4)]);
    for (let n = 0; n < d.length; n++) {
      const { records, error } = parseDatagram(d.subarray(0, n), 0);
      assert.ok(records.length < 2 || error === undefined);
      assert.ok(error === undefined || error instanceof VitalsealError);
    }
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(8), (input, cidLength) => {
      const { error } = parseDatagram(input, cidLength);
      assert.ok(error === undefined || error instanceof VitalsealError);
    }), { seed: 7, numRuns: 5000 });
  });

  it('fragments: every prefix is rejected; a fragment past its message length is refused', () => {
    const w = new Writer();
    writeHandshakeFragment(w, { msgType: 2, length: 8, messageSeq: 1, fragmentOffset: 0, body: bytes(8, 1) });
    const enc = w.finish();
    for (let n = 0; n < enc.length; n++) expectTypedError(() => readHandshakeFragments(enc.subarray(0, n)), `fragment prefix ${n}`);
    const bad = new Writer();
    writeHandshakeFragment(bad, { msgType: 2, length: 4, messageSeq: 1, fragmentOffset: 2, body: bytes(3, 1) });
    assert.throws(() => readHandshakeFragments(bad.finish()), (e: unknown) => e instanceof VitalsealError && e.code === 'bad-fragment');
  });

  it('ACK and alert: round-trip, every prefix rejected, a partial record number refused', () => {
    const ack = encodeAck([{ epoch: 2, sequenceNumber: 0 }, { epoch: 3, sequenceNumber: 2 ** 40 }]);
    assert.deepEqual(readAck(ack), [{ epoch: 2, sequenceNumber: 0 }, { epoch: 3, sequenceNumber: 2 ** 40 }]);
    for (let n = 0; n < ack.length; n++) expectTypedError(() => readAck(ack.subarray(0, n)), `ack prefix ${n}`);
    expectTypedError(() => readAck(Uint8Array.of(0, 8, 0, 0, 0, 0, 0, 0, 0, 2)), 'partial record number');
    assert.deepEqual(readAlert(encodeAlert({ level: 2, description: 40 })), { level: 2, description: 40 });
    expectTypedError(() => readAlert(Uint8Array.of(2)), 'alert prefix');
    expectTypedError(() => readAlert(Uint8Array.of(2, 40, 0)), 'alert trailing');
  });
});
