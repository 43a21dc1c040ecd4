/**
 * The device side of MQTTS: an `Uplink` that publishes sealed messages with QoS 1 to
 * `vitals/<device-id>/v1` over MQTT v5 (mqtt.js) on a mutual-TLS 1.3 connection from a
 * `TlsConnector` (in-process, or openssl s_client for a TPM key).
 *
 * - The broker's PUBACK is the acknowledgement: success resolves `send`; a reason code ≥ 0x80
 *   rejects with `UplinkRejected` (MQTT 5.0 §3.4.2.1; reason-codes.ts has the table); a lost
 *   connection, an acknowledgement timeout or 0x10 "no matching subscribers" reject with
 *   `TransportError` (not taken: send again later).
 * - One connection per `connect()`. When it is lost, in-flight sends reject, `disconnected` is
 *   emitted, and the uplink waits for the next `connect()`: reconnect policy (back-off, when to
 *   try) is the agent's, with its injected clock.
 * - Persistent session (MQTT 5.0 §3.1.2.4, §3.1.2.11): Clean Start 0 and a Session Expiry, so the
 *   broker keeps the device's session across short outages. A fresh mqtt.js client per connection
 *   means nothing is re-sent behind the caller's back: whatever was not acknowledged was reported
 *   as failed and the agent sends it again (the receiver dedupes).
 *
 * @example
 *   const uplink = createMqttsUplink({ deviceId: 'bed-7', host: 'broker.ward7', port: 8883,
 *     tls: inProcessTls({ certChainPem, privateKey, trust }) });
 *   uplink.on('disconnected', ({ reason }) => log.warn({ reason }, 'uplink down'));
 *   await uplink.connect();
 *   await uplink.send({ deviceId: 'bed-7', seq: 42, payload: sealed, contentFormat: 'cose-encrypt' });
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { MqttClient, type IClientOptions, type IConnackPacket, type IDisconnectPacket, type Packet } from 'mqtt';
import { aint } from '../../util/assert.ts';
import { isDeviceId } from '../../util/device-id.ts';
import { ApiMisuse, TransportError, UplinkRejected, type VitalsealError } from '../../util/errors.ts';
import { systemTimers, type TimerHandle, type Timers } from '../timers.ts';
import { checkUplinkMessage, InFlightWindow, UplinkTally } from '../uplink-support.ts';
import type { Uplink, UplinkAck, UplinkCounters, UplinkEvents, UplinkMessage, UplinkSession } from '../types.ts';
import { ReadCoalescer } from './coalesce.ts';
import type { TlsConnection, TlsConnector } from './connector.ts';
import { connackError, pubackOutcome, reasonName, type PubackOutcome } from './reason-codes.ts';
import { mapConnectionError, type TlsSessionInfo } from './tls.ts';
import { contentTypeFor, vitalsTopic } from './topics.ts';

export interface MqttsUplinkOptions {
  readonly deviceId: string;
  readonly host: string;
  readonly port: number;
  /** The name the broker's certificate must carry; default `host`. Sent as SNI when a DNS name. */
  readonly serverName?: string;
  readonly tls: TlsConnector;
  readonly timers?: Timers;
  /** MQTT client identifier; default the device id (one session per device). */
  readonly clientId?: string;
  /** How long the broker keeps the session after a disconnect (default 7 days). */
  readonly sessionExpirySeconds?: number;
  /** MQTT keep-alive (default 60 s). */
  readonly keepaliveSeconds?: number;
  /** TCP + TLS + CONNACK must complete within this (default 15 s). */
  readonly connectTimeoutMs?: number;
  /** A PUBACK must arrive within this, else the send fails with TransportError (default 30 s). */
  readonly ackTimeoutMs?: number;
  /** Publishes awaiting PUBACK at once (default 64; never more than the broker's Receive Maximum). */
  readonly maxInFlight?: number;
  /** Largest payload accepted for sending (default 64 KiB; the broker's Maximum Packet Size also applies). */
  readonly maxPayloadBytes?: number;
}

interface Pending {
  readonly seq: number;
  readonly resolve: (ack: UplinkAck) => void;
  readonly reject: (e: VitalsealError) => void;
  timer: TimerHandle | undefined;
}

/** What the broker's CONNACK allows (MQTT 5.0 §3.2.2.3). */
interface Limits {
  readonly inFlight: number;
  readonly maxPacketSize: number | undefined;
}

type State =
  | { readonly kind: 'idle' }
  | { readonly kind: 'connecting'; readonly client: MqttClient; readonly done: Promise<void> }
  | { readonly kind: 'connected'; readonly client: MqttClient; readonly stream: Duplex; readonly session: UplinkSession; readonly limits: Limits }
  | { readonly kind: 'closed' };

