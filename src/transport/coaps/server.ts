/**
 * The receiving end of CoAPS at transport level: a CoAP server (RFC 7252) on the DTLS 1.3 server
 * (src/dtls/udp.ts), serving one resource, `POST /v1/telemetry`. Each accepted request's payload,
 * Content-Format and the peer identity the handshake authenticated go to a handler; the handler's
 * promise decides the response code. What the handler never sees:
 *
 * - requests that are not a well-formed telemetry POST: 4.04 (another path), 4.05 (another
 *   method), 4.02 (an unrecognised critical option, §5.4.1), 4.00 (no payload, a query, a bad
 *   Block1), 4.15 (a Content-Format not accepted, or none), 4.13 (too large, with Size1 = the
 *   limit, RFC 7959 §4); each counted by reason;
 * - retransmissions (§4.5): answered from the exchange, counted as duplicates;
 * - more than the per-session or total handler concurrency: 5.03 with Max-Age (§5.9.3.4).
 *
 * A handler slower than `piggybackMs` gets an empty ACK sent for it (§5.2.2), so the client stops
 * retransmitting, and its answer follows as a separate CON response, retransmitted until the client
 * acknowledges it. Block-wise bodies (RFC 7959 Block1 + RFC 9175 Request-Tag) are reassembled per
 * session within bounds. A session closes when the peer closes it, on `closeSessions`, or on `close`.
 *
 * @example
 *   const server = await createCoapsServer({
 *     port: 5684, dtls: { certificateChain, signer, verifier, requireClientCertificate: true },
 *     handler: async (req) => ({ code: '2.04' }),
 *   });
 *   await server.closeSessions((peer) => peer.kind === 'certificate' && peer.deviceId === 'bed-7');
 */
import { EventEmitter } from 'node:events';
import { Block1Assembler, blockOption, BlockOption, readBlock, type BlockValue } from '../../coap/blockwise.ts';
import { CoapCode, CoapOption, codeString, readPath, readUintOption, uintOption, type CoapMessage, type CoapOptionValue } from '../../coap/message.ts';
import { CoapServerEndpoint, type IncomingRequest, type ServerEvent, type TransmissionParameters } from '../../coap/reliability.ts';
import type { SessionInfo } from '../../dtls/connection.ts';
import { alertFor } from '../../dtls/errors.ts';
import type { PeerAddress } from '../../dtls/server-endpoint.ts';
import { DtlsServer, type DtlsServerSession, type ServerSocketOptions } from '../../dtls/udp.ts';
import { aint } from '../../util/assert.ts';
import { toHex } from '../../util/bytes.ts';
import { systemClock, type Clock } from '../../util/clock.ts';
import { DecodeError, VitalsealError } from '../../util/errors.ts';
import { systemTimers, type TimerHandle, type Timers } from '../timers.ts';
import { COSE_CONTENT_FORMAT_IDS } from '../types.ts';
import { COAPS_PORT, DUPLICATE_PAYLOAD, MAX_DIAGNOSTIC_BYTES, responseCodeValue, TELEMETRY_PATH, TEXT_PLAIN, type CoapsResponseCode } from './codes.ts';

/** Who the DTLS handshake authenticated. */
export type CoapsPeer =
  /** A certificate validated by the server's verifier (src/pki validateChain for the ingest). */
  | { readonly kind: 'certificate'; readonly deviceId: string | undefined; readonly spkiSha256: string; readonly notAfter: number; readonly subject: string }
  /** An external PSK; the identity as UTF-8 text (device ids by convention). */
  | { readonly kind: 'psk'; readonly identity: string }
  /** Neither (a server that does not require client authentication). */
  | { readonly kind: 'anonymous' };

export interface CoapsRequest {
  readonly payload: Uint8Array;
  /** The request's Content-Format (one of the server's `contentFormats`). */
  readonly contentFormat: number;
  readonly peer: CoapsPeer;
  /** Protocol and cipher suite, e.g. 'DTLSv1.3 TLS_AES_128_GCM_SHA256'. */
  readonly suite: string;
  readonly remote: PeerAddress;
  readonly receivedAt: number;
}

