/**
 * CoAP message-layer reliability (RFC 7252 §4), sans-I/O: endpoints take datagrams and the current
 * time and return datagrams to send and events. Timers and sockets belong to the caller (the CoAPS
 * transport), so tests drive these under a fake clock.
 *
 * One endpoint object serves one peer (one DTLS session); message IDs are per peer (§4.4).
 */
import { ApiMisuse, DecodeError } from '../util/errors.ts';
import { CoapCode, decodeCoap, encodeCoap, type CoapMessage, type CoapOptionValue, type CoapType } from './message.ts';

/** RFC 7252 §4.8 defaults. */
export interface TransmissionParameters {
  readonly ackTimeoutMs: number;
  readonly ackRandomFactor: number;
  readonly maxRetransmit: number;
  /** §4.8.2 EXCHANGE_LIFETIME, how long a message ID stays in the duplicate cache. */
  readonly exchangeLifetimeMs: number;
}

export const DEFAULT_TRANSMISSION: TransmissionParameters = Object.freeze({
  ackTimeoutMs: 2000,
  ackRandomFactor: 1.5,
  maxRetransmit: 4,
  exchangeLifetimeMs: 247_000,
});

export interface CoapRequest {
  readonly code: number;
  readonly options: readonly CoapOptionValue[];
  readonly payload: Uint8Array;
}

export type ClientEvent =
  | { readonly kind: 'response'; readonly requestId: number; readonly response: CoapMessage }
  | { readonly kind: 'timeout'; readonly requestId: number }
  | { readonly kind: 'reset'; readonly requestId: number }
  | { readonly kind: 'dropped'; readonly error: DecodeError | string };

export interface EndpointOutput<E> {
  readonly datagrams: Uint8Array[];
  readonly events: E[];
}

interface Pending {
  readonly requestId: number;
  readonly messageId: number;
  readonly token: Uint8Array;
  readonly datagram: Uint8Array;
  /** False until an ACK arrives; after an empty ACK the response comes separately (§5.2.2). */
  acked: boolean;
  retransmits: number;
  timeoutMs: number;
  deadline: number;
}

export interface ClientEndpointOptions {
  readonly params?: Partial<TransmissionParameters>;
  /** Uniform [0,1): randomises the first timeout (§4.2) and the initial message ID. */
  readonly random: () => number;
  /** Random token bytes (§5.3.1: tokens should be unguessable on the open Internet; 4 bytes here). */
  readonly tokenBytes: (n: number) => Uint8Array;
  /** How long to wait for a separate response after an empty ACK. */
  readonly separateResponseTimeoutMs?: number;
}

export class CoapClientEndpoint {
  readonly #params: TransmissionParameters;
  readonly #random: () => number;
  readonly #tokenBytes: (n: number) => Uint8Array;
  readonly #separateTimeout: number;
  readonly #pending = new Map<number, Pending>();
  #nextMessageId: number;
  #nextRequestId = 1;

  constructor(opts: ClientEndpointOptions) {
    this.#params = { ...DEFAULT_TRANSMISSION, ...opts.params };
    this.#random = opts.random;
    this.#tokenBytes = opts.tokenBytes;
    this.#separateTimeout = opts.separateResponseTimeoutMs ?? 30_000;
    this.#nextMessageId = Math.floor(opts.random() * 0x10000);
  }

  get inFlight(): number {
    return this.#pending.size;
  }

