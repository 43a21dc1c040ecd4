/**
 * The sans-I/O DTLS 1.3 server: one entry point for every datagram from every peer
 * (`handleDatagram(datagram, from, now)`), which
 * - answers a ClientHello without a valid cookie with a HelloRetryRequest and keeps no state
 *   (RFC 9147 §5.1); only a ClientHello returning a valid cookie creates a session;
 * - routes protected records by Connection ID first (RFC 9146: the peer may change address), by
 *   address otherwise, and follows a peer to a new address only on an authenticated record that is
 *   the newest seen (RFC 9146 §6);
 * - keeps a new handshake from an address beside the association it already has until the new one
 *   completes (RFC 9147 §5.10);
 * - bounds what one peer can make it hold: pending handshakes per address and in all, sessions in
 *   all, and the bytes a pending handshake may buffer.
 *
 * @example
 *   const server = new DtlsServerEndpoint({ certificateChain, signer }, Date.now());
 *   const out = await server.handleDatagram(bytes, { address: '192.0.2.7', port: 40000 }, Date.now());
 *   for (const d of out.datagrams) socket.send(d.data, d.to.port, d.to.address);
 */
import { concatBytes, toHex } from '../util/bytes.ts';
import { VitalsealError } from '../util/errors.ts';
import { then } from '../util/maybe-async.ts';
import { resolveServerConfig, type ResolvedServerConfig, type ServerConfig } from './config.ts';
import { Connection, type ConnectionOutput, type DtlsEvent } from './connection.ts';
import { alertCode, alertFor } from './errors.ts';
import { CookieKeys } from './handshake/cookie.ts';
import { buildHelloRetryRequest, checkClientHello, chooseGroup, chooseSuite, type AcceptedHello } from './handshake/server.ts';
import { TicketKeys } from './handshake/tickets.ts';
import { TimerHeap } from './connection/timer-heap.ts';
import { Writer } from './messages/codec.ts';
import { AlertLevel, ContentType, DTLS12_VERSION, ExtensionType, HandshakeType, PskKeyExchangeMode } from './messages/constants.ts';
import { findExtension, readCookie, readOfferedPsks, readPskModes } from './messages/extensions.ts';
import { encodeHandshake, readHandshakeBody, type ClientHello } from './messages/handshake.ts';
import { encodeAlert, isCiphertextHeaderByte, parseDatagram, readHandshakeFragments, writeHandshakeFragment, writePlaintextHeader } from './messages/record.ts';

export interface PeerAddress {
  readonly address: string;
  readonly port: number;
}

export interface EndpointLimits {
  /** Established and pending sessions in all (default 100,000). */
  readonly maxSessions: number;
  /** Handshakes in progress in all (default 1,000). */
  readonly maxPendingHandshakes: number;
  /** Handshakes in progress from one IP address (default 4). */
  readonly maxPendingPerAddress: number;
  /** Bytes of handshake messages one pending session may buffer (default 32 KiB). */
  readonly maxBufferedBytesPerSession: number;
}

export const DEFAULT_ENDPOINT_LIMITS: EndpointLimits = Object.freeze({
  maxSessions: 100_000,
  maxPendingHandshakes: 1_000,
  maxPendingPerAddress: 4,
  maxBufferedBytesPerSession: 32 * 1024,
});

export interface ServerSession {
  readonly id: number;
  readonly connection: Connection;
  /** Where the peer is now (it may move when CIDs are in use). */
  peer: PeerAddress;
}

/** A datagram as the socket read it, with its sender. */
export interface IncomingDatagram {
  readonly data: Uint8Array;
  readonly from: PeerAddress;
}

export interface EndpointOutput {
  readonly datagrams: { readonly to: PeerAddress; readonly data: Uint8Array }[];
  readonly events: { readonly session: ServerSession; readonly event: DtlsEvent }[];
}

/** Why the endpoint dropped a datagram before any session saw it (counted). */
export type EndpointDrop =
  | 'malformed'
  | 'not-client-hello'
  | 'fragmented-client-hello'
  | 'bad-cookie'
  | 'incompatible'
  | 'unknown-cid'
  | 'unknown-peer'
  | 'limit-pending-address'
  | 'limit-pending'
  | 'limit-sessions';

export interface EndpointStats {
  datagramsIn: number;
  helloRetryRequests: number;
  sessionsCreated: number;
  readonly dropped: Partial<Record<EndpointDrop, number>>;
}

