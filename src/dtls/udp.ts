/**
 * The thin `node:dgram` adapter around the sans-I/O core: it moves datagrams between a UDP socket
 * and a `Connection` (client) or a `DtlsServerEndpoint` (server), arms one timer for the core's
 * `nextTimeout`, and turns the core's events into EventEmitter events. All protocol logic is in the
 * core; this file only does I/O.
 *
 * @example
 *   const server = await DtlsServer.listen({ port: 5684, certificateChain, signer });
 *   server.on('session', (s) => s.on('data', (d) => s.send(d)));
 *   const client = await DtlsClientSocket.connect({ host: '127.0.0.1', port: 5684, verifier });
 *   await client.send(new TextEncoder().encode('hello'));
 */
import { EventEmitter } from 'node:events';
import { systemClock, type Clock } from '../util/clock.ts';
import { ApiMisuse, VitalsealError } from '../util/errors.ts';
import { then } from '../util/maybe-async.ts';
import type { ClientConfig, ResumptionTicket, ServerConfig } from './config.ts';
import { Connection, type ConnectionOutput, type DtlsEvent, type SessionInfo } from './connection.ts';
import { ConnectionClosed } from './errors.ts';
import { connectLink, listenLink, resolveIo, type DatagramLink, type UdpIo } from './udp-link.ts';
import { DtlsServerEndpoint, type EndpointLimits, type EndpointOutput, type PeerAddress, type ServerSession } from './server-endpoint.ts';

/**
 * Runs steps one at a time, in call order. With nothing queued a step runs at once, and one that
 * finishes without waiting (an established connection's records) costs no promise turn. Steps
 * asked for while one runs synchronously (a 'data' listener answering, say) run right after it,
 * still synchronously; a step that waits, and every step asked for meanwhile, queue behind it.
 */
class Serial {
  #tail: Promise<unknown> = Promise.resolve();
  /** Steps running or queued on #tail. */
  #busy = 0;
  /** True while a step runs synchronously; steps asked for then wait in #deferred. */
  #running = false;
  #deferred: (() => void)[] = [];

  run<T>(fn: () => T | Promise<T>): Promise<T> {
    if (this.#running) {
      return new Promise<T>((resolve, reject) => {
        this.#deferred.push(() => void this.run(fn).then(resolve, reject));
      });
    }
    if (this.#busy > 0) {
      this.#busy++;
      return this.#track(this.#tail.then(fn));
    }
    this.#busy++;
    this.#running = true;
    let result: T | Promise<T>;
    try {
      result = fn();
    } catch (e) {
      this.#settleSync();
      return Promise.reject(e);
    }
    if (result instanceof Promise) {
      this.#running = false;
      const tracked = this.#track(result);
      this.#releaseDeferred();
      return tracked;
    }
    this.#settleSync();
    return Promise.resolve(result);
  }

  #settleSync(): void {
    this.#busy--;
    this.#running = false;
    this.#releaseDeferred();
  }

  /** Runs (or queues, if something now waits) the steps asked for during a synchronous one. */
  #releaseDeferred(): void {
    while (this.#deferred.length > 0 && !this.#running) (this.#deferred.shift() as () => void)();
  }

  #track<T>(p: Promise<T>): Promise<T> {
    const done = () => {
      this.#busy--;
    };
    this.#tail = p.then(done, done);
    return p;
  }
}

/** One timer for the core's next deadline. */
class Deadline {
  #timer: NodeJS.Timeout | undefined;
  #at: number | undefined;
  constructor(
    private readonly clock: Clock,
    private readonly fire: () => void,
  ) {}
  set(at: number | undefined): void {
    if (at === this.#at) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#at = at;
    if (at === undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#at = undefined;
      this.fire();
    }, Math.max(0, at - this.clock.now()));
    this.#timer.unref?.();
  }
  clear(): void {
    this.set(undefined);
  }
}

/**
 * Datagrams on their way to a socket. Those produced in the same turn of the event loop for the
 * same peer are joined into one datagram while they fit the MTU (RFC 9147 §4.4: a datagram may
 * carry several records; every record we send has a length field), which saves a system call per
 * small record. On a node:dgram link a datagram that can take no more goes to the kernel at once,
 * so the peer can start on it while later records are still being protected; the last one waits
 * for the end of the turn in case more join it. A batching link takes the whole turn's datagrams
 * in one system call at the end of the turn. Only the last datagram of a burst asks for a
 * completion callback (a socket's sends complete in order), and a close waits until everything
 * queued has been sent.
 */
