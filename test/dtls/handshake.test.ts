/**
 * Client and server state machines driven against each other in memory (sans-I/O): every auth mode,
 * HelloRetryRequest with the stateless cookie, resumption, KeyUpdate, CIDs, and the failures that
 * must end a handshake with the right alert.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import type { ClientConfig, ResumptionTicket, ServerConfig } from '../../src/dtls/config.ts';
import type { DtlsEvent } from '../../src/dtls/connection.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { DtlsServerEndpoint } from '../../src/dtls/server-endpoint.ts';
import { toHex, utf8 } from '../../src/util/bytes.ts';
import { Pair } from './support/pair.ts';
import { issueLeaf, makeCa, type TestCa, type TestLeaf } from './support/pki.ts';

const T0 = Date.now();
let ca: TestCa;
let serverLeaf: TestLeaf;
let deviceLeaf: TestLeaf;
let edLeaf: TestLeaf;
const PSK = { identity: utf8('device-0042'), key: new Uint8Array(32).fill(7) };

before(async () => {
  ca = await makeCa();
  serverLeaf = await issueLeaf(ca, 'ingest.example', { eku: 'server', dnsName: 'ingest.example' });
  deviceLeaf = await issueLeaf(ca, 'device-0042', { eku: 'client' });
  edLeaf = await issueLeaf(ca, 'device-ed', { eku: 'client', keyType: 'ed25519' });
});

function serverConfig(extra: Partial<ServerConfig> = {}): ServerConfig {
  return {
    certificateChain: [serverLeaf.der],
    signer: serverLeaf.signer,
    verifier: new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }),
    ...extra,
  };
}

function clientConfig(extra: Partial<ClientConfig> = {}): ClientConfig {
  return { verifier: new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: 'ingest.example' }), ...extra };
}

async function handshake(client: ClientConfig, server: ServerConfig | DtlsServerEndpoint, start = T0): Promise<Pair> {
  const endpoint = server instanceof DtlsServerEndpoint ? server : new DtlsServerEndpoint(server, T0);
  const pair = Pair.create(client, endpoint, start);
  await pair.start();
  await pair.run(() => pair.bothConnected() || pair.failed());
  return pair;
}

function connectedInfo(events: DtlsEvent[]) {
  const e = events.find((x) => x.type === 'connected');
  assert.ok(e?.type === 'connected', `not connected: ${JSON.stringify(events.map((x) => x.type === 'failed' ? x.error.code : x.type))}`);
  return e.info;
}

async function exchange(pair: Pair): Promise<void> {
  const session = pair.serverSession();
  assert.ok(session);
  pair.fromClient(await pair.client.send(utf8('SpO2 97'), pair.now));
  pair.fromServer(await pair.server.send(session, utf8('ack 1'), pair.now));
  await pair.run(() => pair.clientEvents.some((e) => e.type === 'data') && pair.serverEvents.some((e) => e.event.type === 'data'));
  const got = pair.serverEvents.find((e) => e.event.type === 'data')?.event;
  assert.ok(got?.type === 'data');
  assert.equal(new TextDecoder().decode(got.data), 'SpO2 97');
  const back = pair.clientEvents.find((e) => e.type === 'data');
  assert.ok(back?.type === 'data');
  assert.equal(new TextDecoder().decode(back.data), 'ack 1');
}

describe('DTLS 1.3 handshake (in memory)', () => {
  it('server certificate, X25519, cookie exchange: both sides agree and exchange data', async () => {
    const pair = await handshake(clientConfig(), serverConfig());
    const c = connectedInfo(pair.clientEvents);
    const s = connectedInfo(pair.serverEvents.map((e) => e.event));
    assert.equal(c.suite, 'TLS_AES_128_GCM_SHA256');
    assert.equal(c.group, 'x25519');
    assert.equal(c.authMode, 'certificate');
    assert.equal(c.peer?.commonName, 'ingest.example');
    assert.equal(s.authMode, 'certificate');
    assert.equal(s.peer, undefined);
    assert.equal(pair.server.stats.helloRetryRequests, 1, 'the cookie exchange happened');
    await exchange(pair);
  });

  it('mutual authentication: the server learns the device identity (ECDSA and Ed25519 device keys)', async () => {
    for (const leaf of [deviceLeaf, edLeaf]) {
      const pair = await handshake(clientConfig({ certificateChain: [leaf.der], signer: leaf.signer }), serverConfig({ requireClientCertificate: true }));
      const s = connectedInfo(pair.serverEvents.map((e) => e.event));
      assert.equal(s.authMode, 'mutual');
      assert.equal(s.peer?.commonName, leaf === deviceLeaf ? 'device-0042' : 'device-ed');
      assert.equal(connectedInfo(pair.clientEvents).authMode, 'mutual');
      await exchange(pair);
    }
  });

  it('external PSK with (EC)DHE for constrained devices', async () => {
    const server = serverConfig({ pskLookup: (id) => (toHex(id) === toHex(PSK.identity) ? PSK.key : undefined) });
    const pair = await handshake({ psk: PSK }, server);
    const c = connectedInfo(pair.clientEvents);
    const s = connectedInfo(pair.serverEvents.map((e) => e.event));
    assert.equal(c.authMode, 'psk');
    assert.equal(s.authMode, 'psk');
    assert.equal(toHex(s.pskIdentity ?? new Uint8Array()), toHex(PSK.identity));
    assert.equal(c.group, 'x25519');
    await exchange(pair);
  });

  it('every suite and group', async () => {
    for (const suite of ['TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_CCM_SHA256', 'TLS_AES_128_CCM_8_SHA256'] as const) {
      for (const group of ['x25519', 'secp256r1'] as const) {
        const pair = await handshake(clientConfig({ cipherSuites: [suite], groups: [group] }), serverConfig({ cipherSuites: [suite], groups: [group] }));
        const c = connectedInfo(pair.clientEvents);
        assert.equal(c.suite, suite);
        assert.equal(c.group, group);
        await exchange(pair);
      }
    }
  });

  it('HelloRetryRequest for a group: the client shares x25519, the server wants secp256r1', async () => {
    const pair = await handshake(clientConfig({ groups: ['x25519', 'secp256r1'] }), serverConfig({ groups: ['secp256r1'], requireCookie: false }));
    assert.equal(connectedInfo(pair.clientEvents).group, 'secp256r1');
    assert.equal(pair.server.stats.helloRetryRequests, 1);
  });

  it('no cookie exchange when the server is configured without it and the key share fits', async () => {
    const pair = await handshake(clientConfig(), serverConfig({ requireCookie: false }));
    connectedInfo(pair.clientEvents);
    assert.equal(pair.server.stats.helloRetryRequests, 0);
  });

  it('resumption with a ticket keeps the device identity; the ticket is refused once expired', async () => {
    const endpoint = new DtlsServerEndpoint(serverConfig({ requireClientCertificate: true, ticketLifetimeSeconds: 3600 }), T0);
    const first = await handshake(clientConfig({ certificateChain: [deviceLeaf.der], signer: deviceLeaf.signer }), endpoint);
    await first.run(() => first.clientEvents.some((e) => e.type === 'session-ticket'));
    const t = first.clientEvents.find((e) => e.type === 'session-ticket');
    assert.ok(t?.type === 'session-ticket');
    const ticket: ResumptionTicket = t.ticket;
    assert.equal(ticket.serverIdentity?.commonName, 'ingest.example');
    const hrrsBefore = endpoint.stats.helloRetryRequests;
    const second = await handshake(clientConfig({ resumption: ticket, certificateChain: [deviceLeaf.der], signer: deviceLeaf.signer }), endpoint, first.now + 1000);
    const s = connectedInfo(second.serverEvents.map((e) => e.event));
    assert.equal(s.authMode, 'resumption');
    assert.equal(s.peer?.commonName, 'device-0042');
    assert.equal(connectedInfo(second.clientEvents).authMode, 'resumption');
    // RFC 9147 §5.1: from the address the ticket was issued to, no cookie round trip.
    assert.equal(endpoint.stats.helloRetryRequests, hrrsBefore);
    await exchange(second);
    // From another address the cookie exchange happens first.
    const elsewhere = Pair.create(clientConfig({ resumption: ticket, certificateChain: [deviceLeaf.der], signer: deviceLeaf.signer }), endpoint, second.now + 1000);
    elsewhere.clientAddr = { address: '198.51.100.99', port: 4444 };
    await elsewhere.start();
    await elsewhere.run(() => elsewhere.bothConnected() || elsewhere.failed());
    assert.equal(connectedInfo(elsewhere.clientEvents).authMode, 'resumption');
    assert.equal(endpoint.stats.helloRetryRequests, hrrsBefore + 1);
    // Two hours later the ticket (1 h) is not offered; a full handshake happens instead.
    const later = Pair.create(clientConfig({ resumption: ticket, certificateChain: [deviceLeaf.der], signer: deviceLeaf.signer }), endpoint, T0 + 2 * 3_600_000);
    await later.start();
    await later.run(() => later.bothConnected() || later.failed());
    assert.equal(connectedInfo(later.clientEvents).authMode, 'mutual');
  });

  it('KeyUpdate both ways, with and without update_requested', async () => {
    const pair = await handshake(clientConfig(), serverConfig());
    await exchange(pair);
    pair.fromClient(await pair.client.updateKeys(true, pair.now));
    await pair.run(() => pair.clientEvents.some((e) => e.type === 'keys-updated' && e.direction === 'send')
      && pair.serverEvents.some((e) => e.event.type === 'keys-updated' && e.event.direction === 'send'));
    const session = pair.serverSession();
    assert.ok(session);
    pair.fromClient(await pair.client.send(utf8('after update'), pair.now));
    pair.fromServer(await pair.server.send(session, utf8('after update too'), pair.now));
    await pair.run(() => pair.clientEvents.filter((e) => e.type === 'data').length >= 2 && pair.serverEvents.filter((e) => e.event.type === 'data').length >= 2);
    const sent = pair.clientEvents.filter((e) => e.type === 'keys-updated').map((e) => e.type === 'keys-updated' ? `${e.direction}:${e.epoch}` : '');
    assert.deepEqual(sent.sort(), ['receive:4', 'send:4']);
  });

  it('close_notify ends both sides cleanly', async () => {
    const pair = await handshake(clientConfig(), serverConfig());
    pair.fromClient(await pair.client.close(pair.now));
    await pair.run(() => pair.serverEvents.some((e) => e.event.type === 'closed'));
    assert.ok(pair.clientEvents.some((e) => e.type === 'closed' && e.by === 'us'));
    assert.ok(pair.serverEvents.some((e) => e.event.type === 'closed' && e.event.by === 'peer'));
    assert.equal(pair.server.sessionCount, 0);
  });
});

describe('DTLS 1.3 handshake failures carry the right alert', () => {
  async function failure(client: ClientConfig, server: ServerConfig, now = T0) {
    const endpoint = new DtlsServerEndpoint(server, T0);
    const pair = Pair.create(client, endpoint, now);
    await pair.start();
    const clientFailed = () => pair.clientEvents.some((e) => e.type === 'failed');
    const serverFailed = () => pair.serverEvents.some((e) => e.event.type === 'failed');
    await pair.run(() => clientFailed() && serverFailed(), now + 10_000);
    const c = pair.clientEvents.find((e) => e.type === 'failed');
    const s = pair.serverEvents.find((e) => e.event.type === 'failed')?.event;
    return { client: c?.type === 'failed' ? c : undefined, server: s?.type === 'failed' ? s : undefined, pair };
  }

  it('an untrusted server certificate: unknown_ca from the client', async () => {
    const other = await makeCa('another CA');
    const r = await failure({ verifier: new X509PeerVerifier({ roots: [other.pem], purpose: 'server' }) }, serverConfig());
    assert.equal(r.client?.error.code, 'unknown-issuer');
    assert.equal(r.client?.alertSent, 'unknown_ca');
    assert.equal(r.server?.error.code, 'unknown_ca', 'the server received the alert');
  });

  it('an expired server certificate: certificate_expired', async () => {
    const r = await failure(clientConfig(), serverConfig(), T0 + 3 * 86_400_000);
    assert.equal(r.client?.alertSent, 'certificate_expired');
  });

  it('a server certificate for another name: bad_certificate', async () => {
    const r = await failure({ verifier: new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: 'other.example' }) }, serverConfig());
    assert.equal(r.client?.alertSent, 'bad_certificate');
  });

  it('a client without a certificate when one is required: certificate_required', async () => {
    const r = await failure(clientConfig(), serverConfig({ requireClientCertificate: true }));
    assert.equal(r.server?.alertSent, 'certificate_required');
    assert.equal(r.client?.error.code, 'certificate_required');
  });

  it('a device certificate used as a server certificate: unsupported_certificate (EKU)', async () => {
    const r = await failure(clientConfig(), serverConfig({ certificateChain: [deviceLeaf.der], signer: deviceLeaf.signer }));
    assert.equal(r.client?.alertSent, 'unsupported_certificate');
  });

  it('a wrong PSK: the binder fails, decrypt_error', async () => {
    const r = await failure({ psk: { identity: PSK.identity, key: new Uint8Array(32).fill(8) } }, serverConfig({ pskLookup: () => PSK.key }));
    assert.equal(r.client?.error.code, 'decrypt_error');
  });

  it('an unknown PSK identity at a PSK-only server: unknown_psk_identity', async () => {
    const r = await failure({ psk: PSK }, { pskLookup: () => undefined });
    assert.equal(r.client?.error.code, 'unknown_psk_identity');
  });

  it('an unknown PSK identity from a PSK-only client at a server with a certificate: unknown_psk_identity, no certificate fallback', async () => {
    const r = await failure({ psk: PSK }, serverConfig({ pskLookup: () => undefined, requireClientCertificate: true }));
    assert.equal(r.server?.alertSent, 'unknown_psk_identity');
    assert.equal(r.client?.error.code, 'unknown_psk_identity');
  });

  it('no common suite: handshake_failure', async () => {
    const r = await failure(clientConfig({ cipherSuites: ['TLS_AES_128_CCM_8_SHA256'] }), serverConfig());
    assert.equal(r.client?.error.code, 'handshake_failure');
  });

  it('a handshake to nobody times out', async () => {
    const endpoint = new DtlsServerEndpoint(serverConfig(), T0);
    const pair = Pair.create(clientConfig({ handshakeTimeoutMs: 20_000 }), endpoint, T0, { transfer: () => [] });
    await pair.start();
    await pair.run(() => pair.failed());
    const f = pair.clientEvents.find((e) => e.type === 'failed');
    assert.ok(f?.type === 'failed');
    assert.equal(f.error.code, 'handshake-timeout');
    assert.equal(f.alertSent, undefined);
    // Retransmissions backed off: 1 s, 2 s, 4 s, 8 s (then the 20 s deadline).
    assert.equal(pair.datagramsToServer, 5);
  });
});
