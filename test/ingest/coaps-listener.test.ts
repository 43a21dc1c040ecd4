/**
 * The ingest's CoAPS listener end to end: a real IngestCore (SQLite, software key store, audit log)
 * behind the listener on loopback UDP, devices on the CoAPS uplink with certificates and with PSKs.
 * What a device sealed is what the database decrypts to; duplicates are acknowledged and stored once;
 * every kind of refusal is asserted at the device (typed error) and at the ingest (the alert or
 * reason counted); revocation closes the open session at once and refuses the next handshake.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { encodeVitalsPack } from '../../src/codec/vitals.ts';
import { Header } from '../../src/cose/headers.ts';
import { SealingSession } from '../../src/cose/sealing-session.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { DtlsClientSocket } from '../../src/dtls/udp.ts';
import { openAtRest } from '../../src/ingest/at-rest.ts';
import { parseIngestConfig, type CoapsListenerConfig } from '../../src/ingest/config.ts';
import { coapsListener, startCoapsListener, type CoapsListener } from '../../src/ingest/listeners/coaps.ts';
import { pskKeyId, registerPskDevice } from '../../src/ingest/psk-store.ts';
import { silentLogger } from '../../src/ingest/service.ts';
import { keyObjectSigner, type Signer } from '../../src/keystore/signer.ts';
import { writeKeyFile } from '../../src/pki/key-file.ts';
import { createCrl, type RevokedEntry } from '../../src/pki/crl.ts';
import type { Certificate } from '../../src/pki/certificate.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { createCoapsUplink, type CoapsUplink, type CoapsUplinkOptions } from '../../src/transport/coaps/uplink.ts';
import type { UplinkMessage } from '../../src/transport/types.ts';
import { ApiMisuse, UplinkRejected } from '../../src/util/errors.ts';
import { makePki } from '../pki/fixtures.ts';
import { batchFor, startHarness, type Harness, type TestDevice } from './support/harness.ts';

const DAY = 86_400_000;
const quiet = silentLogger;

let h: Harness;
let listener: CoapsListener;
let crlPath: string;
const revokedOnCrl: RevokedEntry[] = [];
const uplinks: CoapsUplink[] = [];

function files(): { chain: string; root: string } {
  return { chain: join(h.dir, 'coaps-chain.pem'), root: join(h.dir, 'fleet-root.pem') };
}

async function writeCrl(): Promise<void> {
  const now = h.clock.now();
  const der = await createCrl({ ca: h.pki.ca, revoked: revokedOnCrl, crlNumber: revokedOnCrl.length + 1, now, nextUpdate: now + 7 * DAY });
  writeFileSync(crlPath, pemEncode('X509 CRL', der));
}

function config(over: Partial<CoapsListenerConfig> = {}): CoapsListenerConfig {
  return {
    host: '127.0.0.1', port: 0, certificate: files().chain, keyStoreKey: 'coaps-server', clientRoots: [files().root], crls: [crlPath],
    psk: true, path: '/v1/telemetry', mtu: 1200, piggybackMs: 500,
    limits: { maxSessions: 1000, maxPendingHandshakes: 100, maxPendingPerAddress: 16, maxHandlingPerSession: 64, maxHandling: 1024, maxBodiesPerSession: 4 },
    ...over,
  };
}

function uplinkOptions(deviceId: string, o: Partial<CoapsUplinkOptions> & Pick<CoapsUplinkOptions, 'identity'>): CoapsUplinkOptions {
  return { deviceId, host: '127.0.0.1', port: listener.server.address().port, connectTimeoutMs: 5000, ...o };
}

const serverVerifier = () => new X509PeerVerifier({ roots: [h.pki.root.der], purpose: 'server', serverName: '127.0.0.1' });

function certUplink(d: { id: string; cert: Certificate; signer: Signer }, o: Partial<CoapsUplinkOptions> = {}): CoapsUplink {
  const u = createCoapsUplink(uplinkOptions(d.id, { identity: { kind: 'certificate', certificateChain: [d.cert.der, h.pki.issuing.der], signer: d.signer }, verifier: serverVerifier(), ...o }));
  uplinks.push(u);
  return u;
}

function pskUplink(deviceId: string, key: Uint8Array, o: Partial<CoapsUplinkOptions> = {}): CoapsUplink {
  const u = createCoapsUplink(uplinkOptions(deviceId, { identity: { kind: 'psk', key }, ...o }));
  uplinks.push(u);
  return u;
}

function message(d: TestDevice, seq: number): UplinkMessage {
  return { deviceId: d.id, seq, payload: d.seal(seq), contentFormat: 'cose-encrypt' };
}

/** A sealer for a device that has no certificate (PSK devices), as the agent seals. */
function sealer(deviceId: string): (seq: number) => UplinkMessage {
  const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: h.core.staticKeys?.current.publicKey as Uint8Array, clock: h.clock });
  return (seq) => ({
    deviceId, seq, contentFormat: 'cose-encrypt',
    payload: session.seal(encodeVitalsPack(batchFor(deviceId, seq)), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, deviceId], [Header.SEQUENCE, seq]]) }),
  });
}

