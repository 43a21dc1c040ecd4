import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Prng } from '../../src/agent/sensors/prng.ts';
import {
  CoapCode, CoapOption, ContentFormat, codeString, decodeCoap, encodeCoap, pathOptions, readPath, readUintOption, uintOption,
} from '../../src/coap/message.ts';
import { Block1Assembler, blockOption, BlockOption, readBlock, splitBlocks } from '../../src/coap/blockwise.ts';
import { CoapClientEndpoint, CoapServerEndpoint, type ClientEvent } from '../../src/coap/reliability.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { ApiMisuse, DecodeError } from '../../src/util/errors.ts';

// CON POST, MID 0x1234, token aabbccdd, Uri-Path v1/telemetry, Content-Format 96, payload d860 (hand-assembled per RFC 7252 §3, §3.1).
const POST_HEX = '44021234aabbccdd' + 'b27631' + '0974656c656d65747279' + '1160' + 'ff' + 'd860';

describe('CoAP codec (RFC 7252 §3)', () => {
  it('decodes and re-encodes a hand-assembled confirmable POST', () => {
    const m = decodeCoap(fromHex(POST_HEX));
    assert.equal(m.type, 'CON');
    assert.equal(codeString(m.code), '0.02');
    assert.equal(m.messageId, 0x1234);
    assert.equal(toHex(m.token), 'aabbccdd');
    assert.equal(readPath(m), '/v1/telemetry');
    assert.equal(readUintOption(m, CoapOption.CONTENT_FORMAT), ContentFormat.COSE_ENCRYPT);
    assert.equal(toHex(m.payload), 'd860');
    const again = encodeCoap({
      type: 'CON', code: CoapCode.POST, messageId: 0x1234, token: fromHex('aabbccdd'),
      options: [...pathOptions('/v1/telemetry'), uintOption(CoapOption.CONTENT_FORMAT, 96)], payload: fromHex('d860'),
    });
    assert.equal(toHex(again), POST_HEX);
  });

  it('encodes extended option deltas and lengths (13 and 14 forms) and reads them back', () => {
    const long = new Uint8Array(300).fill(7);
    const m = { type: 'NON' as const, code: CoapCode.GET, messageId: 1, token: new Uint8Array(), payload: new Uint8Array(),
      options: [{ number: 1, value: new Uint8Array(13) }, { number: 60, value: Uint8Array.of(1) }, { number: 2000, value: long }] };
    const bytes = encodeCoap(m);
    const d = decodeCoap(bytes);
    assert.deepEqual(d.options.map((o) => [o.number, o.value.length]), [[1, 13], [60, 1], [2000, 300]]);
    assert.equal(bytes[4], 0x1d, 'delta 1, length 13 → extended length byte');
  });

  it('rejects every format error §3 names', () => {
    const bad: Record<string, string> = {
      'coap-truncated': '4402',
      'coap-version': '84021234',
      'coap-token-length': '49021234' + '00'.repeat(9),
      'coap-empty-payload': '40021234ff',
      'coap-option-format': '40021234f0',
      'coap-empty-not-empty': '41001234aa',
    };
    for (const [code, hex] of Object.entries(bad)) {
      assert.throws(() => decodeCoap(fromHex(hex)), (e) => e instanceof DecodeError && e.code === code, code);
    }
    assert.throws(() => decodeCoap(fromHex('40021234' + '1f')), (e) => e instanceof DecodeError && e.code === 'coap-option-format');
  });

  it('every prefix either fails with DecodeError or decodes to a prefix of the options and payload', () => {
    // CoAP has no length field: a cut at an option boundary is itself a well-formed message.
    const full = fromHex(POST_HEX);
    const whole = decodeCoap(full);
    for (let n = 0; n < full.length; n++) {
      try {
        const m = decodeCoap(full.subarray(0, n));
        assert.deepEqual(m.options, whole.options.slice(0, m.options.length), `prefix ${n}`);
        assert.deepEqual(m.payload, whole.payload.subarray(0, m.payload.length), `prefix ${n}`);
        assert.ok(m.payload.length < whole.payload.length || m.options.length < whole.options.length, `prefix ${n}`);
      } catch (e) {
        assert.ok(e instanceof DecodeError, `prefix ${n}: ${String(e)}`);
      }
    }
  });

  it('random bytes and mutations only ever give DecodeError', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), fc.nat(), fc.nat(255), (bytes, pos, val) => {
      for (const input of [bytes, (() => { const b = fromHex(POST_HEX); b[pos % b.length] = val; return b; })()]) {
        try {
          decodeCoap(input);
        } catch (e) {
          assert.ok(e instanceof DecodeError);
        }
      }
    }), { numRuns: 2000, seed: 11 });
  });
});

