/**
 * TEST FIXTURE, not a product transport: a minimal Uplink over loopback TCP and the receiver it
 * talks to, so the agent's scheduler, crash and outage behaviour can be tested over a real socket
 * before the CoAPS and MQTTS transports exist. The receiver does what the ingest service will do
 * with each message: open the COSE object with the ingest private key, check that the sealed device
 * id and sequence number match the envelope, dedupe by (device, sequence), and acknowledge.
 *
 * Wire format (both directions big-endian):
 *   request:  u32 length-of-rest | u64 seq | u8 device-id length | device id | COSE payload
 *   response: u64 seq | u8 status (0 accepted, 1 duplicate, 2 refused: bad request, 3 refused: forbidden)
 *
 * When the real transports land, the same tests run with the receiver replaced by the ingest
 * service over MQTTS/CoAPS (see docs/agent.md, "Evidence").
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { decodeVitalsPack, type VitalsBatch } from '../../src/codec/vitals.ts';
import { EpochKeyCache, Header, openCose, x25519Recipient, type X25519Recipient } from '../../src/cose/index.ts';
import { getProvider } from '../../src/crypto/registry.ts';
import type { Uplink, UplinkAck, UplinkCounters, UplinkEvents, UplinkMessage, UplinkSession } from '../../src/transport/types.ts';
import { TransportError, UplinkRejected } from '../../src/util/errors.ts';

export interface ReceivedMessage {
  readonly seq: number;
  readonly sha256: string;
  readonly batch: VitalsBatch;
  readonly receivedAt: number;
}

export interface ReceiverOptions {
  readonly ingestPrivateKey: Uint8Array;
  readonly deviceId: string;
  /** Sequence numbers refused for good (status 2). */
  readonly refuse?: ReadonlySet<number>;
  readonly port?: number;
  /** Each answer takes this long, one after another per connection (a slow receiver). */
  readonly serviceMs?: number;
}

/** The receiving side: dedupes, verifies, records. Can be taken down and brought back (outages). */
export class FixtureReceiver {
  readonly messages = new Map<number, ReceivedMessage>();
  /** Every seq in arrival order (duplicates included). */
  readonly arrivals: number[] = [];
  readonly problems: string[] = [];
  duplicates = 0;
  corrupt = 0;
  readonly #o: ReceiverOptions;
  readonly #recipient: X25519Recipient;
  readonly #cache = new EpochKeyCache();
  readonly #sockets = new Set<Socket>();
  #server: Server | undefined;
  #mark: { arrivals: number; delivered: Set<number> } = { arrivals: 0, delivered: new Set() };
  port = 0;

  /** Notes where we are (e.g. while the receiver is down), for the two methods below. */
  markArrivals(): void {
    this.#mark = { arrivals: this.arrivals.length, delivered: new Set(this.messages.keys()) };
  }

  /** Arrivals (duplicates included) since `markArrivals`. */
  arrivalsSinceMark(): number[] {
    return this.arrivals.slice(this.#mark.arrivals);
  }

  /** Sequence numbers that had arrived when `markArrivals` was called. */
  deliveredBeforeMark(): ReadonlySet<number> {
    return this.#mark.delivered;
  }

  constructor(o: ReceiverOptions) {
    this.#o = o;
    this.#recipient = x25519Recipient(getProvider(), o.ingestPrivateKey);
  }

  async start(): Promise<number> {
    const server = createServer((s) => this.#serve(s));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port || this.#o.port || 0, '127.0.0.1', () => resolve());
    });
    const a = server.address();
    if (a !== null && typeof a === 'object') this.port = a.port;
    return this.port;
  }

  /** Goes away: stops listening and cuts every connection (an outage, a crashed ingest). */
  async stop(): Promise<void> {
    const s = this.#server;
    this.#server = undefined;
    for (const c of this.#sockets) c.destroy();
    if (s !== undefined) await new Promise<void>((r) => s.close(() => r()));
  }

  destroy(): void {
    this.#recipient.destroy();
  }

  #serve(s: Socket): void {
    this.#sockets.add(s);
    s.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let queue = Promise.resolve();
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 4) {
        const len = buf.readUInt32BE(0);
        if (buf.length < 4 + len) break;
        const frame = buf.subarray(4, 4 + len);
        buf = buf.subarray(4 + len);
        const seq = frame.readUInt32BE(0) * 2 ** 32 + frame.readUInt32BE(4);
        const idLen = frame[8] as number;
        const device = frame.subarray(9, 9 + idLen).toString('utf8');
        const payload = new Uint8Array(frame.subarray(9 + idLen));
        const out = Buffer.alloc(9);
        out.writeUInt32BE(Math.floor(seq / 2 ** 32), 0);
        out.writeUInt32BE(seq >>> 0, 4);
        const service = this.#o.serviceMs ?? 0;
        if (service === 0) {
          out[8] = this.#accept(seq, device, payload);
          s.write(out);
        } else {
          // One message at a time, `service` ms each, strictly in the order they came: a chain, not a
          // timer per message (timers armed at different moments can fire out of order).
          queue = queue.then(() => new Promise<void>((resolve) => setTimeout(() => {
            if (!s.destroyed) {
              out[8] = this.#accept(seq, device, payload);
              s.write(out);
            }
            resolve();
          }, service)));
        }
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => this.#sockets.delete(s));
  }

