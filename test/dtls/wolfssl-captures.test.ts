/**
 * Evidence from an independent implementation: real DTLS 1.3 handshakes made by wolfSSL 5.7.2 with
 * their key-log secrets (test/vectors/dtls13-wolfssl/). From the secrets alone the tests derive
 * the traffic keys with the "dtls13" labels, remove record-number protection, decrypt every
 * encrypted record, reassemble and parse every handshake message, rebuild the transcript (with the
 * HelloRetryRequest message_hash rule) and verify both Finished MACs and every CertificateVerify.
 * The PSK capture goes further: our key schedule, started from the PSK alone, verifies the
 * client's binders and reproduces the handshake and application secrets wolfSSL logged.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { describe, it } from 'node:test';
import { getProvider } from '../../src/crypto/index.ts';
import { KeySchedule } from '../../src/dtls/handshake/key-schedule.ts';
import { verifyCertificateVerify } from '../../src/dtls/handshake/signatures.ts';
import { Transcript } from '../../src/dtls/handshake/transcript.ts';
import { AlertDescription, ContentType, ExtensionType, HandshakeType } from '../../src/dtls/messages/constants.ts';
import { bindersLength, findExtension, readOfferedPsks } from '../../src/dtls/messages/extensions.ts';
import { isHelloRetryRequest, type Certificate, type ClientHello, type ServerHello } from '../../src/dtls/messages/handshake.ts';
import { fromHex, toHex, utf8 } from '../../src/util/bytes.ts';
import { VitalsealError } from '../../src/util/errors.ts';
import { analyze, type Analysis, type DecodedMessage } from './support/capture-analyzer.ts';
import { CAPTURE_NAMES, keylogSecret, loadCapture, type Capture } from './support/captures.ts';

const p = getProvider();
const ks = new KeySchedule(p);

/** The messages of the main handshake in transcript order (CH1, HRR, CH2, SH, ..., client Finished). */
function handshakeOrder(a: Analysis): DecodedMessage[] {
  const client = a.messages.filter((m) => m.from === 'client');
  const server = a.messages.filter((m) => m.from === 'server');
  const out: DecodedMessage[] = [];
  let s = 0;
  let c = 0;
  const take = (list: DecodedMessage[], i: number): DecodedMessage => {
    const m = list[i];
    if (m === undefined) throw new Error('handshake ended early');
    return m;
  };
  out.push(take(client, c++));
  let sh = take(server, s++);
  out.push(sh);
  if (isHelloRetryRequest(sh.message as ServerHello)) {
    out.push(take(client, c++));
    sh = take(server, s++);
    out.push(sh);
  }
  for (;;) {
    const m = take(server, s++);
    out.push(m);
    if (m.message.type === HandshakeType.finished) break;
  }
  for (;;) {
    const m = take(client, c++);
    out.push(m);
    if (m.message.type === HandshakeType.finished) break;
  }
  return out;
}

/** Rebuilds the transcript, applying RFC 8446 §4.4.1 when a HelloRetryRequest is present. */
function transcriptUpTo(order: DecodedMessage[], count: number): Transcript {
  const t = new Transcript(p);
  for (let i = 0; i < count; i++) {
    const m = order[i] as DecodedMessage;
    if (m.message.type === HandshakeType.serverHello && isHelloRetryRequest(m.message) && i === 1) t.replaceWithMessageHash();
    t.add(m.bytes);
  }
  return t;
}

function certKey(cap: Capture, msg: Certificate) {
  const [leaf] = msg.entries;
  assert.ok(leaf, 'Certificate has a leaf');
  return new X509Certificate(leaf.data);
}

