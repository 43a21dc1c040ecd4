/**
 * The device side of CoAPS: an `Uplink` that POSTs each sealed message as a confirmable CoAP
 * request to `/v1/telemetry` (RFC 7252) over one DTLS 1.3 session (RFC 9147) with a Connection ID
 * (RFC 9146), so a device whose address changes keeps its session.
 *
 * - The server's response is the acknowledgement: 2.04 resolves `send` ('duplicate' when its payload
 *   says so, codes.ts); 4.00/4.01/4.03/4.13/4.15 reject with `UplinkRejected`; 5.xx, 4.04/4.05,
 *   an exchange that times out after CoAP's retransmissions, or a lost session reject with
 *   `TransportError` (not taken: send again later).
 * - Message IDs, tokens, retransmission with back-off and the matching of piggybacked and separate
 *   responses are the sans-I/O `CoapClientEndpoint` (src/coap/reliability.ts), driven by the
 *   injected timers and clock.
 * - A body larger than one datagram goes block-wise (RFC 7959 Block1 with a Request-Tag).
 * - `connect()` is the DTLS handshake and then a CoAP ping (§4.3): in DTLS 1.3 the server judges
 *   the client's certificate after the client's last flight, so only an answer from the server
 *   proves the session was accepted (a refusal arrives as the alert, and `connect` rejects with it).
 * - One session per `connect()`. When it is lost (the server closes it, a fatal alert, or an
 *   exchange times out without a single datagram from the server meanwhile), in-flight sends
 *   reject, `disconnected` is emitted, and the uplink waits for the next `connect()`: reconnect
 *   policy is the agent's.
 *
 * @example
 *   const uplink = createCoapsUplink({ deviceId: 'bed-7', host: 'ingest.ward7', port: 5684,
 *     identity: { kind: 'certificate', certificateChain: [leafDer, issuingDer], signer: tpmSigner },
 *     verifier: new X509PeerVerifier({ roots: [fleetRootPem], purpose: 'server', serverName: 'ingest.ward7' }) });
 *   await uplink.connect();
 *   await uplink.send({ deviceId: 'bed-7', seq: 42, payload: sealed, contentFormat: 'cose-encrypt' });
 */
import { EventEmitter } from 'node:events';
import { splitBlocks, blockOption, blockSize, readBlock, BlockOption } from '../../coap/blockwise.ts';
import { CoapCode, CoapOption, encodeCoap, pathOptions, uintOption, type CoapMessage, type CoapOptionValue } from '../../coap/message.ts';
import { CoapClientEndpoint, type ClientEvent, type CoapRequest, type TransmissionParameters } from '../../coap/reliability.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { getProvider } from '../../crypto/registry.ts';
import type { ClientConfig } from '../../dtls/config.ts';
import type { CipherSuiteName } from '../../dtls/messages/constants.ts';
import type { PeerCertificateVerifier } from '../../dtls/peer-verifier.ts';
import { DtlsClientSocket } from '../../dtls/udp.ts';
import type { UdpIo } from '../../dtls/udp-link.ts';
import type { Signer } from '../../keystore/signer.ts';
import { abytes, aint } from '../../util/assert.ts';
import { systemClock, type Clock } from '../../util/clock.ts';
import { isDeviceId } from '../../util/device-id.ts';
import { ApiMisuse, TransportError, UplinkRejected, VitalsealError } from '../../util/errors.ts';
import { systemTimers, type TimerHandle, type Timers } from '../timers.ts';
import { checkUplinkMessage, InFlightWindow, UplinkTally } from '../uplink-support.ts';
import { COSE_CONTENT_FORMAT_IDS, type CoseContentFormat, type Uplink, type UplinkAck, type UplinkCounters, type UplinkEvents, type UplinkMessage, type UplinkSession } from '../types.ts';
import { COAPS_PORT, mapDtlsError, responseOutcome, TELEMETRY_PATH } from './codes.ts';

