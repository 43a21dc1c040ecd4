/**
 * The CoAPS server at transport level, over loopback UDP and real DTLS sessions: requests that are
 * not a well-formed telemetry POST are answered without reaching the handler and counted; a slow
 * handler gets an empty ACK sent for it so the client does not retransmit; per-session limits keep
 * one peer from taking the server; truncated and mutated CoAP requests inside a session never crash
 * it; a seeded lossy network loses nothing that was acknowledged and duplicates nothing; a device
 * that changes address keeps its session by its Connection ID.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startCoapsRig, type CoapsRig } from '../../scripts/lib/coaps-rig.ts';
import { startUdpRelay } from '../../scripts/lib/udp-relay.ts';
import { Prng } from '../../src/agent/sensors/prng.ts';
import { blockOption, BlockOption } from '../../src/coap/blockwise.ts';
import { CoapCode, CoapOption, codeString, decodeCoap, encodeCoap, pathOptions, readUintOption, uintOption, type CoapMessage, type CoapOptionValue } from '../../src/coap/message.ts';
import { DtlsClientSocket } from '../../src/dtls/udp.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import type { CoapsHandler, CoapsReply } from '../../src/transport/coaps/server.ts';
import type { CoapsUplink } from '../../src/transport/coaps/uplink.ts';
import type { UplinkAck, UplinkMessage } from '../../src/transport/types.ts';
import { TransportError } from '../../src/util/errors.ts';
import { until } from './contract.ts';

const TELEMETRY = pathOptions('/v1/telemetry');
const CF96 = uintOption(CoapOption.CONTENT_FORMAT, 96);

/** A DTLS session that speaks raw CoAP: what a buggy or hostile device could send. */
class RawCoap {
  readonly #socket: DtlsClientSocket;
  #mid = 1;
  readonly #waiting = new Map<number, (m: CoapMessage) => void>();

  private constructor(socket: DtlsClientSocket) {
    this.#socket = socket;
    socket.on('data', (d) => {
      let m: CoapMessage;
      try {
        m = decodeCoap(d);
      } catch {
        return;
      }
      this.#waiting.get(m.messageId)?.(m);
      this.#waiting.delete(m.messageId);
    });
  }

  static async open(rig: CoapsRig, deviceId: string, port = rig.port): Promise<RawCoap> {
    const id = rig.devices.get(deviceId);
    if (id?.key === undefined) throw new Error('no identity');
    return new RawCoap(await DtlsClientSocket.connect({
      host: rig.host, port, verifier: rig.serverVerifier(),
      certificateChain: [id.cert.der, rig.fleet.issuing.der], signer: keyObjectSigner(id.key),
    }));
  }