class Outbox {
  #parts: Uint8Array[] = [];
  #size = 0;
  #port = 0;
  #host = '';
  #scheduled = false;
  #pending = 0;
  #waiters: (() => void)[] = [];
  readonly #sent = () => {
    this.#pending--;
    if (this.#pending === 0 && this.#parts.length === 0) for (const w of this.#waiters.splice(0)) w();
  };

  constructor(
    private readonly link: () => DatagramLink,
    private readonly mtu: number,
  ) {}

  send(data: Uint8Array, port: number, host: string): void {
    if (this.#parts.length > 0) {
      if (port === this.#port && host === this.#host && this.#size + data.length <= this.mtu) {
        this.#parts.push(data);
        this.#size += data.length;
        return;
      }
      this.#transmit(this.link().batches);
    }
    this.#parts.push(data);
    this.#size = data.length;
    this.#port = port;
    this.#host = host;
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush(): void {
    this.#scheduled = false;
    if (this.#parts.length > 0) this.#transmit(true);
    this.link().flush();
  }

  /** `track`: count it in `drained()` (the last of a burst on node:dgram; every one when batching). */
  #transmit(track: boolean): void {
    const parts = this.#parts;
    this.#parts = [];
    this.#size = 0;
    if (track) {
      this.#pending++;
      this.link().send(parts, this.#port, this.#host, this.#sent);
    } else this.link().send(parts, this.#port, this.#host);
  }

  /**
   * A batch of received datagrams has been handled: on a batching link what it produced (ACKs,
   * answers) goes now rather than at the end of the turn, so the peer is not kept waiting while
   * later batches are read.
   */
  received(): void {
    if (this.link().batches) this.flush();
  }

  drained(): Promise<void> {
    if (this.#parts.length > 0 || this.#scheduled) this.flush();
    return this.#pending === 0 ? Promise.resolve() : new Promise((resolve) => this.#waiters.push(resolve));
  }
}

export interface ClientSocketOptions extends ClientConfig {
  readonly host: string;
  readonly port: number;
  readonly clock?: Clock;
  /**
   * The UDP socket underneath (udp-link.ts): `auto` (the default: `batched` where available,
   * `node` elsewhere), `batched` (many datagrams per system call, 64-bit Linux with koffi; throws
   * Unsupported elsewhere) or `node` (node:dgram, one system call per datagram, any platform).
   */
  readonly udp?: UdpIo;
}

export interface DtlsClientSocketEvents {
  data: [Uint8Array];
  'session-ticket': [ResumptionTicket];
  'keys-updated': ['send' | 'receive', number];
  close: [];
  error: [VitalsealError];
}

/** A DTLS 1.3 client over one UDP socket. */
export class DtlsClientSocket extends EventEmitter<DtlsClientSocketEvents> {
  readonly #connection: Connection;
  #link: DatagramLink;
  /** Which link's datagrams are current (a rebind leaves the old one's late arrivals unheard). */
  #generation = 0;
  readonly #io: 'node' | 'batched';
  readonly #host: string;
  readonly #port: number;
  readonly #clock: Clock;
  readonly #serial = new Serial();
  readonly #deadline: Deadline;
  readonly #sends: Outbox;
  #closed = false;

  private constructor(options: ClientSocketOptions, io: 'node' | 'batched') {
    super();
    this.#connection = Connection.client(options);
    this.#sends = new Outbox(() => this.#link, this.#connection.mtu);
    this.#io = io;
    this.#link = undefined as unknown as DatagramLink;
    this.#host = options.host;
    this.#port = options.port;
    this.#clock = options.clock ?? systemClock;
    this.#deadline = new Deadline(this.#clock, () => void this.#step((now) => this.#connection.handleTimeout(now)));
  }

  /** Connects and completes the handshake; rejects with the failure (and its alert) otherwise. */
  static async connect(options: ClientSocketOptions): Promise<DtlsClientSocket> {
    const client = new DtlsClientSocket(options, resolveIo(options.udp));
    client.#link = await client.#openLink();
    const established = new Promise<void>((resolve, reject) => {
      const onError = (e: VitalsealError) => reject(e);
      client.once('error', onError);
      client.#onConnected = () => {
        client.off('error', onError);
        resolve();
      };
    });
    await client.#step((now) => client.#connection.start(now));
    try {
      await established;
    } catch (e) {
      client.#teardown();
      throw e;
    }
    return client;
  }

  #onConnected: (() => void) | undefined;

  get info(): SessionInfo {
    const info = this.#connection.info;
    if (info === undefined) throw new ApiMisuse('not-connected', 'not connected');
    return info;
  }

  get connection(): Connection {
    return this.#connection;
  }

  /** The local UDP port (changes after `rebind`). */
  get localPort(): number {
    return this.#link.address().port;
  }

  /** Which UDP socket carries the connection: node:dgram or batched system calls. */
  get udp(): 'node' | 'batched' {
    return this.#io;
  }

  /** Largest payload `send` fits in one datagram of the configured MTU. */
  get maxPayload(): number {
    return this.#connection.maxDatagramPayload;
  }

  send(data: Uint8Array): Promise<void> {
    return this.#step((now) => this.#connection.sendNow(data, now));
  }

  async updateKeys(requestPeer = false): Promise<void> {
    await this.#step((now) => this.#connection.updateKeys(requestPeer, now));
  }

  /**
   * Moves to a new local UDP port, as a NAT rebinding does; with a Connection ID the server keeps
   * the session (RFC 9146).
   */
  async rebind(): Promise<void> {
    await this.#sends.drained();
    const old = this.#link;
    this.#link = await this.#openLink();
    await old.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#step((now) => this.#connection.close(now));
    this.#teardown();
  }

  #openLink(): Promise<DatagramLink> {
    const generation = ++this.#generation;
    return connectLink(this.#io, this.#host, this.#port, (batch) => {
      if (generation !== this.#generation) return;
      for (const d of batch) void this.#step((now) => this.#connection.handleDatagramNow(d.data, now));
      this.#sends.received();
    });
  }

  #step(fn: (now: number) => ConnectionOutput | Promise<ConnectionOutput>): Promise<void> {
    return this.#serial.run(() => {
      if (this.#closed) return;
      return then(fn(this.#clock.now()), (out) => {
        for (const d of out.datagrams) this.#sends.send(d, this.#port, this.#host);
        this.#deadline.set(out.nextTimeout);
        for (const e of out.events) this.#dispatch(e);
      });
    });
  }