async function storedPack(deviceId: string, seq: number): Promise<Uint8Array> {
  const rows = await h.core.storage.readMessages(deviceId, 0, Number.MAX_SAFE_INTEGER);
  const row = rows.find((r) => r.seq === seq);
  assert.ok(row, `message ${deviceId}#${seq} stored`);
  return openAtRest(h.core.provider, await h.core.dataKeys.version(deviceId, row.keyVersion), row);
}

const handshakeFailures = (alert: string) => h.core.metrics.handshakeFailures.get({ transport: 'coaps', alert });

const unauthorized = (alert: string) => (e: unknown) => e instanceof UplinkRejected && e.code === 'unauthorized' && e.message.includes(alert);

before(async () => {
  // Real time: the device verifies the server certificate against the machine's clock.
  h = await startHarness('sqlite', undefined, {}, { realTime: true });
  const serverSigner = await h.core.keyStore.createSigningKey('coaps-server');
  const server = await h.pki.service({ ipAddresses: ['127.0.0.1'] }, { signer: serverSigner });
  writeFileSync(files().chain, pemEncode('CERTIFICATE', server.cert.der) + pemEncode('CERTIFICATE', h.pki.issuing.der));
  writeFileSync(files().root, pemEncode('CERTIFICATE', h.pki.root.der));
  crlPath = join(h.dir, 'fleet.crl');
  await writeCrl();
  listener = await startCoapsListener(h.core, config(), quiet);
});

after(async () => {
  for (const u of uplinks) await u.close().catch(() => undefined);
  await listener?.stop();
  await h?.close();
});

describe('CoAPS listener: delivery into a real ingest', () => {
  it('a certificate device: accepted, stored encrypted, decrypts to what was sealed; a duplicate is acknowledged and stored once', async () => {
    const d = await h.enrol('bed-1');
    const u = certUplink(d);
    await u.connect();
    assert.equal(u.session?.auth, 'certificate');
    const m = message(d, 1);
    assert.deepEqual(await u.send(m), { seq: 1, status: 'accepted' });
    assert.deepEqual(await u.send(m), { seq: 1, status: 'duplicate' }, 'the same message again: 2.04 "duplicate"');
    assert.equal(await h.core.storage.countMessages('bed-1'), 1);
    assert.deepEqual(await storedPack('bed-1', 1), encodeVitalsPack(batchFor('bed-1', 1)));
    const dev = await h.core.storage.getDevice('bed-1');
    assert.equal(dev?.transport, 'coaps');
    assert.match(dev?.suite ?? '', /^DTLSv1\.3 TLS_AES_128_GCM_SHA256 \/ chacha20-poly1305$/);
    assert.equal(u.counters().duplicates, 1);
    assert.equal(h.core.metrics.duplicates.get(), 1);
  });

  it('a PSK device registered with registerPskDevice: the key unwraps into the listener, messages are stored, the key is never in the database in clear', async () => {
    const reg = await registerPskDevice(h.core, 'pulse-1', { actor: 'test' });
    assert.equal(reg.identity, 'pulse-1');
    assert.equal(reg.key.length, 32);
    const record = await h.core.storage.keyRecords().get(pskKeyId('pulse-1'), 1);
    assert.ok(record !== undefined && record.kekName === 'ingest-kek');
    assert.ok(!Buffer.from(record.wrapped).includes(Buffer.from(reg.key)), 'stored wrapped, not in clear');
    await listener.psks?.sync(); // the registration's own sync has run once this one has
    const seal = sealer('pulse-1');
    const u = pskUplink('pulse-1', reg.key);
    await u.connect();
    assert.equal(u.session?.auth, 'psk');
    assert.deepEqual(await u.send(seal(1)), { seq: 1, status: 'accepted' });
    assert.deepEqual(await storedPack('pulse-1', 1), encodeVitalsPack(batchFor('pulse-1', 1)));
    await assert.rejects(registerPskDevice(h.core, 'pulse-1', { actor: 'test' }), (e: unknown) => e instanceof ApiMisuse && e.code === 'exists');
    const audit = readFileSync(join(h.dir, 'audit.log'), 'utf8');
    assert.ok(audit.includes('PSK device pulse-1 registered'));
    assert.ok(!audit.includes(Buffer.from(reg.key).toString('hex')) && !audit.includes(Buffer.from(reg.key).toString('base64')), 'the key is not audited');
  });

  it('many messages in flight from several devices, some block-wise: every one stored once', async () => {
    const devices = await Promise.all(['bed-m1', 'bed-m2', 'bed-m3'].map((id) => h.enrol(id)));
    const ups = devices.map((d) => certUplink(d));
    await Promise.all(ups.map((u) => u.connect()));
    // Every third message carries four ECG strips: more than one datagram, so it goes block-wise.
    const sealed = (d: TestDevice, seq: number): UplinkMessage => {
      const b = batchFor(d.id, seq);
      const batch = seq % 3 === 0 ? { ...b, ecg: [0, 1, 2, 3].map((k) => ({ start: b.readings[0]!.time + k * 1000, intervalMs: 4, samplesMv: Float32Array.from({ length: 250 }, (_, i) => Math.sin((i + k) / 7) * 1.5) })) } : b;
      return { deviceId: d.id, seq, payload: d.seal(seq, batch), contentFormat: 'cose-encrypt' };
    };
    await Promise.all(devices.flatMap((d, i) => Array.from({ length: 60 }, (_, k) => (ups[i] as CoapsUplink).send(sealed(d, k + 1)))));
    for (const d of devices) assert.equal(await h.core.storage.countMessages(d.id), 60);
    // seq % 3 === 0 carries an ECG strip: those packs exceed one datagram and went block-wise.
    assert.ok((listener.server.counters().responses['2.31'] ?? 0) >= 60, 'block-wise bodies were reassembled');
  });
});

