/**
 * The sans-I/O DTLS 1.3 connection: `(datagram, now) → { datagrams, events, nextTimeout }`.
 * It owns the record layer (epochs, record-number protection, replay windows), handshake message
 * framing (message_seq, fragmentation to the MTU, reassembly), flights with retransmission and
 * exponential back-off (RFC 9147 §5.8), ACKs (§7), KeyUpdate (§8), Connection IDs (§9, RFC 9146),
 * alerts and close_notify. The handshake itself lives in handshake/ and talks to this class through
 * `HandshakeContext`. No sockets, no timers, no clock: the caller passes `now` and arms a timer for
 * `nextTimeout`.
 *
 * Calls are serialised: each public method waits for the previous one (a handshake step may await a
 * Signer or a certificate verifier).
 *
 * @example
 *   const conn = Connection.client({ verifier });
 *   let out = await conn.start(Date.now());
 *   for (const d of out.datagrams) socket.send(d);
 *   out = await conn.handleDatagram(reply, Date.now());
 *   for (const e of out.events) if (e.type === 'connected') await conn.send(data, Date.now());
 */
import { concatBytes, zeroize } from '../util/bytes.ts';
import { ApiMisuse, PeerMisbehaved, VitalsealError } from '../util/errors.ts';
import { settle } from '../util/maybe-async.ts';
import { resolveClientConfig, type ClientConfig, type ResolvedClientConfig, type ResolvedCommon, type ResolvedServerConfig, type ResumptionTicket } from './config.ts';
import { Flight, planFlight, type FlightPurpose, type PlannedRecord } from './connection/flight.ts';
import { DEFAULT_REASSEMBLY_LIMITS, HandshakeReassembler, type ReassemblyLimits } from './connection/reassembly.ts';
import { alertCode, alertFor, ConnectionClosed, DtlsTimeout, PeerAlert } from './errors.ts';
import { startClient } from './handshake/client.ts';
import type { HandshakeState } from './handshake/common.ts';
import type { AuthMode, HandshakeContext, HandshakeResult } from './handshake/context.ts';
import { KeySchedule } from './handshake/key-schedule.ts';
import { startServer, type AcceptedHello, type ServerServices } from './handshake/server.ts';
import { Writer } from './messages/codec.ts';
import {
  AlertDescription, AlertLevel, alertName, ContentType, DTLS12_VERSION, HandshakeType, MAX_PLAINTEXT,
  type AlertName, type CipherSuiteName, type NamedGroupName,
} from './messages/constants.ts';
import { decodeHandshake, encodeHandshake, isHelloRetryRequest, type HandshakeMessage } from './messages/handshake.ts';
import {
  encodeAck, encodeAlert, parseDatagram, PLAINTEXT_HEADER_LENGTH, readAck, readAlert, readHandshakeFragments,
  writeHandshakeFragment, writePlaintextHeader, type CiphertextRecord, type RecordNumber, type WireRecord,
} from './messages/record.ts';
import type { PeerIdentity } from './peer-verifier.ts';
import { limitsFor, ReadEpoch, WriteEpoch, type DropReason } from './record/protection.ts';
import type { DtlsCipherSuite } from './suites.ts';

export type Role = 'client' | 'server';

/** What the application learns about an established connection. */
export interface SessionInfo {
  readonly version: 'DTLS 1.3';
  readonly suite: CipherSuiteName;
  readonly group: NamedGroupName | undefined;
  readonly authMode: AuthMode;
  readonly peer: PeerIdentity | undefined;
  readonly pskIdentity: Uint8Array | undefined;
  /** The CID the peer puts in records to us, and the one we put in records to it (empty: none). */
  readonly receiveCid: Uint8Array;
  readonly sendCid: Uint8Array;
}

export type DtlsEvent =
  | { readonly type: 'connected'; readonly info: SessionInfo }
  | { readonly type: 'data'; readonly data: Uint8Array }
  | { readonly type: 'session-ticket'; readonly ticket: ResumptionTicket }
  | { readonly type: 'keys-updated'; readonly direction: 'send' | 'receive'; readonly epoch: number }
  | { readonly type: 'closed'; readonly by: 'peer' | 'us' }
  | { readonly type: 'failed'; readonly error: VitalsealError; readonly alertSent: AlertName | undefined };

export interface ConnectionOutput {
  readonly datagrams: Uint8Array[];
  readonly events: DtlsEvent[];
  /** When `handleTimeout` should next be called (ms since the epoch), or undefined. */
  readonly nextTimeout: number | undefined;
  /** Records in this input that deprotected. */
  readonly authenticated: number;
  /** True when a record advanced the newest record number seen (RFC 9146 §6: safe to follow an address change). */
  readonly advanced: boolean;
}

export type ConnectionStatus = 'handshaking' | 'connected' | 'closed' | 'failed';

/** Counters for what was dropped and why (RFC 9147 §4.5.2: silently, but counted). */
export interface ConnectionStats {
  datagramsIn: number;
  recordsIn: number;
  recordsDropped: number;
  readonly dropped: Partial<Record<DropReason | 'malformed' | 'no-keys' | 'bad-cid' | 'plaintext-after-handshake' | 'unexpected-content', number>>;
  retransmissions: number;
  datagramsOut: number;
}

type Phase =
  | { readonly kind: 'idle' }
  | { readonly kind: 'handshaking'; readonly state: HandshakeState }
  | { readonly kind: 'connected'; readonly state: HandshakeState }
  | { readonly kind: 'closed' }
  | { readonly kind: 'failed' };

/** RFC 9147 §5.8.1: respond to retransmissions of the client's final flight for twice the MSL. */
const FINAL_FLIGHT_RETENTION_MS = 240_000;
/** Protected records of an epoch we have no keys for yet, held until the keys arrive (bounded). */
const MAX_FUTURE_RECORDS = 16;
/** RFC 9147 §4.4: an IPv4 datagram every path carries, for retransmissions after repeated loss. */
const FALLBACK_MTU = 548;
/** RFC 9147 §8: senders MUST NOT let the epoch exceed 2^48-1. */
const MAX_EPOCH = 2 ** 48 - 1;