  #dispatch(e: DtlsEvent): void {
    switch (e.type) {
      case 'connected':
        this.#onConnected?.();
        this.#onConnected = undefined;
        return;
      case 'data':
        this.emit('data', e.data);
        return;
      case 'session-ticket':
        this.emit('session-ticket', e.ticket);
        return;
      case 'keys-updated':
        this.emit('keys-updated', e.direction, e.epoch);
        return;
      case 'closed':
        this.#teardown();
        this.emit('close');
        return;
      case 'failed':
        this.#teardown();
        if (this.listenerCount('error') > 0) this.emit('error', e.error);
        this.emit('close');
        return;
      default: {
        const never: never = e;
        throw new TypeError(`unknown event ${String(never)}`);
      }
    }
  }

  #teardown(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#deadline.clear();
    const link = this.#link;
    this.#generation++;
    if (link === undefined) return;
    // Datagrams handed to the socket (our Finished, a close_notify) go out before it closes.
    void this.#sends.drained().then(() => link.close());
  }
}

export interface ServerSocketOptions extends ServerConfig {
  readonly port?: number;
  readonly host?: string;
  readonly limits?: Partial<EndpointLimits>;
  readonly clock?: Clock;
  /**
   * Kernel receive and send buffer sizes for the UDP socket (default 1 MiB, capped by the system's
   * net.core.rmem_max/wmem_max): bursts from many devices queue there while a handshake signs.
   */
  readonly socketBufferBytes?: number;
  /** The UDP socket underneath: `auto` (default), `batched` or `node`, as for the client. */
  readonly udp?: UdpIo;
}

export interface DtlsSessionEvents {
  data: [Uint8Array];
  'keys-updated': ['send' | 'receive', number];
  close: [];
  error: [VitalsealError];
}

/** One established association on a DtlsServer. */
export class DtlsServerSession extends EventEmitter<DtlsSessionEvents> {
  constructor(
    private readonly server: DtlsServer,
    readonly session: ServerSession,
    readonly info: SessionInfo,
  ) {
    super();
  }

  /** Where the peer is now (it may move when CIDs are in use). */
  get peer(): PeerAddress {
    return this.session.peer;
  }

  send(data: Uint8Array): Promise<void> {
    return this.server._act((ep, now) => ep.sendNow(this.session, data, now));
  }

