/**
 * The CoAPS conventions both ends share (resource, port, responses: docs/transport-coaps.md,
 * "Responses"), what a CoAP response means to the uplink, and the one mapping from DTLS handshake
 * failures to the uplink's typed errors:
 *
 *   2.04 Changed, no payload            taken: the message is stored now
 *   2.04 Changed, payload "duplicate"   taken before: already stored (Content-Format 0, text/plain)
 *   4.00 4.01 4.03 4.13 4.15            refused for good (UplinkRejected), diagnostic payload
 *   4.04 4.05 4.08 4.29 5.xx            not taken, send again later (TransportError)
 *
 * @example
 *   responseOutcome(decodeCoap(datagram));   // { kind: 'accepted', duplicate: false }
 */
import { CertificateError, PeerIncompatible, TransportError, UplinkRejected, VitalsealError } from '../../util/errors.ts';
import { CoapCode, codeString, type CoapMessage } from '../../coap/message.ts';
import type { UplinkRejectReason } from '../types.ts';

/** The CoAP resource telemetry is POSTed to (docs/transport-coaps.md). */
export const TELEMETRY_PATH = '/v1/telemetry';
/** RFC 7252 §12.7: the default port of coaps. */
export const COAPS_PORT = 5684;

/** The response codes a CoAPS server here sends for a telemetry POST (RFC 7252 §12.1.2, RFC 7959 §2.9). */
export type CoapsResponseCode = '2.04' | '2.31' | '4.00' | '4.01' | '4.02' | '4.03' | '4.04' | '4.05' | '4.08' | '4.13' | '4.15' | '5.00' | '5.03';

/** The wire value of a response code ('4.13' → 0x8d). */
export function responseCodeValue(code: CoapsResponseCode): number {
  const [cls, detail] = code.split('.') as [string, string];
  return (Number(cls) << 5) | Number(detail);
}

/** The payload of a 2.04 for a message the receiver already had (UTF-8, Content-Format 0). */
export const DUPLICATE_PAYLOAD = new TextEncoder().encode('duplicate');
/** RFC 7252 §12.3: text/plain; charset=utf-8. */
export const TEXT_PLAIN = 0;
/** Longest diagnostic payload (RFC 7252 §5.5.2) a server sends or a client reads. */
export const MAX_DIAGNOSTIC_BYTES = 128;

export type ResponseOutcome =
  | { readonly kind: 'accepted'; readonly duplicate: boolean }
  | { readonly kind: 'rejected'; readonly reason: UplinkRejectReason; readonly detail: string }
  | { readonly kind: 'retry'; readonly code: string; readonly detail: string };

/** RFC 7252 §5.5.2: an error response's payload is a short UTF-8 diagnostic, for people. */
export function diagnosticOf(m: CoapMessage): string {
  if (m.payload.length === 0) return '';
  const text = new TextDecoder('utf-8', { fatal: false }).decode(m.payload.subarray(0, MAX_DIAGNOSTIC_BYTES));
  // Control characters never reach a log line.
  return text.replace(/[\u0000-\u001f\u007f]/g, '?');
}

function isDuplicatePayload(p: Uint8Array): boolean {
  return p.length === DUPLICATE_PAYLOAD.length && p.every((b, i) => b === DUPLICATE_PAYLOAD[i]);
}