/** Bytes of a QoS 1 PUBLISH besides the payload, at most, for our topic and properties. */
const PUBLISH_OVERHEAD = 256;

class MqttsUplink extends EventEmitter<UplinkEvents> implements Uplink {
  readonly kind = 'mqtts' as const;
  readonly #o: Required<Omit<MqttsUplinkOptions, 'serverName' | 'clientId'>> & { serverName: string; clientId: string };
  readonly #topic: string;
  #state: State = { kind: 'idle' };
  readonly #pending = new Set<Pending>();
  /** Slots: sends awaiting PUBACK plus sends about to publish, up to what the CONNACK allows. */
  readonly #window = new InFlightWindow(() => (this.#state.kind === 'connected' ? this.#state.limits.inFlight : 0));
  #corked = false;
  /** PUBACK reason codes by packet id, read by the publish callback (mqtt.js reports only failures). */
  readonly #pubackCodes = new Map<number, number>();
  readonly #tally = new UplinkTally(this);

  constructor(o: MqttsUplinkOptions) {
    super();
    if (!isDeviceId(o.deviceId)) throw new RangeError('createMqttsUplink: deviceId is not a device id');
    aint(o.port, 'port', 1, 65535);
    this.#o = {
      deviceId: o.deviceId,
      host: o.host,
      port: o.port,
      serverName: o.serverName ?? o.host,
      tls: o.tls,
      timers: o.timers ?? systemTimers,
      clientId: o.clientId ?? o.deviceId,
      sessionExpirySeconds: aint(o.sessionExpirySeconds ?? 7 * 86_400, 'sessionExpirySeconds', 0, 0xffffffff),
      keepaliveSeconds: aint(o.keepaliveSeconds ?? 60, 'keepaliveSeconds', 0, 65535),
      connectTimeoutMs: aint(o.connectTimeoutMs ?? 15_000, 'connectTimeoutMs', 1),
      ackTimeoutMs: aint(o.ackTimeoutMs ?? 30_000, 'ackTimeoutMs', 1),
      maxInFlight: aint(o.maxInFlight ?? 64, 'maxInFlight', 1, 65535),
      maxPayloadBytes: aint(o.maxPayloadBytes ?? 64 * 1024, 'maxPayloadBytes', 1, 256 * 1024 * 1024),
    };
    this.#topic = vitalsTopic(o.deviceId);
  }

  get session(): UplinkSession | undefined {
    return this.#state.kind === 'connected' ? this.#state.session : undefined;
  }

  counters(): UplinkCounters {
    return this.#tally.snapshot();
  }

  get #where(): string {
    return `MQTT broker ${this.#o.host}:${this.#o.port}`;
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
    let conn: TlsConnection;
    try {
      conn = this.#o.tls.open({ host: this.#o.host, port: this.#o.port, serverName: this.#o.serverName });
    } catch (e) {
      return Promise.reject(mapConnectionError(e, this.#where));
    }
    const options: IClientOptions = {
      protocolVersion: 5,
      clientId: this.#o.clientId,
      // MQTT 5.0 §3.1.2.4: Clean Start 0 resumes the device's session; §3.1.2.11.2 keeps it this long.
      clean: false,
      keepalive: this.#o.keepaliveSeconds,
      reconnectPeriod: 0,
      connectTimeout: this.#o.connectTimeoutMs,
      resubscribe: false,
      queueQoSZero: false,
      // mqtt-packet otherwise builds, on the first write, a table of all 65 536 two-byte packet
      // identifiers (65 536 Buffers, ~7 MB of heap, measured); writing the two bytes when needed
      // costs nothing at the agent's one message per second. (The setting is process-wide.)
      writeCache: false,
      properties: {
        sessionExpiryInterval: this.#o.sessionExpirySeconds,
        // The device subscribes to nothing; this bounds what a misbehaving broker could push.
        receiveMaximum: 16,
        maximumPacketSize: 64 * 1024,
      },
    };
    let lastError: unknown;
    conn.stream.on('error', (e: unknown) => {
      lastError = e;
    });
    const stream = new ReadCoalescer(conn.stream);
    // The first error names the failure; the wrapper repeats it to mqtt.js.
    stream.on('error', () => undefined);
    const client = new MqttClient(() => stream, options);
    client.on('packetreceive', (packet: Packet) => {
      if (packet.cmd === 'puback' && packet.messageId !== undefined) this.#pubackCodes.set(packet.messageId, packet.reasonCode ?? 0);
    });
    let disconnectReason: string | undefined;
    client.on('disconnect', (packet: IDisconnectPacket) => {
      disconnectReason = `the broker sent DISCONNECT ${reasonName(packet.reasonCode ?? 0)}`;
    });

    const done = new Promise<void>((resolve, reject) => {
      let settled = false;
      const fail = (e: VitalsealError) => {
        if (settled) return;
        settled = true;
        this.#o.timers.clearTimeout(timer);
        this.#state = { kind: 'idle' };
        client.removeAllListeners('connect');
        client.end(true);
        reject(e);
      };
      const timer = this.#o.timers.setTimeout(
        () => fail(new TransportError('connect-timeout', `${this.#where}: no session within ${this.#o.connectTimeoutMs} ms`)),
        this.#o.connectTimeoutMs,
      );
      client.on('error', (e: unknown) => {
        lastError = e;
        const code = (e as { code?: unknown }).code;
        // mqtt.js reports a refusing CONNACK as an error carrying the reason code.
        if (!settled && typeof code === 'number' && code >= 0x80) fail(connackError(code, this.#where));
      });
      client.once('connect', (connack: IConnackPacket) => {
        conn.secured.then((info) => {
          if (settled) return;
          settled = true;
          this.#o.timers.clearTimeout(timer);
          this.#onConnected(client, stream, info, connack, () => disconnectReason ?? describeLoss(lastError));
          resolve();
        }, (e: unknown) => fail(mapConnectionError(e, this.#where)));
      });
      client.once('close', () => {
        if (settled) return;
        // The handshake's own verdict names the cause best (a refused certificate, a bad chain).
        conn.secured.then(
          () => fail(lastError === undefined ? new TransportError('connection-closed', `${this.#where} closed the connection before CONNACK`) : mapConnectionError(lastError, this.#where)),
          (e: unknown) => fail(lastError === undefined ? mapConnectionError(e, this.#where) : mapConnectionError(lastError, this.#where)),
        );
      });
    });
    this.#state = { kind: 'connecting', client, done };
    return done;
  }

  #onConnected(client: MqttClient, stream: Duplex, info: TlsSessionInfo, connack: IConnackPacket, reason: () => string): void {
    const p = connack.properties ?? {};
    const limits: Limits = {
      inFlight: Math.min(this.#o.maxInFlight, p.receiveMaximum ?? 65535),
      maxPacketSize: p.maximumPacketSize,
    };
    const session: UplinkSession = {
      kind: 'mqtts',
      peer: `${this.#o.host}:${this.#o.port}`,
      protocol: info.protocol,
      suite: info.suite,
      group: info.group,
      auth: 'certificate',
    };
    this.#state = { kind: 'connected', client, stream, session, limits };
    this.#tally.connected();
    client.once('close', () => {
      if (this.#state.kind !== 'connected' || this.#state.client !== client) return;
      this.#connectionLost(client, reason());
    });
    this.emit('connected', session);
  }

  #connectionLost(client: MqttClient, reason: string): void {
    this.#state = { kind: 'idle' };
    this.#tally.disconnected();
    this.#failAll(new TransportError('connection-lost', `${this.#where}: connection lost before PUBACK (${reason})`));
    this.#discard(client);
    this.emit('disconnected', { reason });
  }

  /** Forgets mqtt.js's in-flight copies (they were reported as failed) and stops the client. */
  #discard(client: MqttClient): void {
    for (const id of Object.keys(client.outgoing)) client.removeOutgoingMessage(Number(id));
    this.#pubackCodes.clear();
    client.end(true);
  }

  #failAll(e: VitalsealError): void {
    for (const p of [...this.#pending]) this.#settle(p, e);
    this.#window.fail(e);
  }

  /** Ends a send: counts it, releases its in-flight slot, resolves or rejects its promise. */
  #settle(p: Pending, outcome: UplinkAck | VitalsealError): void {
    if (!this.#pending.delete(p)) return;
    if (p.timer !== undefined) this.#o.timers.clearTimeout(p.timer);
    this.#window.give();
    this.#tally.ended(p.seq, outcome);
    if (outcome instanceof Error) p.reject(outcome);
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
    if (s.limits.maxPacketSize !== undefined && message.payload.length + PUBLISH_OVERHEAD > s.limits.maxPacketSize) {
      this.#window.give();
      throw this.#tally.refuse(seq, 'too-large', `message ${seq} is ${message.payload.length} bytes; the broker takes packets of at most ${s.limits.maxPacketSize}`);
    }
    this.#batch(s.stream);
    return this.#publish(s.client, seq, message);
  }

  /**
   * PUBLISHes made in one turn of the event loop leave in one write: one TLS record and one TCP
   * segment for the lot instead of one each (mqtt.js alone batches only within a tick).
   */
  #batch(stream: Duplex): void {
    if (this.#corked) return;
    this.#corked = true;
    stream.cork();
    setImmediate(() => {
      this.#corked = false;
      stream.uncork();
    });
  }

  #publish(client: MqttClient, seq: number, message: UplinkMessage): Promise<UplinkAck> {
    return new Promise<UplinkAck>((resolve, reject) => {
      const p: Pending = { seq, resolve, reject, timer: undefined };
      this.#pending.add(p);
      p.timer = this.#o.timers.setTimeout(() => {
        this.#settle(p, new TransportError('ack-timeout', `${this.#where}: no PUBACK for message ${seq} within ${this.#o.ackTimeoutMs} ms`));
      }, this.#o.ackTimeoutMs);
      const payload = Buffer.from(message.payload.buffer, message.payload.byteOffset, message.payload.byteLength);
      this.#tally.sent();
      client.publish(this.#topic, payload, {
        qos: 1,
        properties: {
          // MQTT 5.0 §3.3.2.3.9: what the payload is; §3.3.2.3.2: binary, not UTF-8.
          contentType: contentTypeFor(message.contentFormat),
          payloadFormatIndicator: false,
          // Advisory, for tracing on the broker and the ingest's logs; the sealed payload's own
          // sequence number is the one the ingest trusts and dedupes on.
          userProperties: { seq: String(seq) },
        },
      }, (err, packet) => {
        const id = packet !== undefined && 'messageId' in packet ? packet.messageId : undefined;
        const code = id === undefined ? undefined : this.#pubackCodes.get(id);
        if (id !== undefined) this.#pubackCodes.delete(id);
        let outcome: PubackOutcome;
        if (err !== undefined && err !== null) {
          const rc = (err as { code?: unknown }).code;
          if (typeof rc !== 'number') {
            this.#settle(p, new TransportError('connection-lost', `${this.#where}: message ${seq} not acknowledged (${err.message})`));
            return;
          }
          outcome = pubackOutcome(rc);
        } else {
          outcome = pubackOutcome(code ?? 0);
        }
        switch (outcome.kind) {
          case 'accepted':
            this.#settle(p, { seq, status: 'accepted' });
            return;
          case 'retry':
            this.#settle(p, new TransportError(outcome.code, `${this.#where}: message ${seq}: ${outcome.detail}`));
            return;
          case 'rejected':
            this.#settle(p, new UplinkRejected(outcome.reason, `message ${seq}: ${outcome.detail}`));
            return;
          default: {
            const never: never = outcome;
            throw new Error(`unknown outcome ${String(never)}`);
          }
        }
      });
    });
  }

  /** Ends the connection; `connect()` may follow (the agent reconnects after a lost link this way). */
  async disconnect(): Promise<void> {
    if (this.#state.kind === 'closed') return;
    await this.#end({ kind: 'idle' }, 'the connection was ended before PUBACK');
  }

  /** Ends the connection for good and releases the TLS connector (its s_client processes for a TPM key). */
  async close(): Promise<void> {
    await this.#end({ kind: 'closed' }, 'the uplink was closed before PUBACK');
    await this.#o.tls.close();
  }

  async #end(next: { readonly kind: 'idle' } | { readonly kind: 'closed' }, why: string): Promise<void> {
    const s = this.#state;
    this.#state = next;
    this.#failAll(new TransportError('closed', `${this.#where}: ${why}`));
    if (s.kind === 'connecting') {
      s.client.end(true);
      await s.done.catch(() => undefined);
      // A failing connect sets the state to idle: closed stays closed.
      if (next.kind === 'closed') this.#state = next;
    } else if (s.kind === 'connected') {
      const client = s.client;
      for (const id of Object.keys(client.outgoing)) client.removeOutgoingMessage(Number(id));
      // MQTT 5.0 §3.14: DISCONNECT with reason 0x00 (normal), then the TLS close_notify.
      await new Promise<void>((resolve) => {
        const timer = this.#o.timers.setTimeout(() => {
          client.end(true);
          resolve();
        }, 2000);
        client.end(false, { reasonCode: 0 }, () => {
          this.#o.timers.clearTimeout(timer);
          resolve();
        });
      });
      this.#tally.disconnected();
      this.emit('disconnected', { reason: 'closed by the device' });
    }
  }
}

function describeLoss(e: unknown): string {
  if (e === undefined) return 'the connection closed';
  return e instanceof Error ? e.message.slice(0, 200) : String(e).slice(0, 200);
}

/**
 * An MQTT v5 over mutual-TLS 1.3 uplink for one device. See the module comment for the delivery
 * and failure semantics; docs/transport-mqtts.md for the broker side.
 */
export function createMqttsUplink(opts: MqttsUplinkOptions): Uplink {
  return new MqttsUplink(opts);
}