describe('CoAPS listener: refusals, each at the device and at the ingest', () => {
  it('no client certificate: certificate_required', async () => {
    // A client with a verifier and no certificate of its own (the uplink always has an identity):
    // in DTLS 1.3 it completes its side, then the server's verdict arrives as the alert.
    const before = handshakeFailures('certificate_required');
    const c = await DtlsClientSocket.connect({ host: '127.0.0.1', port: listener.server.address().port, verifier: new X509PeerVerifier({ roots: [h.pki.root.der], purpose: 'server' }) });
    const err = await new Promise<{ code: string }>((resolve) => c.once('error', resolve));
    assert.equal(err.code, 'certificate_required');
    assert.equal(handshakeFailures('certificate_required'), before + 1);
  });

  it('a certificate from another CA: unknown_ca', async () => {
    const other = await makePki({ now: h.clock.now() - 3_600_000 });
    const stranger = await other.device('bed-1');
    const u = createCoapsUplink(uplinkOptions('bed-1', { identity: { kind: 'certificate', certificateChain: [stranger.cert.der, other.issuing.der], signer: stranger.signer }, verifier: serverVerifier() }));
    uplinks.push(u);
    await assert.rejects(u.connect(), unauthorized('unknown_ca'));
    assert.ok(handshakeFailures('unknown_ca') >= 1);
  });

  it('an expired certificate: certificate_expired', async () => {
    const d = await h.enrol('bed-old');
    const u = certUplink(d);
    const now = h.clock.now();
    h.clock.set(d.cert.notAfter + DAY); // the ingest's time: two years on
    try {
      await assert.rejects(u.connect(), unauthorized('certificate_expired'));
    } finally {
      h.clock.set(now);
    }
    assert.ok(handshakeFailures('certificate_expired') >= 1);
  });

  it('a certificate on the CRL (the registry still says active): certificate_revoked; the CRL is reloaded when the registry says it changed', async () => {
    const d = await h.enrol('bed-crl');
    const u = certUplink(d);
    await u.connect();
    await u.close();
    revokedOnCrl.push({ serialHex: d.cert.serialHex, revokedAt: h.clock.now(), reason: 'keyCompromise' });
    await writeCrl();
    // Another instance revokes some device; this one's refresh sees it and the listener reloads the CRL.
    const other = await h.openCore();
    await h.enrol('bed-gone');
    await other.registry.refresh();
    await other.registry.setStatus('bed-gone', 'revoked', 'test');
    await other.close();
    assert.equal(await h.core.registry.refresh(), true);
    // The reload reads the files asynchronously: the first handshake after it is refused.
    let refusal: unknown;
    for (let i = 0; i < 40 && refusal === undefined; i++) {
      const again = certUplink(d);
      try {
        await again.connect();
        await again.close();
        await new Promise((r) => setTimeout(r, 50));
      } catch (e) {
        refusal = e;
      }
    }
    assert.ok(unauthorized('certificate_revoked')(refusal), String(refusal));
    assert.equal(h.core.registry.get('bed-crl')?.status, 'active');
  });

  it('revocation in the registry closes the open session at once and refuses the next handshake', async () => {
    const d = await h.enrol('bed-rev');
    const u = certUplink(d);
    await u.connect();
    assert.equal((await u.send(message(d, 1))).status, 'accepted');
    const gone = new Promise<string>((resolve) => u.once('disconnected', ({ reason }) => resolve(reason)));
    const before = handshakeFailures('certificate_revoked');
    await h.core.registry.setStatus('bed-rev', 'revoked', 'test');
    assert.equal(await gone, 'the server closed the session');
    assert.equal(listener.server.sessions().filter((s) => s.peer.kind === 'certificate' && s.peer.deviceId === 'bed-rev').length, 0);
    await assert.rejects(u.connect(), unauthorized('certificate_revoked'));
    assert.equal(handshakeFailures('certificate_revoked'), before + 1);
  });

  it('a suspended PSK device loses its session and is refused at handshake time (unknown_psk_identity) until resumed', async () => {
    const reg = await registerPskDevice(h.core, 'pulse-s', { actor: 'test' });
    await listener.psks?.sync();
    const u = pskUplink('pulse-s', reg.key);
    await u.connect();
    const gone = new Promise<void>((resolve) => u.once('disconnected', () => resolve()));
    await h.core.registry.setStatus('pulse-s', 'suspended', 'test');
    await gone;
    await assert.rejects(u.connect(), unauthorized('unknown_psk_identity'));
    await h.core.registry.setStatus('pulse-s', 'active', 'test');
    await u.connect();
    assert.equal((await u.send(sealer('pulse-s')(1))).status, 'accepted');
  });

  it('a PSK device registered by another instance connects once this instance\'s registry refresh has run; a revoked one\'s key leaves memory', async () => {
    const other = await h.openCore();
    const reg = await registerPskDevice(other, 'pulse-x', { actor: 'test' });
    await other.close();
    const u = pskUplink('pulse-x', reg.key);
    await assert.rejects(u.connect(), unauthorized('unknown_psk_identity'), 'not known here before the refresh');
    const held = listener.psks?.size ?? 0;
    await h.core.registry.refresh();
    await listener.psks?.sync();
    assert.equal(listener.psks?.size, held + 1);
    await u.connect();
    assert.equal((await u.send(sealer('pulse-x')(1))).status, 'accepted');
    await h.core.registry.setStatus('pulse-x', 'revoked', 'test');
    await listener.psks?.sync();
    assert.equal(listener.psks?.size, held, 'the revoked device\'s key is zeroised and forgotten');
    assert.equal(listener.psks?.lookup(new TextEncoder().encode('pulse-x')), undefined);
  });

  it('a wrong PSK: decrypt_error; an unknown PSK identity: unknown_psk_identity', async () => {
    await registerPskDevice(h.core, 'pulse-w', { actor: 'test' });
    await listener.psks?.sync();
    const wrong = pskUplink('pulse-w', new Uint8Array(32).fill(7));
    await assert.rejects(wrong.connect(), unauthorized('decrypt_error'));
    const unknown = pskUplink('pulse-unknown', new Uint8Array(32).fill(7));
    await assert.rejects(unknown.connect(), unauthorized('unknown_psk_identity'));
    assert.ok(handshakeFailures('decrypt_error') >= 1);
    assert.ok(handshakeFailures('unknown_psk_identity') >= 1);
  });

  it('a device whose sealed message names another device: 4.03 identity-mismatch', async () => {
    const a = await h.enrol('bed-a');
    const b = await h.enrol('bed-b');
    const u = certUplink(b);
    await u.connect();
    // bed-b's session carrying a message bed-a sealed (the uplink itself only checks the label).
    const forged: UplinkMessage = { deviceId: 'bed-b', seq: 5, payload: a.seal(5), contentFormat: 'cose-encrypt' };
    await assert.rejects(u.send(forged), (e: unknown) => e instanceof UplinkRejected && e.code === 'forbidden' && /identity-mismatch/.test(e.message));
    assert.equal(await h.core.storage.countMessages('bed-a'), 0);
    assert.ok(h.core.metrics.rejected.get({ reason: 'identity-mismatch' }) >= 1);
  });

  it('an oversized payload: 4.13 before the ingest path; a COSE_Encrypt0: 4.15', async () => {
    const d = await h.enrol('bed-big');
    const u = certUplink(d, { maxPayloadBytes: 1 << 20 });
    await u.connect();
    const before = h.core.metrics.received.get({ transport: 'coaps' });
    const big = new Uint8Array(h.core.service?.maxMessageBytes as number + 1);
    big.set([0xd8, 0x60]);
    await assert.rejects(u.send({ deviceId: d.id, seq: 9, payload: big, contentFormat: 'cose-encrypt' }), (e: unknown) => e instanceof UplinkRejected && e.code === 'too-large');
    const encrypt0 = Uint8Array.of(0xd0, 0x84, 0x40, 0xa0, 0x41, 0x00);
    await assert.rejects(u.send({ deviceId: d.id, seq: 10, payload: encrypt0, contentFormat: 'cose-encrypt0' }), (e: unknown) => e instanceof UplinkRejected && e.code === 'unsupported-format');
    assert.equal(h.core.metrics.received.get({ transport: 'coaps' }), before, 'neither reached the ingest path');
    const c = listener.server.counters();
    assert.ok((c.refused['too-large'] ?? 0) >= 1);
    assert.ok((c.refused['unsupported-format'] ?? 0) >= 1);
    assert.match(h.core.metrics.registry.render(), /vitalseal_ingest_coaps_requests_refused_total\{reason="too-large"\} [1-9]/);
  });
});