/** How the device authenticates in the DTLS handshake. */
export type CoapsIdentity =
  /**
   * A certificate chain (leaf first, DER) and the Signer of its key: software, TPM or PKCS#11 (the key
   * never leaves the store). A function is asked at every connect, so a renewed certificate is
   * presented from the next session on.
   */
  | { readonly kind: 'certificate'; readonly certificateChain: readonly Uint8Array[] | (() => readonly Uint8Array[]); readonly signer: Signer }
  /** An external PSK (RFC 8446 §4.2.11, psk_dhe_ke) of 32 bytes; the identity defaults to the device id. */
  | { readonly kind: 'psk'; readonly key: Uint8Array; readonly identity?: string };

export interface CoapsUplinkOptions {
  readonly deviceId: string;
  readonly host: string;
  /** Default 5684. */
  readonly port?: number;
  readonly identity: CoapsIdentity;
  /**
   * Validates the server's certificate; required with a certificate identity, refused with a PSK
   * (psk_dhe_ke: the key authenticates the server too).
   */
  readonly verifier?: PeerCertificateVerifier;
  /** The telemetry resource (default `/v1/telemetry`). */
  readonly path?: string;
  /** DTLS cipher suites to offer, in order (default: the DTLS layer's). */
  readonly cipherSuites?: readonly CipherSuiteName[];
  /** Largest UDP payload sent (default 1200: fits the IPv6 minimum MTU with room for headers). */
  readonly mtu?: number;
  /** The handshake and the CoAP ping after it must complete within this (default 15 s). */
  readonly connectTimeoutMs?: number;
  /**
   * The UDP socket (src/dtls/udp-link.ts). Default `node`: a device sends a reading a second,
   * which batched system calls do not speed up, and they cost the agent 1-3 MiB of memory (a libuv
   * pool thread waiting in epoll_wait, native buffers). `auto` or `batched` for a sender of bulk data.
   */
  readonly udp?: UdpIo;
  /** Messages awaiting their response at once (default 32; the server's per-session limit is 64). */
  readonly maxInFlight?: number;
  /** Largest payload accepted for sending (default 64 KiB; beyond one datagram it goes block-wise). */
  readonly maxPayloadBytes?: number;
  /**
   * Block-wise bodies in transfer at once (default 2; the server holds a few per session); further
   * large messages wait their turn, counted within `maxInFlight`.
   */
  readonly maxBlockwiseInFlight?: number;
  /** RFC 7252 §4.8 transmission parameters (default ACK_TIMEOUT 2 s, ×1.5 random, 4 retransmissions). */
  readonly transmission?: Partial<TransmissionParameters>;
  /** After an empty ACK, how long to wait for the separate response (default 30 s). */
  readonly separateResponseTimeoutMs?: number;
  readonly timers?: Timers;
  /** Time for the CoAP layer's deadlines; must agree with `timers` (default the system clock). */
  readonly clock?: Clock;
  readonly provider?: CryptoProvider;
}

/** The CoAPS uplink: the `Uplink` contract, plus `rebind`. */
export interface CoapsUplink extends Uplink {
  /**
   * Moves the session to a new local UDP port, as a NAT rebinding does; the server follows by the
   * Connection ID (RFC 9146 §6) without a new handshake. Rejects when not connected.
   */
  rebind(): Promise<void>;
}

interface Pending {
  readonly seq: number;
  readonly message: UplinkMessage;
  readonly resolve: (ack: UplinkAck) => void;
  readonly reject: (e: VitalsealError) => void;
  /** The body's blocks when it goes block-wise (RFC 7959), else undefined. */
  readonly blocks: Uint8Array[] | undefined;
  readonly szx: number;
  /** RFC 9175 §3: names this body among the device's block-wise transfers in flight. */
  readonly tag: Uint8Array;
  /** The block (or the single request) now in flight. */
  block: number;
  /** False while a block-wise message waits for its turn (`maxBlockwiseInFlight`). */
  started: boolean;
  /** How many datagrams the server had sent us when the current request first went out. */
  heardAtSend: number;
}

