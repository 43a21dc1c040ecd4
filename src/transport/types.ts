/**
 * The `Uplink`: how a device hands sealed messages to the ingest service. Two implementations,
 * CoAP over DTLS 1.3 (`coaps`) and MQTT v5 over mutual TLS 1.3 (`mqtts`), pass one contract suite.
 *
 * Delivery is at least once: `send` resolves only when the receiving side has taken the message
 * (a CoAP 2.04 from the ingest service; an MQTT PUBACK from the broker, which holds it in a
 * persistent session for the ingest subscribers). The agent deletes a message from its durable
 * queue only then. The receiver dedupes by (device id, sequence number).
 *
 * Failures are typed: `TransportError` (transient: lost connection, timeout; send again later) or
 * `UplinkRejected` (permanent for these bytes: `code` is one of `UplinkRejectReason`).
 *
 * @example
 *   const uplink: Uplink = createMqttsUplink({ ... });
 *   uplink.on('disconnected', ({ reason }) => log.warn({ reason }, 'uplink down'));
 *   await uplink.connect();
 *   const ack = await uplink.send({ deviceId: 'bed-7', seq: 42, payload: sealed, contentFormat: 'cose-encrypt' });
 */
import type { EventEmitter } from 'node:events';

export type UplinkKind = 'coaps' | 'mqtts';

/** RFC 9052 §2 / the CoAP Content-Formats registry: 96 = cose-encrypt, 16 = cose-encrypt0. */
export type CoseContentFormat = 'cose-encrypt' | 'cose-encrypt0';

export const COSE_CONTENT_FORMAT_IDS: Readonly<Record<CoseContentFormat, number>> = Object.freeze({
  'cose-encrypt': 96,
  'cose-encrypt0': 16,
});

export interface UplinkMessage {
  readonly deviceId: string;
  /** The device's message sequence number (monotonic across restarts; the dedupe key). */
  readonly seq: number;
  /** A tagged COSE object; never plaintext. */
  readonly payload: Uint8Array;
  readonly contentFormat: CoseContentFormat;
}

export interface UplinkAck {
  readonly seq: number;
  /** 'duplicate' where the receiver says it already had this sequence number (still a success). */
  readonly status: 'accepted' | 'duplicate';
}

export type UplinkRejectReason = 'bad-request' | 'unauthorized' | 'forbidden' | 'too-large' | 'unsupported-format';

/** What the connection negotiated, for status and the posture view. Never secret. */
export interface UplinkSession {
  readonly kind: UplinkKind;
  /** host:port of the peer. */
  readonly peer: string;
  /** e.g. 'DTLSv1.3' or 'TLSv1.3'. */
  readonly protocol: string;
  /** e.g. 'TLS_CHACHA20_POLY1305_SHA256'. */
  readonly suite: string;
  /** e.g. 'x25519'. */
  readonly group: string;
  readonly auth: 'certificate' | 'psk';
}

export interface UplinkEvents {
  connected: [UplinkSession];
  disconnected: [{ readonly reason: string }];
  rejected: [{ readonly seq: number; readonly reason: UplinkRejectReason; readonly detail: string }];
}

export interface UplinkCounters {
  readonly sent: number;
  readonly acknowledged: number;
  readonly duplicates: number;
  readonly rejected: number;
  readonly transportErrors: number;
  readonly connects: number;
  readonly disconnects: number;
}

export interface Uplink extends EventEmitter<UplinkEvents> {
  readonly kind: UplinkKind;
  /** The current session, or undefined while disconnected. */
  readonly session: UplinkSession | undefined;
  /** Connects (handshake included); rejects with TransportError, or a typed error for bad credentials. */
  connect(): Promise<void>;
  /** Resolves when the receiving side has taken the message; see the module comment for failures. */
  send(message: UplinkMessage): Promise<UplinkAck>;
  /**
   * Closes gracefully (close_notify / DISCONNECT) for good, releasing what the uplink holds; messages
   * still in flight reject with TransportError.
   */
  close(): Promise<void>;
  /**
   * Ends the current connection as `close` does, but the uplink stays usable: `connect()` may follow.
   * What the agent's uplink runner calls when it gives up on a link it will connect again (lost,
   * timed out, the failover after the primary is back). Without it, the runner calls `close`, which
   * must then allow `connect()` again.
   */
  disconnect?(): Promise<void>;
  counters(): UplinkCounters;
}
