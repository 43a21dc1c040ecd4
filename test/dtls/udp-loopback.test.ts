/**
 * Client and server over real UDP sockets on loopback: every suite × group × auth mode, the
 * HelloRetryRequest with cookie, resumption, KeyUpdate, and a Connection ID surviving a change of
 * the client's port (NAT rebinding). All of it twice: on node:dgram and on batched system calls
 * (src/net/batched-udp, 64-bit Linux).
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { after, before, describe, it } from 'node:test';
import type { ClientConfig, ResumptionTicket, ServerConfig } from '../../src/dtls/config.ts';
import type { CipherSuiteName, NamedGroupName } from '../../src/dtls/messages/constants.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { DtlsClientSocket, DtlsServer, type ClientSocketOptions, type DtlsServerSession, type ServerSocketOptions } from '../../src/dtls/udp.ts';
import { batchedUdpStatus } from '../../src/net/batched-udp/socket.ts';
import { toHex, utf8 } from '../../src/util/bytes.ts';
import { VitalsealError } from '../../src/util/errors.ts';
import { issueLeaf, makeCa, type TestCa, type TestLeaf } from './support/pki.ts';

let ca: TestCa;
let serverLeaf: TestLeaf;
let deviceLeaf: TestLeaf;
const PSK = { identity: utf8('pulse-ox-17'), key: new Uint8Array(32).fill(0x5a) };
const servers: DtlsServer[] = [];
const clients: DtlsClientSocket[] = [];

before(async () => {
  ca = await makeCa();
  serverLeaf = await issueLeaf(ca, 'localhost', { eku: 'server', ip: '127.0.0.1' });
  deviceLeaf = await issueLeaf(ca, 'device-9', { eku: 'client' });
});

after(async () => {
  // Whatever a failed test left open is closed here, so a failure cannot keep the process alive.
  for (const c of clients) await c.close().catch(() => undefined);
  for (const s of servers) await s.close();
});

async function startServerWith(extra: Partial<ServerSocketOptions>): Promise<DtlsServer> {
  const server = await DtlsServer.listen({
    host: '127.0.0.1',
    certificateChain: [serverLeaf.der],
    signer: serverLeaf.signer,
    verifier: new X509PeerVerifier({ roots: [ca.pem], purpose: 'client' }),
    pskLookup: (id) => (toHex(id) === toHex(PSK.identity) ? PSK.key : undefined),
    ...extra,
  });
  // An echo service: whatever a session receives, it sends back.
  server.on('session', (s) => s.on('data', (d) => void s.send(d)));
  servers.push(server);
  return server;
}

async function clientWith(server: DtlsServer, extra: Partial<ClientSocketOptions>): Promise<DtlsClientSocket> {
  const c = await DtlsClientSocket.connect({
    host: '127.0.0.1',
    port: server.address().port,
    verifier: new X509PeerVerifier({ roots: [ca.pem], purpose: 'server', serverName: '127.0.0.1' }),
    ...extra,
  });
  clients.push(c);
  return c;
}

function nextData(c: DtlsClientSocket): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no data within 5 s')), 5000);
    c.once('data', (d) => {
      clearTimeout(timer);
      resolve(d);
    });
  });
}

async function echo(c: DtlsClientSocket, text: string): Promise<void> {
  const got = nextData(c);
  await c.send(utf8(text));
  assert.equal(new TextDecoder().decode(await got), text);
}

const SUITES: CipherSuiteName[] = ['TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_CCM_SHA256', 'TLS_AES_128_CCM_8_SHA256'];
const GROUPS: NamedGroupName[] = ['x25519', 'secp256r1'];

/** Batched UDP is part of the product on 64-bit Linux: there it must work, not be skipped. */
const BATCHED_EXPECTED = process.platform === 'linux' && (process.arch === 'x64' || process.arch === 'arm64');