interface SessionEntry extends ServerSession {
  pending: boolean;
  timeout: number | undefined;
  /** The datagram bytes that carried the accepted ClientHello (its record header aside). */
  hello: Uint8Array | undefined;
}

const addrKey = (p: PeerAddress) => `${p.address}|${p.port}`;
const sameAddress = (a: PeerAddress, b: PeerAddress) => a.port === b.port && a.address === b.address;

/**
 * The routing key of a CID, looked up for every datagram: a number for CIDs of up to 6 bytes (the
 * default), with the length folded in so CIDs of different lengths never collide; hex otherwise.
 */
function cidKey(cid: Uint8Array): number | string {
  if (cid.length > 6) return toHex(cid);
  let v = cid.length;
  for (let i = 0; i < cid.length; i++) v = v * 256 + (cid[i] as number);
  return v;
}

export class DtlsServerEndpoint {
  readonly config: ResolvedServerConfig;
  readonly limits: EndpointLimits;
  readonly #cookies: CookieKeys;
  readonly #tickets: TicketKeys;
  readonly #byCid = new Map<number | string, SessionEntry>();
  readonly #established = new Map<string, SessionEntry>();
  readonly #pending = new Map<string, SessionEntry>();
  readonly #pendingPerIp = new Map<string, number>();
  readonly #sessions = new Map<number, SessionEntry>();
  readonly #timers = new TimerHeap<SessionEntry>();
  #nextId = 1;
  readonly stats: EndpointStats = { datagramsIn: 0, helloRetryRequests: 0, sessionsCreated: 0, dropped: {} };

  constructor(config: ServerConfig & { readonly limits?: Partial<EndpointLimits> }, now: number) {
    this.config = resolveServerConfig(config);
    this.limits = { ...DEFAULT_ENDPOINT_LIMITS, ...config.limits };
    this.#cookies = new CookieKeys(this.config.provider, now);
    this.#tickets = new TicketKeys(this.config.provider, now, this.config.ticketLifetimeSeconds * 1000);
  }