  updateKeys(requestPeer = false): Promise<void> {
    return this.server._act((ep, now) => ep.updateKeys(this.session, requestPeer, now));
  }

  close(): Promise<void> {
    return this.server._act((ep, now) => ep.close(this.session, now));
  }
}

export interface DtlsServerEvents {
  session: [DtlsServerSession];
  /** A handshake failed (the alert, if any, was sent). */
  'handshake-error': [VitalsealError, PeerAddress];
  error: [Error];
}

/** A DTLS 1.3 server on one UDP socket, serving many peers. */
export class DtlsServer extends EventEmitter<DtlsServerEvents> {
  readonly endpoint: DtlsServerEndpoint;
  #link: DatagramLink;
  readonly #clock: Clock;
  readonly #serial = new Serial();
  readonly #deadline: Deadline;
  readonly #sessions = new Map<number, DtlsServerSession>();
  readonly #sends: Outbox;
  #closed = false;

  private constructor(endpoint: DtlsServerEndpoint, clock: Clock) {
    super();
    this.endpoint = endpoint;
    this.#link = undefined as unknown as DatagramLink;
    this.#sends = new Outbox(() => this.#link, endpoint.config.mtu);
    this.#clock = clock;
    this.#deadline = new Deadline(clock, () => void this._act((ep, now) => ep.handleTimeout(now)));
  }

  static async listen(options: ServerSocketOptions): Promise<DtlsServer> {
    const clock = options.clock ?? systemClock;
    const endpoint = new DtlsServerEndpoint(options, clock.now());
    const server = new DtlsServer(endpoint, clock);
    server.#link = await listenLink(
      resolveIo(options.udp),
      options.host ?? '127.0.0.1',
      options.port ?? 0,
      options.socketBufferBytes ?? 1 << 20,
      (batch) => {
        // One step for what one read brought: the endpoint goes through it in order.
        void server._act((ep, now) => ep.handleDatagramsNow(batch, now));
        server.#sends.received();
      },
      (e) => server.emit('error', e),
    );
    return server;
  }

  address(): { address: string; port: number } {
    const a = this.#link.address();
    return { address: a.address, port: a.port };
  }

  /** Which UDP socket the server uses: node:dgram or batched system calls. */
  get udp(): 'node' | 'batched' {
    return this.#link.io;
  }

  /** Sessions established now. */
  get sessions(): DtlsServerSession[] {
    return [...this.#sessions.values()];
  }

  /** @internal Runs one endpoint call and sends and dispatches what it produced. */
  _act(fn: (ep: DtlsServerEndpoint, now: number) => EndpointOutput | Promise<EndpointOutput>): Promise<void> {
    return this.#serial.run(() => {
      if (this.#closed) return;
      return then(fn(this.endpoint, this.#clock.now()), (out) => {
        for (const d of out.datagrams) this.#sends.send(d.data, d.to.port, d.to.address);
        this.#deadline.set(this.endpoint.nextTimeout());
        for (const { session, event } of out.events) this.#dispatch(session, event);
      });
    });
  }

  #dispatch(session: ServerSession, e: DtlsEvent): void {
    const handle = this.#sessions.get(session.id);
    switch (e.type) {
      case 'connected': {
        const h = new DtlsServerSession(this, session, e.info);
        this.#sessions.set(session.id, h);
        this.emit('session', h);
        return;
      }
      case 'data':
        handle?.emit('data', e.data);
        return;
      case 'keys-updated':
        handle?.emit('keys-updated', e.direction, e.epoch);
        return;
      case 'session-ticket':
        return;
      case 'closed':
        this.#sessions.delete(session.id);
        handle?.emit('close');
        return;
      case 'failed':
        this.#sessions.delete(session.id);
        if (handle === undefined) this.emit('handshake-error', e.error, session.peer);
        else {
          if (handle.listenerCount('error') > 0) handle.emit('error', e.error);
          handle.emit('close');
        }
        return;
      default: {
        const never: never = e;
        throw new TypeError(`unknown event ${String(never)}`);
      }
    }
  }

  /** Sends close_notify to every session and closes the socket. */
  async close(): Promise<void> {
    if (this.#closed) return;
    for (const s of [...this.#sessions.values()]) await s.close().catch(() => undefined);
    await this.#serial.run(async () => {
      this.#closed = true;
      this.#deadline.clear();
      await this.#sends.drained();
      await this.#link.close();
    });
  }
}