/** One DTLS session and its CoAP endpoint. */
interface Link {
  readonly socket: DtlsClientSocket;
  readonly coap: CoapClientEndpoint;
  readonly byRequest: Map<number, Pending>;
  timer: TimerHandle | undefined;
  timerAt: number | undefined;
  /** Datagrams received from the server in this session. */
  heard: number;
  /** The connect-time ping (its `reset` is the server's answer) and what to do with the answer. */
  ping: { readonly id: number; readonly done: (e?: VitalsealError) => void } | undefined;
  /** Bytes of a request besides its payload, by content format (computed once per session). */
  readonly framing: Map<string, number>;
}

type State =
  | { readonly kind: 'idle' }
  | { readonly kind: 'connecting'; readonly done: Promise<void>; readonly cancel: (e: VitalsealError) => void }
  | { readonly kind: 'connected'; readonly link: Link; readonly session: UplinkSession }
  | { readonly kind: 'closed' };

interface Resolved {
  readonly deviceId: string;
  readonly host: string;
  readonly port: number;
  readonly path: string;
  /** Uri-Path and Content-Format (RFC 7252 §5.10.3; 96 / 16, RFC 9052 §11.2), by format. */
  readonly baseOptions: Readonly<Record<CoseContentFormat, readonly CoapOptionValue[]>>;
  readonly dtls: Omit<ClientConfig, 'handshakeTimeoutMs' | 'certificateChain'>;
  /** The chain to present at the next connect (certificate identities). */
  readonly chain: (() => readonly Uint8Array[]) | undefined;
  readonly auth: 'certificate' | 'psk';
  readonly connectTimeoutMs: number;
  readonly udp: UdpIo;
  readonly maxInFlight: number;
  readonly maxPayloadBytes: number;
  readonly maxBlockwiseInFlight: number;
  readonly transmission: Partial<TransmissionParameters>;
  readonly separateResponseTimeoutMs: number;
  readonly timers: Timers;
  readonly clock: Clock;
  readonly provider: CryptoProvider;
}

