/**
 * The CoAPS uplink's own rules: the response-code and handshake-failure mappings (tables), its
 * configuration checks, and its timing under injected timers (a real DTLS session through a relay
 * that goes silent; the CoAP retransmissions and the give-up happen when the test moves time).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startCoapsRig, type CoapsRig } from '../../scripts/lib/coaps-rig.ts';
import { startUdpRelay, type UdpRelay } from '../../scripts/lib/udp-relay.ts';
import type { CoapMessage } from '../../src/coap/message.ts';
import { CertificateRejected, DtlsTimeout, PeerAlert } from '../../src/dtls/errors.ts';
import { DUPLICATE_PAYLOAD, mapDtlsError, responseOutcome } from '../../src/transport/coaps/codes.ts';
import { createCoapsUplink } from '../../src/transport/coaps/uplink.ts';
import { ManualTimers } from '../../src/transport/timers.ts';
import { ApiMisuse, CertificateError, PeerIncompatible, TransportError, UplinkRejected } from '../../src/util/errors.ts';
import { until } from './contract.ts';

function response(code: number, payload = new Uint8Array(0)): CoapMessage {
  return { type: 'ACK', code, messageId: 1, token: new Uint8Array(0), options: [], payload };
}

describe('CoAPS uplink: what responses and handshake failures mean', () => {
  it('maps every response code of the telemetry POST', () => {
    const table: [number, string][] = [
      [0x44, 'accepted'], [0x41, 'accepted'],
      [0x80, 'rejected:bad-request'], [0x82, 'rejected:bad-request'], [0x81, 'rejected:unauthorized'], [0x83, 'rejected:forbidden'],
      [0x8d, 'rejected:too-large'], [0x8f, 'rejected:unsupported-format'], [0x86, 'rejected:bad-request'],
      [0x84, 'retry:not-found'], [0x85, 'retry:method-not-allowed'], [0x88, 'retry:request-incomplete'], [0x9d, 'retry:too-many-requests'],
      [0xa0, 'retry:server-error'], [0xa3, 'retry:unavailable'], [0xa4, 'retry:server-error'], [0x45, 'retry:unexpected-response'], [0x5f, 'retry:unexpected-response'],
    ];
    for (const [code, want] of table) {
      const o = responseOutcome(response(code));
      const got = o.kind === 'accepted' ? 'accepted' : o.kind === 'rejected' ? `rejected:${o.reason}` : `retry:${o.code}`;
      assert.equal(got, want, `code 0x${code.toString(16)}`);
    }
    assert.deepEqual(responseOutcome(response(0x44, DUPLICATE_PAYLOAD)), { kind: 'accepted', duplicate: true });
    assert.deepEqual(responseOutcome(response(0x44, new TextEncoder().encode('duplicates'))), { kind: 'accepted', duplicate: false });
    const diag = responseOutcome(response(0x83, new TextEncoder().encode('identity-mismatch\n\u0007')));
    assert.ok(diag.kind === 'rejected' && diag.detail === 'CoAP 4.03 (identity-mismatch??)', 'diagnostics are shown without control characters');
  });

  it('maps handshake failures: alerts about our credentials → UplinkRejected(unauthorized), negotiation → PeerIncompatible, our verdict on the server stays, the rest TransportError', () => {
    const where = 'CoAPS server x:5684';
    for (const alert of ['certificate_revoked', 'certificate_expired', 'unknown_ca', 'certificate_required', 'decrypt_error', 'unknown_psk_identity', 'bad_certificate']) {
      const e = mapDtlsError(new PeerAlert(0, alert), where);
      assert.ok(e instanceof UplinkRejected && e.code === 'unauthorized' && e.message.includes(alert), alert);
    }
    assert.ok(mapDtlsError(new PeerAlert(0, 'protocol_version'), where) instanceof PeerIncompatible);
    assert.ok(mapDtlsError(new PeerAlert(0, 'internal_error'), where) instanceof TransportError);
    const t = mapDtlsError(new DtlsTimeout('handshake-timeout', 'no answer'), where);
    assert.ok(t instanceof TransportError && t.code === 'connect-timeout');
    const c = new CertificateError('name-mismatch', 'server name');
    assert.equal(mapDtlsError(c, where), c);
    const r = new CertificateRejected('empty-certificate', 'none');
    assert.equal(mapDtlsError(r, where), r);
    assert.ok(mapDtlsError(new Error('boom'), where) instanceof TransportError);
  });

  it('refuses bad options at construction', () => {
    const base = { deviceId: 'bed-1', host: '127.0.0.1', identity: { kind: 'psk' as const, key: new Uint8Array(32) } };
    assert.throws(() => createCoapsUplink({ ...base, deviceId: '../x' }), RangeError);
    assert.throws(() => createCoapsUplink({ ...base, identity: { kind: 'psk', key: new Uint8Array(16) } }), RangeError);
    assert.throws(() => createCoapsUplink({ ...base, path: 'v1' }), RangeError);
    assert.throws(() => createCoapsUplink({ ...base, maxInFlight: 0 }), RangeError);
    assert.throws(() => createCoapsUplink({ ...base, identity: { kind: 'certificate', certificateChain: [new Uint8Array(1)], signer: { scheme: 'ed25519', publicKeySpki: async () => new Uint8Array(), sign: async () => new Uint8Array() } } }), (e: unknown) => e instanceof ApiMisuse && e.code === 'config-no-verifier');
    assert.throws(() => createCoapsUplink({ ...base, verifier: { verify: async () => { throw new Error('x'); } } }), (e: unknown) => e instanceof ApiMisuse && e.code === 'config-verifier-with-psk');
  });
});

describe('CoAPS uplink under injected timers', () => {
  let rig: CoapsRig;
  let relay: UdpRelay;

  before(async () => {
    rig = await startCoapsRig({ devices: ['bed-t'] });
    relay = await startUdpRelay({ target: { host: rig.host, port: rig.port } });
  });

  after(async () => {
    await relay?.stop();
    await rig?.stop();
  });

  it('a server gone silent: CoAP retransmits 4 times as time is moved (2 s doubling), then the send fails and the session is declared lost', async () => {
    const timers = new ManualTimers(Date.now());
    const u = rig.uplink('bed-t', { port: relay.port, timers, clock: timers, transmission: { ackRandomFactor: 1 } });
    await u.connect();
    assert.equal((await u.send(rig.seal('bed-t', 1))).status, 'accepted');
    const lost = new Promise<string>((resolve) => u.once('disconnected', ({ reason }) => resolve(reason)));
    const thaw = relay.freeze();
    try {
      const sending = u.send(rig.seal('bed-t', 2));
      const failed = sending.then(() => undefined, (e: unknown) => e);
      await until(() => relay.counters.frozen === 1);
      for (const [step, total] of [[1999, 1], [1, 2], [4000, 3], [8000, 4], [16_000, 5]] as const) {
        timers.advance(step);
        await until(() => relay.counters.frozen === total);
      }
      timers.advance(31_999);
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(u.counters().transportErrors, 0, 'not given up before the last timeout');
      timers.advance(1);
      const e = await failed;
      assert.ok(e instanceof TransportError && e.code === 'ack-timeout', String(e));
      assert.equal(await lost, 'no datagram from the server since the request went out');
      assert.equal(u.session, undefined);
      assert.equal(relay.counters.frozen, 5, 'one transmission and four retransmissions');
    } finally {
      thaw();
    }
    await u.connect();
    assert.equal((await u.send(rig.seal('bed-t', 3))).status, 'accepted');
    await u.close();
  });
});
