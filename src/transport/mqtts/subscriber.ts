/**
 * The ingest side of MQTTS: a shared-subscription consumer (`$share/vitalseal/vitals/+/v1`, MQTT
 * v5 §4.8.2) that acknowledges a message only once its handler has taken it.
 *
 * - Several ingest instances join the same share; the broker hands each message to one of them.
 * - Each instance has a stable client id and a persistent session (Clean Start 0, a Session
 *   Expiry): what the broker assigned to an instance that died waits in its session and is
 *   delivered again, with DUP set, when it comes back (mosquitto 2.0 keeps assigning new messages
 *   to a disconnected member's session too; docs/transport-mqtts.md "Failure semantics").
 * - At most `receiveMaximum` messages are unacknowledged at once (MQTT 5.0 §3.1.2.11.3; the broker
 *   holds the rest), and their handlers run concurrently so a handler can batch its writes.
 *   (mosquitto 2.0.11 sends a resumed session's whole queue at once; the excess waits, in order.)
 * - PUBACKs go out in the order the PUBLISHes arrived (MQTT 5.0 §4.6, [MQTT-4.6.0-2]), each once
 *   its handler and every earlier one have finished:
 *     handler resolves              → PUBACK 0x00: taken, the broker forgets it
 *     handler throws UplinkRejected → PUBACK 0x87 / 0x99 / 0x80: refused for good (the handler
 *                                     has recorded why); the broker forgets it
 *     handler throws anything else  → no PUBACK; the connection is dropped and re-made after a
 *                                     back-off, and the broker delivers every unacknowledged
 *                                     message again (the ingest dedupes)
 *
 * mqtt.js is not used here: it handles incoming packets one at a time and sends each PUBACK before
 * reading the next packet, so an awaited handler would admit one message at a time. This client
 * speaks MQTT v5 through `mqtt-packet` (mqtt.js's own codec) and keeps the protocol small: CONNECT,
 * SUBSCRIBE, PUBLISH in, PUBACK, PINGREQ, DISCONNECT.
 *
 * @example
 *   const sub = createMqttsSubscriber({ host, port: 8883, clientId: 'ingest-1',
 *     tls: inProcessTls({ certChainPem, privateKey, trust }),
 *     handler: async (m) => { await store.accept(m.deviceId, m.payload); } });
 *   await sub.start();
 *   ...
 *   await sub.close();
 */
import { EventEmitter } from 'node:events';
import { generate, parser, type IConnackPacket, type IPublishPacket, type ISubackPacket, type Packet } from 'mqtt-packet';
import { aint } from '../../util/assert.ts';
import { copyBytes } from '../../util/bytes.ts';
import { ApiMisuse, PeerMisbehaved, TransportError, UplinkRejected, VitalsealError } from '../../util/errors.ts';
import { systemTimers, type TimerHandle, type Timers } from '../timers.ts';
import type { CoseContentFormat, UplinkRejectReason } from '../types.ts';
import { ReadCoalescer } from './coalesce.ts';
import type { TlsConnector } from './connector.ts';
import { connackError, reasonName } from './reason-codes.ts';
import { mapConnectionError } from './tls.ts';
import { deviceIdFromTopic, formatFromContentType, INGEST_SUBSCRIPTION } from './topics.ts';

/** One message as the ingest handler sees it. */
export interface IngestMessage {
  /** From the topic; the broker lets a device publish only under its own id. */
  readonly deviceId: string;
  readonly topic: string;
  /** The sealed COSE object. */
  readonly payload: Uint8Array;
  /** From the MQTT v5 Content Type; undefined messages never reach the handler. */
  readonly contentFormat: CoseContentFormat;
  /** Advisory user properties from the device (e.g. `seq`); never trusted over the sealed payload. */
  readonly userProperties: Readonly<Record<string, string | readonly string[]>>;
  /** DUP flag (MQTT 5.0 §3.3.1.1): this delivery may repeat an earlier one. */
  readonly redelivered: boolean;
}