  /** Starts a confirmable request; returns its id (for matching events) and the datagram to send. */
  request(req: CoapRequest, now: number): { requestId: number; datagram: Uint8Array } {
    if (this.#pending.size >= 0x8000) throw new ApiMisuse('coap-too-many-in-flight', 'CoAP: too many requests in flight');
    const messageId = this.#nextMessageId;
    this.#nextMessageId = (this.#nextMessageId + 1) & 0xffff;
    const token = this.#tokenBytes(4);
    const datagram = encodeCoap({ type: 'CON', code: req.code, messageId, token, options: req.options, payload: req.payload });
    // §4.2: the first timeout is random in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR].
    const timeoutMs = this.#params.ackTimeoutMs * (1 + this.#random() * (this.#params.ackRandomFactor - 1));
    const requestId = this.#nextRequestId++;
    this.#pending.set(requestId, { requestId, messageId, token, datagram, acked: false, retransmits: 0, timeoutMs, deadline: now + timeoutMs });
    return { requestId, datagram };
  }

  /**
   * §4.3 "CoAP ping": an Empty CON, answered by an RST (reported as a `reset` event for the
   * returned id), retransmitted and timed out like any CON.
   */
  ping(now: number): { requestId: number; datagram: Uint8Array } {
    if (this.#pending.size >= 0x8000) throw new ApiMisuse('coap-too-many-in-flight', 'CoAP: too many requests in flight');
    const messageId = this.#nextMessageId;
    this.#nextMessageId = (this.#nextMessageId + 1) & 0xffff;
    const datagram = encodeCoap(emptyMessage('CON', messageId));
    const timeoutMs = this.#params.ackTimeoutMs * (1 + this.#random() * (this.#params.ackRandomFactor - 1));
    const requestId = this.#nextRequestId++;
    this.#pending.set(requestId, { requestId, messageId, token: new Uint8Array(0), datagram, acked: false, retransmits: 0, timeoutMs, deadline: now + timeoutMs });
    return { requestId, datagram };
  }

  /** Handles one datagram from the peer. */
  receive(datagram: Uint8Array, _now: number): EndpointOutput<ClientEvent> {
    let m: CoapMessage;
    try {
      m = decodeCoap(datagram);
    } catch (e) {
      if (e instanceof DecodeError) return { datagrams: [], events: [{ kind: 'dropped', error: e }] };
      throw e;
    }
    const out: EndpointOutput<ClientEvent> = { datagrams: [], events: [] };
    if (m.type === 'ACK' || m.type === 'RST') {
      const p = this.#byMessageId(m.messageId);
      if (p === undefined) return { datagrams: [], events: [{ kind: 'dropped', error: 'ACK/RST for no pending request' }] };
      if (m.type === 'RST') {
        this.#pending.delete(p.requestId);
        out.events.push({ kind: 'reset', requestId: p.requestId });
      } else if (m.code === CoapCode.EMPTY) {
        p.acked = true; // §5.2.2: separate response follows
        p.deadline = _now + this.#separateTimeout;
      } else if (sameToken(m.token, p.token)) {
        this.#pending.delete(p.requestId);
        out.events.push({ kind: 'response', requestId: p.requestId, response: m });
      } else {
        out.events.push({ kind: 'dropped', error: 'piggybacked response with a foreign token' });
      }
      return out;
    }
    // A separate response (CON or NON) is matched by token (§5.3.2).
    const p = [...this.#pending.values()].find((x) => sameToken(x.token, m.token));
    if (m.type === 'CON') out.datagrams.push(encodeCoap(emptyMessage('ACK', m.messageId)));
    if (p === undefined || m.code < 0x40) {
      if (m.type === 'CON' && p === undefined && m.code >= 0x40) {
        // Already answered (a retransmitted separate response): the ACK above is all it needs.
        return out;
      }
      out.events.push({ kind: 'dropped', error: 'message matches no request' });
      return out;
    }
    this.#pending.delete(p.requestId);
    out.events.push({ kind: 'response', requestId: p.requestId, response: m });
    return out;
  }

  /** Retransmits and times out what is due at `now` (§4.2: timeout doubles each retransmission). */
  poll(now: number): EndpointOutput<ClientEvent> {
    const out: EndpointOutput<ClientEvent> = { datagrams: [], events: [] };
    // After an empty ACK the deadline is the wait for the separate response: nothing to resend.
    retransmitDue(this.#pending, now, this.#params.maxRetransmit, out.datagrams, (p) => p.acked, (p) => {
      this.#pending.delete(p.requestId);
      out.events.push({ kind: 'timeout', requestId: p.requestId });
    });
    return out;
  }

  /** Earliest time `poll` has work, or undefined with nothing in flight. */
  nextTimeout(): number | undefined {
    return earliestDeadline(this.#pending.values());
  }

  /** Abandons every pending request (connection lost); returns their ids. */
  cancelAll(): number[] {
    const ids = [...this.#pending.keys()];
    this.#pending.clear();
    return ids;
  }

  #byMessageId(messageId: number): Pending | undefined {
    for (const p of this.#pending.values()) if (p.messageId === messageId) return p;
    return undefined;
  }
}

export interface IncomingRequest {
  /** Pass back to `respond` / `acknowledge`. */
  readonly key: number;
  readonly message: CoapMessage;
}

export interface CoapResponse {
  readonly code: number;
  readonly options?: readonly CoapOptionValue[];
  readonly payload?: Uint8Array;
}

/**
 * What the endpoint remembers of a request, for EXCHANGE_LIFETIME: enough to answer a duplicate
 * (§4.5) and to match a separate response's ACK. Never the request's payload: a peer cannot make the
 * dedupe cache hold its bodies.
 */
interface Exchange {
  readonly key: number;
  readonly type: CoapType;
  readonly messageId: number;
  readonly token: Uint8Array;
  /**
   * 'pending': the application has it, nothing sent yet; 'acknowledged': an empty ACK went out and
   * the response will come separately (§5.2.2); 'answered': the response went out.
   */
  state: 'pending' | 'acknowledged' | 'answered';
  /** The datagram a duplicate gets (§4.5): the piggybacked response, or the empty ACK. */
  reply: Uint8Array | undefined;
  readonly expires: number;
}

/** A separate response sent as CON (§5.2.2), retransmitted until the client acknowledges it. */
interface OutgoingResponse {
  readonly messageId: number;
  readonly datagram: Uint8Array;
  retransmits: number;
  timeoutMs: number;
  deadline: number;
}

export interface ServerEndpointOptions {
  readonly params?: Partial<TransmissionParameters>;
  /** Bound on remembered exchanges; the oldest are forgotten first (default 1024). */
  readonly maxExchanges?: number;
  /** Uniform [0,1): randomises separate responses' first timeout and the initial message ID (default Math.random). */
  readonly random?: () => number;
}

export type ServerEvent =
  | { readonly kind: 'dropped'; readonly error: DecodeError | string }
  /** A separate CON response was never acknowledged (§4.2: given up after MAX_RETRANSMIT). */
  | { readonly kind: 'response-timeout'; readonly messageId: number }
  /** A retransmitted request (§4.5), answered from the exchange and not handed on again. */
  | { readonly kind: 'duplicate'; readonly messageId: number };

/**
 * The receiving side: detects duplicates by message ID for EXCHANGE_LIFETIME and answers them
 * with the stored answer, so a retransmitted POST is handed to the application once. A response is
 * piggybacked on the ACK (§5.2.1) unless the application took long enough that `acknowledge` sent an
 * empty ACK first; then it goes as a separate CON response (§5.2.2) with its own message ID,
 * retransmitted with back-off until the client ACKs it (`poll`, `nextTimeout`).
 */
export class CoapServerEndpoint {
  readonly #params: TransmissionParameters;
  readonly #max: number;
  readonly #random: () => number;
  readonly #exchanges = new Map<number, Exchange>();
  readonly #byKey = new Map<number, Exchange>();
  readonly #outgoing = new Map<number, OutgoingResponse>();
  #nextKey = 1;
  #nextMessageId: number;

  constructor(opts: ServerEndpointOptions = {}) {
    this.#params = { ...DEFAULT_TRANSMISSION, ...opts.params };
    this.#max = opts.maxExchanges ?? 1024;
    this.#random = opts.random ?? Math.random;
    this.#nextMessageId = Math.floor(this.#random() * 0x10000);
  }

  /** Separate responses awaiting the client's ACK. */
  get unacknowledgedResponses(): number {
    return this.#outgoing.size;
  }

  receive(datagram: Uint8Array, now: number): EndpointOutput<ServerEvent> & { requests: IncomingRequest[] } {
    this.#expire(now);
    let m: CoapMessage;
    try {
      m = decodeCoap(datagram);
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      // §4.2: a CON with a message format error is rejected with RST, when its header can be read.
      const rst = datagram.length >= 4 && datagram[0] !== undefined && datagram[0] >> 6 === 1 && ((datagram[0] >> 4) & 3) === 0
        ? [encodeCoap(emptyMessage('RST', ((datagram[2] as number) << 8) | (datagram[3] as number)))]
        : [];
      return { datagrams: rst, events: [{ kind: 'dropped', error: e }], requests: [] };
    }
    if (m.type === 'ACK' || m.type === 'RST') {
      // The client's answer to a separate response (§5.2.2); anything else matches nothing.
      if (!this.#outgoing.delete(m.messageId)) return { datagrams: [], events: [{ kind: 'dropped', error: `${m.type} for no response of ours` }], requests: [] };
      return { datagrams: [], events: [], requests: [] };
    }
    if (m.code === CoapCode.EMPTY) {
      // §4.3: an Empty CON is a "CoAP ping", answered with RST.
      return { datagrams: m.type === 'CON' ? [encodeCoap(emptyMessage('RST', m.messageId))] : [], events: [], requests: [] };
    }
    if (m.code >= 0x20) {
      // §4.2/§4.3: a response or a reserved class we lack the context for: reject a CON with RST.
      return { datagrams: m.type === 'CON' ? [encodeCoap(emptyMessage('RST', m.messageId))] : [], events: [{ kind: 'dropped', error: 'not a request' }], requests: [] };
    }
    const seen = this.#exchanges.get(m.messageId);
    if (seen !== undefined) {
      // §4.5: a duplicate. Repeat what we answered (the response, or the empty ACK); silence while pending.
      return { datagrams: seen.reply !== undefined ? [seen.reply] : [], events: [{ kind: 'duplicate', messageId: m.messageId }], requests: [] };
    }
    if (this.#exchanges.size >= this.#max) {
      const oldest = this.#exchanges.values().next().value as Exchange;
      this.#forget(oldest);
    }
    const ex: Exchange = {
      key: this.#nextKey++, type: m.type, messageId: m.messageId, token: Uint8Array.from(m.token),
      state: 'pending', reply: undefined, expires: now + this.#params.exchangeLifetimeMs,
    };
    this.#exchanges.set(m.messageId, ex);
    this.#byKey.set(ex.key, ex);
    return { datagrams: [], events: [], requests: [{ key: ex.key, message: m }] };
  }

  /**
   * §5.2.2: an empty ACK for a CON request whose response is not ready, so the client stops
   * retransmitting it. Undefined when none is due (NON, already acknowledged or answered, forgotten).
   */
  acknowledge(key: number): Uint8Array | undefined {
    const ex = this.#byKey.get(key);
    if (ex === undefined || ex.type !== 'CON' || ex.state !== 'pending') return undefined;
    ex.state = 'acknowledged';
    ex.reply = encodeCoap(emptyMessage('ACK', ex.messageId));
    return ex.reply;
  }

  /**
   * The datagram answering request `key`: piggybacked on the ACK for a CON (§5.2.1), a separate
   * CON response after `acknowledge` (§5.2.2, retransmitted by `poll`), a NON for a NON (§5.2.3).
   */
  respond(key: number, res: CoapResponse, now = 0): Uint8Array {
    const ex = this.#byKey.get(key);
    if (ex === undefined) throw new ApiMisuse('coap-no-exchange', 'CoAP: no such request (expired or already forgotten)');
    if (ex.state === 'answered') throw new ApiMisuse('coap-answered', 'CoAP: this request was already answered');
    const options = res.options ?? [];
    const payload = res.payload ?? new Uint8Array(0);
    if (ex.state === 'acknowledged') {
      const messageId = this.#takeMessageId();
      const datagram = encodeCoap({ type: 'CON', code: res.code, messageId, token: ex.token, options, payload });
      // §4.2: the same randomised, doubling timeouts as any CON.
      const timeoutMs = this.#params.ackTimeoutMs * (1 + this.#random() * (this.#params.ackRandomFactor - 1));
      this.#outgoing.set(messageId, { messageId, datagram, retransmits: 0, timeoutMs, deadline: now + timeoutMs });
      ex.state = 'answered';
      return datagram;
    }
    const type: CoapType = ex.type === 'CON' ? 'ACK' : 'NON';
    const datagram = encodeCoap({ type, code: res.code, messageId: type === 'ACK' ? ex.messageId : this.#takeMessageId(), token: ex.token, options, payload });
    ex.state = 'answered';
    ex.reply = datagram;
    return datagram;
  }

  /** Retransmits separate responses that are due; gives up after MAX_RETRANSMIT (§4.2). */
  poll(now: number): EndpointOutput<ServerEvent> {
    const out: EndpointOutput<ServerEvent> = { datagrams: [], events: [] };
    retransmitDue(this.#outgoing, now, this.#params.maxRetransmit, out.datagrams, () => false, (o) => {
      this.#outgoing.delete(o.messageId);
      out.events.push({ kind: 'response-timeout', messageId: o.messageId });
    });
    return out;
  }

  /** Earliest time `poll` has work, or undefined. */
  nextTimeout(): number | undefined {
    return earliestDeadline(this.#outgoing.values());
  }

  #takeMessageId(): number {
    let id = this.#nextMessageId;
    // Never reuse an ID still awaiting its ACK.
    while (this.#outgoing.has(id)) id = (id + 1) & 0xffff;
    this.#nextMessageId = (id + 1) & 0xffff;
    return id;
  }

  #forget(ex: Exchange): void {
    this.#exchanges.delete(ex.messageId);
    this.#byKey.delete(ex.key);
  }

  #expire(now: number): void {
    for (const ex of this.#exchanges.values()) {
      if (ex.expires > now) break; // insertion order is expiry order
      this.#forget(ex);
    }
  }
}

/** A CON in flight, as both endpoints retransmit it (§4.2). */
interface Retransmitted {
  readonly datagram: Uint8Array;
  retransmits: number;
  timeoutMs: number;
  deadline: number;
}

/**
 * §4.2: every CON due at `now` is sent again with its timeout doubled, until MAX_RETRANSMIT; then
 * (or when `finished` says nothing more is to be sent) `giveUp` ends it.
 */
function retransmitDue<T extends Retransmitted>(items: Map<number, T>, now: number, maxRetransmit: number, datagrams: Uint8Array[], finished: (item: T) => boolean, giveUp: (item: T) => void): void {
  for (const item of items.values()) {
    if (item.deadline > now) continue;
    if (finished(item) || item.retransmits >= maxRetransmit) {
      giveUp(item);
      continue;
    }
    item.retransmits++;
    item.timeoutMs *= 2;
    item.deadline = now + item.timeoutMs;
    datagrams.push(item.datagram);
  }
}

function earliestDeadline(items: Iterable<{ readonly deadline: number }>): number | undefined {
  let t: number | undefined;
  for (const i of items) t = t === undefined ? i.deadline : Math.min(t, i.deadline);
  return t;
}

function emptyMessage(type: CoapType, messageId: number): CoapMessage {
  return { type, code: CoapCode.EMPTY, messageId, token: new Uint8Array(0), options: [], payload: new Uint8Array(0) };
}

function sameToken(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