for (const udp of ['node', 'batched'] as const) describe(`DTLS 1.3 over UDP loopback (${udp === 'node' ? 'node:dgram' : 'batched system calls'})`, { skip: udp === 'batched' && !BATCHED_EXPECTED ? 'batched UDP is 64-bit Linux only' : false }, () => {
  const startServer = (extra: Partial<ServerConfig> = {}) => startServerWith({ udp, ...extra });
  const client = (server: DtlsServer, extra: Partial<ClientSocketOptions> = {}) => clientWith(server, { udp, ...extra });

  it('the sockets are the ones asked for', async () => {
    if (udp === 'batched') assert.equal(batchedUdpStatus().available, true, batchedUdpStatus().reason);
    const server = await startServer();
    const c = await client(server);
    assert.equal(server.udp, udp);
    assert.equal(c.udp, udp);
    await echo(c, 'which socket');
  });

  it('every suite × group × auth mode (certificate, mutual, PSK) handshakes and echoes', async (t) => {
    const server = await startServer({ cipherSuites: SUITES, groups: GROUPS, requireClientCertificate: false });
    const mutualServer = await startServer({ cipherSuites: SUITES, groups: GROUPS, requireClientCertificate: true });
    let count = 0;
    for (const suite of SUITES) {
      for (const group of GROUPS) {
        for (const mode of ['certificate', 'mutual', 'psk'] as const) {
          const extra: Partial<ClientConfig> = { cipherSuites: [suite], groups: [group] };
          const target = mode === 'mutual' ? mutualServer : server;
          const c = await client(target, mode === 'mutual' ? { ...extra, certificateChain: [deviceLeaf.der], signer: deviceLeaf.signer }
            : mode === 'psk' ? { ...extra, psk: PSK } : extra);
          assert.equal(c.info.suite, suite);
          assert.equal(c.info.group, group);
          assert.equal(c.info.authMode, mode);
          await echo(c, `${suite}/${group}/${mode}`);
          await c.close();
          count++;
        }
      }
    }
    t.diagnostic(`${count} handshakes over UDP`);
    assert.equal(count, 24);
  });

  it('the server sees the device identity and the negotiated parameters', async () => {
    const server = await startServer({ requireClientCertificate: true });
    const seen = new Promise<DtlsServerSession>((resolve) => server.once('session', resolve));
    const c = await client(server, { certificateChain: [deviceLeaf.der], signer: deviceLeaf.signer });
    const s = await seen;
    assert.equal(s.info.peer?.commonName, 'device-9');
    assert.equal(s.info.authMode, 'mutual');
    assert.equal(s.info.version, 'DTLS 1.3');
    await c.close();
  });

  it('HelloRetryRequest with cookie (always) and for a group the client did not share', async () => {
    const server = await startServer({ groups: ['secp256r1'] });
    const c = await client(server, { groups: ['x25519', 'secp256r1'] });
    assert.equal(c.info.group, 'secp256r1');
    await echo(c, 'after HRR');
    await c.close();
    assert.ok(server.endpoint.stats.helloRetryRequests >= 1);
  });

  it('resumption with a session ticket', async () => {
    const server = await startServer();
    const first = await client(server);
    const ticket = await new Promise<ResumptionTicket>((resolve) => first.once('session-ticket', resolve));
    await first.close();
    const second = await client(server, { resumption: ticket });
    assert.equal(second.info.authMode, 'resumption');
    assert.equal(second.info.peer?.commonName, 'localhost');
    await echo(second, 'resumed');
    await second.close();
  });

  it('KeyUpdate both directions keeps data flowing', async () => {
    const server = await startServer();
    const sessionP = new Promise<DtlsServerSession>((resolve) => server.once('session', resolve));
    const c = await client(server);
    const session = await sessionP;
    const updated = new Promise<void>((resolve) => c.on('keys-updated', (dir, epoch) => dir === 'send' && epoch === 4 && resolve()));
    await c.updateKeys(true);
    await updated;
    await echo(c, 'after client KeyUpdate');
    const peerUpdated = new Promise<void>((resolve) => c.on('keys-updated', (dir, epoch) => dir === 'receive' && epoch === 5 && resolve()));
    await session.updateKeys(false);
    await peerUpdated;
    await echo(c, 'after server KeyUpdate');
    await c.close();
  });

  it('Connection ID: the session survives the client moving to a new port', async () => {
    const server = await startServer({ connectionIdLength: 6 });
    const sessionP = new Promise<DtlsServerSession>((resolve) => server.once('session', resolve));
    const c = await client(server, { connectionId: 5 });
    const session = await sessionP;
    assert.equal(c.info.sendCid.length, 6);
    assert.equal(c.info.receiveCid.length, 5);
    await echo(c, 'before rebinding');
    const before = c.localPort;
    await c.rebind();
    assert.notEqual(c.localPort, before);
    await echo(c, 'after rebinding');
    assert.equal(session.peer.port, c.localPort, 'the server follows the client to its new port');
    assert.equal(server.sessions.length, 1);
    await c.close();
  });

  it('without a CID, a moved client is a stranger', async () => {
    const server = await startServer({ connectionIdLength: 0 });
    const received: string[] = [];
    server.on('session', (s) => s.on('data', (d) => received.push(new TextDecoder().decode(d))));
    const c = await client(server);
    try {
      await echo(c, 'before');
      await c.rebind();
      await c.send(utf8('lost'));
      await new Promise((r) => setTimeout(r, 100));
      assert.ok((server.endpoint.stats.dropped['unknown-peer'] ?? 0) >= 1);
      assert.deepEqual(received, ['before'], 'nothing from the new port reached the session');
    } finally {
      await c.close();
    }
  });

  it('the client hears only its server: a datagram from another address never reaches the connection', async () => {
    const server = await startServer();
    const c = await client(server);
    try {
      await echo(c, 'before');
      const before = c.connection.stats.datagramsIn;
      // A stranger on loopback sends a copy of a plausible record to the client's port.
      const stranger = createSocket('udp4');
      await new Promise<void>((resolve) => stranger.bind(0, '127.0.0.1', resolve));
      await new Promise<void>((resolve) => stranger.send(new Uint8Array([0x2c, 0, 1, 0, 20, ...new Uint8Array(20)]), c.localPort, '127.0.0.1', () => resolve()));
      await new Promise((r) => setTimeout(r, 100));
      stranger.close();
      assert.equal(c.connection.stats.datagramsIn, before, 'the connected socket filtered it out');
      await echo(c, 'after');
    } finally {
      await c.close();
    }
  });

  it('a client given the server as a host name resolves it once and works', async () => {
    const server = await startServer();
    const c = await client(server, { host: 'localhost' });
    try {
      for (let i = 0; i < 5; i++) await echo(c, `hello ${i}`);
    } finally {
      await c.close();
    }
  });

  it('a client refused after its Finished (TLS 1.3 order) gets the alert as an error, and is closed', async () => {
    const server = await startServer({ requireClientCertificate: true });
    const refused = new Promise<string>((resolve) => server.once('handshake-error', (e) => resolve(e.code)));
    // The client completes when it sends Finished; the server's verdict on its (absent) certificate follows.
    const c = await client(server);
    const error = await new Promise<string>((resolve) => c.once('error', (e) => resolve(e.code)));
    assert.equal(error, 'certificate_required');
    assert.equal(await refused, 'certificate-required');
    assert.equal(c.connection.status, 'failed');
  });

  it('a socket the kernel will not connect (EACCES, as ENETUNREACH with a link down): connect() rejects, nothing throws later', async () => {
    // Node reports a failed UDP connect only to the connect callback and leaves the socket
    // unconnected; an address-less send on it would throw from a timer and end the process.
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown) => uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      await assert.rejects(
        DtlsClientSocket.connect({ udp, host: '255.255.255.255', port: 5684, verifier: new X509PeerVerifier({ roots: [ca.pem], purpose: 'server' }), handshakeTimeoutMs: 2000 }),
        (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'EACCES',
      );
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(uncaught, []);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });

  it('a server the client does not trust: connect() rejects with the alert it sent', async () => {
    const server = await startServer();
    const other = await makeCa('some other CA');
    await assert.rejects(
      DtlsClientSocket.connect({ udp, host: '127.0.0.1', port: server.address().port, verifier: new X509PeerVerifier({ roots: [other.pem], purpose: 'server' }) }),
      (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'unknown-issuer',
    );
  });
});

describe('choosing the UDP socket', () => {
  it('without an option or VITALSEAL_UDP the default is auto: batched system calls where available; the variable is honoured and a misspelt one refused', async () => {
    const before = process.env['VITALSEAL_UDP'];
    try {
      delete process.env['VITALSEAL_UDP'];
      const server = await startServerWith({});
      assert.equal(server.udp, BATCHED_EXPECTED ? 'batched' : 'node');
      const c = await clientWith(server, {});
      assert.equal(c.udp, BATCHED_EXPECTED ? 'batched' : 'node');
      await echo(c, 'default socket');
      process.env['VITALSEAL_UDP'] = 'node';
      const n = await clientWith(server, {});
      assert.equal(n.udp, 'node');
      await echo(n, 'node:dgram by the variable');
      process.env['VITALSEAL_UDP'] = 'batchd';
      await assert.rejects(clientWith(server, {}), (e: unknown) => e instanceof VitalsealError && e.code === 'bad-udp-setting' && /VITALSEAL_UDP must be node, batched or auto/.test(e.message));
      // An explicit option wins over the variable, misspelt or not; a misspelt option is refused too.
      const explicit = await clientWith(server, { udp: 'node' });
      assert.equal(explicit.udp, 'node');
      await assert.rejects(clientWith(server, { udp: 'batchd' as 'batched' }), (e: unknown) => e instanceof VitalsealError && e.code === 'bad-udp-setting' && /the udp option must be node, batched or auto, not "batchd"/.test(e.message));
    } finally {
      if (before === undefined) delete process.env['VITALSEAL_UDP'];
      else process.env['VITALSEAL_UDP'] = before;
    }
  });

  it("where batched UDP is unavailable, 'batched' is refused with the reason and 'auto' uses node:dgram", async () => {
    const before = process.env['VITALSEAL_BATCHED_UDP'];
    process.env['VITALSEAL_BATCHED_UDP'] = 'off';
    try {
      assert.equal(batchedUdpStatus().available, false);
      await assert.rejects(startServerWith({ udp: 'batched' }), (e: unknown) => e instanceof VitalsealError && e.code === 'batched-udp-unavailable' && /VITALSEAL_BATCHED_UDP=off/.test(e.message));
      const server = await startServerWith({ udp: 'auto' });
      assert.equal(server.udp, 'node');
      const c = await clientWith(server, { udp: 'auto' });
      assert.equal(c.udp, 'node');
      await echo(c, 'fallback');
    } finally {
      if (before === undefined) delete process.env['VITALSEAL_BATCHED_UDP'];
      else process.env['VITALSEAL_BATCHED_UDP'] = before;
    }
    if (BATCHED_EXPECTED) assert.equal(batchedUdpStatus().available, true, 'available again once the switch is gone');
  });
});

