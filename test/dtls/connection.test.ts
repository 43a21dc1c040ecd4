/**
 * Connection and endpoint behaviour beyond the happy path: AEAD limits driving key updates and
 * closing on forgeries, per-peer limits on the server, retransmission of lost final flights,
 * plaintext that cannot hurt an established session, and RSA-PSS verification.
 */
import assert from 'node:assert/strict';
import { constants, generateKeyPairSync, sign } from 'node:crypto';
import { before, describe, it } from 'node:test';
import type { ClientConfig, ServerConfig } from '../../src/dtls/config.ts';
import { Connection } from '../../src/dtls/connection.ts';
import { certificateVerifyContent, verifyCertificateVerify } from '../../src/dtls/handshake/signatures.ts';
import { SignatureSchemeId } from '../../src/dtls/messages/constants.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { DtlsServerEndpoint } from '../../src/dtls/server-endpoint.ts';
import { libcryptoContextsLive } from '../../src/crypto/libcrypto/contexts.ts';
import { utf8 } from '../../src/util/bytes.ts';
import { VitalsealError } from '../../src/util/errors.ts';
import { Pair } from './support/pair.ts';
import { issueLeaf, makeCa, type TestCa, type TestLeaf } from './support/pki.ts';

const T0 = Date.now();
let ca: TestCa;
let serverLeaf: TestLeaf;

before(async () => {
  ca = await makeCa();
  serverLeaf = await issueLeaf(ca, 'ingest', { eku: 'server' });
});

const server = (extra: Partial<ServerConfig> = {}): ServerConfig => ({ certificateChain: [serverLeaf.der], signer: serverLeaf.signer, ...extra });
const client = (extra: Partial<ClientConfig> = {}): ClientConfig => ({ verifier: new X509PeerVerifier({ roots: [ca.pem], purpose: 'server' }), ...extra });

async function connected(c: ClientConfig, s: ServerConfig | DtlsServerEndpoint): Promise<Pair> {
  const endpoint = s instanceof DtlsServerEndpoint ? s : new DtlsServerEndpoint(s, T0);
  const pair = Pair.create(c, endpoint, T0);
  await pair.start();
  await pair.run(() => pair.bothConnected() || pair.failed());
  assert.ok(pair.bothConnected());
  return pair;
}

describe('AEAD limits at the connection (RFC 9147 §4.5.3)', () => {
  it('a KeyUpdate starts by itself before the confidentiality limit, and data keeps flowing', async () => {
    const pair = await connected(client({ aeadLimits: { confidentiality: 32 } }), server());
    for (let i = 0; i < 100; i++) {
      pair.fromClient(await pair.client.send(utf8(`reading ${i}`), pair.now));
      await pair.run(() => false, pair.now + 10);
    }
    const updates = pair.clientEvents.filter((e) => e.type === 'keys-updated' && e.direction === 'send');
    assert.ok(updates.length >= 3, `${updates.length} automatic key updates for 100 records at a limit of 32`);
    assert.equal(pair.serverEvents.filter((e) => e.event.type === 'data').length, 100);
  });

  it('forged records push for a key update, and past the integrity limit the connection ends', async () => {
    const pair = await connected(client(), server({ aeadLimits: { integrity: 6 } }));
    const session = pair.serverSession();
    assert.ok(session);
    const good = (await pair.client.send(utf8('genuine'), pair.now)).datagrams[0] as Uint8Array;
    for (let i = 0; i < 6; i++) {
      const forged = Uint8Array.from(good);
      forged[forged.length - 1 - i] = (forged[forged.length - 1 - i] as number) ^ 0x55;
      pair.fromServer(await pair.server.handleDatagram(forged, pair.clientAddr, pair.now));
    }
    const failed = pair.serverEvents.find((e) => e.event.type === 'failed')?.event;
    assert.ok(failed?.type === 'failed');
    assert.equal(failed.error.code, 'aead-integrity-limit');
    assert.equal(session.connection.stats.dropped['auth-failed'], 6);
  });
});

describe('record keys live in keyed contexts for exactly as long as their epoch', () => {
  it('libcrypto contexts are freed when an epoch retires after a KeyUpdate and when the connection ends', async () => {
    const before = libcryptoContextsLive();
    const pair = await connected(client({ aeadLimits: { confidentiality: 32 } }), server());
    const afterHandshake = libcryptoContextsLive() - before;
    let peak = 0;
    for (let i = 0; i < 200; i++) {
      pair.fromClient(await pair.client.send(utf8(`reading ${i}`), pair.now));
      await pair.run(() => false, pair.now + 10);
      peak = Math.max(peak, libcryptoContextsLive() - before);
    }
    const updates = pair.clientEvents.filter((e) => e.type === 'keys-updated').length;
    assert.ok(updates >= 5, `${updates} key updates`);
    // Two contexts per epoch and direction (AEAD and record-number mask); with an old epoch kept only
    // until the new one is in use, KeyUpdates do not add up: at most one extra epoch per direction and side.
    assert.ok(peak <= afterHandshake + 8, `peak ${peak} contexts, ${afterHandshake} after the handshake, ${updates} updates`);
    pair.fromClient(await pair.client.close(pair.now));
    await pair.run(() => pair.serverSession()?.connection.status === 'closed', pair.now + 1000);
    const session = pair.serverSession();
    if (session !== undefined && session.connection.status !== 'closed') await session.connection.close(pair.now);
    // What stays is the server's session-ticket key (a CounterSealer, one context): it belongs to
    // the endpoint and outlives its connections.
    assert.equal(libcryptoContextsLive(), before + 1, 'every context of the connection freed after close');
  });
});