function resolve(o: CoapsUplinkOptions): Resolved {
  if (typeof o !== 'object' || o === null) throw new TypeError('createCoapsUplink: expected options');
  if (!isDeviceId(o.deviceId)) throw new RangeError('createCoapsUplink: deviceId is not a device id');
  if (typeof o.host !== 'string' || o.host.length === 0) throw new TypeError('createCoapsUplink: host');
  const port = aint(o.port ?? COAPS_PORT, 'port', 1, 65535);
  const path = o.path ?? TELEMETRY_PATH;
  if (typeof path !== 'string' || !path.startsWith('/') || path.length > 255) throw new RangeError('createCoapsUplink: path must start with / (at most 255 characters)');
  const provider = o.provider ?? getProvider();
  const id = o.identity;
  let credentials: Pick<ClientConfig, 'signer' | 'psk'>;
  let chain: (() => readonly Uint8Array[]) | undefined;
  switch (id?.kind) {
    case 'certificate':
      if (o.verifier === undefined) throw new ApiMisuse('config-no-verifier', 'createCoapsUplink: a certificate identity needs a verifier for the server certificate');
      credentials = { signer: id.signer };
      {
        const given = id.certificateChain;
        chain = typeof given === 'function' ? given : () => given;
      }
      break;
    case 'psk': {
      // psk_dhe_ke: the PSK authenticates the server too. A verifier would make the device accept a
      // certificate handshake instead when the server does not know its PSK: refuse the mix.
      if (o.verifier !== undefined) throw new ApiMisuse('config-verifier-with-psk', 'createCoapsUplink: a PSK identity authenticates the server with the PSK; give no verifier');
      abytes(id.key, 'identity.key', 32);
      const name = id.identity ?? o.deviceId;
      if (typeof name !== 'string' || name.length === 0 || name.length > 255) throw new RangeError('createCoapsUplink: identity.identity must be 1-255 characters');
      credentials = { psk: { identity: new TextEncoder().encode(name), key: Uint8Array.from(id.key) } };
      break;
    }
    default:
      throw new TypeError("createCoapsUplink: identity must be { kind: 'certificate', ... } or { kind: 'psk', ... }");
  }
  return {
    deviceId: o.deviceId,
    host: o.host,
    port,
    path,
    baseOptions: {
      'cose-encrypt': [...pathOptions(path), uintOption(CoapOption.CONTENT_FORMAT, COSE_CONTENT_FORMAT_IDS['cose-encrypt'])],
      'cose-encrypt0': [...pathOptions(path), uintOption(CoapOption.CONTENT_FORMAT, COSE_CONTENT_FORMAT_IDS['cose-encrypt0'])],
    },
    chain,
    dtls: {
      ...credentials,
      ...(o.verifier === undefined ? {} : { verifier: o.verifier }),
      ...(o.cipherSuites === undefined ? {} : { cipherSuites: o.cipherSuites }),
      mtu: aint(o.mtu ?? 1200, 'mtu', 256, 65507),
      // RFC 9146: offer the extension with an empty CID of ours, so the server hands out its CID
      // and follows us by it when our address changes; the server's records to us need none.
      connectionId: 'none',
      provider,
    },
    auth: id.kind,
    connectTimeoutMs: aint(o.connectTimeoutMs ?? 15_000, 'connectTimeoutMs', 1),
    udp: o.udp ?? 'node',
    maxInFlight: aint(o.maxInFlight ?? 32, 'maxInFlight', 1, 1024),
    maxPayloadBytes: aint(o.maxPayloadBytes ?? 64 * 1024, 'maxPayloadBytes', 1, 16 * 1024 * 1024),
    maxBlockwiseInFlight: aint(o.maxBlockwiseInFlight ?? 2, 'maxBlockwiseInFlight', 1, 64),
    transmission: o.transmission ?? {},
    separateResponseTimeoutMs: aint(o.separateResponseTimeoutMs ?? 30_000, 'separateResponseTimeoutMs', 1),
    timers: o.timers ?? systemTimers,
    clock: o.clock ?? systemClock,
    provider,
  };
}

/**
 * Random bytes from the provider's CSPRNG, fetched 1 KiB at a time: tokens, Request-Tags and
 * retransmission jitter need a few bytes per request, and one call per request was measurable.
 */
class RandomPool {
  readonly #provider: CryptoProvider;
  #buf: Uint8Array = new Uint8Array(0);
  #off = 0;

  constructor(provider: CryptoProvider) {
    this.#provider = provider;
  }

  bytes(n: number): Uint8Array {
    if (this.#off + n > this.#buf.length) {
      this.#buf = this.#provider.randomBytes(1024);
      this.#off = 0;
    }
    const out = this.#buf.slice(this.#off, this.#off + n);
    this.#buf.fill(0, this.#off, this.#off + n);
    this.#off += n;
    return out;
  }

  /** Uniform in [0, 1). */
  uniform(): number {
    const b = this.bytes(4);
    return new DataView(b.buffer, b.byteOffset, 4).getUint32(0) / 2 ** 32;
  }
}

/** Bytes of CoAP framing around a block besides the payload, at most (header, token, options, marker). */
const BLOCK_FRAMING_SLACK = 16;

class CoapsUplinkImpl extends EventEmitter<UplinkEvents> implements CoapsUplink {
  readonly kind = 'coaps' as const;
  readonly #o: Resolved;
  #state: State = { kind: 'idle' };
  readonly #pending = new Set<Pending>();
  readonly #window = new InFlightWindow(() => (this.#state.kind === 'connected' ? this.#o.maxInFlight : 0));
  /** Block-wise bodies in transfer, and block-wise messages waiting for their turn (in order). */
  #blockwise = 0;
  #blockQueue: { readonly link: Link; readonly p: Pending }[] = [];
  readonly #tally = new UplinkTally(this);

  readonly #random: RandomPool;

  constructor(o: CoapsUplinkOptions) {
    super();
    this.#o = resolve(o);
    this.#random = new RandomPool(this.#o.provider);
  }