describe('CoAPS listener: configuration', () => {
  const base = { storage: { sqlite: { path: 'x.db' } }, keystore: { kind: 'software', path: 'k.vsks', passphrase: { env: 'P' } }, audit: { path: 'a.log' } };

  it('validates the coaps section with the field\'s path', () => {
    const parse = (coaps: unknown) => parseIngestConfig({ ...base, coaps });
    const ok = parse({ certificate: 'c.pem', key: 'c.key', clientRoots: ['r.pem'] }).coaps;
    assert.deepEqual({ host: ok?.host, port: ok?.port, psk: ok?.psk, path: ok?.path, crls: ok?.crls }, { host: '0.0.0.0', port: 5684, psk: false, path: '/v1/telemetry', crls: [] });
    assert.throws(() => parse({ certificate: 'c.pem', key: 'c.key' }), /coaps\.clientRoots: at least one file/);
    assert.throws(() => parse({ certificate: 'c.pem', key: 'c.key', keyStoreKey: 'k', clientRoots: ['r.pem'] }), /coaps\.key: give exactly one/);
    assert.throws(() => parse({ certificate: 'c.pem', clientRoots: ['r.pem'] }), /coaps\.key: give exactly one/);
    assert.throws(() => parse({ certificate: 'c.pem', key: 'c.key', clientRoots: ['r.pem'], psk: 'yes' }), /coaps\.psk: true or false/);
    assert.throws(() => parse({ certificate: 'c.pem', key: 'c.key', clientRoots: ['r.pem'], limits: { maxSessions: 0 } }), /coaps\.limits\.maxSessions/);
    assert.throws(() => parse({ certificate: 'c.pem', key: 'c.key', clientRoots: ['r.pem'], path: 'v1' }), /coaps\.path/);
    assert.throws(() => parse({ certificate: 'c.pem', key: 'c.key', clientRoots: ['r.pem'], keyPassphrase: 'secret' }), /coaps\.keyPassphrase: give where the secret is/);
  });

  it('a key file (0600) works through the ListenerFactory; a key that does not match the certificate is refused at start', async () => {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const server = await h.pki.service({ ipAddresses: ['127.0.0.1'] }, { signer: keyObjectSigner(key) });
    const chain = join(h.dir, 'file-chain.pem');
    writeFileSync(chain, pemEncode('CERTIFICATE', server.cert.der) + pemEncode('CERTIFICATE', h.pki.issuing.der));
    const keyPath = join(h.dir, 'coaps.key');
    writeKeyFile(keyPath, key, undefined);
    const { keyStoreKey: _unused, ...fileKeyed } = config({ psk: false });
    const l = await coapsListener.start(h.core, { ...fileKeyed, certificate: chain, key: keyPath }, quiet);
    await l.stop();
    // The listener's own certificate with this (other) key.
    await assert.rejects(coapsListener.start(h.core, { ...fileKeyed, key: keyPath }, quiet), (e: unknown) => e instanceof ApiMisuse && /does not match the certificate/.test(e.message));
  });
});