/** Resolve = taken. Throw `UplinkRejected` = refused for good. Throw anything else = try again later. */
export type IngestHandler = (message: IngestMessage) => Promise<void>;

export interface MqttsSubscriberOptions {
  readonly host: string;
  readonly port: number;
  readonly serverName?: string;
  readonly tls: TlsConnector;
  /** Stable per instance: the broker keeps this instance's session under it. */
  readonly clientId: string;
  readonly handler: IngestHandler;
  /** Default `$share/vitalseal/vitals/+/v1`. */
  readonly subscription?: string;
  /** Unacknowledged messages at once (default 64). */
  readonly receiveMaximum?: number;
  /** Largest packet the broker may send us (default 256 KiB + headers). */
  readonly maxPacketSize?: number;
  /**
   * Payload bytes a broker may push past our Receive Maximum before the connection is ended with
   * 0x93 (default 128 MiB; see the mosquitto note in #onPublish).
   */
  readonly maxBacklogBytes?: number;
  /** How long the broker keeps this instance's session while it is away (default 7 days). */
  readonly sessionExpirySeconds?: number;
  readonly keepaliveSeconds?: number;
  /** Reconnect back-off: first and longest delay (default 250 ms and 30 s), doubling, with jitter. */
  readonly backoff?: { readonly minMs: number; readonly maxMs: number };
  readonly connectTimeoutMs?: number;
  readonly timers?: Timers;
}

export interface SubscriberCounters {
  readonly received: number;
  /** Handler resolved: PUBACK 0x00, sent in order (unless the connection ended first: then it comes again). */
  readonly accepted: number;
  /** Acknowledged with a reason code ≥ 0x80 (handler refused, or not a vitals message). */
  readonly refused: number;
  /** Handler failures that left a message unacknowledged (redelivered later). */
  readonly handlerErrors: number;
  /** Deliveries with the DUP flag. */
  readonly redelivered: number;
  /** Deliveries past our Receive Maximum (mosquitto 2.0.11 on session resume): they waited for a handler slot. */
  readonly overReceiveMaximum: number;
  readonly connects: number;
  readonly disconnects: number;
  /** Unacknowledged right now. */
  readonly inFlight: number;
}

export interface SubscriberEvents {
  /** Connected and subscribed; `sessionPresent`: the broker still had this instance's session. */
  connected: [{ readonly sessionPresent: boolean }];
  disconnected: [{ readonly reason: string }];
  /** A connection attempt failed; the subscriber tries again after its back-off. */
  connectFailed: [{ readonly error: VitalsealError; readonly retryInMs: number }];
  /**
   * A message acknowledged with a reason code ≥ 0x80. `byHandler`: the handler refused it (and has
   * recorded why); otherwise the subscriber did, before any handler ran (not a vitals topic, not a
   * COSE content type).
   */
  refused: [{ readonly topic: string; readonly deviceId: string | undefined; readonly reason: string; readonly code: number; readonly byHandler: boolean }];
  handlerError: [{ readonly deviceId: string; readonly error: unknown }];
}

/** PUBACK reason for a handler's refusal (MQTT 5.0 §3.4.2.1). */
function refusalCode(reason: string): number {
  switch (reason as UplinkRejectReason) {
    case 'unauthorized':
    case 'forbidden':
      return 0x87;
    case 'unsupported-format':
      return 0x99;
    default:
      return 0x80;
  }
}

interface AckSlot {
  readonly packetId: number;
  /** The PUBACK reason once decided. */
  code: number | undefined;
}

const PROTOCOL = { protocolVersion: 5 } as const;
const SUBSCRIBE_PACKET_ID = 1;