  get session(): UplinkSession | undefined {
    return this.#state.kind === 'connected' ? this.#state.session : undefined;
  }

  counters(): UplinkCounters {
    return this.#tally.snapshot();
  }

  get #where(): string {
    return `CoAPS server ${this.#o.host}:${this.#o.port}`;
  }

  connect(): Promise<void> {
    const s = this.#state;
    switch (s.kind) {
      case 'connected':
        return Promise.resolve();
      case 'connecting':
        return s.done;
      case 'closed':
        return Promise.reject(new ApiMisuse('closed', 'the uplink is closed'));
      case 'idle':
        return this.#startConnect();
      default: {
        const never: never = s;
        return Promise.reject(new Error(`unknown state ${String(never)}`));
      }
    }
  }

  #startConnect(): Promise<void> {
    const o = this.#o;
    let settled = false;
    let socket: DtlsClientSocket | undefined;
    let link: Link | undefined;
    let fail!: (e: VitalsealError) => void;
    const done = new Promise<void>((resolveConnect, rejectConnect) => {
      const timer = o.timers.setTimeout(() => fail(new TransportError('connect-timeout', `${this.#where}: no session within ${o.connectTimeoutMs} ms`)), o.connectTimeoutMs);
      fail = (e) => {
        if (settled) return;
        settled = true;
        o.timers.clearTimeout(timer);
        if (link !== undefined) this.#disarm(link);
        if (this.#state.kind === 'connecting') this.#state = { kind: 'idle' };
        void socket?.close().catch(() => undefined);
        rejectConnect(e);
      };
      const succeed = (l: Link, s: DtlsClientSocket) => {
        if (settled) return;
        settled = true;
        o.timers.clearTimeout(timer);
        const info = s.info;
        const session: UplinkSession = {
          kind: 'coaps', peer: `${o.host}:${o.port}`, protocol: 'DTLSv1.3', suite: info.suite, group: info.group ?? 'none', auth: o.auth,
        };
        this.#state = { kind: 'connected', link: l, session };
        this.#tally.connected();
        this.emit('connected', session);
        resolveConnect();
      };
      DtlsClientSocket.connect({ ...o.dtls, ...(o.chain === undefined ? {} : { certificateChain: o.chain() }), host: o.host, port: o.port, handshakeTimeoutMs: o.connectTimeoutMs, udp: o.udp }).then((s) => {
        socket = s;
        if (settled) {
          void s.close().catch(() => undefined);
          return;
        }
        const l = this.#newLink(s);
        link = l;
        s.on('data', (d) => this.#onData(l, d));
        s.on('error', (e) => {
          if (l.ping !== undefined) l.ping.done(mapDtlsError(e, this.#where));
          else this.#lost(l, `fatal alert or error: ${e.code}`);
        });
        s.on('close', () => {
          if (l.ping !== undefined) l.ping.done(new TransportError('connection-closed', `${this.#where} closed the session right after the handshake`));
          else this.#lost(l, 'the server closed the session');
        });
        // RFC 7252 §4.3: a CoAP ping; its RST proves the server accepted the session (see the module comment).
        const { requestId, datagram } = l.coap.ping(o.clock.now());
        l.ping = {
          id: requestId,
          done: (e) => {
            l.ping = undefined;
            if (e === undefined) succeed(l, s);
            else fail(e);
          },
        };
        this.#transmit(l, datagram);
        this.#arm(l);
      }, (e: unknown) => fail(mapDtlsError(e, this.#where)));
    });
    this.#state = { kind: 'connecting', done, cancel: (e) => fail(e) };
    return done;
  }

  #newLink(socket: DtlsClientSocket): Link {
    const random = this.#random;
    return {
      socket,
      coap: new CoapClientEndpoint({
        params: this.#o.transmission,
        random: () => random.uniform(),
        // RFC 7252 §5.3.1: tokens from a CSPRNG, so an off-path party cannot guess them.
        tokenBytes: (n) => random.bytes(n),
        separateResponseTimeoutMs: this.#o.separateResponseTimeoutMs,
      }),
      byRequest: new Map(),
      timer: undefined,
      timerAt: undefined,
      heard: 0,
      ping: undefined,
      framing: new Map(),
    };
  }

  /** The link in use, if `l` is it. */
  #current(l: Link): boolean {
    return (this.#state.kind === 'connected' && this.#state.link === l) || l.ping !== undefined;
  }

  #transmit(l: Link, datagram: Uint8Array): void {
    // A send that fails (the session just ended) needs no handling here: the session's close or
    // error event fails everything in flight.
    l.socket.send(datagram).catch(() => undefined);
  }

  #onData(l: Link, d: Uint8Array): void {
    if (!this.#current(l)) return;
    const now = this.#o.clock.now();
    l.heard += 1;
    const out = l.coap.receive(d, now);
    for (const dg of out.datagrams) this.#transmit(l, dg);
    this.#handle(l, out.events);
    this.#arm(l);
  }

  #onTimer(l: Link): void {
    l.timer = undefined;
    l.timerAt = undefined;
    if (!this.#current(l)) return;
    const out = l.coap.poll(this.#o.clock.now());
    for (const dg of out.datagrams) this.#transmit(l, dg);
    this.#handle(l, out.events);
    this.#arm(l);
  }

  /**
   * One timer for the CoAP endpoint's next deadline (retransmission or give-up). Deadlines only move
   * later as responses arrive, so a timer already set for earlier stays: when it fires early it
   * finds nothing due and sets the next one (one timer call per firing, not per response).
   */
  #arm(l: Link): void {
    if (!this.#current(l)) return;
    const at = l.coap.nextTimeout();
    if (at === undefined || (l.timerAt !== undefined && l.timerAt <= at)) return;
    this.#disarm(l);
    l.timerAt = at;
    l.timer = this.#o.timers.setTimeout(() => this.#onTimer(l), Math.max(0, at - this.#o.clock.now()));
  }

  #disarm(l: Link): void {
    if (l.timer !== undefined) this.#o.timers.clearTimeout(l.timer);
    l.timer = undefined;
    l.timerAt = undefined;
  }

  #handle(l: Link, events: readonly ClientEvent[]): void {
    for (const e of events) {
      switch (e.kind) {
        case 'dropped':
          continue;
        case 'reset':
        case 'timeout':
        case 'response': {
          if (l.ping !== undefined && e.requestId === l.ping.id) {
            if (e.kind === 'reset') l.ping.done();
            else if (e.kind === 'timeout') l.ping.done(new TransportError('connect-timeout', `${this.#where} did not answer the CoAP ping after the handshake`));
            else l.ping.done(new TransportError('unexpected-response', `${this.#where} answered the CoAP ping with a response`));
            continue;
          }
          const p = l.byRequest.get(e.requestId);
          if (p === undefined) continue;
          l.byRequest.delete(e.requestId);
          if (e.kind === 'response') this.#onResponse(l, p, e.response);
          else if (e.kind === 'reset') this.#settle(p, new TransportError('reset', `${this.#where} reset the request for message ${p.seq} (RST)`));
          else {
            this.#settle(p, new TransportError('ack-timeout', `${this.#where}: no response to message ${p.seq} after CoAP's retransmissions`));
            // Silence since this request went out: the server no longer has our session (it
            // restarted, or the path is gone). Say so, instead of letting every send time out.
            if (l.heard === p.heardAtSend) this.#lost(l, 'no datagram from the server since the request went out');
          }
          continue;
        }
        default: {
          const never: never = e;
          throw new TypeError(`unknown event ${String(never)}`);
        }
      }
    }
  }

  #onResponse(l: Link, p: Pending, response: CoapMessage): void {
    // RFC 7959 §2.3: 2.31 Continue asks for the next block of the body.
    if (response.code === 0x5f && p.blocks !== undefined) {
      let echo;
      try {
        echo = readBlock(response, BlockOption.BLOCK1);
      } catch {
        echo = undefined;
      }
      if (echo === undefined || echo.num !== p.block || !echo.more || p.block + 1 >= p.blocks.length) {
        this.#settle(p, new TransportError('unexpected-response', `${this.#where}: 2.31 Continue for message ${p.seq} does not match block ${p.block}`));
        return;
      }
      p.block += 1;
      this.#request(l, p);
      return;
    }
    const outcome = responseOutcome(response);
    switch (outcome.kind) {
      case 'accepted':
        this.#settle(p, { seq: p.seq, status: outcome.duplicate ? 'duplicate' : 'accepted' });
        return;
      case 'rejected':
        this.#settle(p, new UplinkRejected(outcome.reason, `message ${p.seq}: ${outcome.detail}`));
        return;
      case 'retry':
        this.#settle(p, new TransportError(outcome.code, `${this.#where}: message ${p.seq}: ${outcome.detail}`));
        return;
      default: {
        const never: never = outcome;
        throw new TypeError(`unknown outcome ${String(never)}`);
      }
    }
  }

  /** The request for the body (or its current block) of `p`, handed to the CoAP endpoint and sent. */
  #request(l: Link, p: Pending): void {
    let options = this.#o.baseOptions[p.message.contentFormat];
    let payload = p.message.payload;
    if (p.blocks !== undefined) {
      payload = p.blocks[p.block] as Uint8Array;
      options = [
        ...options,
        blockOption(BlockOption.BLOCK1, { num: p.block, more: p.block + 1 < p.blocks.length, szx: p.szx }),
        // RFC 7959 §4: Size1 in the first block lets the server refuse an oversized body at once.
        ...(p.block === 0 ? [uintOption(BlockOption.SIZE1, p.message.payload.length)] : []),
        { number: BlockOption.REQUEST_TAG, value: p.tag },
      ];
    }
    const req: CoapRequest = { code: CoapCode.POST, options, payload };
    const now = this.#o.clock.now();
    const { requestId, datagram } = l.coap.request(req, now);
    p.heardAtSend = l.heard;
    l.byRequest.set(requestId, p);
    this.#transmit(l, datagram);
    this.#arm(l);
  }

  #lost(l: Link, reason: string): void {
    if (this.#state.kind !== 'connected' || this.#state.link !== l) return;
    this.#state = { kind: 'idle' };
    this.#disarm(l);
    l.coap.cancelAll();
    l.byRequest.clear();
    this.#tally.disconnected();
    this.#failAll(new TransportError('connection-lost', `${this.#where}: session lost before the response (${reason})`));
    void l.socket.close().catch(() => undefined);
    this.emit('disconnected', { reason });
  }

  #failAll(e: VitalsealError): void {
    this.#blockQueue = [];
    for (const p of [...this.#pending]) this.#settle(p, e);
    this.#window.fail(e);
  }

  /** Ends a send: counts it, releases its in-flight slot, resolves or rejects its promise. */
  #settle(p: Pending, outcome: UplinkAck | VitalsealError): void {
    if (!this.#pending.delete(p)) return;
    this.#window.give();
    if (p.blocks !== undefined) this.#blockDone(p);
    this.#tally.ended(p.seq, outcome);
    if (outcome instanceof VitalsealError) p.reject(outcome);
    else p.resolve(outcome);
  }

  async send(message: UplinkMessage): Promise<UplinkAck> {
    const seq = checkUplinkMessage(message, this.#o.deviceId, this.#o.maxPayloadBytes, this.#tally);
    if (this.#state.kind === 'connected') await this.#window.take();
    else {
      this.#tally.transportError();
      throw new TransportError('not-connected', `${this.#where}: not connected`);
    }
    const s = this.#state;
    if (s.kind !== 'connected') {
      this.#window.give();
      this.#tally.transportError();
      throw new TransportError('not-connected', `${this.#where}: not connected`);
    }
    const l = s.link;
    const { blocks, szx } = this.#plan(l, message);
    return new Promise<UplinkAck>((resolveSend, rejectSend) => {
      const p: Pending = {
        seq, message, resolve: resolveSend, reject: rejectSend, blocks, szx,
        tag: blocks === undefined ? new Uint8Array(0) : this.#random.bytes(4), block: 0, heardAtSend: 0, started: false,
      };
      this.#pending.add(p);
      this.#tally.sent();
      if (blocks === undefined) this.#request(l, p);
      else if (this.#blockwise < this.#o.maxBlockwiseInFlight) this.#startBlockwise(l, p);
      else this.#blockQueue.push({ link: l, p });
    });
  }

  #startBlockwise(l: Link, p: Pending): void {
    this.#blockwise += 1;
    p.started = true;
    this.#request(l, p);
  }

  /** A block-wise body finished (or failed, or never started): its turn passes on. */
  #blockDone(p: Pending): void {
    if (!p.started) {
      const queued = this.#blockQueue.findIndex((q) => q.p === p);
      if (queued >= 0) this.#blockQueue.splice(queued, 1);
      return;
    }
    this.#blockwise -= 1;
    const next = this.#blockQueue.shift();
    if (next === undefined) return;
    // A queued message's session is the current one: a lost session fails the queue first.
    this.#startBlockwise(next.link, next.p);
  }

  /** One request when the whole message fits a datagram; else blocks of the largest size that fits (RFC 7959 §2.2). */
  #plan(l: Link, message: UplinkMessage): { blocks: Uint8Array[] | undefined; szx: number } {
    const room = l.socket.maxPayload;
    let framing = l.framing.get(message.contentFormat);
    if (framing === undefined) {
      framing = encodeCoap({
        type: 'CON', code: CoapCode.POST, messageId: 0, token: new Uint8Array(8), payload: new Uint8Array(1),
        options: this.#o.baseOptions[message.contentFormat],
      }).length - 1;
      l.framing.set(message.contentFormat, framing);
    }
    if (framing + message.payload.length <= room) return { blocks: undefined, szx: 0 };
    let szx = 6;
    while (szx > 0 && framing + BLOCK_FRAMING_SLACK + blockSize(szx) > room) szx--;
    return { blocks: splitBlocks(message.payload, szx), szx };
  }

  async rebind(): Promise<void> {
    const s = this.#state;
    if (s.kind !== 'connected') throw new TransportError('not-connected', `${this.#where}: not connected`);
    await s.link.socket.rebind();
  }

  /** Ends the current session (close_notify); `connect()` may follow. */
  async disconnect(): Promise<void> {
    if (this.#state.kind === 'closed') return;
    await this.#end({ kind: 'idle' }, 'the session was ended before the response');
  }

  /** Ends the session for good. */
  async close(): Promise<void> {
    await this.#end({ kind: 'closed' }, 'the uplink was closed before the response');
  }

  async #end(next: { readonly kind: 'idle' } | { readonly kind: 'closed' }, why: string): Promise<void> {
    const s = this.#state;
    this.#state = next;
    this.#failAll(new TransportError('closed', `${this.#where}: ${why}`));
    if (s.kind === 'connecting') {
      s.cancel(new TransportError('closed', `${this.#where}: the connection attempt was ended`));
      await s.done.catch(() => undefined);
      // A failing connect sets the state to idle: closed stays closed.
      if (next.kind === 'closed') this.#state = next;
    } else if (s.kind === 'connected') {
      this.#disarm(s.link);
      s.link.coap.cancelAll();
      s.link.byRequest.clear();
      // RFC 8446 §6.1: close_notify.
      await s.link.socket.close().catch(() => undefined);
      this.#tally.disconnected();
      this.emit('disconnected', { reason: 'closed by the device' });
    }
  }
}

/**
 * A CoAP over DTLS 1.3 uplink for one device. See the module comment for the delivery and failure
 * semantics; docs/transport-coaps.md for the wire format and the server side.
 */
export function createCoapsUplink(opts: CoapsUplinkOptions): CoapsUplink {
  return new CoapsUplinkImpl(opts);
}
