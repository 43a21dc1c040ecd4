/**
 * Drives a client Connection and a DtlsServerEndpoint against each other in memory (sans-I/O),
 * optionally through a `Link` that may lose, duplicate, reorder, delay or corrupt datagrams.
 * Time is simulated: timers fire when nothing else is in flight.
 */
import { Connection, type ConnectionOutput, type DtlsEvent } from '../../../src/dtls/connection.ts';
import type { ClientConfig } from '../../../src/dtls/config.ts';
import { DtlsServerEndpoint, type EndpointOutput, type PeerAddress, type ServerSession } from '../../../src/dtls/server-endpoint.ts';

export const CLIENT_ADDR: PeerAddress = { address: '192.0.2.10', port: 40000 };
let nextPort = 40001;

export interface Link {
  /** What arrives, and when, for one datagram sent at `now`. */
  transfer(datagram: Uint8Array, now: number, direction: 'c2s' | 's2c'): { data: Uint8Array; at: number }[];
}

export const perfectLink: Link = { transfer: (data, now) => [{ data, at: now + 1 }] };

interface InFlight {
  readonly at: number;
  readonly order: number;
  readonly to: 'client' | 'server';
  readonly data: Uint8Array;
  readonly from: PeerAddress;
}

export class Pair {
  now: number;
  readonly clientEvents: DtlsEvent[] = [];
  readonly serverEvents: { session: ServerSession; event: DtlsEvent }[] = [];
  readonly #wire: InFlight[] = [];
  #order = 0;
  #clientTimeout: number | undefined;
  clientAddr: PeerAddress;
  datagramsToServer = 0;
  datagramsToClient = 0;

  constructor(
    readonly client: Connection,
    readonly server: DtlsServerEndpoint,
    start: number,
    readonly link: Link = perfectLink,
  ) {
    this.now = start;
    // Each pair is its own client address, so pairs sharing one endpoint do not see each other's traffic.
    this.clientAddr = { address: CLIENT_ADDR.address, port: nextPort++ };
  }

  static create(clientConfig: ClientConfig, server: DtlsServerEndpoint, start: number, link?: Link): Pair {
    return new Pair(Connection.client(clientConfig), server, start, link);
  }

  fromClient(out: ConnectionOutput): void {
    for (const d of out.datagrams) {
      this.datagramsToServer++;
      for (const t of this.link.transfer(d, this.now, 'c2s')) this.#wire.push({ at: t.at, order: this.#order++, to: 'server', data: t.data, from: this.clientAddr });
    }
    this.clientEvents.push(...out.events);
    this.#clientTimeout = out.nextTimeout;
  }

  fromServer(out: EndpointOutput): void {
    for (const d of out.datagrams) {
      if (d.to.address !== this.clientAddr.address || d.to.port !== this.clientAddr.port) continue;
      this.datagramsToClient++;
      for (const t of this.link.transfer(d.data, this.now, 's2c')) this.#wire.push({ at: t.at, order: this.#order++, to: 'client', data: t.data, from: d.to });
    }
    this.serverEvents.push(...out.events.filter((e) => this.#mine.has(e.session.id) || (e.session.peer.address === this.clientAddr.address && e.session.peer.port === this.clientAddr.port && this.#mine.add(e.session.id))));
  }

  readonly #mine = new Set<number>();

  async start(): Promise<void> {
    this.fromClient(await this.client.start(this.now));
  }

  /** Runs until `done()` or until nothing is left to happen before `until`. */
  async run(done: () => boolean, until = this.now + 600_000): Promise<void> {
    while (!done()) {
      this.#wire.sort((a, b) => a.at - b.at || a.order - b.order);
      const next = this.#wire[0];
      const serverTimeout = this.server.nextTimeout();
      const candidates = [next?.at, this.#clientTimeout, serverTimeout].filter((x): x is number => x !== undefined);
      if (candidates.length === 0) return;
      const t = Math.min(...candidates);
      if (t > until) return;
      this.now = Math.max(this.now, t);
      if (next !== undefined && next.at === t) {
        this.#wire.shift();
        if (next.to === 'server') this.fromServer(await this.server.handleDatagram(next.data, next.from, this.now));
        else this.fromClient(await this.client.handleDatagram(next.data, this.now));
      } else if (this.#clientTimeout !== undefined && this.#clientTimeout <= t) {
        this.fromClient(await this.client.handleTimeout(this.now));
      } else {
        this.fromServer(await this.server.handleTimeout(this.now));
      }
    }
  }

  clientConnected(): boolean {
    return this.clientEvents.some((e) => e.type === 'connected');
  }

  serverSession(): ServerSession | undefined {
    return this.serverEvents.find((e) => e.event.type === 'connected')?.session;
  }

  bothConnected(): boolean {
    return this.clientConnected() && this.serverSession() !== undefined;
  }

  failed(): boolean {
    return this.clientEvents.some((e) => e.type === 'failed') || this.serverEvents.some((e) => e.event.type === 'failed');
  }
}