export interface CoapsReply {
  readonly code: Exclude<CoapsResponseCode, '2.31'>;
  /** With 2.04: the message was already taken; the response says "duplicate" (codes.ts). */
  readonly duplicate?: boolean;
  /** A short diagnostic for an error response (RFC 7252 §5.5.2), seen by the device: never secret. */
  readonly diagnostic?: string;
}

/** Decides the response to one telemetry POST. A rejection or a throw answers 5.00. */
export type CoapsHandler = (request: CoapsRequest) => Promise<CoapsReply>;

export interface CoapsServerLimits {
  /** Requests of one session in the handler at once (default 64); beyond, 5.03. */
  readonly maxHandlingPerSession: number;
  /** Requests in the handler at once over all sessions (default 8192); beyond, 5.03. */
  readonly maxHandling: number;
  /** Exchanges one session's duplicate detection remembers (default 256). */
  readonly maxExchangesPerSession: number;
  /** Block-wise bodies in progress per session (default 4). */
  readonly maxBodiesPerSession: number;
  /** A block-wise body whose next block is this late is dropped (default 60 s). */
  readonly bodyIdleMs: number;
}

export const DEFAULT_COAPS_SERVER_LIMITS: CoapsServerLimits = Object.freeze({
  maxHandlingPerSession: 64,
  maxHandling: 8192,
  maxExchangesPerSession: 256,
  maxBodiesPerSession: 4,
  bodyIdleMs: 60_000,
});

/** The DTLS server's settings (src/dtls/config.ts); host, port and clock are the CoAPS server's. */
export type CoapsServerDtlsOptions = Omit<ServerSocketOptions, 'host' | 'port' | 'clock'>;

export interface CoapsServerOptions {
  /** Default '0.0.0.0'. */
  readonly host?: string;
  /** Default 5684 (0: any free port). */
  readonly port?: number;
  readonly dtls: CoapsServerDtlsOptions;
  readonly handler: CoapsHandler;
  /** The telemetry resource (default `/v1/telemetry`). */
  readonly path?: string;
  /** Content-Formats taken (default 96 cose-encrypt and 16 cose-encrypt0). */
  readonly contentFormats?: readonly number[];
  /** Largest body (default 64 KiB). */
  readonly maxPayloadBytes?: number;
  /** How long a handler may take before the server sends an empty ACK for it (default 500 ms). */
  readonly piggybackMs?: number;
  readonly limits?: Partial<CoapsServerLimits>;
  /** For separate responses (RFC 7252 §4.8; the defaults). */
  readonly transmission?: Partial<TransmissionParameters>;
  readonly timers?: Timers;
  /** Time for the CoAP layer (deadlines, `receivedAt`); the DTLS layer keeps the system clock. */
  readonly clock?: Clock;
}

/** Why a request was answered without reaching the handler. */
export type CoapsRefusal = 'malformed' | 'not-found' | 'method-not-allowed' | 'bad-option' | 'bad-request' | 'unsupported-format' | 'too-large' | 'incomplete' | 'busy';

export interface CoapsServerCounters {
  readonly sessionsOpened: number;
  readonly sessionsClosed: number;
  readonly handshakeFailures: number;
  /** Requests handed to the handler. */
  readonly handled: number;
  readonly handlerErrors: number;
  /** Responses sent, by code ('2.04', '4.13', ...). */
  readonly responses: Readonly<Record<string, number>>;
  readonly refused: Readonly<Partial<Record<CoapsRefusal, number>>>;
  /** Retransmitted requests answered from the exchange. */
  readonly duplicates: number;
  readonly emptyAcks: number;
  readonly separateResponseTimeouts: number;
}

export interface CoapsSessionInfo {
  readonly peer: CoapsPeer;
  readonly remote: PeerAddress;
  readonly suite: string;
  /** Requests of this session in the handler now. */
  readonly handling: number;
}