function client(seed: number): CoapClientEndpoint {
  const rng = new Prng(seed);
  return new CoapClientEndpoint({ random: () => rng.next(), tokenBytes: (n) => Uint8Array.from({ length: n }, () => Math.floor(rng.next() * 256)) });
}

const post = { code: CoapCode.POST, options: pathOptions('/v1/telemetry'), payload: Uint8Array.of(0xd0, 1) };

describe('CoAP reliability (RFC 7252 §4), fake clock', () => {
  it('retransmits with doubling timeouts, four times, then reports a timeout', () => {
    const c = client(1);
    const { requestId, datagram } = c.request(post, 0);
    const first = c.nextTimeout() as number;
    assert.ok(first >= 2000 && first <= 3000, `first timeout ${first}`);
    const sends: number[] = [];
    let events: ClientEvent[] = [];
    for (let now = 0; now < 200_000 && events.length === 0; now += 10) {
      const out = c.poll(now);
      for (const d of out.datagrams) {
        assert.deepEqual(d, datagram);
        sends.push(now);
      }
      events = out.events;
    }
    assert.equal(sends.length, 4);
    const gaps = sends.map((t, i) => t - (i === 0 ? 0 : (sends[i - 1] as number)));
    for (let i = 1; i < gaps.length; i++) assert.ok(Math.abs((gaps[i] as number) / (gaps[i - 1] as number) - 2) < 0.05, `gaps ${gaps}`);
    assert.deepEqual(events, [{ kind: 'timeout', requestId }]);
    assert.equal(c.inFlight, 0);
  });

  it('a piggybacked response completes the request; a duplicate ACK is dropped', () => {
    const c = client(2);
    const s = new CoapServerEndpoint();
    const { requestId, datagram } = c.request(post, 0);
    const r = s.receive(datagram, 0);
    assert.equal(r.requests.length, 1);
    const ack = s.respond((r.requests[0] as { key: number }).key, { code: CoapCode.CHANGED });
    const ev = c.receive(ack, 5).events;
    assert.equal(ev[0]?.kind, 'response');
    assert.equal(ev[0]?.kind === 'response' && ev[0].requestId, requestId);
    assert.equal(c.receive(ack, 6).events[0]?.kind, 'dropped');
  });

  it('the server hands a retransmitted request to the application once and repeats its answer', () => {
    const c = client(3);
    const s = new CoapServerEndpoint();
    const { datagram } = c.request(post, 0);
    const first = s.receive(datagram, 0);
    assert.equal(first.requests.length, 1);
    assert.deepEqual(s.receive(datagram, 10).datagrams, [], 'pending: silent');
    const ack = s.respond((first.requests[0] as { key: number }).key, { code: CoapCode.CHANGED });
    const dup = s.receive(datagram, 3000);
    assert.equal(dup.requests.length, 0);
    assert.deepEqual(dup.datagrams, [ack]);
  });

  it('empty ACK then separate CON response: the client acknowledges it and completes', () => {
    const c = client(4);
    const { requestId, datagram } = c.request(post, 0);
    const req = decodeCoap(datagram);
    const emptyAck = encodeCoap({ type: 'ACK', code: 0, messageId: req.messageId, token: new Uint8Array(), options: [], payload: new Uint8Array() });
    assert.deepEqual(c.receive(emptyAck, 10).events, []);
    assert.deepEqual(c.poll(5000).datagrams, [], 'no retransmission after the empty ACK');
    const sep = encodeCoap({ type: 'CON', code: CoapCode.CHANGED, messageId: 777, token: req.token, options: [], payload: new Uint8Array() });
    const out = c.receive(sep, 20);
    assert.equal(out.events[0]?.kind === 'response' && out.events[0].requestId, requestId);
    assert.equal(decodeCoap(out.datagrams[0] as Uint8Array).type, 'ACK');
    assert.equal(decodeCoap(out.datagrams[0] as Uint8Array).messageId, 777);
  });

  it('RST ends a request; a CoAP ping is answered with RST', () => {
    const c = client(5);
    const { requestId, datagram } = c.request(post, 0);
    const rst = encodeCoap({ type: 'RST', code: 0, messageId: decodeCoap(datagram).messageId, token: new Uint8Array(), options: [], payload: new Uint8Array() });
    assert.deepEqual(c.receive(rst, 1).events, [{ kind: 'reset', requestId }]);
    const s = new CoapServerEndpoint();
    const ping = encodeCoap({ type: 'CON', code: 0, messageId: 9, token: new Uint8Array(), options: [], payload: new Uint8Array() });
    assert.equal(decodeCoap(s.receive(ping, 0).datagrams[0] as Uint8Array).type, 'RST');
  });

  it('under 30% loss each way, every request reaches the application at most once, and all complete or time out', () => {
    for (const seed of [1, 2, 3]) {
      const rng = new Prng(1000 + seed);
      const c = client(seed);
      const s = new CoapServerEndpoint();
      const delivered = new Map<string, number>();
      const done = new Set<number>();
      const ids: number[] = [];
      const lossy = (d: Uint8Array[]) => d.filter(() => rng.next() >= 0.3);
      let toServer: Uint8Array[] = [];
      let toClient: Uint8Array[] = [];
      for (let i = 0; i < 50; i++) {
        const r = c.request({ ...post, payload: Uint8Array.of(0xd0, i) }, 0);
        ids.push(r.requestId);
        toServer.push(r.datagram);
      }
      for (let now = 0; now < 300_000 && done.size < ids.length; now += 50) {
        for (const d of lossy(toServer)) {
          const out = s.receive(d, now);
          for (const req of out.requests) {
            const k = toHex(req.message.payload);
            delivered.set(k, (delivered.get(k) ?? 0) + 1);
            toClient.push(s.respond(req.key, { code: CoapCode.CHANGED }));
          }
          toClient.push(...out.datagrams);
        }
        toServer = [];
        for (const d of lossy(toClient)) {
          const out = c.receive(d, now);
          for (const e of out.events) if (e.kind === 'response') done.add(e.requestId);
          toServer.push(...out.datagrams);
        }
        toClient = [];
        const p = c.poll(now);
        toServer.push(...p.datagrams);
        for (const e of p.events) if (e.kind === 'timeout') done.add(e.requestId);
      }
      assert.equal(done.size, ids.length, `seed ${seed}: all requests settled`);
      for (const [k, n] of delivered) assert.equal(n, 1, `seed ${seed}: payload ${k} delivered ${n} times`);
      assert.ok(delivered.size >= 45, `seed ${seed}: only ${delivered.size} of 50 got through`);
    }
  });
});