/** One TLS connection's MQTT session. Dropped and replaced on any failure. */
class Session {
  readonly #sub: MqttsSubscriber;
  readonly #o: ResolvedOptions;
  readonly #stream: ReadCoalescer;
  readonly #acks: AckSlot[] = [];
  /** Handlers running now (at most Receive Maximum). */
  #running = 0;
  /** Received past Receive Maximum, waiting for a handler slot, in arrival order. */
  readonly #waiting: { readonly slot: AckSlot; readonly message: IngestMessage }[] = [];
  #waitingBytes = 0;
  #phase: 'connecting' | 'subscribing' | 'ready' | 'draining' | 'dead' = 'connecting';
  #keepalive: TimerHandle | undefined;
  #pingDeadline: TimerHandle | undefined;
  #connectDeadline: TimerHandle | undefined;
  #lastError: unknown;
  #securedError: unknown;
  #disconnectReason: string | undefined;
  #wasReady = false;
  #sessionPresent = false;
  #corked = false;
  #hangUpTimer: TimerHandle | undefined;
  /** Called when no handler is running any more (drain). */
  #idle: (() => void) | undefined;
  /** Resolves once subscribed; rejects with the typed reason the connection failed before that. */
  readonly ready: Promise<void>;
  /** Resolves when the connection is gone. */
  readonly ended: Promise<SessionEnd>;
  #readyResolve!: () => void;
  #readyReject!: (e: VitalsealError) => void;
  #endResolve!: (end: SessionEnd) => void;
  #keepaliveMs: number;