  /** Sends a CON request and resolves with the answer (ACK, RST, or a separate response). */
  request(code: number, options: readonly CoapOptionValue[], payload: Uint8Array, type: 'CON' | 'NON' = 'CON'): Promise<CoapMessage> {
    const messageId = this.#mid++;
    const answer = new Promise<CoapMessage>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no answer to ${messageId}`)), 5000);
      this.#waiting.set(messageId, (m) => {
        clearTimeout(t);
        resolve(m);
      });
    });
    void this.#socket.send(encodeCoap({ type, code, messageId, token: Uint8Array.of(1, 2, 3, messageId & 0xff), options, payload }));
    return answer;
  }

  /** Sends raw bytes inside the session (no answer awaited). */
  sendRaw(bytes: Uint8Array): Promise<void> {
    return this.#socket.send(bytes);
  }

  close(): Promise<void> {
    return this.#socket.close();
  }
}

function counting(inner?: CoapsHandler): { handler: CoapsHandler; calls: () => number } {
  let n = 0;
  return {
    calls: () => n,
    handler: async (req) => {
      n++;
      return inner === undefined ? { code: '2.04' } : inner(req);
    },
  };
}

describe('CoAPS server: requests that never reach the handler', () => {
  let rig: CoapsRig;
  let raw: RawCoap;
  const h = counting();

  before(async () => {
    rig = await startCoapsRig({ devices: ['bed-raw'], handler: h.handler, server: { maxPayloadBytes: 512 } });
    raw = await RawCoap.open(rig, 'bed-raw');
  });

  after(async () => {
    await raw?.close();
    await rig?.stop();
  });

  it('answers each kind of bad request with its code (and diagnostic), counts it by reason, and never calls the handler', async () => {
    const body = Uint8Array.of(0xd8, 0x60, 1, 2, 3);
    const cases: { name: string; code: string; reason: string; send: () => Promise<CoapMessage> }[] = [
      { name: 'another path', code: '4.04', reason: 'not-found', send: () => raw.request(CoapCode.POST, [...pathOptions('/v1/other'), CF96], body) },
      { name: 'GET', code: '4.05', reason: 'method-not-allowed', send: () => raw.request(CoapCode.GET, TELEMETRY, new Uint8Array(0)) },
      { name: 'PUT', code: '4.05', reason: 'method-not-allowed', send: () => raw.request(CoapCode.PUT, [...TELEMETRY, CF96], body) },
      { name: 'unknown critical option 9', code: '4.02', reason: 'bad-option', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96, { number: 9, value: Uint8Array.of(1) }], body) },
      { name: 'Content-Format twice', code: '4.02', reason: 'bad-option', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96, CF96], body) },
      { name: 'a query', code: '4.00', reason: 'bad-request', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96, { number: CoapOption.URI_QUERY, value: new TextEncoder().encode('x=1') }], body) },
      { name: 'no payload', code: '4.00', reason: 'bad-request', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96], new Uint8Array(0)) },
      { name: 'Uri-Path not UTF-8', code: '4.00', reason: 'bad-request', send: () => raw.request(CoapCode.POST, [{ number: CoapOption.URI_PATH, value: Uint8Array.of(0xff, 0xfe) }, CF96], body) },
      { name: 'no Content-Format', code: '4.15', reason: 'unsupported-format', send: () => raw.request(CoapCode.POST, TELEMETRY, body) },
      { name: 'application/json', code: '4.15', reason: 'unsupported-format', send: () => raw.request(CoapCode.POST, [...TELEMETRY, uintOption(CoapOption.CONTENT_FORMAT, 50)], body) },
      { name: 'Content-Format of 5 bytes', code: '4.00', reason: 'bad-request', send: () => raw.request(CoapCode.POST, [...TELEMETRY, { number: CoapOption.CONTENT_FORMAT, value: new Uint8Array(5) }], body) },
      { name: 'a body over the limit', code: '4.13', reason: 'too-large', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96], new Uint8Array(513).fill(0xd8)) },
      { name: 'Size1 over the limit on block 0', code: '4.13', reason: 'too-large', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96, blockOption(BlockOption.BLOCK1, { num: 0, more: true, szx: 2 }), uintOption(BlockOption.SIZE1, 4096)], new Uint8Array(64)) },
      { name: 'block 3 of nothing', code: '4.08', reason: 'incomplete', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96, blockOption(BlockOption.BLOCK1, { num: 3, more: true, szx: 2 })], new Uint8Array(64)) },
      { name: 'a short middle block', code: '4.08', reason: 'incomplete', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96, blockOption(BlockOption.BLOCK1, { num: 0, more: true, szx: 2 })], new Uint8Array(10)) },
      { name: 'SZX 7', code: '4.00', reason: 'bad-request', send: () => raw.request(CoapCode.POST, [...TELEMETRY, CF96, uintOption(BlockOption.BLOCK1, 7)], new Uint8Array(16)) },
    ];
    for (const c of cases) {
      const before = rig.server.counters().refused[c.reason as 'not-found'] ?? 0;
      const res = await c.send();
      assert.equal(res.type, 'ACK', c.name);
      assert.equal(codeString(res.code), c.code, c.name);
      assert.equal(rig.server.counters().refused[c.reason as 'not-found'], before + 1, `${c.name}: counted as ${c.reason}`);
      if (c.code !== '4.08' && c.code !== '4.13') assert.ok(res.payload.length > 0 && res.payload.length <= 128, `${c.name}: a short diagnostic`);
    }
    const tooLarge = await raw.request(CoapCode.POST, [...TELEMETRY, CF96], new Uint8Array(600).fill(0xd8));
    assert.equal(readUintOption(tooLarge, BlockOption.SIZE1), 512, 'RFC 7959 §4: 4.13 names the limit in Size1');
    assert.equal(h.calls(), 0, 'the handler saw none of them');
  });

  it('a CoAP ping gets RST; a malformed CON gets RST and is counted; a retransmission is answered from the exchange', async () => {
    const ping = await raw.request(CoapCode.EMPTY, [], new Uint8Array(0));
    assert.equal(ping.type, 'RST');
    const before = rig.server.counters().refused.malformed ?? 0;
    // Token length 9 (reserved, RFC 7252 §3): a message format error.
    await raw.sendRaw(Uint8Array.of(0x49, 0x02, 0x77, 0x01, ...new Uint8Array(9)));
    await until(() => (rig.server.counters().refused.malformed ?? 0) === before + 1);
    // The same CON twice: one handler call, the same answer.
    const dup = encodeCoap({ type: 'CON', code: CoapCode.POST, messageId: 0x4242, token: Uint8Array.of(9), options: [...TELEMETRY, CF96], payload: Uint8Array.of(0xd8, 0x60, 7) });
    const calls = h.calls();
    await raw.sendRaw(dup);
    await raw.sendRaw(dup);
    await until(() => rig.server.counters().duplicates >= 1);
    assert.equal(h.calls(), calls + 1);
  });

  it('truncated and mutated CoAP requests inside a session never crash it, and it keeps serving', async () => {
    const valid = encodeCoap({ type: 'CON', code: CoapCode.POST, messageId: 9000, token: Uint8Array.of(1, 2, 3, 4), options: [...TELEMETRY, CF96, blockOption(BlockOption.BLOCK1, { num: 0, more: false, szx: 6 }), uintOption(BlockOption.SIZE1, 40)], payload: new Uint8Array(40).fill(0xd8) });
    const rng = new Prng(2024);
    const inputs: Uint8Array[] = [];
    for (let n = 0; n < valid.length; n++) inputs.push(valid.subarray(0, n));
    for (let i = 0; i < 600; i++) {
      const m = Uint8Array.from(valid);
      for (let k = 1 + Math.floor(rng.next() * 3); k > 0; k--) m[Math.floor(rng.next() * m.length)] = Math.floor(rng.next() * 256);
      // Distinct message IDs, so each is judged rather than answered as a duplicate.
      m[2] = ((10_000 + i) >> 8) & 0xff;
      m[3] = (10_000 + i) & 0xff;
      inputs.push(m);
    }
    for (const bytes of inputs) await raw.sendRaw(bytes);
    // Still up, still answering, for this session and a new one. A batching socket can hand the
    // server this whole burst in one read; the requests among it that reach the handler then fill
    // the session's 64 handler slots at once, and a request in the same read gets 5.03 with
    // Max-Age, after which a client tries again (RFC 7252 §5.9.3.4).
    const request = () => raw.request(CoapCode.POST, [...TELEMETRY, CF96], Uint8Array.of(0xd8, 0x60, 1));
    let ok = await request();
    if (codeString(ok.code) === '5.03') {
      await new Promise((r) => setTimeout(r, 1000 * (readUintOption(ok, 14 /* Max-Age, RFC 7252 §5.10.5 */) ?? 1)));
      ok = await request();
    }
    assert.equal(codeString(ok.code), '2.04', JSON.stringify(rig.server.counters().refused));
    const fresh = await RawCoap.open(rig, 'bed-raw');
    assert.equal(codeString((await fresh.request(CoapCode.POST, [...TELEMETRY, CF96], Uint8Array.of(0xd8, 0x60, 2))).code), '2.04');
    await fresh.close();
    const c = rig.server.counters();
    assert.ok((c.refused.malformed ?? 0) + (c.refused['bad-request'] ?? 0) + (c.refused['bad-option'] ?? 0) + (c.refused['not-found'] ?? 0) > 100, JSON.stringify(c.refused));
  });
});

describe('CoAPS server: slow handlers, limits', () => {
  let rig: CoapsRig;
  let release: (() => void)[] = [];
  let mode: 'slow' | 'hold' = 'slow';
  const h = counting(async () => {
    if (mode === 'slow') await new Promise((r) => setTimeout(r, 700));
    else await new Promise<void>((r) => release.push(r));
    return { code: '2.04' } satisfies CoapsReply;
  });

  before(async () => {
    rig = await startCoapsRig({ devices: ['bed-s1', 'bed-s2', 'bed-s3'], handler: h.handler, server: { piggybackMs: 50, limits: { maxHandlingPerSession: 2 } } });
  });

  after(async () => {
    for (const r of release) r();
    await rig?.stop();
  });

  it('a handler slower than piggybackMs: empty ACK, then a separate CON response; the client does not retransmit', async () => {
    // The client would retransmit after 100-150 ms without the empty ACK.
    const u = rig.uplink('bed-s1', { transmission: { ackTimeoutMs: 100 } });
    await u.connect();
    const before = rig.server.counters();
    assert.deepEqual(await u.send(rig.seal('bed-s1', 1)), { seq: 1, status: 'accepted' });
    const c = rig.server.counters();
    assert.equal(c.emptyAcks, before.emptyAcks + 1);
    assert.equal(c.duplicates, before.duplicates, 'no retransmission reached the server');
    assert.equal(c.handled, before.handled + 1);
    await until(() => rig.server.sessions().every((s) => s.handling === 0));
    await u.close();
  });

  it('the control: without the empty ACK in time, the same client retransmits (answered from the exchange, handled once)', async () => {
    const late = await startCoapsRig({ devices: ['bed-late'], handler: async () => {
      await new Promise((r) => setTimeout(r, 700));
      return { code: '2.04' };
    }, server: { piggybackMs: 5000 } });
    try {
      const u = late.uplink('bed-late', { transmission: { ackTimeoutMs: 100 } });
      await u.connect();
      assert.deepEqual(await u.send(late.seal('bed-late', 1)), { seq: 1, status: 'accepted' });
      const c = late.server.counters();
      assert.ok(c.duplicates >= 1, 'the client retransmitted');
      assert.equal(c.emptyAcks, 0);
      assert.equal(c.handled, 1);
    } finally {
      await late.stop();
    }
  });

  it('a session over its concurrency gets 5.03 (Max-Age) for the excess; another session is served meanwhile', async () => {
    mode = 'hold';
    const greedy = rig.uplink('bed-s2');
    const other = rig.uplink('bed-s3');
    await greedy.connect();
    await other.connect();
    const sends = Array.from({ length: 5 }, (_, i) => greedy.send(rig.seal('bed-s2', i + 1)));
    const results = Promise.allSettled(sends);
    await until(() => (rig.server.counters().refused.busy ?? 0) >= 3);
    const third = other.send(rig.seal('bed-s3', 1));
    await until(() => release.length === 3);
    for (const r of release.splice(0)) r();
    assert.equal((await third).status, 'accepted');
    const settled = await results;
    const busy = settled.filter((r) => r.status === 'rejected' && r.reason instanceof TransportError && r.reason.code === 'unavailable');
    assert.equal(busy.length, 3, 'three of five refused while two were being handled');
    assert.equal(settled.filter((r) => r.status === 'fulfilled').length, 2);
    mode = 'slow';
  });
});

describe('CoAPS over a bad network', () => {
  let rig: CoapsRig;

  before(async () => {
    rig = await startCoapsRig({ devices: ['bed-lossy', 'bed-roam'] });
  });

  after(async () => {
    await rig?.stop();
  });

  it('seeded drop / duplicate / reorder: every acknowledged message was received, none twice; the agent-style resend delivers all', async () => {
    const relay = await startUdpRelay({ target: { host: rig.host, port: rig.port }, seed: 99, profile: { drop: 0.15, duplicate: 0.1, delayMs: 1, jitterMs: 25 } });
    const fast = { transmission: { ackTimeoutMs: 150 }, connectTimeoutMs: 20_000, port: relay.port };
    let u = rig.uplink('bed-lossy', fast);
    const N = 150;
    const acked = new Map<number, UplinkAck>();
    let todo: UplinkMessage[] = Array.from({ length: N }, (_, i) => rig.seal('bed-lossy', i + 1, i % 5 === 0 ? 2400 : 600));
    const handlerCalls = rig.server.counters().handled;
    try {
      for (let round = 0; todo.length > 0 && round < 30; round++) {
        if (u.session === undefined) {
          await u.close();
          u = rig.uplink('bed-lossy', fast);
          try {
            await u.connect();
          } catch {
            continue;
          }
        }
        const results = await Promise.allSettled(todo.map((m) => u.send(m)));
        const next: UplinkMessage[] = [];
        results.forEach((r, i) => {
          const m = todo[i] as UplinkMessage;
          if (r.status === 'fulfilled') acked.set(m.seq, r.value);
          else next.push(m);
        });
        todo = next;
      }
    } finally {
      await u.close();
      await relay.stop();
    }
    assert.equal(acked.size, N, 'every message acknowledged in the end');
    const got = rig.received.filter((r) => r.deviceId === 'bed-lossy').map((r) => r.seq);
    assert.equal(new Set(got).size, got.length, 'no message recorded twice');
    for (const seq of acked.keys()) assert.ok(got.includes(seq), `acknowledged message ${seq} was received`);
    assert.ok(relay.counters.dropped > 20 && relay.counters.duplicated > 10, JSON.stringify(relay.counters));
    // Retransmissions the exchange caught never reached the handler twice for one message ID.
    assert.ok(rig.server.counters().handled - handlerCalls >= N);
  });

  it('a device that changes address mid-stream keeps its session by CID: no new handshake, nothing lost', async () => {
    // Answers to requests sent from the old port are lost with it: CoAP retransmits them (quickly here).
    const u: CoapsUplink = rig.uplink('bed-roam', { transmission: { ackTimeoutMs: 300 } });
    await u.connect();
    const opened = rig.server.counters().sessionsOpened;
    const remoteBefore = rig.server.sessions().find((s) => s.peer.kind === 'certificate' && s.peer.deviceId === 'bed-roam')?.remote;
    const first = Array.from({ length: 40 }, (_, i) => u.send(rig.seal('bed-roam', i + 1)));
    await until(() => u.counters().acknowledged >= 10);
    await u.rebind();
    const second = Array.from({ length: 40 }, (_, i) => u.send(rig.seal('bed-roam', 41 + i)));
    const acks = await Promise.all([...first, ...second]);
    assert.equal(acks.length, 80);
    const session = rig.server.sessions().find((s) => s.peer.kind === 'certificate' && s.peer.deviceId === 'bed-roam');
    assert.ok(session !== undefined && remoteBefore !== undefined);
    assert.notEqual(session.remote.port, remoteBefore.port, 'the server follows the device to its new port');
    assert.equal(rig.server.counters().sessionsOpened, opened, 'no new handshake');
    assert.equal(u.counters().connects, 1);
    assert.equal(rig.received.filter((r) => r.deviceId === 'bed-roam').length, 80);
    await u.close();
  });
});