describe('CoAP separate responses (RFC 7252 §5.2.2), server side', () => {
  it('empty ACK, then a CON response retransmitted until the client ACKs it; a duplicate request meanwhile gets the empty ACK again', () => {
    const c = client(6);
    const s = new CoapServerEndpoint({ random: () => 0 });
    const { requestId, datagram } = c.request(post, 0);
    const [req] = s.receive(datagram, 0).requests;
    assert.ok(req);
    const ack = s.acknowledge(req.key);
    assert.ok(ack !== undefined);
    assert.deepEqual({ type: decodeCoap(ack).type, code: decodeCoap(ack).code }, { type: 'ACK', code: CoapCode.EMPTY });
    assert.equal(s.acknowledge(req.key), undefined, 'only once');
    assert.deepEqual(c.receive(ack, 10).events, []);
    assert.deepEqual(s.receive(datagram, 20).datagrams, [ack], 'a retransmitted request gets the same empty ACK');
    const sep = s.respond(req.key, { code: CoapCode.CHANGED }, 100);
    const m = decodeCoap(sep);
    assert.equal(m.type, 'CON');
    assert.notEqual(m.messageId, decodeCoap(datagram).messageId, 'its own message ID');
    assert.deepEqual(m.token, decodeCoap(datagram).token, 'matched by token');
    assert.equal(s.nextTimeout(), 100 + 2000);
    assert.deepEqual(s.poll(2099).datagrams, []);
    assert.deepEqual(s.poll(2100).datagrams, [sep], 'retransmitted when unacknowledged');
    const out = c.receive(sep, 2101);
    assert.equal(out.events[0]?.kind === 'response' && out.events[0].requestId, requestId);
    assert.deepEqual(s.receive(out.datagrams[0] as Uint8Array, 2102).events, []);
    assert.equal(s.unacknowledgedResponses, 0);
    assert.equal(s.nextTimeout(), undefined);
    assert.throws(() => s.respond(req.key, { code: CoapCode.CHANGED }), (e) => e instanceof ApiMisuse && e.code === 'coap-answered');
  });

  it('gives a separate response up after MAX_RETRANSMIT, and reports it', () => {
    const s = new CoapServerEndpoint({ random: () => 0 });
    const [req] = s.receive(encodeCoap({ type: 'CON', code: CoapCode.POST, messageId: 5, token: Uint8Array.of(1), options: [], payload: Uint8Array.of(1) }), 0).requests;
    assert.ok(req);
    s.acknowledge(req.key);
    s.respond(req.key, { code: CoapCode.CHANGED }, 0);
    let sent = 0;
    const events: string[] = [];
    for (let now = 0; now < 200_000; now += 100) {
      const out = s.poll(now);
      sent += out.datagrams.length;
      events.push(...out.events.map((e) => e.kind));
    }
    assert.equal(sent, 4);
    assert.deepEqual(events, ['response-timeout']);
  });

  it('a NON request has nothing to acknowledge and gets a NON answer', () => {
    const s = new CoapServerEndpoint();
    const r = s.receive(encodeCoap({ type: 'NON', code: CoapCode.POST, messageId: 77, token: Uint8Array.of(3), options: [], payload: Uint8Array.of(9, 9) }), 0);
    const [req] = r.requests;
    assert.ok(req);
    assert.equal(s.acknowledge(req.key), undefined, 'nothing to acknowledge for NON');
    assert.equal(decodeCoap(s.respond(req.key, { code: CoapCode.CHANGED })).type, 'NON');
  });

  it('a CoAP ping from the client side: the RST is its answer', () => {
    const c = client(7);
    const s = new CoapServerEndpoint();
    const { requestId, datagram } = c.ping(0);
    const m = decodeCoap(datagram);
    assert.deepEqual({ type: m.type, code: m.code, token: m.token.length }, { type: 'CON', code: 0, token: 0 });
    const [rst] = s.receive(datagram, 1).datagrams;
    assert.deepEqual(c.receive(rst as Uint8Array, 2).events, [{ kind: 'reset', requestId }]);
  });
});

