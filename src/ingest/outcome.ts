/**
 * What a listener hands to `IngestService.accept`, and the typed outcome it gets back, with the one
 * mapping of outcomes onto CoAP response codes (RFC 7252 §5.9) and MQTT acknowledgement.
 *
 * A listener authenticates the transport first (DTLS 1.3 / TLS 1.3 with `validateChain`, or the
 * broker's ACL for MQTT) and passes what it proved as `PeerIdentity`; the ingest service then binds
 * the sealed message to that identity.
 *
 * @example
 *   const outcome = await ingest.accept({ payload, contentFormat: 96, peer: { kind: 'certificate', deviceId, spkiSha256, transport: 'coaps', suite } });
 *   coap.respond(coapResponseCode(outcome));          // '2.04', '4.03', ...
 *   if (mqttShouldAck(outcome)) packet.ack();          // MQTT: only transient failures stay unacknowledged
 */
import type { CoseContentFormat, UplinkRejectReason } from '../transport/types.ts';

/** The transports an identity can come from. */
export type TransportName = 'coaps' | 'mqtts';

interface PeerBase {
  readonly transport: TransportName;
  /** Negotiated protocol and cipher suite, e.g. 'DTLSv1.3 TLS_AES_128_CCM_8_SHA256' (posture view). */
  readonly suite: string;
}

/** A device authenticated by its certificate in this connection's handshake (DTLS 1.3 or TLS 1.3). */
export interface CertificatePeer extends PeerBase {
  readonly kind: 'certificate';
  /** `ValidatedPeer.deviceId` from `validateChain`. */
  readonly deviceId: string;
  /** Hex SHA-256 of the leaf's SubjectPublicKeyInfo (`ValidatedPeer.spkiSha256`). */
  readonly spkiSha256: string;
  readonly certNotAfter?: number;
}

/** A DTLS 1.3 PSK session: the identity the handshake authenticated (a device id, by convention). */
export interface PskPeer extends PeerBase {
  readonly kind: 'psk';
  readonly pskIdentity: string;
}

/**
 * A message delivered by the MQTT broker: the broker authenticated the device (client certificate,
 * `use_identity_as_username`) and its ACL lets a device publish only under `devices/<its id>/`, so
 * the topic's device id is the authenticated identity.
 */
export interface BrokerPeer extends PeerBase {
  readonly kind: 'broker';
  readonly deviceId: string;
}

export type PeerIdentity = CertificatePeer | PskPeer | BrokerPeer;

export interface AcceptInput {
  readonly payload: Uint8Array;
  /** CoAP Content-Format number (96 = application/cose; cose-type="cose-encrypt"), its name, or undefined when the transport carries none. */
  readonly contentFormat: CoseContentFormat | number | undefined;
  readonly peer: PeerIdentity;
  /** When the listener received it (default: the service's clock). */
  readonly receivedAt?: number;
}

/** Why a message was refused for good. */
export type RejectReason =
  | 'too-large'
  | 'unsupported-format'
  | 'malformed'
  | 'unknown-device'
  | 'credential-mismatch'
  | 'device-suspended'
  | 'device-revoked'
  | 'identity-mismatch'
  | 'decrypt-failed'
  | 'epoch-misuse';

export const REJECT_REASONS: readonly RejectReason[] = [
  'too-large', 'unsupported-format', 'malformed', 'unknown-device', 'credential-mismatch', 'device-suspended', 'device-revoked',
  'identity-mismatch', 'decrypt-failed', 'epoch-misuse',
];

export type AcceptOutcome =
  | { readonly status: 'accepted'; readonly deviceId: string; readonly seq: number; readonly readings: number }
  /** Already stored: acknowledged again so the device can drop it, stored once. */
  | { readonly status: 'duplicate'; readonly deviceId: string; readonly seq: number }
  | { readonly status: 'rejected'; readonly reason: RejectReason; readonly detail: string; readonly deviceId?: string; readonly seq?: number }
  /** Transient (storage down, shutting down): not taken; the device or broker sends it again. */
  | { readonly status: 'unavailable'; readonly detail: string };

export type CoapResponseCode = '2.04' | '4.00' | '4.01' | '4.03' | '4.13' | '4.15' | '5.03';

/** RFC 7252 §5.9 / §12.1.2: the response a CoAPS listener sends for an outcome. */
export function coapResponseCode(o: AcceptOutcome): CoapResponseCode {
  switch (o.status) {
    case 'accepted':
    case 'duplicate':
      return '2.04'; // §5.9.1.4 Changed: the POST took effect (or already had)
    case 'unavailable':
      return '5.03'; // §5.9.3.4 Service Unavailable: try again later
    case 'rejected':
      return rejectCode(o.reason);
    default: {
      const never: never = o;
      throw new TypeError(`unknown outcome ${String(never)}`);
    }
  }
}

function rejectCode(r: RejectReason): CoapResponseCode {
  switch (r) {
    case 'too-large':
      return '4.13'; // §5.9.2.9 Request Entity Too Large
    case 'unsupported-format':
      return '4.15'; // §5.9.2.10 Unsupported Content-Format
    case 'malformed':
    case 'decrypt-failed':
      return '4.00'; // §5.9.2.1 Bad Request (as OSCORE answers a failed decryption, RFC 8613 §8.2)
    case 'unknown-device':
    case 'credential-mismatch':
      return '4.01'; // §5.9.2.2 Unauthorized: this identity is not one we know
    case 'device-suspended':
    case 'device-revoked':
    case 'identity-mismatch':
    case 'epoch-misuse':
      return '4.03'; // §5.9.2.4 Forbidden: known, but not allowed to send this
    default: {
      const never: never = r;
      throw new TypeError(`unknown reason ${String(never)}`);
    }
  }
}

/**
 * MQTT: acknowledge (consume) everything but transient failures. A refused message will never be
 * accepted, so leaving it unacknowledged would only make the broker deliver it forever; a transient
 * failure stays unacknowledged so the broker redelivers it (to this or another instance).
 */
export function mqttShouldAck(o: AcceptOutcome): boolean {
  return o.status !== 'unavailable';
}

/** The `UplinkRejected` code a device-side transport reports for a refusal. */
export function uplinkRejectReason(r: RejectReason): UplinkRejectReason {
  switch (rejectCode(r)) {
    case '4.13':
      return 'too-large';
    case '4.15':
      return 'unsupported-format';
    case '4.01':
      return 'unauthorized';
    case '4.03':
      return 'forbidden';
    default:
      return 'bad-request';
  }
}