export interface CoapsServerEvents {
  session: [CoapsSessionInfo];
  'session-closed': [CoapsSessionInfo];
  /** A DTLS handshake failed; `alert` is the alert sent (or received, or the failure's code when none was). */
  'handshake-error': [{ readonly error: VitalsealError; readonly alert: string; readonly remote: PeerAddress }];
  error: [Error];
}

export interface CoapsServer extends EventEmitter<CoapsServerEvents> {
  address(): { address: string; port: number };
  sessions(): CoapsSessionInfo[];
  counters(): CoapsServerCounters;
  /** The DTLS layer underneath (its endpoint's stats, for metrics). */
  readonly dtls: DtlsServer;
  /** Closes (close_notify) every session whose peer matches; resolves with how many. */
  closeSessions(match: (peer: CoapsPeer) => boolean): Promise<number>;
  /** Closes every session and the socket; answers still being computed are dropped. */
  close(): Promise<void>;
}

/** The identity a DTLS session authenticated, as the handler sees it. */
export function peerOf(info: SessionInfo): CoapsPeer {
  if (info.pskIdentity !== undefined) return { kind: 'psk', identity: new TextDecoder('utf-8', { fatal: false }).decode(info.pskIdentity) };
  const p = info.peer;
  if (p !== undefined) return { kind: 'certificate', deviceId: p.deviceId, spkiSha256: p.spkiSha256, notAfter: p.notAfter, subject: p.subject };
  return { kind: 'anonymous' };
}

/** Critical options a telemetry POST may carry (RFC 7252 §5.4.1: any other critical option → 4.02). */
const RECOGNISED_CRITICAL = new Set<number>([CoapOption.URI_HOST, CoapOption.URI_PORT, CoapOption.URI_PATH, CoapOption.URI_QUERY, CoapOption.ACCEPT, BlockOption.BLOCK1]);
/** Options that may appear once (RFC 7252 §5.10 Table 4, RFC 7959 §2.1, §4). */
const SINGLE = new Set<number>([CoapOption.URI_HOST, CoapOption.URI_PORT, CoapOption.CONTENT_FORMAT, CoapOption.ACCEPT, BlockOption.BLOCK1, BlockOption.SIZE1]);
/** RFC 7252 §5.10.5: Max-Age. */
const MAX_AGE = 14;

interface Session {
  readonly dtls: DtlsServerSession;
  readonly info: CoapsSessionInfo;
  readonly coap: CoapServerEndpoint;
  readonly blocks: Block1Assembler;
  handling: number;
  timer: TimerHandle | undefined;
  timerAt: number | undefined;
  closed: boolean;
}

/** A request in the handler, watched for the empty-ACK deadline. */
interface SlowWatch {
  readonly session: Session;
  readonly key: number;
  readonly at: number;
  answered: boolean;
}

/** A request the handler will not see, and how it is answered. */
class Refuse {
  constructor(
    readonly reason: CoapsRefusal,
    readonly code: CoapsResponseCode,
    readonly diagnostic: string,
    readonly options: readonly CoapOptionValue[] = [],
  ) {}
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

class CoapsServerImpl extends EventEmitter<CoapsServerEvents> implements CoapsServer {
  readonly dtls: DtlsServer;
  readonly #handler: CoapsHandler;
  readonly #path: string;
  readonly #formats: ReadonlySet<number>;
  readonly #maxPayload: number;
  readonly #piggybackMs: number;
  readonly #limits: CoapsServerLimits;
  readonly #transmission: Partial<TransmissionParameters>;
  readonly #timers: Timers;
  readonly #clock: Clock;
  readonly #sessions = new Map<DtlsServerSession, Session>();
  #handling = 0;
  #closed = false;
  /**
   * Requests in the handler, oldest first, for the empty-ACK deadline: every request gets the same
   * `piggybackMs`, so arrival order is deadline order and one timer serves them all.
   */
  #slow: SlowWatch[] = [];
  #slowHead = 0;
  #slowTimer: TimerHandle | undefined;
  readonly #counters: Mutable<Omit<CoapsServerCounters, 'responses' | 'refused'>> & { responses: Record<string, number>; refused: Partial<Record<CoapsRefusal, number>> } = {
    sessionsOpened: 0, sessionsClosed: 0, handshakeFailures: 0, handled: 0, handlerErrors: 0, responses: {}, refused: {},
    duplicates: 0, emptyAcks: 0, separateResponseTimeouts: 0,
  };