  /** Sessions established or in progress. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  get pendingCount(): number {
    return this.#pending.size;
  }

  /** The sessions now (established and pending), for metrics and operators. */
  sessions(): ServerSession[] {
    return [...this.#sessions.values()];
  }

  /** The earliest time `handleTimeout` must run, or undefined. */
  nextTimeout(): number | undefined {
    return this.#timers.next();
  }

  /** The entry point for every datagram the server's socket receives. */
  async handleDatagram(datagram: Uint8Array, from: PeerAddress, now: number): Promise<EndpointOutput> {
    return this.handleDatagramNow(datagram, from, now);
  }

  /**
   * `handleDatagram`, with the output returned synchronously when nothing had to wait (the records
   * of established sessions); a promise when a handshake step waits. For adapters that move many
   * datagrams per system call (src/dtls/udp.ts).
   */
  handleDatagramNow(datagram: Uint8Array, from: PeerAddress, now: number): EndpointOutput | Promise<EndpointOutput> {
    const out: EndpointOutput = { datagrams: [], events: [] };
    return then(this.#handleInto(datagram, from, now, out), () => out);
  }

  /**
   * Several datagrams, in order, with one output: what a batching socket read in one system call.
   * Synchronous unless a handshake step waits; the datagrams after it wait for it.
   *
   * @example
   *   const out = endpoint.handleDatagramsNow([{ data, from }, { data: next, from }], Date.now());
   */
  handleDatagramsNow(batch: readonly IncomingDatagram[], now: number): EndpointOutput | Promise<EndpointOutput> {
    const out: EndpointOutput = { datagrams: [], events: [] };
    const from = (i: number): EndpointOutput | Promise<EndpointOutput> => {
      for (; i < batch.length; i++) {
        const d = batch[i] as IncomingDatagram;
        const r = this.#handleInto(d.data, d.from, now, out);
        if (r instanceof Promise) {
          const next = i + 1;
          return r.then(() => from(next));
        }
      }
      return out;
    };
    return from(0);
  }

  #handleInto(datagram: Uint8Array, from: PeerAddress, now: number, out: EndpointOutput): void | Promise<unknown> {
    this.stats.datagramsIn++;
    if (datagram.length === 0) return void this.#drop(out, 'malformed');
    const first = datagram[0] as number;
    const cidLength = this.config.connectionIdLength;
    if (isCiphertextHeaderByte(first) && (first & 0x10) !== 0) {
      // RFC 9146: a CID names the session wherever the datagram came from.
      if (cidLength === 0 || datagram.length < 1 + cidLength) return void this.#drop(out, 'malformed');
      const s = this.#byCid.get(cidKey(datagram.subarray(1, 1 + cidLength)));
      if (s === undefined) return void this.#drop(out, 'unknown-cid');
      return settled(this.#deliver(s, datagram, from, now, out));
    }
    const key = addrKey(from);
    if (first === ContentType.handshake && this.#looksLikeClientHello(datagram)) {
      const pending = this.#pending.get(key);
      if (pending !== undefined && pending.hello !== undefined && sameBytes(pending.hello, helloBytes(datagram))) {
        // A retransmitted ClientHello for the handshake in progress: the session answers it.
        return settled(this.#deliver(pending, datagram, from, now, out));
      }
      // A different ClientHello (a new attempt, or the one we answered was damaged on the way):
      // it starts over, and with a valid cookie replaces the handshake in progress.
      return this.#clientHello(datagram, from, now, out);
    }
    const pending = this.#pending.get(key);
    const established = this.#established.get(key);
    if (pending === undefined && established === undefined) return void this.#drop(out, 'unknown-peer');
    if (pending !== undefined) {
      return settled(then(this.#deliver(pending, datagram, from, now, out), (r) => {
        if (r === undefined || r.authenticated > 0 || established === undefined) return undefined;
        return this.#deliver(established, datagram, from, now, out);
      }));
    }
    return settled(this.#deliver(established as SessionEntry, datagram, from, now, out));
  }

  async handleTimeout(now: number): Promise<EndpointOutput> {
    const out: EndpointOutput = { datagrams: [], events: [] };
    for (const s of this.#timers.due(now)) {
      if (this.#sessions.get(s.id) === s) this.#collect(s, await s.connection.handleTimeout(now), out);
    }
    return out;
  }

  async send(session: ServerSession, data: Uint8Array, now: number): Promise<EndpointOutput> {
    return this.sendNow(session, data, now);
  }

  /** `send`, synchronous unless the session's connection is waiting; misuse throws here. */
  sendNow(session: ServerSession, data: Uint8Array, now: number): EndpointOutput | Promise<EndpointOutput> {
    return this.#act(session, (c) => c.sendNow(data, now));
  }

  async updateKeys(session: ServerSession, requestPeer: boolean, now: number): Promise<EndpointOutput> {
    return this.#act(session, (c) => c.updateKeys(requestPeer, now));
  }

  async close(session: ServerSession, now: number): Promise<EndpointOutput> {
    return this.#act(session, (c) => c.close(now));
  }

  #act(session: ServerSession, fn: (c: Connection) => ConnectionOutput | Promise<ConnectionOutput>): EndpointOutput | Promise<EndpointOutput> {
    const out: EndpointOutput = { datagrams: [], events: [] };
    const s = this.#sessions.get(session.id);
    if (s === undefined) return out;
    return then(fn(s.connection), (r) => {
      this.#collect(s, r, out);
      return out;
    });
  }

  #looksLikeClientHello(datagram: Uint8Array): boolean {
    // DTLSPlaintext header (13 bytes), then the handshake header: msg_type 1.
    return datagram.length > 13 && datagram[13] === HandshakeType.clientHello;
  }

  /** RFC 9147 §5.1: the stateless part. */
  async #clientHello(datagram: Uint8Array, from: PeerAddress, now: number, out: EndpointOutput): Promise<void> {
    const { records } = parseDatagram(datagram, 0);
    const rec = records[0];
    if (rec === undefined || rec.kind !== 'plaintext' || rec.contentType !== ContentType.handshake) return void this.#drop(out, 'malformed');
    let ch: ClientHello;
    let bytes: Uint8Array;
    let messageSeq: number;
    try {
      const frags = readHandshakeFragments(rec.fragment);
      const f = frags[0];
      if (f === undefined || f.msgType !== HandshakeType.clientHello) return void this.#drop(out, 'not-client-hello');
      // Stateless: the whole ClientHello must be in this datagram (docs/dtls.md).
      if (f.fragmentOffset !== 0 || f.body.length !== f.length) return void this.#drop(out, 'fragmented-client-hello');
      const m = readHandshakeBody(f.msgType, f.body);
      if (m.type !== HandshakeType.clientHello) return void this.#drop(out, 'not-client-hello');
      ch = m;
      bytes = encodeHandshake(ch);
      messageSeq = f.messageSeq;
      checkClientHello(ch);
      const suite = chooseSuite(this.config, ch);
      const { share, group } = chooseGroup(this.config, ch);
      const cookieExt = findExtension(ch.extensions, ExtensionType.cookie);
      let retry: AcceptedHello['retry'];
      if (cookieExt !== undefined) {
        const cookie = readCookie(cookieExt);
        const fields = this.#cookies.open(cookie, addrKey(from), now);
        if (fields === undefined) {
          // RFC 9147 §5.1: an invalid cookie ends the handshake with illegal_parameter.
          this.#drop(out, 'bad-cookie');
          out.datagrams.push({ to: from, data: plaintextAlert(alertCode('illegal_parameter'), rec.sequenceNumber) });
          return;
        }
        retry = { cookie, fields };
      } else if (share === undefined || (this.config.requireCookie && !this.#resumesFromItsAddress(ch, from, now))) {
        const cookie = this.#cookies.make({ clientHello1Hash: this.config.provider.sha256(bytes), suite: suite.id, hrrGroup: share === undefined ? group : 0 }, addrKey(from), now);
        const hrr = encodeHandshake(buildHelloRetryRequest(suite.id, share === undefined ? group : 0, cookie));
        this.stats.helloRetryRequests++;
        // The HelloRetryRequest reuses the ClientHello's record number (docs/dtls.md).
        out.datagrams.push({ to: from, data: plaintextHandshake(hrr, 0, rec.sequenceNumber) });
        return;
      }
      await this.#start(from, { clientHello: ch, bytes, retry }, messageSeq, rec.sequenceNumber, now, out, helloBytes(datagram));
    } catch (e) {
      if (!(e instanceof VitalsealError)) throw e;
      // A ClientHello we cannot work with: a plaintext alert for a peer that wants another version or
      // suite (small, no amplification); silence for malformed bytes.
      const alert = alertFor(e);
      if (alert === 'decode_error' || alert === undefined) return void this.#drop(out, 'malformed');
      this.#drop(out, 'incompatible');
      out.datagrams.push({ to: from, data: plaintextAlert(alertCode(alert), rec.sequenceNumber) });
    }
  }

  async #start(from: PeerAddress, hello: AcceptedHello, messageSeq: number, recordSeq: number, now: number, out: EndpointOutput, helloDatagram: Uint8Array): Promise<void> {
    const previous = this.#pending.get(addrKey(from));
    if (previous !== undefined) this.#remove(previous);
    if (this.#sessions.size >= this.limits.maxSessions) return void this.#drop(out, 'limit-sessions');
    if (this.#pending.size >= this.limits.maxPendingHandshakes) return void this.#drop(out, 'limit-pending');
    const ipCount = this.#pendingPerIp.get(from.address) ?? 0;
    if (ipCount >= this.limits.maxPendingPerAddress) return void this.#drop(out, 'limit-pending-address');
    const cid = this.#allocateCid();
    const connection = Connection.server(this.config, { tickets: this.#tickets, clientAddress: from.address }, cid, {
      maxMessageLength: Math.min(this.limits.maxBufferedBytesPerSession, 64 * 1024),
      maxAhead: 8,
      maxBufferedBytes: this.limits.maxBufferedBytesPerSession,
    });
    const s: SessionEntry = { id: this.#nextId++, connection, peer: from, pending: true, timeout: undefined, hello: Uint8Array.from(helloDatagram) };
    this.#sessions.set(s.id, s);
    this.#pending.set(addrKey(from), s);
    this.#pendingPerIp.set(from.address, ipCount + 1);
    this.stats.sessionsCreated++;
    const r = await connection.accept(hello, messageSeq, recordSeq, now);
    // The client uses our CID from its first protected record on: route by it from now.
    const agreed = connection.receiveCid;
    if (agreed.length > 0) this.#byCid.set(cidKey(agreed), s);
    this.#collect(s, r, out);
  }

  /**
   * RFC 9147 §5.1: a resumption from the IP address its ticket was issued to may skip the cookie.
   * Only the ticket is looked at here; its binder is checked when the handshake starts.
   */
  #resumesFromItsAddress(ch: ClientHello, from: PeerAddress, now: number): boolean {
    if (!this.config.resumeWithoutCookie) return false;
    const ext = findExtension(ch.extensions, ExtensionType.preSharedKey);
    const modes = findExtension(ch.extensions, ExtensionType.pskKeyExchangeModes);
    if (ext === undefined || modes === undefined || !readPskModes(modes).includes(PskKeyExchangeMode.pskDheKe)) return false;
    const first = readOfferedPsks(ext).identities[0];
    if (first === undefined) return false;
    const state = this.#tickets.open(first.identity, now);
    return state !== undefined && state.clientAddress === from.address;
  }

  #allocateCid(): Uint8Array {
    const n = this.config.connectionIdLength;
    if (n === 0) return new Uint8Array(0);
    for (;;) {
      const cid = this.config.provider.randomBytes(n);
      if (!this.#byCid.has(cidKey(cid))) return cid;
    }
  }

  #deliver(s: SessionEntry, datagram: Uint8Array, from: PeerAddress, now: number, out: EndpointOutput): ConnectionOutput | undefined | Promise<ConnectionOutput | undefined> {
    if (this.#sessions.get(s.id) !== s) return undefined;
    return then(s.connection.handleDatagramNow(datagram, now), (r) => {
      // RFC 9146 §6: follow an address change only for an authenticated record newer than any before.
      if (r.advanced && !s.pending && !sameAddress(from, s.peer)) {
        const old = addrKey(s.peer);
        if (this.#established.get(old) === s) this.#established.delete(old);
        s.peer = from;
        const displaced = this.#established.get(addrKey(from));
        if (displaced === undefined || displaced.connection.receiveCid.length > 0) this.#established.set(addrKey(from), s);
      }
      this.#collect(s, r, out);
      return r;
    });
  }

  #collect(s: SessionEntry, r: ConnectionOutput, out: EndpointOutput): void {
    for (const d of r.datagrams) out.datagrams.push({ to: s.peer, data: d });
    s.timeout = r.nextTimeout;
    this.#timers.set(s, r.nextTimeout);
    for (const event of r.events) {
      out.events.push({ session: s, event });
      if (event.type === 'connected') this.#promote(s);
    }
    const status = s.connection.status;
    if (status === 'closed' || status === 'failed') this.#remove(s);
  }

  /** The handshake completed: this is now the address's association (RFC 9147 §5.10). */
  #promote(s: SessionEntry): void {
    const key = addrKey(s.peer);
    if (this.#pending.get(key) === s) {
      this.#pending.delete(key);
      this.#decPending(s.peer.address);
    }
    s.pending = false;
    s.hello = undefined;
    const previous = this.#established.get(key);
    if (previous !== undefined && previous !== s) this.#remove(previous);
    this.#established.set(key, s);
  }

  #remove(s: SessionEntry): void {
    if (this.#sessions.get(s.id) !== s) return;
    this.#sessions.delete(s.id);
    this.#timers.set(s, undefined);
    const key = addrKey(s.peer);
    if (this.#pending.get(key) === s) {
      this.#pending.delete(key);
      this.#decPending(s.peer.address);
    }
    if (this.#established.get(key) === s) this.#established.delete(key);
    const cid = cidKey(s.connection.receiveCid);
    if (this.#byCid.get(cid) === s) this.#byCid.delete(cid);
  }

  #decPending(ip: string): void {
    const n = (this.#pendingPerIp.get(ip) ?? 1) - 1;
    if (n <= 0) this.#pendingPerIp.delete(ip);
    else this.#pendingPerIp.set(ip, n);
  }

  #drop(out: EndpointOutput, reason: EndpointDrop): EndpointOutput {
    this.stats.dropped[reason] = (this.stats.dropped[reason] ?? 0) + 1;
    return out;
  }
}

function plaintextHandshake(message: Uint8Array, messageSeq: number, recordSeq: number): Uint8Array {
  const frag = new Writer(message.length + 12);
  writeHandshakeFragment(frag, { msgType: message[0] as number, length: message.length - 4, messageSeq, fragmentOffset: 0, body: message.subarray(4) });
  const body = frag.finish();
  const w = new Writer(13 + body.length);
  writePlaintextHeader(w, ContentType.handshake, DTLS12_VERSION, recordSeq, body.length);
  return concatBytes(w.finish(), body);
}

function plaintextAlert(description: number, recordSeq: number): Uint8Array {
  const body = encodeAlert({ level: AlertLevel.fatal, description });
  const w = new Writer(13 + body.length);
  writePlaintextHeader(w, ContentType.alert, DTLS12_VERSION, recordSeq, body.length);
  w.bytes(body);
  return w.finish();
}

/** The handshake bytes of a datagram that starts with a DTLSPlaintext record (its record header skipped). */
function helloBytes(datagram: Uint8Array): Uint8Array {
  return datagram.subarray(13);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Nothing when `r` is already there, else a promise that it settles (its value is not needed). */
function settled(r: unknown): void | Promise<unknown> {
  return r instanceof Promise ? r : undefined;
}