  constructor(sub: MqttsSubscriber, o: ResolvedOptions) {
    this.#sub = sub;
    this.#o = o;
    this.#keepaliveMs = o.keepaliveSeconds * 1000;
    this.ready = new Promise((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    this.ready.catch(() => undefined);
    this.ended = new Promise((resolve) => {
      this.#endResolve = resolve;
    });
    const conn = o.tls.open({ host: o.host, port: o.port, serverName: o.serverName });
    conn.stream.on('error', (e: unknown) => {
      this.#lastError ??= e;
    });
    // The broker sends each PUBLISH as its own TLS record: parse what one turn read in one go.
    const stream = new ReadCoalescer(conn.stream);
    this.#stream = stream;
    conn.secured.catch((e: unknown) => {
      this.#securedError = e;
    });
    const p = parser(PROTOCOL);
    p.on('packet', (packet: Packet) => this.#onPacket(packet));
    p.on('error', (e: unknown) => this.#die(new PeerMisbehaved('malformed-packet', `the broker sent a malformed MQTT packet: ${e instanceof Error ? e.message : String(e)}`)));
    stream.on('data', (chunk: Buffer) => p.parse(chunk));
    stream.on('error', (e: unknown) => {
      this.#lastError ??= e;
    });
    stream.on('close', () => this.#closed());
    this.#connectDeadline = o.timers.setTimeout(() => this.#die(new TransportError('connect-timeout', `no CONNACK within ${o.connectTimeoutMs} ms`)), o.connectTimeoutMs);
    this.#send({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 5,
      clientId: o.clientId,
      // MQTT 5.0 §3.1.2.4: resume this instance's session and what the broker kept in it.
      clean: false,
      keepalive: o.keepaliveSeconds,
      properties: {
        sessionExpiryInterval: o.sessionExpirySeconds,
        receiveMaximum: o.receiveMaximum,
        maximumPacketSize: o.maxPacketSize,
        // Nothing else: no topic aliases (0 is the default), no problem information needed.
      },
    });
  }

  get inFlight(): number {
    return this.#acks.length;
  }

  #send(packet: Packet): void {
    if (this.#phase === 'dead') return;
    this.#batch();
    this.#stream.write(generate(packet, PROTOCOL));
  }

  /**
   * PUBACKs decided in one turn of the event loop leave in one write (one TLS record, one segment)
   * instead of one each: over TLS the per-record cost, not the bytes, dominates small packets.
   */
  #batch(): void {
    if (this.#corked) return;
    this.#corked = true;
    this.#stream.cork();
    setImmediate(() => {
      this.#corked = false;
      this.#stream.uncork();
    });
  }

  #onPacket(packet: Packet): void {
    if (this.#phase === 'dead') return;
    this.#armKeepalive();
    switch (packet.cmd) {
      case 'connack':
        this.#onConnack(packet);
        return;
      case 'suback':
        this.#onSuback(packet);
        return;
      case 'publish':
        this.#onPublish(packet);
        return;
      case 'pingresp':
        return;
      case 'disconnect':
        this.#disconnectReason = `the broker sent DISCONNECT ${reasonName(packet.reasonCode ?? 0)}`;
        return;
      default:
        this.#die(new PeerMisbehaved('unexpected-packet', `the broker sent an unexpected ${packet.cmd}`), 0x82);
    }
  }

  #onConnack(packet: IConnackPacket): void {
    if (this.#phase !== 'connecting') {
      this.#die(new PeerMisbehaved('unexpected-packet', 'a second CONNACK'), 0x82);
      return;
    }
    if (this.#connectDeadline !== undefined) this.#o.timers.clearTimeout(this.#connectDeadline);
    const code = packet.reasonCode ?? 0;
    if (code !== 0) {
      this.#die(connackError(code, `MQTT broker ${this.#o.host}:${this.#o.port}`));
      return;
    }
    // MQTT 5.0 §3.2.2.3.14: the broker may set our keep-alive.
    const serverKeepAlive = packet.properties?.serverKeepAlive;
    if (serverKeepAlive !== undefined) this.#keepaliveMs = serverKeepAlive * 1000;
    this.#sessionPresent = packet.sessionPresent;
    // Subscribe on every connection, session or not: re-subscribing is idempotent (§3.8.4) and does
    // not depend on the broker having restored a shared subscription with the session.
    this.#phase = 'subscribing';
    this.#send({
      cmd: 'subscribe',
      messageId: SUBSCRIBE_PACKET_ID,
      // MQTT 5.0 §3.8.3.1: No Local must be 0 on a shared subscription; retained messages: never.
      subscriptions: [{ topic: this.#o.subscription, qos: 1, nl: false, rap: false, rh: 2 }],
    });
    this.#armKeepalive();
  }

  #onSuback(packet: ISubackPacket): void {
    if (this.#phase !== 'subscribing' || packet.messageId !== SUBSCRIBE_PACKET_ID) {
      this.#die(new PeerMisbehaved('unexpected-packet', 'an unexpected SUBACK'), 0x82);
      return;
    }
    const granted = packet.granted[0];
    // MQTT 5.0 §3.9.3: one reason code per subscription; 0x01 = granted QoS 1.
    const code = typeof granted === 'number' ? granted : undefined;
    if (code !== 1) {
      const why = code === undefined ? 'no result' : code >= 0x80 ? reasonName(code) : `QoS ${code} instead of 1`;
      this.#die(new UplinkRejected('forbidden', `the broker refused the subscription ${this.#o.subscription}: ${why}`));
      return;
    }
    this.#phase = 'ready';
    this.#wasReady = true;
    this.#sub._connected(this.#sessionPresent);
    this.#readyResolve();
  }

  #onPublish(packet: IPublishPacket): void {
    if (packet.qos !== 1 || packet.messageId === undefined) {
      // We subscribed with QoS 1: QoS 0 or 2 here is the broker breaking §3.8.3.1.
      this.#die(new PeerMisbehaved('unexpected-qos', `a PUBLISH with QoS ${packet.qos}`), 0x82);
      return;
    }
    if (this.#phase !== 'ready' && this.#phase !== 'subscribing') {
      // Draining: no new work. It stays unacknowledged and comes back on the next connection.
      return;
    }
    const slot: AckSlot = { packetId: packet.messageId, code: undefined };
    this.#acks.push(slot);
    // MQTT 5.0 §3.3.4: at most our Receive Maximum unacknowledged. mosquitto 2.0.11 breaks this when
    // a session resumes: it moves its whole queue for the session in flight at once (database.c,
    // db__message_reconnect_reset_outgoing does not charge the quota). Disconnecting would only
    // reconnect into the same burst, so the excess waits here, in order, and handlers still run at
    // most Receive Maximum at a time; only a backlog past `maxBacklogBytes` ends the connection.
    if (this.#acks.length > this.#o.receiveMaximum) this.#sub._overReceiveMaximum();
    const topic = packet.topic;
    // A copy of its own (the parser's buffer is not ours to keep), carved from the shared pool: a new
    // buffer per message cost the ingest more than opening it.
    const payload = typeof packet.payload === 'string' ? new TextEncoder().encode(packet.payload) : copyBytes(packet.payload);
    this.#sub._received(packet.dup);
    const deviceId = deviceIdFromTopic(topic);
    if (deviceId === undefined) {
      this.#refuse(slot, topic, undefined, 0x90, `topic ${JSON.stringify(topic.slice(0, 100))} is not vitals/<device-id>/v1`);
      return;
    }
    const contentType = packet.properties?.contentType;
    const contentFormat = formatFromContentType(contentType);
    if (contentFormat === undefined) {
      this.#refuse(slot, topic, deviceId, 0x99, `content type ${JSON.stringify((contentType ?? '(none)').slice(0, 100))} is not a COSE encrypt type`);
      return;
    }
    const message: IngestMessage = {
      deviceId,
      topic,
      payload,
      contentFormat,
      userProperties: packet.properties?.userProperties ?? {},
      redelivered: packet.dup,
    };
    if (this.#running < this.#o.receiveMaximum) {
      this.#dispatch(slot, message);
      return;
    }
    this.#waiting.push({ slot, message });
    this.#waitingBytes += payload.length;
    if (this.#waitingBytes > this.#o.maxBacklogBytes) {
      this.#die(new PeerMisbehaved('receive-maximum-exceeded', `the broker sent ${this.#acks.length} unacknowledged messages (${this.#waitingBytes} bytes waiting); our Receive Maximum is ${this.#o.receiveMaximum}`), 0x93);
    }
  }

  /** Runs the handler for one message; when it settles, the next waiting message runs. */
  #dispatch(slot: AckSlot, message: IngestMessage): void {
    this.#running += 1;
    let outcome: Promise<void>;
    try {
      outcome = this.#o.handler(message);
    } catch (e) {
      outcome = Promise.reject(e);
    }
    outcome.then(
      () => {
        this.#sub._accepted();
        this.#decide(slot, 0);
      },
      (e: unknown) => {
        if (e instanceof UplinkRejected) {
          this.#refuse(slot, message.topic, message.deviceId, refusalCode(e.code), e.message, true);
          return;
        }
        this.#sub._handlerError(message.deviceId, e);
        // No PUBACK for this one, and none may follow it (§4.6): start over on a new connection,
        // where the broker delivers every unacknowledged message again.
        this.#die(new TransportError('handler-failed', `the ingest handler failed for a message from ${message.deviceId}; it will be delivered again`));
      },
    ).finally(() => {
      this.#running -= 1;
      const next = this.#phase === 'ready' || this.#phase === 'subscribing' ? this.#waiting.shift() : undefined;
      if (next !== undefined) {
        this.#waitingBytes -= next.message.payload.length;
        this.#dispatch(next.slot, next.message);
      }
    });
  }

  #refuse(slot: AckSlot, topic: string, deviceId: string | undefined, code: number, reason: string, byHandler = false): void {
    this.#sub._refused(topic, deviceId, reason, code, byHandler);
    this.#decide(slot, code);
  }

