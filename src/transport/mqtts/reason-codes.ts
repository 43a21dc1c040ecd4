/**
 * MQTT v5 reason codes (OASIS MQTT 5.0 §2.4) as uplink outcomes: what a PUBACK or CONNACK says
 * about a message or a connection, in our typed errors.
 *
 * @example
 *   pubackOutcome(0x00);   // { kind: 'accepted' }
 *   pubackOutcome(0x87);   // { kind: 'rejected', reason: 'forbidden', ... }
 */
import { PeerIncompatible, TransportError, UplinkRejected, type VitalsealError } from '../../util/errors.ts';
import type { UplinkRejectReason } from '../types.ts';

/** MQTT 5.0 §2.4 Table 2-6 names, for log lines and error details. */
export const REASON_NAMES: Readonly<Record<number, string>> = Object.freeze({
  0x00: 'Success',
  0x04: 'Disconnect with Will Message',
  0x10: 'No matching subscribers',
  0x80: 'Unspecified error',
  0x81: 'Malformed Packet',
  0x82: 'Protocol Error',
  0x83: 'Implementation specific error',
  0x84: 'Unsupported Protocol Version',
  0x85: 'Client Identifier not valid',
  0x86: 'Bad User Name or Password',
  0x87: 'Not authorized',
  0x88: 'Server unavailable',
  0x89: 'Server busy',
  0x8a: 'Banned',
  0x8b: 'Server shutting down',
  0x8c: 'Bad authentication method',
  0x8d: 'Keep Alive timeout',
  0x8e: 'Session taken over',
  0x8f: 'Topic Filter invalid',
  0x90: 'Topic Name invalid',
  0x91: 'Packet Identifier in use',
  0x93: 'Receive Maximum exceeded',
  0x95: 'Packet too large',
  0x96: 'Message rate too high',
  0x97: 'Quota exceeded',
  0x98: 'Administrative action',
  0x99: 'Payload format invalid',
  0x9a: 'Retain not supported',
  0x9b: 'QoS not supported',
  0x9c: 'Use another server',
  0x9d: 'Server moved',
  0x9f: 'Connection rate exceeded',
});

export function reasonName(code: number): string {
  return `${REASON_NAMES[code] ?? 'unknown reason'} (0x${code.toString(16).padStart(2, '0')})`;
}

export type PubackOutcome =
  | { readonly kind: 'accepted' }
  /** Not taken; the same bytes may be sent again later (TransportError). */
  | { readonly kind: 'retry'; readonly code: string; readonly detail: string }
  /** Refused for good (UplinkRejected). */
  | { readonly kind: 'rejected'; readonly reason: UplinkRejectReason; readonly detail: string };

/**
 * MQTT 5.0 §3.4.2.1. Success is the acknowledgement. 0x10 "No matching subscribers" is a success
 * to MQTT but means the broker dropped the message (no ingest session exists): for us it is not
 * taken, so the agent keeps it. 0x97 "Quota exceeded" is about the sender's rate, not these bytes:
 * retry later. Every other code ≥ 0x80 refuses these bytes for good.
 */
export function pubackOutcome(code: number): PubackOutcome {
  const detail = `PUBACK ${reasonName(code)}`;
  switch (code) {
    case 0x00:
      return { kind: 'accepted' };
    case 0x10:
      return { kind: 'retry', code: 'no-subscribers', detail: `${detail}: the broker has no ingest session for this topic and dropped the message` };
    case 0x97:
      return { kind: 'retry', code: 'quota-exceeded', detail };
    case 0x87:
      return { kind: 'rejected', reason: 'forbidden', detail: `${detail}: the broker does not let this device publish on that topic` };
    case 0x99:
      return { kind: 'rejected', reason: 'unsupported-format', detail };
    case 0x95:
      return { kind: 'rejected', reason: 'too-large', detail };
    default:
      if (code >= 0x80) return { kind: 'rejected', reason: 'bad-request', detail };
      // Codes below 0x80 other than 0x00/0x10 are not defined for PUBACK: treat as not taken.
      return { kind: 'retry', code: 'protocol-error', detail: `${detail} is not a PUBACK reason code` };
  }
}

/** The error for a CONNACK that refuses the connection (MQTT 5.0 §3.2.2.2). */
export function connackError(code: number, where: string): VitalsealError {
  const detail = `${where} refused the connection: CONNACK ${reasonName(code)}`;
  switch (code) {
    case 0x85:
    case 0x86:
    case 0x87:
    case 0x8a:
    case 0x8c:
      return new UplinkRejected('unauthorized', detail);
    case 0x84:
    case 0x9a:
    case 0x9b:
      return new PeerIncompatible('mqtt-negotiation', detail);
    default:
      return new TransportError('connect-refused', detail);
  }
}