interface AppSecrets {
  read: Uint8Array;
  write: Uint8Array;
  readonly suite: DtlsCipherSuite;
}

/** What one record did to the datagram's handling. */
interface RecordResult {
  readonly sawOld: boolean;
  readonly progressed: boolean;
}

/** One datagram's records still to handle, and what those handled so far did. */
interface RecordsState {
  readonly pending: WireRecord[];
  sawOld: boolean;
  progressed: boolean;
}

export class Connection {
  readonly role: Role;
  readonly #config: ResolvedCommon;
  readonly #ks: KeySchedule;
  #phase: Phase = { kind: 'idle' };
  #info: SessionInfo | undefined;

  // Record layer
  readonly #writeEpochs = new Map<number, WriteEpoch>();
  #writeEpoch = 0;
  #plaintextSeq = 0;
  readonly #readEpochs = new Map<number, ReadEpoch>();
  #receiveCid: Uint8Array;
  #sendCid: Uint8Array = new Uint8Array(0);
  #cidAgreed = false;
  #future: CiphertextRecord[] = [];
  #readKeysChanged = false;
  #retireEpoch2At: number | undefined;

  // Handshake framing
  #sendMessageSeq = 0;
  readonly #reassembler: HandshakeReassembler;
  #building: Flight | undefined;
  #flight: Flight | undefined;
  readonly #postHandshakeQueue: Flight[] = [];
  #rto: number;
  #retransmitAt: number | undefined;
  #handshakeDeadline: number | undefined;
  #mtu: number;

  // ACKs
  #ackList: RecordNumber[] = [];
  #ackAt: number | undefined;
  #ackNow = false;

  // Post-handshake
  #app: AppSecrets | undefined;
  #keyUpdatePending = false;
  #peerRequestedUpdate = false;

  // Per-call output
  #out: Uint8Array[] = [];
  #events: DtlsEvent[] = [];
  #authenticated = 0;
  #advanced = false;
  #queue: Promise<unknown> = Promise.resolve();
  /** Runs waiting in #queue or running asynchronously: while any is, new ones queue behind them. */
  #inFlight = 0;

  readonly stats: ConnectionStats = { datagramsIn: 0, recordsIn: 0, recordsDropped: 0, dropped: {}, retransmissions: 0, datagramsOut: 0 };

  private constructor(role: Role, config: ResolvedCommon, receiveCid: Uint8Array, limits: ReassemblyLimits = DEFAULT_REASSEMBLY_LIMITS) {
    this.role = role;
    this.#reassembler = new HandshakeReassembler(limits);
    this.#config = config;
    this.#ks = new KeySchedule(config.provider);
    this.#rto = config.initialRetransmitMs;
    this.#mtu = config.mtu;
    this.#receiveCid = receiveCid;
  }

  /** A client connection; call `start(now)` to send the ClientHello. */
  static client(config: ClientConfig): Connection {
    const resolved = resolveClientConfig(config);
    return new Connection('client', resolved, resolved.connectionId);
  }

  /** Used by the server endpoint once a ClientHello passed the cookie check. */
  static server(config: ResolvedServerConfig, services: ServerServices, receiveCid: Uint8Array, limits?: ReassemblyLimits): Connection {
    const c = new Connection('server', config, receiveCid, limits);
    c.#services = services;
    return c;
  }
  #services: ServerServices | undefined;

  get status(): ConnectionStatus {
    const k = this.#phase.kind;
    return k === 'idle' ? 'handshaking' : k;
  }

  /** Set once the handshake completed. */
  get info(): SessionInfo | undefined {
    return this.#info;
  }

  /** The largest datagram this connection sends (the configured MTU). */
  get mtu(): number {
    return this.#config.mtu;
  }

  /** The CID records to us carry (server endpoints route by it). */
  get receiveCid(): Uint8Array {
    return this.#receiveCid;
  }

