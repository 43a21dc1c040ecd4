/**
 * DTLS-specific errors and the one mapping from errors to alerts (RFC 8446 §6.2). Every failure a
 * handshake can meet is a typed error with a `code`; `alertFor` decides the alert to send.
 */
import { CertificateError, DecodeError, PeerIncompatible, PeerMisbehaved, VitalsealError, type CertificateErrorCode } from '../util/errors.ts';
import { AlertDescription, type AlertName } from './messages/constants.ts';

/** The peer's certificate chain was refused (code names why). */
export class CertificateRejected extends VitalsealError {
  readonly kind = 'certificate';
}

/** The peer sent a fatal alert (code is the alert's name). */
export class PeerAlert extends VitalsealError {
  readonly kind = 'peer-alert';
  constructor(readonly description: number, name: string) {
    super(name, `peer sent alert ${name}`);
  }
}

/** The handshake or a post-handshake exchange got no answer within its time. */
export class DtlsTimeout extends VitalsealError {
  readonly kind = 'timeout';
}

/** Closed: the connection no longer sends or receives. */
export class ConnectionClosed extends VitalsealError {
  readonly kind = 'closed';
}

const BY_CODE: Readonly<Record<string, AlertName>> = {
  // Decoding and framing
  'record-overflow': 'record_overflow',
  // Protocol violations
  'unexpected-message': 'unexpected_message',
  'duplicate-extension': 'illegal_parameter',
  'duplicate-key-share': 'illegal_parameter',
  'fragment-mismatch': 'illegal_parameter',
  'illegal-parameter': 'illegal_parameter',
  'bad-cookie': 'illegal_parameter',
  'bad-key-share': 'illegal_parameter',
  'bad-legacy-cookie': 'illegal_parameter',
  'psk-binder-count': 'illegal_parameter',
  'psk-not-last': 'illegal_parameter',
  'second-hrr': 'unexpected_message',
  'missing-extension': 'missing_extension',
  'unsupported-extension': 'unsupported_extension',
  'bad-signature': 'decrypt_error',
  'bad-finished': 'decrypt_error',
  'bad-binder': 'decrypt_error',
  'handshake-message-too-large': 'illegal_parameter',
  'too-many-cids': 'too_many_cids_requested',
  // Negotiation failures
  'protocol-version': 'protocol_version',
  'bad-signature-scheme': 'illegal_parameter',
  'no-common-suite': 'handshake_failure',
  'no-common-group': 'handshake_failure',
  'no-common-signature': 'handshake_failure',
  'no-credentials': 'handshake_failure',
  'psk-mode': 'handshake_failure',
  'unknown-psk-identity': 'unknown_psk_identity',
  'certificate-required': 'certificate_required',
  // Certificates (the PKI's own verdicts are mapped by PKI_ALERT below)
  'bad-certificate': 'bad_certificate',
  'empty-certificate': 'decode_error',
};

/** RFC 8446 §6.2 alerts for src/pki's CertificateError codes. */
const PKI_ALERT: Readonly<Record<CertificateErrorCode, AlertName>> = {
  'malformed': 'bad_certificate',
  'unsupported-algorithm': 'unsupported_certificate',
  'expired': 'certificate_expired',
  'not-yet-valid': 'certificate_expired',
  'unknown-issuer': 'unknown_ca',
  'bad-signature': 'bad_certificate',
  'not-a-ca': 'bad_certificate',
  'path-length-exceeded': 'bad_certificate',
  'unhandled-critical-extension': 'unsupported_certificate',
  'wrong-purpose': 'unsupported_certificate',
  'name-mismatch': 'bad_certificate',
  'revoked': 'certificate_revoked',
  'revocation-unknown': 'certificate_unknown',
  'pin-mismatch': 'bad_certificate',
  'device-id-missing': 'bad_certificate',
  'device-id-mismatch': 'bad_certificate',
};

/**
 * The alert to send for a failure, or undefined when none is sent (a peer alert, a timeout, a
 * local close). One place decides, so every layer throws typed errors and never picks alerts.
 */
export function alertFor(error: unknown): AlertName | undefined {
  if (error instanceof PeerAlert || error instanceof DtlsTimeout || error instanceof ConnectionClosed) return undefined;
  // The fleet PKI's verdicts on a peer certificate (docs/pki.md has the same table).
  if (error instanceof CertificateError) return PKI_ALERT[error.code];
  if (error instanceof VitalsealError) {
    const mapped = BY_CODE[error.code];
    if (mapped !== undefined) return mapped;
    if (error instanceof DecodeError) return 'decode_error';
    if (error instanceof CertificateRejected) return 'bad_certificate';
    if (error instanceof PeerMisbehaved) return 'illegal_parameter';
    if (error instanceof PeerIncompatible) return 'handshake_failure';
  }
  return 'internal_error';
}

export function alertCode(name: AlertName): number {
  return AlertDescription[name];
}
