/**
 * A scripted MQTT v5 peer on an in-memory stream, for the cases a real broker will not produce on
 * demand: a PUBACK that never comes, each PUBACK and CONNACK reason code, a broker that ignores
 * Receive Maximum, malformed bytes. The uplink and the subscriber get it through a `TlsConnector`
 * whose `open()` hands out one end of a duplex pair; the test drives the other end.
 */
import { Duplex } from 'node:stream';
import { generate, parser, type Packet } from 'mqtt-packet';
import type { TlsConnector } from '../../../src/transport/mqtts/connector.ts';

/** Two connected in-memory streams; destroying either closes both. */
export function duplexPair(): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  const make = (other: () => Duplex) => new Duplex({
    // When one side ends, so does the other (as a TCP connection closes).
    allowHalfOpen: false,
    read() {},
    write(chunk: Buffer, _enc, cb) {
      other().push(chunk);
      cb();
    },
    final(cb) {
      other().push(null);
      cb();
    },
    destroy(err, cb) {
      const o = other();
      if (!o.destroyed) o.destroy();
      cb(err);
    },
  });
  ends.push(make(() => ends[1] as Duplex), make(() => ends[0] as Duplex));
  return [ends[0] as Duplex, ends[1] as Duplex];
}

/** One connection, seen from the broker's side. */
export class FakeConnection {
  readonly received: Packet[] = [];
  readonly #stream: Duplex;
  #waiters: { pred: (p: Packet) => boolean; resolve: (p: Packet) => void }[] = [];

  constructor(stream: Duplex) {
    this.#stream = stream;
    const p = parser({ protocolVersion: 5 });
    p.on('packet', (packet: Packet) => {
      this.received.push(packet);
      // MQTT 5.0 §3.14.4: after DISCONNECT the server closes the network connection.
      if (packet.cmd === 'disconnect') setImmediate(() => this.end());
      this.#waiters = this.#waiters.filter((w) => {
        if (!w.pred(packet)) return true;
        w.resolve(packet);
        return false;
      });
    });
    stream.on('data', (d: Buffer) => p.parse(d));
    stream.on('error', () => undefined);
  }

  get closed(): boolean {
    return this.#stream.destroyed;
  }

  send(packet: Packet): void {
    this.#stream.write(generate(packet, { protocolVersion: 5 }));
  }

  sendRaw(bytes: Uint8Array): void {
    this.#stream.write(bytes);
  }

  /** The first packet (already received or still to come) matching `pred`. */
  next<T extends Packet['cmd']>(cmd: T, pred: (p: Extract<Packet, { cmd: T }>) => boolean = () => true): Promise<Extract<Packet, { cmd: T }>> {
    const match = (p: Packet): boolean => p.cmd === cmd && pred(p as Extract<Packet, { cmd: T }>);
    const seen = this.received.find(match);
    if (seen !== undefined) return Promise.resolve(seen as Extract<Packet, { cmd: T }>);
    return new Promise((resolve) => this.#waiters.push({ pred: match, resolve: (p) => resolve(p as Extract<Packet, { cmd: T }>) }));
  }

  count(cmd: Packet['cmd']): number {
    return this.received.filter((p) => p.cmd === cmd).length;
  }

  /** Answers CONNECT with CONNACK (reason 0 unless given). */
  async accept(properties: Record<string, unknown> = {}, reasonCode = 0, sessionPresent = false): Promise<void> {
    await this.next('connect');
    this.send({ cmd: 'connack', sessionPresent, reasonCode, properties } as Packet);
  }

  end(): void {
    this.#stream.destroy();
  }
}

/** A connector whose connections are FakeConnections the test controls. */
export class FakeBroker {
  readonly connections: FakeConnection[] = [];
  #waiters: ((c: FakeConnection) => void)[] = [];

  connector(): TlsConnector {
    return {
      description: 'in-memory test peer',
      open: () => {
        const [client, server] = duplexPair();
        const conn = new FakeConnection(server);
        this.connections.push(conn);
        for (const w of this.#waiters.splice(0)) w(conn);
        return { stream: client, secured: Promise.resolve({ protocol: 'TLSv1.3', suite: 'TLS_AES_128_GCM_SHA256', group: 'x25519' }) };
      },
      close: async () => undefined,
    };
  }

  /** The `n`-th connection (1-based), now or when it is opened. */
  connection(n: number): Promise<FakeConnection> {
    const c = this.connections[n - 1];
    if (c !== undefined) return Promise.resolve(c);
    return new Promise((resolve) => {
      const check = (conn: FakeConnection) => {
        if (this.connections.length >= n) resolve(this.connections[n - 1] as FakeConnection);
        else this.#waiters.push(check);
        void conn;
      };
      this.#waiters.push(check);
    });
  }
}