  /** Largest application payload that fits one datagram of the configured MTU. */
  get maxDatagramPayload(): number {
    const w = this.#writeEpochs.get(this.#writeEpoch);
    const overhead = w === undefined ? 40 : w.recordSize(0, this.#sendCid);
    return Math.min(MAX_PLAINTEXT, this.#config.mtu - overhead);
  }

  // ---------------------------------------------------------------- public entry points

  /** Client: sends the first ClientHello. */
  start(now: number): Promise<ConnectionOutput> {
    return settle(() => this.#run(now, async () => {
      if (this.role !== 'client' || this.#phase.kind !== 'idle') throw new ApiMisuse('already-started', 'start() is for a new client connection');
      this.#handshakeDeadline = now + this.#config.handshakeTimeoutMs;
      const state = startClient(this.#context(now), this.#config as ResolvedClientConfig);
      this.#phase = { kind: 'handshaking', state };
      this.#finishFlight(now);
    }));
  }

  /**
   * Server: continue from the ClientHello the endpoint accepted. `record` is the record number of
   * the datagram that carried it, `messageSeq` the ClientHello's message_seq.
   */
  accept(hello: AcceptedHello, messageSeq: number, recordSeq: number, now: number): Promise<ConnectionOutput> {
    return settle(() => this.#run(now, async () => {
      const services = this.#services;
      if (this.role !== 'server' || services === undefined || this.#phase.kind !== 'idle') throw new ApiMisuse('already-started', 'accept() is for a new server connection');
      this.#handshakeDeadline = now + this.#config.handshakeTimeoutMs;
      // RFC 9147 §5.2: we sent a HelloRetryRequest as message 0 when this ClientHello answers it.
      this.#sendMessageSeq = hello.retry === undefined ? 0 : 1;
      this.#reassembler.skipTo(messageSeq + 1);
      // Our epoch-0 record numbers continue past those a stateless HelloRetryRequest used (docs/dtls.md).
      this.#plaintextSeq = recordSeq;
      const state = await startServer(this.#context(now), this.#config as ResolvedServerConfig, services, hello, this.#receiveCid);
      this.#phase = { kind: 'handshaking', state };
      this.#finishFlight(now);
    }));
  }

  handleDatagram(datagram: Uint8Array, now: number): Promise<ConnectionOutput> {
    return settle(() => this.handleDatagramNow(datagram, now));
  }

  /**
   * `handleDatagram`, with the output returned synchronously when nothing had to wait (records of
   * an established connection): adapters that move many datagrams use this to skip a promise per
   * datagram. The result is a promise only when a handshake step waits (a signature, say).
   */
  handleDatagramNow(datagram: Uint8Array, now: number): ConnectionOutput | Promise<ConnectionOutput> {
    return this.#run(now, () => this.#onDatagram(datagram, now));
  }

  handleTimeout(now: number): Promise<ConnectionOutput> {
    return settle(() => this.#run(now, () => this.#onTimeout(now)));
  }

  /** Sends application data as one record (RFC 9147 §4.4); the connection must be established. */
  send(data: Uint8Array, now: number): Promise<ConnectionOutput> {
    return settle(() => this.sendNow(data, now));
  }

  /**
   * `send`, synchronous unless an earlier call is still waiting; misuse (not connected, too large)
   * throws here rather than rejecting.
   */
  sendNow(data: Uint8Array, now: number): ConnectionOutput | Promise<ConnectionOutput> {
    return this.#run(now, () => {
      if (this.#phase.kind !== 'connected') throw new ApiMisuse('not-connected', `cannot send while ${this.status}`);
      if (data.length > MAX_PLAINTEXT) throw new ApiMisuse('record-too-large', `application data of ${data.length} bytes exceeds 2^14`);
      this.#maybeStartKeyUpdate(now);
      this.#emit(this.#protect(this.#writeEpoch, ContentType.applicationData, data));
    }, true);
  }

  /** Starts a KeyUpdate (RFC 9147 §8); `requestPeer` asks the peer to update too. */
  updateKeys(requestPeer: boolean, now: number): Promise<ConnectionOutput> {
    return settle(() => this.#run(now, () => {
      if (this.#phase.kind !== 'connected') throw new ApiMisuse('not-connected', `cannot update keys while ${this.status}`);
      if (this.#keyUpdatePending) throw new ApiMisuse('key-update-pending', 'the previous KeyUpdate is not acknowledged yet');
      this.#startKeyUpdate(requestPeer, now);
    }, true));
  }

  /** Sends close_notify (RFC 8446 §6.1) and stops. */
  close(now: number): Promise<ConnectionOutput> {
    return settle(() => this.#run(now, () => {
      if (this.#phase.kind === 'closed' || this.#phase.kind === 'failed') return;
      this.#sendAlert(AlertLevel.warning, AlertDescription.close_notify);
      this.#shutdown({ kind: 'closed' });
      this.#events.push({ type: 'closed', by: 'us' });
    }));
  }

  // ---------------------------------------------------------------- serialisation and output

  /**
   * Runs one entry point's body with the output collected from it. Bodies run one at a time, in
   * call order. With nothing in flight a body runs at once and, if it finishes without waiting
   * (application data, ACKs, timers: everything but handshake steps that sign or verify), its
   * output is returned synchronously; a body that waits, and every call made while one waits,
   * continue through the promise queue.
   */
  #run(now: number, body: () => void | Promise<void>, rethrowMisuse = false): ConnectionOutput | Promise<ConnectionOutput> {
    if (this.#inFlight === 0) {
      this.#begin();
      let waiting: void | Promise<void>;
      try {
        waiting = body();
      } catch (e) {
        return this.#ended(e, now, rethrowMisuse);
      }
      if (waiting === undefined) return this.#output();
      return this.#enqueue(() => waiting.then(() => this.#output(), (e: unknown) => this.#ended(e, now, rethrowMisuse)));
    }
    return this.#enqueue(() => this.#queue.then(async () => {
      this.#begin();
      try {
        await body();
      } catch (e) {
        return this.#ended(e, now, rethrowMisuse);
      }
      return this.#output();
    }));
  }

  #enqueue(make: () => Promise<ConnectionOutput>): Promise<ConnectionOutput> {
    this.#inFlight++;
    const next = make();
    // The queue's tail settles to nothing: holding the output (a handshake flight and its events)
    // for as long as the connection is idle cost every idle session several KiB.
    const settled = () => {
      this.#inFlight--;
    };
    this.#queue = next.then(settled, settled);
    return next;
  }

  #begin(): void {
    this.#out = [];
    this.#events = [];
    this.#authenticated = 0;
    this.#advanced = false;
  }

  /** A body threw: misuse goes back to the caller where asked, anything else fails the connection. */
  #ended(e: unknown, now: number, rethrowMisuse: boolean): ConnectionOutput {
    if (rethrowMisuse && e instanceof ApiMisuse) throw e;
    this.#fail(e, now);
    return this.#output();
  }

  #output(): ConnectionOutput {
    const out = {
      datagrams: this.#out,
      events: this.#events,
      nextTimeout: this.#nextTimeout(),
      authenticated: this.#authenticated,
      advanced: this.#advanced,
    };
    this.stats.datagramsOut += this.#out.length;
    this.#out = [];
    this.#events = [];
    return out;
  }

  #nextTimeout(): number | undefined {
    if (this.#phase.kind === 'closed' || this.#phase.kind === 'failed') return undefined;
    // Runs after every datagram: no array, no iterator.
    let t = earlier(this.#retransmitAt, this.#ackAt);
    if (this.#phase.kind === 'handshaking') t = earlier(t, this.#handshakeDeadline);
    return earlier(t, this.#retireEpoch2At);
  }

  #emit(datagram: Uint8Array): void {
    this.#out.push(datagram);
  }

  // ---------------------------------------------------------------- the handshake context

  #context(now: number): HandshakeContext {
    return {
      now,
      send: (message) => this.#queueMessage(message),
      installReadKeys: (epoch, suite, secret) => this.#installRead(epoch, suite, secret),
      installWriteKeys: (epoch, suite, secret) => this.#installWrite(epoch, suite, secret),
      setConnectionIds: (receive, send) => {
        this.#receiveCid = receive;
        // Kept for the session's life: its own bytes, not a view pinning the datagram it came in.
        this.#sendCid = Uint8Array.from(send);
        this.#cidAgreed = true;
      },
      complete: (result) => this.#complete(result, now),
      ticket: (ticket) => this.#events.push({ type: 'session-ticket', ticket }),
    };
  }

  #queueMessage(message: Uint8Array, purpose: FlightPurpose = 'handshake'): void {
    if (this.#building === undefined) this.#building = new Flight(purpose);
    this.#building.add(this.#writeEpoch, message, this.#sendMessageSeq++);
  }

  #installRead(epoch: number, suite: DtlsCipherSuite, secret: Uint8Array): void {
    const keys = this.#ks.trafficKeys(secret, suite);
    // One epoch per value of the two low bits (RFC 9147 §4.2.2 reconstructs from them).
    for (const [e, r] of this.#readEpochs) {
      if ((e & 3) === (epoch & 3)) {
        r.destroy();
        this.#readEpochs.delete(e);
      }
    }
    this.#readKeysChanged = true;
    this.#readEpochs.set(epoch, new ReadEpoch(this.#config.provider, suite, epoch, keys, limitsFor(suite, this.#config.aeadLimits)));
    zeroize(keys.key, keys.iv, keys.snKey);
    if (epoch >= 3) {
      if (this.#app === undefined) this.#app = { read: Uint8Array.from(secret), write: new Uint8Array(0), suite };
      else this.#app.read = Uint8Array.from(secret);
    }
  }

  #installWrite(epoch: number, suite: DtlsCipherSuite, secret: Uint8Array): void {
    const keys = this.#ks.trafficKeys(secret, suite);
    this.#writeEpochs.set(epoch, new WriteEpoch(this.#config.provider, suite, epoch, keys, limitsFor(suite, this.#config.aeadLimits)));
    zeroize(keys.key, keys.iv, keys.snKey);
    this.#writeEpoch = epoch;
    if (epoch >= 3) {
      if (this.#app === undefined) this.#app = { read: new Uint8Array(0), write: Uint8Array.from(secret), suite };
      else this.#app.write = Uint8Array.from(secret);
    }
  }

  #complete(result: HandshakeResult, now: number): void {
    this.#info = {
      version: 'DTLS 1.3',
      suite: result.suite.name,
      group: result.group,
      authMode: result.authMode,
      peer: result.peer,
      // Kept for the session's life: its own bytes, not a view pinning a handshake message's buffer.
      pskIdentity: result.pskIdentity === undefined ? undefined : Uint8Array.from(result.pskIdentity),
      receiveCid: this.#receiveCid,
      sendCid: this.#sendCid,
    };
    zeroize(result.clientApplicationSecret, result.serverApplicationSecret);
    this.#handshakeDeadline = undefined;
    this.#reassembler.forgetCompleted();
    this.#events.push({ type: 'connected', info: this.#info });
    if (this.role === 'server') {
      // RFC 9147 §5.8.1: keep answering a retransmitted final flight for a while.
      this.#retireEpoch2At = now + FINAL_FLIGHT_RETENTION_MS;
      this.#ackNow = true;
      for (const t of result.tickets) {
        const f = new Flight('new-session-ticket');
        f.add(this.#writeEpoch, encodeHandshake(t), this.#sendMessageSeq++);
        this.#postHandshakeQueue.push(f);
      }
    } else if (this.#building !== undefined) {
      this.#building.purpose = 'final';
    }
  }

  // ---------------------------------------------------------------- receiving

  #onDatagram(datagram: Uint8Array, now: number): void | Promise<void> {
    if (this.#phase.kind === 'closed' || this.#phase.kind === 'failed') return;
    this.stats.datagramsIn++;
    const parsed = parseDatagram(datagram, this.#receiveCid.length);
    if (parsed.error !== undefined) this.#drop('malformed');
    // parseDatagram's array is this call's own: consumed in place.
    return this.#onRecords({ pending: parsed.records, sawOld: false, progressed: false }, now);
  }

  /** The datagram's records in order; waits (returns a promise) only if a record's handling does. */
  #onRecords(st: RecordsState, now: number): void | Promise<void> {
    while (st.pending.length > 0) {
      const rec = st.pending.shift() as WireRecord;
      this.stats.recordsIn++;
      this.#readKeysChanged = false;
      const r = this.#onRecord(rec, now);
      if (r instanceof Promise) {
        return r.then((done) => {
          if (this.#recorded(st, done)) return this.#onRecords(st, now);
        });
      }
      if (!this.#recorded(st, r)) return;
    }
    this.#afterInput(now, st.sawOld, st.progressed);
  }

  /** Folds one record's result in; false once the connection is over. */
  #recorded(st: RecordsState, r: RecordResult): boolean {
    if (this.#over) return false;
    st.sawOld ||= r.sawOld;
    st.progressed ||= r.progressed;
    if (this.#readKeysChanged) {
      // New keys: records of that epoch held back can be read now.
      const ready = this.#future.filter((f) => this.#readEpochFor(f) !== undefined);
      this.#future = this.#future.filter((f) => !ready.includes(f));
      st.pending.unshift(...ready);
    }
    return true;
  }

  #readEpochFor(rec: CiphertextRecord): ReadEpoch | undefined {
    // RFC 9147 §4.2.2: the most recent epoch whose low bits match.
    let best: ReadEpoch | undefined;
    for (const r of this.#readEpochs.values()) if ((r.epoch & 3) === rec.epochBits && (best === undefined || r.epoch > best.epoch)) best = r;
    return best;
  }

  #onRecord(rec: WireRecord, now: number): RecordResult | Promise<RecordResult> {
    const none = { sawOld: false, progressed: false };
    if (rec.kind === 'plaintext') {
      if (rec.epoch !== 0) return this.#drop('malformed'), none;
      switch (rec.contentType) {
        case ContentType.handshake:
          return this.#onHandshakePayload(0, rec.sequenceNumber, rec.fragment, false, now);
        case ContentType.alert:
          // Unprotected alerts are believed only while no keys protect the handshake.
          if (this.#phase.kind === 'handshaking' && !this.#readEpochs.has(2)) this.#onAlert(rec.fragment);
          else this.#drop('plaintext-after-handshake');
          return none;
        default:
          // Plaintext ACKs are unauthenticated: they could silence our retransmissions. Ignored.
          this.#drop('unexpected-content');
          return none;
      }
    }
    // RFC 9146 §3: once agreed, a CID is in every protected record, and it is ours.
    if (this.#cidAgreed && this.#receiveCid.length > 0) {
      if (rec.cid === undefined || !sameBytes(rec.cid, this.#receiveCid)) return this.#drop('bad-cid'), none;
    } else if (this.#cidAgreed && rec.cid !== undefined) {
      return this.#drop('bad-cid'), none;
    }
    const epoch = this.#readEpochFor(rec);
    if (epoch === undefined) {
      if (this.#phase.kind === 'handshaking' && this.#future.length < MAX_FUTURE_RECORDS) {
        // RFC 9147 §5.1/§7: records of a later epoch (EncryptedExtensions before ServerHello,
        // Finished before our keys): keep a few, and let an ACK say what we have.
        this.#future.push({ ...rec, header: Uint8Array.from(rec.header), encrypted: Uint8Array.from(rec.encrypted) });
        this.#scheduleAck(now);
      } else this.#drop('no-keys');
      return none;
    }
    const highestBefore = epoch.window.highest;
    const result = epoch.unprotect(rec);
    if (!result.ok) {
      this.#drop(result.reason);
      if (epoch.integrityExhausted) {
        // RFC 9147 §4.5.3: past the forgery limit the key, and here the connection, must go.
        throw new PeerMisbehaved('aead-integrity-limit', 'too many records failed authentication under one key');
      }
      if (epoch.keyUpdateDue && this.#phase.kind === 'connected' && epoch.epoch >= 3) this.#peerRequestedUpdate = true;
      return none;
    }
    this.#authenticated++;
    const { record } = result;
    if (record.sequenceNumber > highestBefore && epoch.epoch === this.#newestReadEpoch()) this.#advanced = true;
    // RFC 9147 §8: the pre-update read keys go once the new ones have protected a record.
    if (epoch.epoch >= 4) {
      const older = this.#readEpochs.get(epoch.epoch - 1);
      if (older !== undefined) {
        older.destroy();
        this.#readEpochs.delete(epoch.epoch - 1);
      }
    }
    switch (record.contentType) {
      case ContentType.handshake:
        return this.#onHandshakePayload(record.epoch, record.sequenceNumber, record.content, true, now);
      case ContentType.ack:
        this.#onAck(record.content, now);
        return none;
      case ContentType.alert:
        this.#onAlert(record.content);
        return none;
      case ContentType.applicationData:
        // RFC 9147 §5.8.1: application data only in epoch 3 and later, once the handshake is done.
        if (this.#phase.kind !== 'connected' || record.epoch < 3) return this.#drop('unexpected-content'), none;
        // The opened content is a fresh buffer (the provider decrypts into new memory): no copy.
        this.#events.push({ type: 'data', data: record.content });
        return none;
      default:
        // RFC 8446 §5: an unknown content type from an authenticated peer is fatal.
        throw new PeerMisbehaved('unexpected-message', `record of content type ${record.contentType}`);
    }
  }

  /** Closed or failed (a getter, so checks after an await are not narrowed away). */
  get #over(): boolean {
    return this.#phase.kind === 'closed' || this.#phase.kind === 'failed';
  }

  #newestReadEpoch(): number {
    let max = -1;
    for (const e of this.#readEpochs.keys()) max = Math.max(max, e);
    return max;
  }

  async #onHandshakePayload(epoch: number, seq: number, payload: Uint8Array, authenticated: boolean, now: number): Promise<{ sawOld: boolean; progressed: boolean }> {
    let fragments;
    try {
      fragments = readHandshakeFragments(payload);
    } catch (e) {
      // A protected record is the peer's; an unprotected one may be anyone's: drop it.
      if (authenticated) throw e;
      this.#drop('malformed');
      return { sawOld: false, progressed: false };
    }
    let sawOld = false;
    let acked = false;
    // Once handshake keys exist, an unprotected handshake message can only be a retransmitted hello:
    // it may tell us the peer is retransmitting, but nothing unprotected is buffered or processed.
    const onlyOld = !authenticated && (this.#readEpochs.has(2) || this.#phase.kind === 'connected');
    for (const f of fragments) {
      if (onlyOld && f.messageSeq >= this.#reassembler.nextSeq) {
        this.#drop('plaintext-after-handshake');
        continue;
      }
      const outcome = this.#reassembler.add(f);
      if (outcome === 'old') sawOld = true;
      if (outcome !== 'dropped') acked = true;
      if (outcome === 'buffered' && this.#reassembler.hasGap) this.#ackNow = this.#phase.kind === 'handshaking';
    }
    if (acked || sawOld) this.#ackList.push({ epoch, sequenceNumber: seq });
    if (this.#ackList.length > 64) this.#ackList.shift();
    let progressed = false;
    for (const ready of this.#reassembler.takeReady()) {
      progressed = true;
      const msg = decodeHandshake(ready.message);
      if (msg.type === HandshakeType.serverHello && isHelloRetryRequest(msg)) this.#reassembler.forget(ready.messageSeq);
      await this.#onHandshakeMessage(msg, epoch, now);
      if (this.#over) break;
    }
    if (!progressed && this.#phase.kind === 'handshaking') this.#scheduleAck(now);
    return { sawOld, progressed };
  }

  async #onHandshakeMessage(msg: HandshakeMessage, epoch: number, now: number): Promise<void> {
    const phase = this.#phase;
    switch (phase.kind) {
      case 'handshaking': {
        // RFC 9147 §7: the peer's next flight implicitly acknowledges ours.
        if (this.#flight !== undefined && !this.#flight.expectsAck) this.#dropFlight();
        const state = await phase.state.handle(this.#context(now), msg);
        if (this.#phase.kind === 'handshaking' || this.#phase.kind === 'connected') {
          this.#phase = this.#info === undefined ? { kind: 'handshaking', state } : { kind: 'connected', state };
        }
        return;
      }
      case 'connected':
        await this.#onPostHandshake(phase.state, msg, epoch, now);
        return;
      case 'idle':
      case 'closed':
      case 'failed':
        throw new PeerMisbehaved('unexpected-message', `handshake message while ${phase.kind}`);
      default: {
        const never: never = phase;
        throw new TypeError(`unknown phase ${String(never)}`);
      }
    }
  }

  async #onPostHandshake(state: HandshakeState, msg: HandshakeMessage, epoch: number, now: number): Promise<void> {
    // RFC 9147 §7: every post-handshake message is acknowledged.
    this.#ackNow = true;
    if (epoch < 3) throw new PeerMisbehaved('unexpected-message', 'post-handshake message outside the application epochs');
    switch (msg.type) {
      case HandshakeType.keyUpdate:
        this.#onKeyUpdate(msg.updateRequested, epoch, now);
        return;
      case HandshakeType.newConnectionId:
        // RFC 9147 §9: only when CIDs were negotiated; a cid_immediate switch is taken at once.
        if (!this.#cidAgreed || this.#sendCid.length === 0) throw new PeerMisbehaved('unexpected-message', 'NewConnectionId without a negotiated CID');
        if (msg.usage === 0) {
          const first = msg.cids[0];
          if (first === undefined) throw new PeerMisbehaved('illegal-parameter', 'cid_immediate with no CID');
          this.#sendCid = Uint8Array.from(first);
        }
        return;
      case HandshakeType.requestConnectionId:
        // We hand out one CID per association (docs/dtls.md): answer with none (RFC 9147 §9 allows it).
        if (!this.#cidAgreed || this.#receiveCid.length === 0) throw new PeerMisbehaved('unexpected-message', 'RequestConnectionId without a negotiated CID');
        this.#queuePostHandshake('new-connection-id', encodeHandshake({ type: HandshakeType.newConnectionId, cids: [], usage: 1 }));
        return;
      default: {
        const next = await state.handle(this.#context(now), msg);
        if (this.#phase.kind === 'connected') this.#phase = { kind: 'connected', state: next };
      }
    }
  }

  #onKeyUpdate(requested: boolean, epoch: number, now: number): void {
    const app = this.#app;
    // RFC 9147 §8: a KeyUpdate arrives in the newest read epoch; the next one follows it.
    if (app === undefined || epoch !== this.#newestReadEpoch()) return;
    const next = this.#ks.nextTrafficSecret(app.read);
    this.#installRead(epoch + 1, app.suite, next);
    zeroize(next);
    // The epoch just left stays until a record under the new keys arrives (RFC 9147 §8).
    this.#events.push({ type: 'keys-updated', direction: 'receive', epoch: epoch + 1 });
    if (requested) this.#peerRequestedUpdate = true;
    void now;
  }

  #onAck(content: Uint8Array, now: number): void {
    const numbers = readAck(content);
    const flight = this.#flight;
    if (flight === undefined) return;
    let mine = false;
    for (const rn of numbers) mine = flight.ack(rn.epoch, rn.sequenceNumber) || mine;
    if (!mine) return;
    if (flight.fullyAcked) {
      this.#flightDone(flight, now);
    } else if (this.#retransmitAt !== undefined) {
      // RFC 9147 §7.2: an ACK for part of a flight: resend what is missing now.
      this.#transmit(flight, now, true);
    }
  }

  #onAlert(content: Uint8Array): void {
    let alert;
    try {
      alert = readAlert(content);
    } catch {
      this.#drop('malformed');
      return;
    }
    if (alert.description === AlertDescription.close_notify) {
      // RFC 8446 §6.1: answer with our own close_notify; later records are ignored (RFC 9147 §5.10).
      this.#sendAlert(AlertLevel.warning, AlertDescription.close_notify);
      this.#shutdown({ kind: 'closed' });
      this.#events.push({ type: 'closed', by: 'peer' });
      return;
    }
    if (alert.description === AlertDescription.user_canceled) return;
    // RFC 8446 §6.2: every other alert ends the connection, whatever its level says.
    throw new PeerAlert(alert.description, alertName(alert.description));
  }

  // ---------------------------------------------------------------- flights, ACKs, timers

  /** After a datagram: send the new flight, answer retransmissions, send due ACKs. */
  #afterInput(now: number, sawOld: boolean, progressed: boolean): void {
    if (this.#building !== undefined) {
      this.#finishFlight(now);
    } else if (sawOld && this.#flight !== undefined && !progressed && !this.#flight.anyAcked && now - this.#flight.lastSentAt >= Math.min(this.#rto / 4, 250)) {
      // RFC 9147 §5.8.1 (exit 3): the peer retransmits, so our answer was probably lost.
      this.#transmit(this.#flight, now, true);
    }
    if (sawOld && this.#phase.kind === 'connected' && this.role === 'server') this.#ackNow = true;
    if (this.#peerRequestedUpdate && !this.#keyUpdatePending && this.#phase.kind === 'connected') {
      this.#peerRequestedUpdate = false;
      this.#startKeyUpdate(false, now);
    }
    this.#maybeStartKeyUpdate(now);
    if (this.#ackNow) this.#sendAck(now);
    this.#pumpPostHandshake(now);
  }

  /** Turns the messages queued by the handshake into the current flight and sends it. */
  #finishFlight(now: number): void {
    const f = this.#building;
    this.#building = undefined;
    if (f === undefined) return;
    // Responding implicitly acknowledges what we received (RFC 9147 §7); no separate ACK.
    this.#ackList = [];
    this.#ackAt = undefined;
    this.#ackNow = false;
    if (this.#flight !== undefined) this.#dropFlight();
    this.#flight = f;
    f.firstSentAt = now;
    this.#transmit(f, now, false);
  }

  #queuePostHandshake(purpose: FlightPurpose, message: Uint8Array): void {
    const f = new Flight(purpose);
    f.add(this.#writeEpoch, message, this.#sendMessageSeq++);
    this.#postHandshakeQueue.push(f);
  }

  /** RFC 9147 §5.8.4: post-handshake messages one at a time, each waiting for its ACK. */
  #pumpPostHandshake(now: number): void {
    if (this.#phase.kind !== 'connected' || this.#flight !== undefined) return;
    const next = this.#postHandshakeQueue.shift();
    if (next === undefined) return;
    this.#flight = next;
    next.firstSentAt = now;
    this.#transmit(next, now, false);
  }

  #transmit(flight: Flight, now: number, retransmission: boolean): void {
    const overhead = (epoch: number) => {
      if (epoch === 0) return PLAINTEXT_HEADER_LENGTH;
      const w = this.#writeEpochs.get(epoch);
      if (w === undefined) throw new ApiMisuse('no-write-keys', `no keys to send in epoch ${epoch}`);
      return w.recordSize(0, this.#sendCid);
    };
    // RFC 9147 §4.4: after repeated silence, retransmit in smaller datagrams.
    const mtu = flight.transmissions >= 2 ? Math.min(this.#mtu, FALLBACK_MTU) : this.#mtu;
    const plan = planFlight(flight.missing(), mtu, overhead);
    for (const datagram of plan) this.#emit(concatBytes(...datagram.map((r) => this.#sealPlanned(flight, r))));
    if (retransmission) this.stats.retransmissions++;
    flight.transmissions++;
    flight.lastSentAt = now;
    this.#retransmitAt = now + this.#rto;
  }

  #sealPlanned(flight: Flight, planned: PlannedRecord): Uint8Array {
    const w = new Writer(512);
    for (const f of planned.fragments) {
      writeHandshakeFragment(w, {
        msgType: f.message.msgType,
        length: f.message.body.length,
        messageSeq: f.message.messageSeq,
        fragmentOffset: f.offset,
        body: f.message.body.subarray(f.offset, f.offset + f.length),
      });
    }
    const seq = planned.epoch === 0 ? this.#plaintextSeq : (this.#writeEpochs.get(planned.epoch)?.nextSequence ?? 0);
    flight.records.set(`${planned.epoch}:${seq}`, planned.fragments);
    return this.#protect(planned.epoch, ContentType.handshake, w.finish());
  }

  /** A record in `epoch`: DTLSPlaintext for epoch 0, DTLSCiphertext otherwise. */
  #protect(epoch: number, contentType: number, content: Uint8Array): Uint8Array {
    if (epoch === 0) {
      const w = new Writer(PLAINTEXT_HEADER_LENGTH + content.length);
      writePlaintextHeader(w, contentType, DTLS12_VERSION, this.#plaintextSeq++, content.length);
      w.bytes(content);
      return w.finish();
    }
    const wr = this.#writeEpochs.get(epoch);
    if (wr === undefined) throw new ApiMisuse('no-write-keys', `no keys to send in epoch ${epoch}`);
    return wr.protect(contentType, content, this.#sendCid);
  }

  #flightDone(flight: Flight, now: number): void {
    this.#flight = undefined;
    this.#retransmitAt = undefined;
    // RFC 9147 §5.8.2: back to the initial timer value once a flight got through.
    this.#rto = this.#config.initialRetransmitMs;
    this.#mtu = this.#config.mtu;
    switch (flight.purpose) {
      case 'final':
        // The server has our Finished: the handshake epoch is no longer needed in either direction.
        this.#retireEpoch(2);
        break;
      case 'key-update':
        this.#finishKeyUpdate();
        break;
      case 'handshake':
      case 'new-session-ticket':
      case 'new-connection-id':
        break;
      default: {
        const never: never = flight.purpose;
        throw new TypeError(`unknown flight purpose ${String(never)}`);
      }
    }
    this.#pumpPostHandshake(now);
  }

  #dropFlight(): void {
    this.#flight = undefined;
    this.#retransmitAt = undefined;
    this.#mtu = this.#config.mtu;
  }

  #retireEpoch(epoch: number): void {
    this.#writeEpochs.get(epoch)?.destroy();
    this.#writeEpochs.delete(epoch);
    this.#readEpochs.get(epoch)?.destroy();
    this.#readEpochs.delete(epoch);
  }

  #scheduleAck(now: number): void {
    // RFC 9147 §7.1: a partial flight is acknowledged after a quarter of the retransmit timer.
    if (this.#ackAt === undefined) this.#ackAt = now + Math.max(1, Math.floor(this.#rto / 4));
  }

  #sendAck(now: number): void {
    this.#ackNow = false;
    this.#ackAt = undefined;
    // RFC 9147 §7: numerically increasing, in the highest epoch we can send. During the handshake
    // that epoch must not be below the records acknowledged; afterwards the two directions update
    // their keys independently and the highest sending epoch is what counts.
    const list = [...this.#ackList].sort((a, b) => a.epoch - b.epoch || a.sequenceNumber - b.sequenceNumber);
    const epoch = this.#writeEpoch;
    if (this.#phase.kind === 'handshaking' && list.some((rn) => rn.epoch > epoch)) return;
    this.#emit(this.#protect(epoch, ContentType.ack, encodeAck(list)));
    if (this.#phase.kind === 'connected') this.#ackList = [];
    void now;
  }

  #onTimeout(now: number): void {
    if (this.#phase.kind === 'closed' || this.#phase.kind === 'failed') return;
    if (this.#phase.kind === 'handshaking' && this.#handshakeDeadline !== undefined && now >= this.#handshakeDeadline) {
      throw new DtlsTimeout('handshake-timeout', `handshake not complete after ${this.#config.handshakeTimeoutMs} ms`);
    }
    if (this.#retireEpoch2At !== undefined && now >= this.#retireEpoch2At) {
      this.#retireEpoch2At = undefined;
      this.#retireEpoch(2);
    }
    const flight = this.#flight;
    if (flight !== undefined && this.#retransmitAt !== undefined && now >= this.#retransmitAt) {
      if (flight.expectsAck && now - flight.firstSentAt >= this.#config.handshakeTimeoutMs) {
        // A ticket or spare CIDs the peer never acknowledged are given up.
        if (flight.purpose === 'new-session-ticket' || flight.purpose === 'new-connection-id') {
          this.#flightDone(flight, now);
          return;
        }
        // Without the ACK of our Finished the handshake did not happen at the peer.
        if (flight.purpose === 'final') throw new DtlsTimeout('ack-timeout', 'the server has not acknowledged our Finished');
        // A KeyUpdate keeps waiting (RFC 9147 §8: the old keys stay in use meanwhile), retransmitted
        // at the longest interval, so a peer back from a long sleep finds its association.
      }
      // RFC 9147 §5.8.2: double the timer at each retransmission, up to the maximum.
      this.#rto = Math.min(this.#rto * 2, this.#config.maxRetransmitMs);
      this.#transmit(flight, now, true);
    }
    if (this.#ackAt !== undefined && now >= this.#ackAt) this.#sendAck(now);
  }

  // ---------------------------------------------------------------- key update

  #maybeStartKeyUpdate(now: number): void {
    if (this.#phase.kind !== 'connected' || this.#keyUpdatePending) return;
    const w = this.#writeEpochs.get(this.#writeEpoch);
    const r = this.#readEpochs.get(this.#newestReadEpoch());
    // RFC 9147 §4.5.3: update before the confidentiality limit; ask the peer to when forgeries pile up.
    if (w?.keyUpdateDue === true) this.#startKeyUpdate(r?.keyUpdateDue === true, now);
    else if (r?.keyUpdateDue === true && r.epoch >= 3) this.#startKeyUpdate(true, now);
  }

  #startKeyUpdate(requestPeer: boolean, now: number): void {
    if (this.#writeEpoch + 1 > MAX_EPOCH) return; // RFC 9147 §8: ignore the request instead
    this.#keyUpdatePending = true;
    this.#queuePostHandshake('key-update', encodeHandshake({ type: HandshakeType.keyUpdate, updateRequested: requestPeer }));
    this.#pumpPostHandshake(now);
  }

  /** RFC 9147 §8: the KeyUpdate is acknowledged, so from now on we send under the next epoch. */
  #finishKeyUpdate(): void {
    const app = this.#app;
    if (app === undefined) return;
    const next = this.#ks.nextTrafficSecret(app.write);
    const old = this.#writeEpoch;
    zeroize(app.write);
    this.#installWrite(old + 1, app.suite, next);
    zeroize(next);
    this.#writeEpochs.get(old)?.destroy();
    this.#writeEpochs.delete(old);
    this.#keyUpdatePending = false;
    this.#events.push({ type: 'keys-updated', direction: 'send', epoch: old + 1 });
  }

  // ---------------------------------------------------------------- failure and shutdown

  #sendAlert(level: number, description: number): void {
    try {
      this.#emit(this.#protect(this.#writeEpoch, ContentType.alert, encodeAlert({ level, description })));
    } catch {
      // No keys to send it with: alerts are best effort (RFC 9147 §5.10).
    }
  }

  #fail(error: unknown, now: number): void {
    if (this.#phase.kind === 'closed' || this.#phase.kind === 'failed') return;
    const alert = alertFor(error);
    if (alert !== undefined) this.#sendAlert(AlertLevel.fatal, alertCode(alert));
    const typed = error instanceof VitalsealError ? error : new ConnectionClosed('internal-error', `internal error: ${error instanceof Error ? error.message : String(error)}`);
    this.#shutdown({ kind: 'failed' });
    this.#events.push({ type: 'failed', error: typed, alertSent: alert });
    void now;
  }

  #shutdown(phase: Phase): void {
    this.#phase = phase;
    this.#flight = undefined;
    this.#building = undefined;
    this.#postHandshakeQueue.length = 0;
    this.#retransmitAt = undefined;
    this.#ackAt = undefined;
    this.#future = [];
    this.#reassembler.clear();
    for (const w of this.#writeEpochs.values()) w.destroy();
    for (const r of this.#readEpochs.values()) r.destroy();
    this.#writeEpochs.clear();
    this.#readEpochs.clear();
    if (this.#app !== undefined) zeroize(this.#app.read, this.#app.write);
    this.#app = undefined;
  }

  #drop(reason: keyof ConnectionStats['dropped']): void {
    this.stats.recordsDropped++;
    this.stats.dropped[reason] = (this.stats.dropped[reason] ?? 0) + 1;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The earlier of two optional deadlines. */
function earlier(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  return b === undefined || a <= b ? a : b;
}