  /** Records the PUBACK for `slot` and sends every decided PUBACK at the head, in arrival order. */
  #decide(slot: AckSlot, code: number): void {
    slot.code = code;
    while (this.#acks.length > 0 && (this.#acks[0] as AckSlot).code !== undefined) {
      const head = this.#acks.shift() as AckSlot;
      this.#send({ cmd: 'puback', messageId: head.packetId, reasonCode: head.code as number });
    }
    if (this.#idle !== undefined && !this.#acks.some((a) => a.code === undefined)) this.#idle();
  }

  /** Keep-alive (MQTT 5.0 §3.1.2.10): a PINGREQ when idle, and a deadline for the broker's answer. */
  #armKeepalive(): void {
    if (this.#pingDeadline !== undefined) {
      this.#o.timers.clearTimeout(this.#pingDeadline);
      this.#pingDeadline = undefined;
    }
    if (this.#keepaliveMs === 0 || this.#phase === 'dead' || this.#phase === 'connecting') return;
    if (this.#keepalive !== undefined) this.#o.timers.clearTimeout(this.#keepalive);
    this.#keepalive = this.#o.timers.setTimeout(() => {
      this.#send({ cmd: 'pingreq' });
      this.#pingDeadline = this.#o.timers.setTimeout(
        () => this.#die(new TransportError('keepalive-timeout', 'no answer from the broker within the keep-alive')),
        this.#keepaliveMs,
      );
    }, this.#keepaliveMs);
  }

  /** Ends the connection: `reasonCode` sends a DISCONNECT first (MQTT 5.0 §3.14). */
  #die(error: VitalsealError, reasonCode?: number): void {
    if (this.#phase === 'dead') return;
    this.#lastError ??= error;
    if (reasonCode !== undefined) this.#send({ cmd: 'disconnect', reasonCode });
    this.#phase = 'dead';
    this.#hangUp();
  }

  /**
   * Closes gracefully, so the PUBACKs already decided (and a DISCONNECT) reach the broker: end()
   * flushes and sends TLS close_notify; a peer that never answers is cut off after 2 s.
   */
  #hangUp(): void {
    if (this.#corked) {
      this.#corked = false;
      this.#stream.uncork();
    }
    this.#stream.end();
    this.#hangUpTimer = this.#o.timers.setTimeout(() => this.#stream.destroy(), 2000);
  }

  /** Waits (up to `ms`) for running handlers, sends their PUBACKs, then DISCONNECT 0x00. */
  async drain(ms: number): Promise<void> {
    if (this.#phase === 'dead') return;
    this.#phase = 'draining';
    if (this.#acks.some((a) => a.code === undefined)) {
      await new Promise<void>((resolve) => {
        const timer = this.#o.timers.setTimeout(resolve, ms);
        this.#idle = () => {
          this.#o.timers.clearTimeout(timer);
          resolve();
        };
      });
    }
    if (this.#phase !== 'draining') return;
    this.#send({ cmd: 'disconnect', reasonCode: 0 });
    this.#phase = 'dead';
    this.#hangUp();
    await this.ended;
  }

  #closed(): void {
    for (const t of [this.#keepalive, this.#pingDeadline, this.#connectDeadline, this.#hangUpTimer]) if (t !== undefined) this.#o.timers.clearTimeout(t);
    this.#phase = 'dead';
    const where = `MQTT broker ${this.#o.host}:${this.#o.port}`;
    // The handshake's own verdict names a failed connection best (a refused certificate, a bad chain).
    const cause = this.#lastError ?? this.#securedError;
    const error = cause === undefined ? new TransportError('connection-closed', `${where} closed the connection`) : mapConnectionError(cause, where);
    if (!this.#wasReady) this.#readyReject(error);
    this.#endResolve({ reason: this.#disconnectReason ?? (cause === undefined ? 'the connection closed' : describe(cause)), wasReady: this.#wasReady, error });
  }
}

interface SessionEnd {
  readonly reason: string;
  readonly wasReady: boolean;
  readonly error: VitalsealError;
}

function describe(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).slice(0, 200);
}

interface ResolvedOptions {
  readonly host: string;
  readonly port: number;
  readonly serverName: string;
  readonly tls: TlsConnector;
  readonly clientId: string;
  readonly handler: IngestHandler;
  readonly subscription: string;
  readonly receiveMaximum: number;
  readonly maxPacketSize: number;
  readonly maxBacklogBytes: number;
  readonly sessionExpirySeconds: number;
  readonly keepaliveSeconds: number;
  readonly backoff: { readonly minMs: number; readonly maxMs: number };
  readonly connectTimeoutMs: number;
  readonly timers: Timers;
}

type SubscriberState =
  | { readonly kind: 'idle' }
  | { readonly kind: 'running'; readonly session: Session }
  | { readonly kind: 'waiting'; readonly timer: TimerHandle; readonly wake: () => void }
  | { readonly kind: 'closed' };

export class MqttsSubscriber extends EventEmitter<SubscriberEvents> {
  readonly #o: ResolvedOptions;
  #state: SubscriberState = { kind: 'idle' };
  /** True until the first subscription is granted: start() handles retries until then. */
  #starting = false;
  #attempt = 0;
  #counters = { received: 0, accepted: 0, refused: 0, handlerErrors: 0, redelivered: 0, overReceiveMaximum: 0, connects: 0, disconnects: 0 };

  constructor(o: MqttsSubscriberOptions) {
    super();
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(o.clientId)) throw new RangeError('subscriber: clientId must be 1-64 characters of A-Z a-z 0-9 . _ -');
    if (typeof o.handler !== 'function') throw new TypeError('subscriber: handler must be a function');
    const backoff = o.backoff ?? { minMs: 250, maxMs: 30_000 };
    aint(backoff.minMs, 'backoff.minMs', 1);
    aint(backoff.maxMs, 'backoff.maxMs', backoff.minMs);
    this.#o = {
      host: o.host,
      port: aint(o.port, 'port', 1, 65535),
      serverName: o.serverName ?? o.host,
      tls: o.tls,
      clientId: o.clientId,
      handler: o.handler,
      subscription: o.subscription ?? INGEST_SUBSCRIPTION,
      receiveMaximum: aint(o.receiveMaximum ?? 64, 'receiveMaximum', 1, 65535),
      maxPacketSize: aint(o.maxPacketSize ?? 256 * 1024 + 1024, 'maxPacketSize', 1024, 268_435_455),
      maxBacklogBytes: aint(o.maxBacklogBytes ?? 128 * 1024 * 1024, 'maxBacklogBytes', 0),
      sessionExpirySeconds: aint(o.sessionExpirySeconds ?? 7 * 86_400, 'sessionExpirySeconds', 0, 0xffffffff),
      keepaliveSeconds: aint(o.keepaliveSeconds ?? 30, 'keepaliveSeconds', 0, 65535),
      backoff,
      connectTimeoutMs: aint(o.connectTimeoutMs ?? 15_000, 'connectTimeoutMs', 1),
      timers: o.timers ?? systemTimers,
    };
  }

  counters(): SubscriberCounters {
    return { ...this.#counters, inFlight: this.#state.kind === 'running' ? this.#state.session.inFlight : 0 };
  }

  /**
   * Connects and subscribes; resolves once the subscription is granted. Transient failures are
   * retried with back-off; a refusal (certificate, authorisation, subscription) rejects. Later
   * connection losses are retried for as long as the subscriber runs.
   */
  async start(): Promise<void> {
    if (this.#state.kind !== 'idle') throw new ApiMisuse('started', 'the subscriber was already started');
    this.#starting = true;
    try {
      for (;;) {
        const session = this.#open();
        try {
          await session.ready;
          return;
        } catch (e) {
          const error = e instanceof VitalsealError ? e : new TransportError('connection-failed', describe(e));
          await session.ended;
          if (this.#closed()) throw new ApiMisuse('closed', 'the subscriber was closed while starting');
          if (!(error instanceof TransportError)) {
            this.#state = { kind: 'closed' };
            throw error;
          }
          const delay = this.#nextDelay();
          this.emit('connectFailed', { error, retryInMs: delay });
          await new Promise<void>((resolve) => {
            this.#state = { kind: 'waiting', timer: this.#o.timers.setTimeout(resolve, delay), wake: resolve };
          });
          if (this.#closed()) throw new ApiMisuse('closed', 'the subscriber was closed while starting');
        }
      }
    } finally {
      this.#starting = false;
    }
  }

  /** A method, not an inline check: the state changes across the awaits in start(). */
  #closed(): boolean {
    return this.#state.kind === 'closed';
  }

  #open(): Session {
    const session = new Session(this, this.#o);
    this.#state = { kind: 'running', session };
    session.ready.then(() => {
      this.#attempt = 0;
    }, () => undefined);
    void session.ended.then((end) => this.#sessionEnded(session, end));
    return session;
  }

  #sessionEnded(session: Session, end: SessionEnd): void {
    if (this.#state.kind !== 'running' || this.#state.session !== session) return;
    if (end.wasReady) {
      this.#counters.disconnects += 1;
      this.emit('disconnected', { reason: end.reason });
    }
    if (this.#starting) return;
    const delay = this.#nextDelay();
    if (!end.wasReady) this.emit('connectFailed', { error: end.error, retryInMs: delay });
    const wake = () => {
      if (this.#state.kind === 'waiting') this.#open();
    };
    this.#state = { kind: 'waiting', timer: this.#o.timers.setTimeout(wake, delay), wake };
  }

  #nextDelay(): number {
    const { minMs, maxMs } = this.#o.backoff;
    const base = Math.min(maxMs, minMs * 2 ** Math.min(this.#attempt, 20));
    this.#attempt += 1;
    // Jitter (half to full delay) keeps several instances from reconnecting in lock-step.
    return Math.round(base / 2 + Math.random() * (base / 2));
  }

  /**
   * Stops: new deliveries are left unacknowledged (the broker keeps them in this instance's
   * session), running handlers get up to `drainMs` to finish and be acknowledged, then DISCONNECT.
   */
  async close(opts: { drainMs?: number } = {}): Promise<void> {
    const s = this.#state;
    this.#state = { kind: 'closed' };
    if (s.kind === 'waiting') {
      this.#o.timers.clearTimeout(s.timer);
      s.wake();
    }
    if (s.kind === 'running') await s.session.drain(opts.drainMs ?? 5000);
    await this.#o.tls.close();
  }

  // ---- called by Session ----

  /** @internal */
  _connected(sessionPresent: boolean): void {
    this.#counters.connects += 1;
    this.emit('connected', { sessionPresent });
  }

  /** @internal */
  _received(dup: boolean): void {
    this.#counters.received += 1;
    if (dup) this.#counters.redelivered += 1;
  }

  /** @internal */
  _overReceiveMaximum(): void {
    this.#counters.overReceiveMaximum += 1;
  }

  /** @internal */
  _accepted(): void {
    this.#counters.accepted += 1;
  }

  /** @internal */
  _refused(topic: string, deviceId: string | undefined, reason: string, code: number, byHandler: boolean): void {
    this.#counters.refused += 1;
    this.emit('refused', { topic, deviceId, reason, code, byHandler });
  }

  /** @internal */
  _handlerError(deviceId: string, error: unknown): void {
    this.#counters.handlerErrors += 1;
    this.emit('handlerError', { deviceId, error });
  }

}

/** A shared-subscription consumer for the ingest service; see the module comment. */
export function createMqttsSubscriber(opts: MqttsSubscriberOptions): MqttsSubscriber {
  return new MqttsSubscriber(opts);
}