describe('server endpoint limits', () => {
  it('at most maxPendingPerAddress handshakes from one IP; other addresses are not affected', async () => {
    const endpoint = new DtlsServerEndpoint(server({ limits: { maxPendingPerAddress: 2 } } as Partial<ServerConfig>), T0);
    const pairs: Pair[] = [];
    for (let i = 0; i < 3; i++) {
      // Only the HelloRetryRequest gets back (the server's flight is lost): handshakes stay pending.
      const p = Pair.create(client(), endpoint, T0, { transfer: (data, now, dir) => (dir === 's2c' && data.length > 200 ? [] : [{ data, at: now + 1 }]) });
      pairs.push(p);
      await p.start();
      await p.run(() => false, T0 + 50);
    }
    assert.equal(endpoint.pendingCount, 2);
    assert.equal(endpoint.stats.dropped['limit-pending-address'], 1);
    const other = Pair.create(client(), endpoint, T0);
    other.clientAddr = { address: '192.0.2.99', port: 1234 };
    await other.start();
    await other.run(() => other.bothConnected() || other.failed());
    assert.ok(other.bothConnected(), 'another address still gets in');
  });

  it('a lost final flight is retransmitted until acknowledged, and the server acknowledges it again', async () => {
    let dropFirstFinal = true;
    const endpoint = new DtlsServerEndpoint(server(), T0);
    const pair = Pair.create(client(), endpoint, T0, {
      transfer: (data, now, dir) => {
        // The client's first protected datagram carries its Finished: lose it once.
        if (dir === 'c2s' && dropFirstFinal && (data[0] as number) >= 0x20 && (data[0] as number) < 0x40) {
          dropFirstFinal = false;
          return [];
        }
        return [{ data, at: now + 1 }];
      },
    });
    await pair.start();
    await pair.run(() => pair.bothConnected() || pair.failed());
    assert.ok(pair.bothConnected());
    assert.ok(pair.client.stats.retransmissions >= 1);
  });

  it('an established session ignores unprotected handshake records and alerts', async () => {
    const pair = await connected(client(), server());
    const session = pair.serverSession();
    assert.ok(session);
    // A plaintext handshake record with a future message_seq, and a plaintext fatal alert.
    const forgedHandshake = Uint8Array.from([22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 13, 20, 0, 0, 1, 0, 9, 0, 0, 0, 0, 0, 1, 0]);
    const forgedAlert = Uint8Array.from([21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2, 40]);
    for (const d of [forgedHandshake, forgedAlert]) pair.fromServer(await pair.server.handleDatagram(d, pair.clientAddr, pair.now));
    pair.fromClient(await pair.client.handleDatagram(forgedAlert, pair.now));
    assert.equal(session.connection.status, 'connected');
    assert.equal(pair.client.status, 'connected');
    pair.fromClient(await pair.client.send(utf8('still here'), pair.now));
    await pair.run(() => pair.serverEvents.some((e) => e.event.type === 'data'));
  });

  it('send before the handshake completes is refused with a typed error', async () => {
    const c = Connection.client(client());
    await c.start(T0);
    await assert.rejects(c.send(utf8('too early'), T0), (e: unknown) => e instanceof VitalsealError && e.code === 'not-connected');
  });
});