  constructor(dtls: DtlsServer, o: CoapsServerOptions) {
    super();
    this.dtls = dtls;
    this.#handler = o.handler;
    this.#path = o.path ?? TELEMETRY_PATH;
    this.#formats = new Set(o.contentFormats ?? [COSE_CONTENT_FORMAT_IDS['cose-encrypt'], COSE_CONTENT_FORMAT_IDS['cose-encrypt0']]);
    this.#maxPayload = aint(o.maxPayloadBytes ?? 64 * 1024, 'maxPayloadBytes', 1, 16 * 1024 * 1024);
    this.#piggybackMs = aint(o.piggybackMs ?? 500, 'piggybackMs', 0, 60_000);
    this.#limits = { ...DEFAULT_COAPS_SERVER_LIMITS, ...o.limits };
    this.#transmission = o.transmission ?? {};
    this.#timers = o.timers ?? systemTimers;
    this.#clock = o.clock ?? systemClock;
    dtls.on('session', (s) => this.#open(s));
    dtls.on('handshake-error', (error, remote) => {
      this.#counters.handshakeFailures += 1;
      this.emit('handshake-error', { error, alert: alertFor(error) ?? error.code, remote });
    });
    dtls.on('error', (e) => {
      if (this.listenerCount('error') > 0) this.emit('error', e);
    });
  }

  address(): { address: string; port: number } {
    return this.dtls.address();
  }

  sessions(): CoapsSessionInfo[] {
    return [...this.#sessions.values()].map((s) => ({ ...s.info, remote: s.dtls.peer, handling: s.handling }));
  }

  counters(): CoapsServerCounters {
    return { ...this.#counters, responses: { ...this.#counters.responses }, refused: { ...this.#counters.refused } };
  }

  async closeSessions(match: (peer: CoapsPeer) => boolean): Promise<number> {
    const doomed = [...this.#sessions.values()].filter((s) => match(s.info.peer));
    for (const s of doomed) this.#end(s);
    await Promise.all(doomed.map((s) => s.dtls.close().catch(() => undefined)));
    return doomed.length;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#slowTimer !== undefined) this.#timers.clearTimeout(this.#slowTimer);
    this.#slowTimer = undefined;
    this.#slow = [];
    this.#slowHead = 0;
    for (const s of [...this.#sessions.values()]) this.#end(s);
    await this.dtls.close();
  }

  #open(dtls: DtlsServerSession): void {
    if (this.#closed) return;
    const info: CoapsSessionInfo = { peer: peerOf(dtls.info), remote: dtls.peer, suite: `DTLSv1.3 ${dtls.info.suite}`, handling: 0 };
    const s: Session = {
      dtls, info, handling: 0, timer: undefined, timerAt: undefined, closed: false,
      coap: new CoapServerEndpoint({ params: this.#transmission, maxExchanges: this.#limits.maxExchangesPerSession }),
      blocks: new Block1Assembler({ maxBodyBytes: this.#maxPayload, maxBodies: this.#limits.maxBodiesPerSession, idleMs: this.#limits.bodyIdleMs }),
    };
    this.#sessions.set(dtls, s);
    this.#counters.sessionsOpened += 1;
    dtls.on('data', (d) => this.#onData(s, d));
    dtls.on('error', () => undefined);
    dtls.on('close', () => this.#end(s));
    this.emit('session', info);
  }

  /** Forgets a session (closed by the peer, by us, or failed). */
  #end(s: Session): void {
    if (s.closed) return;
    s.closed = true;
    this.#sessions.delete(s.dtls);
    if (s.timer !== undefined) this.#timers.clearTimeout(s.timer);
    s.blocks.clear();
    this.#counters.sessionsClosed += 1;
    this.emit('session-closed', { ...s.info, remote: s.dtls.peer, handling: s.handling });
  }

  #send(s: Session, datagram: Uint8Array): void {
    if (s.closed) return;
    s.dtls.send(datagram).catch(() => undefined);
  }

  #onData(s: Session, d: Uint8Array): void {
    if (s.closed) return;
    const now = this.#clock.now();
    const out = s.coap.receive(d, now);
    for (const dg of out.datagrams) this.#send(s, dg);
    this.#events(out.events);
    for (const req of out.requests) this.#onRequest(s, req, now);
    this.#arm(s);
  }

  #events(events: readonly ServerEvent[]): void {
    for (const e of events) {
      switch (e.kind) {
        case 'dropped':
          if (e.error instanceof DecodeError) this.#refused('malformed');
          continue;
        case 'duplicate':
          this.#counters.duplicates += 1;
          continue;
        case 'response-timeout':
          this.#counters.separateResponseTimeouts += 1;
          continue;
        default: {
          const never: never = e;
          throw new TypeError(`unknown event ${String(never)}`);
        }
      }
    }
  }

  #refused(reason: CoapsRefusal): void {
    this.#counters.refused[reason] = (this.#counters.refused[reason] ?? 0) + 1;
  }

  /** Answers request `key` now (piggybacked, or separate after an empty ACK). */
  #respond(s: Session, key: number, code: CoapsResponseCode, options: readonly CoapOptionValue[], payload: Uint8Array | undefined): void {
    if (s.closed) return;
    let datagram: Uint8Array;
    try {
      datagram = s.coap.respond(key, { code: responseCodeValue(code), options, ...(payload === undefined ? {} : { payload }) }, this.#clock.now());
    } catch {
      // The exchange expired or was evicted meanwhile: the client has given up on it.
      return;
    }
    this.#counters.responses[code] = (this.#counters.responses[code] ?? 0) + 1;
    this.#send(s, datagram);
    this.#arm(s);
  }

  #onRequest(s: Session, req: IncomingRequest, now: number): void {
    let body: { payload: Uint8Array; contentFormat: number; block: BlockValue | undefined };
    try {
      body = this.#validate(s, req.message, now);
    } catch (e) {
      if (!(e instanceof Refuse)) throw e;
      this.#refused(e.reason);
      this.#respond(s, req.key, e.code, e.options, diagnostic(e.diagnostic));
      return;
    }
    if (body.block !== undefined && body.block.more) {
      // RFC 7959 §2.3: 2.31 Continue, echoing the block, for every block but the last.
      this.#respond(s, req.key, '2.31', [blockOption(BlockOption.BLOCK1, body.block)], undefined);
      return;
    }
    if (s.handling >= this.#limits.maxHandlingPerSession || this.#handling >= this.#limits.maxHandling) {
      this.#refused('busy');
      // RFC 7252 §5.9.3.4: 5.03 with Max-Age, the seconds after which to try again.
      this.#respond(s, req.key, '5.03', [uintOption(MAX_AGE, 1)], diagnostic('too many requests in progress; try again'));
      return;
    }
    s.handling += 1;
    this.#handling += 1;
    this.#counters.handled += 1;
    const echo = body.block === undefined ? [] : [blockOption(BlockOption.BLOCK1, body.block)];
    // RFC 7252 §5.2.2: a slow answer gets an empty ACK first, so the client stops retransmitting.
    const slow: SlowWatch = { session: s, key: req.key, at: now + this.#piggybackMs, answered: false };
    this.#watch(slow);
    const request: CoapsRequest = { payload: body.payload, contentFormat: body.contentFormat, peer: s.info.peer, suite: s.info.suite, remote: s.dtls.peer, receivedAt: now };
    let answered: Promise<CoapsReply>;
    try {
      answered = this.#handler(request);
    } catch (e) {
      answered = Promise.reject(e);
    }
    void answered.then((r) => r, () => {
      this.#counters.handlerErrors += 1;
      return { code: '5.00', diagnostic: 'internal error' } as CoapsReply;
    }).then((reply) => {
      slow.answered = true;
      s.handling -= 1;
      this.#handling -= 1;
      const { code, options, payload } = replyMessage(reply, echo);
      this.#respond(s, req.key, code, options, payload);
    });
  }

  #watch(w: SlowWatch): void {
    this.#slow.push(w);
    if (this.#slowTimer === undefined) this.#slowTimer = this.#timers.setTimeout(() => this.#slowDue(), this.#piggybackMs);
  }

  /** Sends the empty ACK of every request still unanswered at its deadline; sets the timer for the next. */
  #slowDue(): void {
    this.#slowTimer = undefined;
    const now = this.#clock.now();
    while (this.#slowHead < this.#slow.length) {
      const w = this.#slow[this.#slowHead] as SlowWatch;
      if (!w.answered && w.at > now) break;
      this.#slowHead += 1;
      if (w.answered || w.session.closed) continue;
      const ack = w.session.coap.acknowledge(w.key);
      if (ack === undefined) continue;
      this.#counters.emptyAcks += 1;
      this.#send(w.session, ack);
    }
    if (this.#slowHead > 1024 && this.#slowHead * 2 > this.#slow.length) {
      this.#slow = this.#slow.slice(this.#slowHead);
      this.#slowHead = 0;
    }
    const next = this.#slow[this.#slowHead];
    if (next !== undefined) this.#slowTimer = this.#timers.setTimeout(() => this.#slowDue(), Math.max(0, next.at - now));
  }

  /** The checks of the module comment, in order; throws `Refuse`. */
  #validate(s: Session, m: CoapMessage, now: number): { payload: Uint8Array; contentFormat: number; block: BlockValue | undefined } {
    let path: string;
    try {
      path = readPath(m);
    } catch {
      throw new Refuse('bad-request', '4.00', 'Uri-Path is not UTF-8');
    }
    if (path !== this.#path) throw new Refuse('not-found', '4.04', `no resource at ${path.slice(0, 64)}`);
    if (m.code !== CoapCode.POST) throw new Refuse('method-not-allowed', '4.05', `${codeString(m.code)}: only POST`);
    let previous = -1;
    for (const o of m.options) {
      // RFC 7252 §5.4.1: odd option numbers are critical.
      if ((o.number & 1) === 1 && !RECOGNISED_CRITICAL.has(o.number)) throw new Refuse('bad-option', '4.02', `option ${o.number} is not supported`);
      // §5.4.5: a repeated non-repeatable option is treated as unrecognised (4.02 when critical);
      // options arrive in order (§3.1), so a repeat follows its first.
      if (o.number === previous && SINGLE.has(o.number)) throw new Refuse('bad-option', '4.02', `option ${o.number} repeated`);
      if (o.number === CoapOption.URI_QUERY) throw new Refuse('bad-request', '4.00', 'the telemetry resource takes no query');
      previous = o.number;
    }
    let contentFormat: number | undefined;
    let block: BlockValue | undefined;
    let size1: number | undefined;
    try {
      contentFormat = readUintOption(m, CoapOption.CONTENT_FORMAT);
      block = readBlock(m, BlockOption.BLOCK1);
      size1 = readUintOption(m, BlockOption.SIZE1);
    } catch (e) {
      if (e instanceof DecodeError) throw new Refuse('bad-request', '4.00', e.message);
      throw e;
    }
    if (contentFormat === undefined) throw new Refuse('unsupported-format', '4.15', 'Content-Format is required');
    if (!this.#formats.has(contentFormat)) throw new Refuse('unsupported-format', '4.15', `Content-Format ${contentFormat} is not accepted`);
    const tooLarge = () => new Refuse('too-large', '4.13', `larger than ${this.#maxPayload} bytes`, [uintOption(BlockOption.SIZE1, this.#maxPayload)]);
    if (block === undefined) {
      if (m.payload.length === 0) throw new Refuse('bad-request', '4.00', 'no payload');
      if (m.payload.length > this.#maxPayload || (size1 !== undefined && size1 > this.#maxPayload)) throw tooLarge();
      return { payload: m.payload, contentFormat, block: undefined };
    }
    const tag = m.options.filter((o) => o.number === BlockOption.REQUEST_TAG).map((o) => toHex(o.value)).join('.');
    const r = s.blocks.add(`${contentFormat}/${tag}`, block, m.payload, size1, now);
    switch (r.kind) {
      case 'continue':
        return { payload: new Uint8Array(0), contentFormat, block: r.block };
      case 'complete':
        return { payload: r.body, contentFormat, block: r.block };
      case 'incomplete':
        throw new Refuse('incomplete', '4.08', r.detail);
      case 'too-large':
        throw tooLarge();
      case 'busy':
        throw new Refuse('busy', '5.03', 'too many block-wise bodies in progress', [uintOption(MAX_AGE, 1)]);
      default: {
        const never: never = r;
        throw new TypeError(`unknown block result ${String(never)}`);
      }
    }
  }

  /**
   * One timer per session, for its separate responses' retransmissions; a timer set for earlier than
   * needed stays (it fires, finds nothing due, and sets the next).
   */
  #arm(s: Session): void {
    if (s.closed) return;
    const at = s.coap.nextTimeout();
    if (at === undefined || (s.timerAt !== undefined && s.timerAt <= at)) return;
    if (s.timer !== undefined) this.#timers.clearTimeout(s.timer);
    s.timerAt = at;
    s.timer = this.#timers.setTimeout(() => {
      s.timer = undefined;
      s.timerAt = undefined;
      if (s.closed) return;
      const out = s.coap.poll(this.#clock.now());
      for (const dg of out.datagrams) this.#send(s, dg);
      this.#events(out.events);
      this.#arm(s);
    }, Math.max(0, at - this.#clock.now()));
  }
}

function diagnostic(text: string): Uint8Array {
  const bytes = new TextEncoder().encode(text);
  return bytes.length <= MAX_DIAGNOSTIC_BYTES ? bytes : bytes.subarray(0, MAX_DIAGNOSTIC_BYTES);
}

function replyMessage(reply: CoapsReply, echo: readonly CoapOptionValue[]): { code: CoapsResponseCode; options: CoapOptionValue[]; payload: Uint8Array | undefined } {
  const options = [...echo];
  if (reply.code === '2.04') {
    if (reply.duplicate !== true) return { code: '2.04', options, payload: undefined };
    options.push(uintOption(CoapOption.CONTENT_FORMAT, TEXT_PLAIN));
    return { code: '2.04', options, payload: DUPLICATE_PAYLOAD };
  }
  if (reply.code === '5.03') options.push(uintOption(MAX_AGE, 1));
  return { code: reply.code, options, payload: reply.diagnostic === undefined || reply.diagnostic === '' ? undefined : diagnostic(reply.diagnostic) };
}

/** Starts a CoAPS server; see the module comment. */
export async function createCoapsServer(o: CoapsServerOptions): Promise<CoapsServer> {
  if (typeof o !== 'object' || o === null || typeof o.handler !== 'function') throw new TypeError('createCoapsServer: options with a handler');
  const port = aint(o.port ?? COAPS_PORT, 'port', 0, 65535);
  const dtls = await DtlsServer.listen({
    // The uplink does not resume (docs/transport-coaps.md): no ticket flight after each handshake.
    sessionTickets: false,
    // Many devices' requests arrive together; what the kernel cannot queue is lost until CoAP
    // retransmits it seconds later (capped by net.core.rmem_max).
    socketBufferBytes: 4 << 20,
    ...o.dtls,
    host: o.host ?? '0.0.0.0',
    port,
  });
  return new CoapsServerImpl(dtls, o);
}