  #accept(seq: number, device: string, payload: Uint8Array): number {
    this.arrivals.push(seq);
    if (this.#o.refuse?.has(seq)) return 2;
    if (device !== this.#o.deviceId) {
      this.problems.push(`seq ${seq}: envelope device ${device}`);
      return 3;
    }
    const sha256 = createHash('sha256').update(payload).digest('hex');
    const seen = this.messages.get(seq);
    if (seen !== undefined) {
      this.duplicates++;
      if (seen.sha256 !== sha256) this.problems.push(`seq ${seq}: a different message under a sequence number already delivered`);
      return 1;
    }
    try {
      const opened = openCose(payload, { recipient: this.#recipient, cache: this.#cache });
      if (opened.protected.get(Header.SEQUENCE) !== seq) throw new Error(`sealed sequence ${String(opened.protected.get(Header.SEQUENCE))} ≠ envelope ${seq}`);
      if (opened.protected.get(Header.DEVICE_ID) !== device) throw new Error('sealed device id ≠ envelope');
      const batch = decodeVitalsPack(opened.plaintext);
      if (batch.deviceId !== device) throw new Error('pack device id ≠ envelope');
      this.messages.set(seq, { seq, sha256, batch, receivedAt: Date.now() });
      return 0;
    } catch (e) {
      this.corrupt++;
      this.problems.push(`seq ${seq}: ${e instanceof Error ? e.message : String(e)}`);
      return 2;
    }
  }
}

interface Pending {
  resolve(a: UplinkAck): void;
  reject(e: Error): void;
}

/** The device side of the fixture protocol. */
export class FixtureUplink extends EventEmitter<UplinkEvents> implements Uplink {
  readonly kind = 'mqtts' as const;
  #socket: Socket | undefined;
  #session: UplinkSession | undefined;
  readonly #pending = new Map<number, Pending[]>();
  readonly #counters = { sent: 0, acknowledged: 0, duplicates: 0, rejected: 0, transportErrors: 0, connects: 0, disconnects: 0 };

  constructor(readonly port: () => number, readonly host = '127.0.0.1') {
    super();
  }

  get session(): UplinkSession | undefined {
    return this.#session;
  }

  connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = connect(this.port(), this.host);
      s.setNoDelay(true);
      const timer = setTimeout(() => s.destroy(new Error('timeout')), 2000);
      s.once('connect', () => {
        clearTimeout(timer);
        this.#socket = s;
        this.#session = { kind: 'mqtts', peer: `${this.host}:${this.port()}`, protocol: 'fixture-tcp', suite: 'none (test fixture)', group: 'none', auth: 'psk' };
        this.#counters.connects++;
        this.emit('connected', this.#session);
        resolve();
      });
      let buf = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= 9) {
          const seq = buf.readUInt32BE(0) * 2 ** 32 + buf.readUInt32BE(4);
          const status = buf[8] as number;
          buf = buf.subarray(9);
          const p = this.#pending.get(seq)?.shift();
          if (p === undefined) continue;
          if (status === 0) { this.#counters.acknowledged++; p.resolve({ seq, status: 'accepted' }); }
          else if (status === 1) { this.#counters.duplicates++; p.resolve({ seq, status: 'duplicate' }); }
          else { this.#counters.rejected++; p.reject(new UplinkRejected(status === 3 ? 'forbidden' : 'bad-request', `receiver refused message ${seq}`)); }
        }
      });
      s.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        if (this.#socket !== s) reject(new TransportError('connect-failed', `fixture connect failed: ${e.code ?? e.message}`));
      });
      s.on('close', () => {
        clearTimeout(timer);
        if (this.#socket !== s) return;
        this.#socket = undefined;
        this.#session = undefined;
        this.#counters.disconnects++;
        this.#failAll('connection-lost');
        this.emit('disconnected', { reason: 'connection closed' });
      });
    });
  }

  send(m: UplinkMessage): Promise<UplinkAck> {
    const s = this.#socket;
    if (s === undefined || s.destroyed) {
      this.#counters.transportErrors++;
      return Promise.reject(new TransportError('not-connected', 'fixture uplink not connected'));
    }
    const id = Buffer.from(m.deviceId, 'utf8');
    const head = Buffer.alloc(13);
    head.writeUInt32BE(9 + id.length + m.payload.length, 0);
    head.writeUInt32BE(Math.floor(m.seq / 2 ** 32), 4);
    head.writeUInt32BE(m.seq >>> 0, 8);
    head[12] = id.length;
    this.#counters.sent++;
    return new Promise<UplinkAck>((resolve, reject) => {
      const list = this.#pending.get(m.seq) ?? [];
      list.push({ resolve, reject });
      this.#pending.set(m.seq, list);
      s.write(Buffer.concat([head, id, m.payload]));
    });
  }

  async close(): Promise<void> {
    const s = this.#socket;
    this.#socket = undefined;
    this.#session = undefined;
    this.#failAll('closed');
    if (s !== undefined && !s.destroyed) await new Promise<void>((r) => { s.once('close', () => r()); s.end(); setTimeout(() => { s.destroy(); r(); }, 500); });
  }

  counters(): UplinkCounters {
    return { ...this.#counters };
  }

  #failAll(code: string): void {
    for (const list of this.#pending.values()) for (const p of list) {
      this.#counters.transportErrors++;
      p.reject(new TransportError(code, 'fixture link lost'));
    }
    this.#pending.clear();
  }
}