describe('steps that need not wait complete synchronously, in call order', () => {
  it('an established connection sends and receives application data without a promise turn; misuse throws at once', async () => {
    const pair = await connected(client(), server());
    const out = pair.client.sendNow(utf8('sync'), pair.now);
    assert.ok(!(out instanceof Promise), 'sendNow returned its output');
    assert.equal(out.datagrams.length, 1);
    const received = pair.server.handleDatagramNow(out.datagrams[0] as Uint8Array, pair.clientAddr, pair.now);
    assert.ok(!(received instanceof Promise), 'handleDatagramNow returned its output');
    const data = received.events.find((e) => e.event.type === 'data')?.event;
    assert.ok(data?.type === 'data');
    assert.equal(new TextDecoder().decode(data.data), 'sync');
    assert.throws(() => pair.client.sendNow(new Uint8Array(20_000), pair.now), (e: unknown) => e instanceof VitalsealError && e.code === 'record-too-large');
    // The promise form still rejects rather than throwing.
    await assert.rejects(pair.client.send(new Uint8Array(20_000), pair.now), (e: unknown) => e instanceof VitalsealError && e.code === 'record-too-large');
  });

  it('while a handshake step waits on its signer, later calls queue behind it and run in order', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const slow = { ...serverLeaf.signer, sign: async (data: Uint8Array) => {
      await gate;
      return serverLeaf.signer.sign(data);
    } };
    const endpoint = new DtlsServerEndpoint(server({ signer: slow, requireCookie: false }), T0);
    const c = Connection.client(client());
    const from = { address: '192.0.2.1', port: 4000 };
    const hello = (await c.start(T0)).datagrams[0] as Uint8Array;
    const first = endpoint.handleDatagramNow(hello, from, T0);
    assert.ok(first instanceof Promise, 'the ClientHello waits for the signature');
    const order: string[] = [];
    void first.then(() => order.push('hello'));
    // A duplicate of the same ClientHello for the session now waiting: it must not overtake.
    const second = endpoint.handleDatagramNow(hello, from, T0 + 1);
    assert.ok(second instanceof Promise, 'a call made while one waits queues');
    void second.then(() => order.push('duplicate'));
    release();
    const flight = await first;
    await second;
    assert.deepEqual(order, ['hello', 'duplicate']);
    assert.ok(flight.datagrams.length > 0, 'the server flight went out once the signature came');
  });
});

describe('a batch of datagrams read together', () => {
  it('is handled in order with one output, synchronously when nothing waits', async () => {
    const pair = await connected(client(), server());
    const batch = ['one', 'two', 'three'].map((t) => {
      const out = pair.client.sendNow(utf8(t), pair.now);
      assert.ok(!(out instanceof Promise));
      return { data: out.datagrams[0] as Uint8Array, from: pair.clientAddr };
    });
    const out = pair.server.handleDatagramsNow(batch, pair.now);
    assert.ok(!(out instanceof Promise), 'no handshake step waited');
    const texts = out.events.flatMap((e) => (e.event.type === 'data' ? [new TextDecoder().decode(e.event.data)] : []));
    assert.deepEqual(texts, ['one', 'two', 'three']);
  });

  it('a datagram that waits (a ClientHello signing) holds back the ones after it, and the output has all of them', async () => {
    const pair = await connected(client(), server({ requireCookie: false }));
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    // An endpoint whose signer waits gets a newcomer's ClientHello and then, in the same batch, a
    // data datagram of the established pair (whose session it does not have).
    const data = pair.client.sendNow(utf8('after the hello'), pair.now);
    assert.ok(!(data instanceof Promise));
    const other = Connection.client(client());
    const hello = (await other.start(pair.now)).datagrams[0] as Uint8Array;
    const slowSigner = { ...serverLeaf.signer, sign: async (d: Uint8Array) => {
      await gate;
      return serverLeaf.signer.sign(d);
    } };
    const slow = new DtlsServerEndpoint(server({ signer: slowSigner, requireCookie: false }), pair.now);
    const newcomer = { address: '192.0.2.77', port: 5000 };
    const waiting = slow.handleDatagramsNow([{ data: hello, from: newcomer }, { data: data.datagrams[0] as Uint8Array, from: pair.clientAddr }], pair.now);
    assert.ok(waiting instanceof Promise, 'the batch waits for the signature');
    await new Promise((r) => setImmediate(r));
    assert.equal(slow.stats.datagramsIn, 1, 'the datagram after the hello waits');
    release();
    const out = await waiting;
    assert.ok(out.datagrams.some((d) => d.to === newcomer), 'the server flight for the newcomer is in the output');
    // The data datagram reached an endpoint that never saw its sender (nor its connection ID): dropped, counted.
    assert.equal(slow.stats.datagramsIn, 2);
    assert.equal(Object.values(slow.stats.dropped).reduce((a, b) => a + (b ?? 0), 0), 1);
  });
});

describe('rsa_pss_rsae_sha256 (verification only)', () => {
  it('verifies an RSA-PSS CertificateVerify and refuses PKCS#1 v1.5 and a changed transcript', () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const th = new Uint8Array(32).fill(7);
    const content = certificateVerifyContent('server', th);
    const pss = sign('sha256', content, { key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
    verifyCertificateVerify(publicKey, 'server', SignatureSchemeId.rsa_pss_rsae_sha256, pss, th);
    const v15 = sign('sha256', content, privateKey);
    assert.throws(() => verifyCertificateVerify(publicKey, 'server', SignatureSchemeId.rsa_pss_rsae_sha256, v15, th), (e: unknown) => e instanceof VitalsealError && e.code === 'bad-signature');
    assert.throws(() => verifyCertificateVerify(publicKey, 'server', SignatureSchemeId.rsa_pss_rsae_sha256, pss, new Uint8Array(32)), (e: unknown) => e instanceof VitalsealError && e.code === 'bad-signature');
    assert.throws(() => verifyCertificateVerify(publicKey, 'server', SignatureSchemeId.ecdsa_secp256r1_sha256, pss, th), (e: unknown) => e instanceof VitalsealError && e.code === 'bad-signature-scheme');
  });
});