for (const name of CAPTURE_NAMES) {
  describe(`wolfSSL capture ${name}`, () => {
    const cap = loadCapture(name);
    const a = analyze(cap);
    const order = handshakeOrder(a);

    it('every encrypted record decrypts after record-number unmasking, in both directions', () => {
      assert.ok(a.encryptedRecords >= 10, `${a.encryptedRecords} encrypted records`);
      assert.equal(a.decryptedRecords, a.encryptedRecords);
      // Both sides said goodbye with close_notify, and application data went both ways.
      assert.deepEqual(a.alerts.map((x) => x.description).sort(), [AlertDescription.close_notify, AlertDescription.close_notify]);
      assert.deepEqual(new Set(a.applicationData.map((x) => x.from)), new Set(['client', 'server']));
      // Every ACK names records the other side really sent with handshake content (RFC 9147 §7).
      for (const ack of a.acks) {
        for (const rn of ack.numbers) {
          assert.ok(a.records.some((r) => r.from !== ack.from && r.epoch === rn.epoch && r.sequenceNumber === rn.sequenceNumber && r.contentType === ContentType.handshake),
            `ACK from ${ack.from} of ${rn.epoch}/${rn.sequenceNumber}`);
        }
      }
    });

    it('the key log belongs to this ClientHello, and a retried ClientHello keeps its random', () => {
      const chs = order.filter((m) => m.message.type === HandshakeType.clientHello).map((m) => m.message as ClientHello);
      for (const ch of chs) assert.equal(toHex(ch.random), cap.keylog[0]?.client_random);
    });

    it('both Finished MACs verify over the rebuilt transcript', () => {
      const serverFin = order.findIndex((m) => m.from === 'server' && m.message.type === HandshakeType.finished);
      const clientFin = order.findIndex((m) => m.from === 'client' && m.message.type === HandshakeType.finished);
      const sFin = order[serverFin]?.message;
      const cFin = order[clientFin]?.message;
      assert.ok(sFin?.type === HandshakeType.finished && cFin?.type === HandshakeType.finished);
      const sSecret = fromHex(keylogSecret(cap, 'SERVER_HANDSHAKE_TRAFFIC_SECRET'));
      const cSecret = fromHex(keylogSecret(cap, 'CLIENT_HANDSHAKE_TRAFFIC_SECRET'));
      assert.equal(toHex(ks.verifyData(sSecret, transcriptUpTo(order, serverFin).hash())), toHex(sFin.verifyData));
      assert.equal(toHex(ks.verifyData(cSecret, transcriptUpTo(order, clientFin).hash())), toHex(cFin.verifyData));
      // Negative: without the message_hash rule, or with the TLS prefix, the MAC does not match.
      const plain = new Transcript(p);
      for (let i = 0; i < serverFin; i++) plain.add((order[i] as DecodedMessage).bytes);
      assert.notEqual(toHex(ks.verifyData(sSecret, plain.hash())), toHex(sFin.verifyData));
      assert.notEqual(toHex(new KeySchedule(p, 'tls13 ').verifyData(sSecret, transcriptUpTo(order, serverFin).hash())), toHex(sFin.verifyData));
    });

    it('every CertificateVerify signature verifies against its certificate; a changed transcript fails', (t) => {
      let verified = 0;
      for (let i = 0; i < order.length; i++) {
        const m = order[i] as DecodedMessage;
        if (m.message.type !== HandshakeType.certificateVerify) continue;
        const certMsg = order[i - 1]?.message;
        assert.ok(certMsg?.type === HandshakeType.certificate);
        const cert = certKey(cap, certMsg);
        const th = transcriptUpTo(order, i).hash();
        verifyCertificateVerify(cert.publicKey, m.from, m.message.scheme, m.message.signature, th);
        const wrong = Uint8Array.from(th);
        wrong[0] = (wrong[0] as number) ^ 1;
        assert.throws(() => verifyCertificateVerify(cert.publicKey, m.from, (m.message as { scheme: number }).scheme, (m.message as { signature: Uint8Array }).signature, wrong),
          (e: unknown) => e instanceof VitalsealError && e.code === 'bad-signature');
        // The context string binds the side: a server signature is no client signature.
        assert.throws(() => verifyCertificateVerify(cert.publicKey, m.from === 'server' ? 'client' : 'server', (m.message as { scheme: number }).scheme, (m.message as { signature: Uint8Array }).signature, th));
        verified++;
      }
      if (name === 'd-psk-ke') assert.equal(verified, 0);
      else assert.equal(verified, name === 'c-mutual-ecc' ? 2 : 1);
      t.diagnostic(`${verified} CertificateVerify signature(s) verified`);
    });

    if (name === 'd-psk-ke') {
      it('from the PSK alone: binders verify and the logged handshake and traffic secrets are reproduced', () => {
        // wolfSSL's example TLS 1.3 PSK: the bytes 01 23 45 ... ef repeated to 32 bytes (the hex
        // string "0123456789abcdef" four times); its example client appends the suite's hash name
        // to the identity "Client_identity".
        const psk = fromHex('0123456789abcdef'.repeat(4));
        const early = ks.earlySecret(psk);
        const binderKey = ks.binderKey(early, true);
        const t = new Transcript(p);
        let checked = 0;
        for (let i = 0; i < order.length; i++) {
          const m = order[i] as DecodedMessage;
          if (m.message.type === HandshakeType.clientHello) {
            const ext = findExtension(m.message.extensions, ExtensionType.preSharedKey);
            assert.ok(ext, 'ClientHello offers a PSK');
            const offer = readOfferedPsks(ext);
            assert.equal(Buffer.from(offer.identities[0]?.identity ?? []).toString(), 'Client_identitySHA256');
            // RFC 8446 §4.2.11.2: the binder covers the ClientHello up to (not including) the binders list.
            const truncated = m.bytes.subarray(0, m.bytes.length - bindersLength(offer.binders));
            assert.equal(toHex(ks.verifyData(binderKey, t.hashWith(truncated))), toHex(offer.binders[0] as Uint8Array), `binder of ClientHello #${m.messageSeq}`);
            checked++;
          }
          if (m.message.type === HandshakeType.serverHello && isHelloRetryRequest(m.message)) t.replaceWithMessageHash();
          t.add(m.bytes);
          if (m.message.type === HandshakeType.serverHello && !isHelloRetryRequest(m.message)) {
            const hs = ks.handshakeSecret(early, undefined); // psk_ke: no (EC)DHE
            const hts = ks.handshakeTrafficSecrets(hs, t.hash());
            assert.equal(toHex(hts.client), keylogSecret(cap, 'CLIENT_HANDSHAKE_TRAFFIC_SECRET'));
            assert.equal(toHex(hts.server), keylogSecret(cap, 'SERVER_HANDSHAKE_TRAFFIC_SECRET'));
            checked++;
          }
          if (m.from === 'server' && m.message.type === HandshakeType.finished) {
            const ats = ks.applicationTrafficSecrets(ks.masterSecret(ks.handshakeSecret(early, undefined)), t.hash());
            assert.equal(toHex(ats.client), keylogSecret(cap, 'CLIENT_TRAFFIC_SECRET_0'));
            assert.equal(toHex(ats.server), keylogSecret(cap, 'SERVER_TRAFFIC_SECRET_0'));
            checked++;
          }
        }
        assert.equal(checked, 4);
        // Negative: another PSK gives another binder.
        const other = ks.binderKey(ks.earlySecret(utf8('0123456789abcdef0123456789abcdef')), true);
        assert.notEqual(toHex(other), toHex(binderKey));
      });
    }
  });
}

describe('wolfSSL captures: tampering is caught', () => {
  it('a flipped bit in any encrypted record makes it fail deprotection', () => {
    const cap = loadCapture('dtls13-chacha');
    const frames = cap.datagrams.map((d) => d.hex);
    for (let i = 4; i < frames.length; i++) {
      const bytes = fromHex(frames[i] as string);
      bytes[bytes.length - 3] = (bytes[bytes.length - 3] as number) ^ 0x40;
      const tampered: Capture = { ...cap, datagrams: cap.datagrams.map((d, j) => (j === i ? { ...d, hex: toHex(bytes) } : d)) };
      assert.throws(() => analyze(tampered), /record dropped \(auth-failed\)|no ServerHello|handshake/, `frame ${i + 1}`);
    }
  });
});