describe('Block-wise request bodies (RFC 7959 Block1, RFC 9175 Request-Tag)', () => {
  it('encodes and reads the Block option (§2.2), and refuses SZX 7 and values over 3 bytes', () => {
    for (const b of [{ num: 0, more: true, szx: 6 }, { num: 1, more: false, szx: 0 }, { num: 0xfffff, more: true, szx: 3 }]) {
      const m = { type: 'CON' as const, code: CoapCode.POST, messageId: 1, token: new Uint8Array(), payload: new Uint8Array(), options: [blockOption(BlockOption.BLOCK1, b)] };
      assert.deepEqual(readBlock(decodeCoap(encodeCoap(m)), BlockOption.BLOCK1), b);
    }
    const bad = (value: Uint8Array) => ({ type: 'CON' as const, code: CoapCode.POST, messageId: 1, token: new Uint8Array(), payload: new Uint8Array(), options: [{ number: BlockOption.BLOCK1, value }] });
    assert.throws(() => readBlock(bad(Uint8Array.of(0x0f)), BlockOption.BLOCK1), (e) => e instanceof DecodeError && e.code === 'coap-block');
    assert.throws(() => readBlock(bad(Uint8Array.of(1, 2, 3, 4)), BlockOption.BLOCK1), (e) => e instanceof DecodeError);
    assert.throws(() => blockOption(BlockOption.BLOCK1, { num: 0, more: false, szx: 7 }), RangeError);
    assert.equal(splitBlocks(new Uint8Array(2049), 6).map((b) => b.length).join(','), '1024,1024,1');
  });

  it('reassembles in order; refuses out-of-order (4.08), oversize (4.13, also by Size1), too many bodies (busy); forgets idle bodies', () => {
    const asm = new Block1Assembler({ maxBodyBytes: 100, maxBodies: 1, idleMs: 1000 });
    const part = (n: number, fill: number) => new Uint8Array(n).fill(fill);
    assert.equal(asm.add('a', { num: 0, more: true, szx: 1 }, part(32, 1), 70, 0).kind, 'continue');
    assert.equal(asm.add('b', { num: 0, more: true, szx: 1 }, part(32, 2), undefined, 0).kind, 'busy');
    const done = asm.add('a', { num: 1, more: false, szx: 1 }, part(5, 3), undefined, 10);
    assert.equal(done.kind, 'complete');
    assert.deepEqual(done.kind === 'complete' && [...done.body], [...part(32, 1), ...part(5, 3)]);
    assert.equal(asm.size, 0);
    assert.equal(asm.add('c', { num: 2, more: true, szx: 1 }, part(32, 1), undefined, 20).kind, 'incomplete');
    assert.equal(asm.add('c', { num: 0, more: true, szx: 1 }, part(31, 1), undefined, 20).kind, 'incomplete', 'a middle block must be full');
    assert.deepEqual(asm.add('d', { num: 0, more: true, szx: 1 }, part(32, 1), 101, 30), { kind: 'too-large', limit: 100 });
    assert.equal(asm.add('e', { num: 0, more: true, szx: 2 }, part(64, 1), undefined, 40).kind, 'continue');
    assert.deepEqual(asm.add('e', { num: 1, more: true, szx: 2 }, part(64, 1), undefined, 41), { kind: 'too-large', limit: 100 });
    assert.equal(asm.size, 0, 'a refused body is dropped');
    assert.equal(asm.add('f', { num: 0, more: true, szx: 1 }, part(32, 1), undefined, 50).kind, 'continue');
    assert.equal(asm.bytes, 32);
    assert.equal(asm.add('f', { num: 1, more: false, szx: 1 }, part(1, 1), undefined, 1051).kind, 'incomplete', 'idle too long: forgotten');
  });
});
