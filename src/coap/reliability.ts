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
    for (const p of this.#pending.values()) {
      if (p.deadline > now) continue;
      if (p.acked || p.retransmits >= this.#params.maxRetransmit) {
        this.#pending.delete(p.requestId);
        out.events.push({ kind: 'timeout', requestId: p.requestId });
        continue;
      }
      p.retransmits++;
      p.timeoutMs *= 2;
      p.deadline = now + p.timeoutMs;
      out.datagrams.push(p.datagram);
    }
    return out;
  }

  /** Earliest time `poll` has work, or undefined with nothing in flight. */
  nextTimeout(): number | undefined {
    let t: number | undefined;
    for (const p of this.#pending.values()) t = t === undefined ? p.deadline : Math.min(t, p.deadline);
    return t;
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
  /** Pass back to `respond`. */
  readonly key: number;
  readonly message: CoapMessage;
}

export interface CoapResponse {
  readonly code: number;
  readonly options?: readonly CoapOptionValue[];
  readonly payload?: Uint8Array;
}

interface Exchange {
  readonly request: CoapMessage;
  /** The response datagram once the handler answered; resent to duplicates (§4.5). */
  response: Uint8Array | undefined;
  readonly expires: number;
}

export interface ServerEndpointOptions {
  readonly params?: Partial<TransmissionParameters>;
  /** Bound on remembered exchanges; the oldest are forgotten first. */
  readonly maxExchanges?: number;
}

export type ServerEvent = { readonly kind: 'dropped'; readonly error: DecodeError | string };

/**
 * The receiving side: detects duplicates by message ID for EXCHANGE_LIFETIME and answers them
 * with the stored response, so a retransmitted POST is handed to the application once.
 * Responses are piggybacked on the ACK (§5.2.1).
 */
export class CoapServerEndpoint {
  readonly #params: TransmissionParameters;
  readonly #max: number;
  readonly #exchanges = new Map<number, Exchange>();

  constructor(opts: ServerEndpointOptions = {}) {
    this.#params = { ...DEFAULT_TRANSMISSION, ...opts.params };
    this.#max = opts.maxExchanges ?? 1024;
  }

  receive(datagram: Uint8Array, now: number): EndpointOutput<ServerEvent> & { requests: IncomingRequest[] } {
    this.#expire(now);
    let m: CoapMessage;
    try {
      m = decodeCoap(datagram);
    } catch (e) {
      if (e instanceof DecodeError) return { datagrams: [], events: [{ kind: 'dropped', error: e }], requests: [] };
      throw e;
    }
    if (m.type === 'ACK' || m.type === 'RST') return { datagrams: [], events: [], requests: [] };
    if (m.code === CoapCode.EMPTY) {
      // §4.3: an Empty CON is a "CoAP ping", answered with RST.
      return { datagrams: m.type === 'CON' ? [encodeCoap(emptyMessage('RST', m.messageId))] : [], events: [], requests: [] };
    }
    if (m.code >= 0x20) return { datagrams: [], events: [{ kind: 'dropped', error: 'not a request' }], requests: [] };
    const seen = this.#exchanges.get(m.messageId);
    if (seen !== undefined) {
      // §4.5: a duplicate. Answer with the same response if we have one; otherwise stay silent.
      return { datagrams: seen.response !== undefined ? [seen.response] : [], events: [], requests: [] };
    }
    if (this.#exchanges.size >= this.#max) {
      const oldest = this.#exchanges.keys().next().value as number;
      this.#exchanges.delete(oldest);
    }
    this.#exchanges.set(m.messageId, { request: m, response: undefined, expires: now + this.#params.exchangeLifetimeMs });
    return { datagrams: [], events: [], requests: [{ key: m.messageId, message: m }] };
  }

  /** The datagram answering request `key` (piggybacked ACK for CON, NON for NON). */
  respond(key: number, res: CoapResponse): Uint8Array {
    const ex = this.#exchanges.get(key);
    if (ex === undefined) throw new ApiMisuse('coap-no-exchange', 'CoAP: no such request (expired or already forgotten)');
    const type: CoapType = ex.request.type === 'CON' ? 'ACK' : 'NON';
    const datagram = encodeCoap({
      type, code: res.code, messageId: ex.request.messageId, token: ex.request.token,
      options: res.options ?? [], payload: res.payload ?? new Uint8Array(0),
    });
    ex.response = datagram;
    return datagram;
  }

  #expire(now: number): void {
    for (const [k, ex] of this.#exchanges) {
      if (ex.expires > now) break; // insertion order is expiry order
      this.#exchanges.delete(k);
    }
  }
}

function emptyMessage(type: CoapType, messageId: number): CoapMessage {
  return { type, code: CoapCode.EMPTY, messageId, token: new Uint8Array(0), options: [], payload: new Uint8Array(0) };
}

function sameToken(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