/** The meaning of the final response to a telemetry POST (not 2.31, which block-wise handles). */
export function responseOutcome(m: CoapMessage): ResponseOutcome {
  const code = codeString(m.code);
  const diagnostic = diagnosticOf(m);
  const detail = `CoAP ${code}${diagnostic === '' ? '' : ` (${diagnostic})`}`;
  const reject = (reason: UplinkRejectReason): ResponseOutcome => ({ kind: 'rejected', reason, detail });
  switch (m.code) {
    case CoapCode.CHANGED:
    case CoapCode.CREATED:
      return { kind: 'accepted', duplicate: m.code === CoapCode.CHANGED && isDuplicatePayload(m.payload) };
    case CoapCode.BAD_REQUEST:
    case CoapCode.BAD_OPTION:
      return reject('bad-request');
    case CoapCode.UNAUTHORIZED:
      return reject('unauthorized');
    case CoapCode.FORBIDDEN:
      return reject('forbidden');
    case CoapCode.REQUEST_ENTITY_TOO_LARGE:
      return reject('too-large');
    case CoapCode.UNSUPPORTED_CONTENT_FORMAT:
      return reject('unsupported-format');
    // A wrong path or method is the uplink's configuration, not these bytes: keep the message.
    case CoapCode.NOT_FOUND:
      return { kind: 'retry', code: 'not-found', detail: `${detail}: the server has no telemetry resource at this path` };
    case CoapCode.METHOD_NOT_ALLOWED:
      return { kind: 'retry', code: 'method-not-allowed', detail };
    case 0x88: // 4.08 Request Entity Incomplete (RFC 7959 §2.9.2): the server lost the earlier blocks
      return { kind: 'retry', code: 'request-incomplete', detail };
    case 0x9d: // 4.29 Too Many Requests (RFC 8516)
      return { kind: 'retry', code: 'too-many-requests', detail };
    default:
      if (m.code >= 0xa0 && m.code < 0xc0) return { kind: 'retry', code: m.code === CoapCode.SERVICE_UNAVAILABLE ? 'unavailable' : 'server-error', detail };
      if (m.code >= 0x80 && m.code < 0xa0) return reject('bad-request');
      return { kind: 'retry', code: 'unexpected-response', detail: `${detail} is not a response to a telemetry POST` };
  }
}

/** Alerts a server sends about our credentials (RFC 8446 §6.2): the certificate or PSK was refused. */
const REFUSED_CREDENTIAL = new Set([
  'certificate_revoked', 'certificate_expired', 'certificate_unknown', 'bad_certificate', 'unsupported_certificate',
  'unknown_ca', 'certificate_required', 'access_denied', 'decrypt_error', 'unknown_psk_identity',
]);
/** Alerts that mean the two sides share no version, suite, group or signature scheme. */
const INCOMPATIBLE = new Set(['protocol_version', 'handshake_failure', 'insufficient_security', 'illegal_parameter']);

/**
 * One mapping for every failure on the way to a session: our verdict on the server's certificate
 * stays a `CertificateError`; an alert about our own credentials becomes `UplinkRejected('unauthorized')`
 * naming the alert; negotiation failures `PeerIncompatible`; the rest (timeouts, a lost path)
 * `TransportError`.
 */
export function mapDtlsError(e: unknown, where: string): VitalsealError {
  if (e instanceof CertificateError || e instanceof UplinkRejected || e instanceof TransportError || e instanceof PeerIncompatible) return e;
  if (e instanceof VitalsealError) {
    if (e.kind === 'peer-alert') {
      if (REFUSED_CREDENTIAL.has(e.code)) return new UplinkRejected('unauthorized', `${where} refused this device's credentials (${e.code} alert)`, { cause: e });
      if (INCOMPATIBLE.has(e.code)) return new PeerIncompatible('dtls-negotiation', `no common DTLS 1.3 settings with ${where} (${e.code} alert)`, { cause: e });
      return new TransportError('connection-failed', `${where} ended the handshake (${e.code} alert)`, { cause: e });
    }
    if (e.kind === 'timeout') return new TransportError('connect-timeout', `${where}: ${e.message}`, { cause: e });
    // Our own verdict on the server's certificate (CertificateRejected: none sent, ...).
    if (e.kind === 'certificate') return e;
    return new TransportError('connection-failed', `${where}: ${e.message} [${e.code}]`, { cause: e });
  }
  return new TransportError('connection-failed', `${where}: ${e instanceof Error ? e.message.slice(0, 200) : String(e).slice(0, 200)}`, { cause: e });
}
