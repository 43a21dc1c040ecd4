/**
 * DTLS-specific errors and the one mapping from errors to alerts (RFC 8446 §6.2). Every failure a
 * handshake can meet is a typed error with a `code`; `alertFor` decides the alert to send.
 */
import { DecodeError, PeerIncompatible, PeerMisbehaved, VitalsealError } from '../util/errors.ts';
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
  // Certificates
  'certificate-expired': 'certificate_expired',
  'certificate-not-yet-valid': 'certificate_expired',
  'unknown-ca': 'unknown_ca',
  'certificate-revoked': 'certificate_revoked',
  'certificate-purpose': 'unsupported_certificate',
  'unsupported-certificate': 'unsupported_certificate',
  'bad-certificate': 'bad_certificate',
  'certificate-pin-mismatch': 'bad_certificate',
  'certificate-name-mismatch': 'bad_certificate',
  'empty-certificate': 'decode_error',
};

/**
 * The alert to send for a failure, or undefined when none is sent (a peer alert, a timeout, a
 * local close). One place decides, so every layer throws typed errors and never picks alerts.
 */
export function alertFor(error: unknown): AlertName | undefined {
  if (error instanceof PeerAlert || error instanceof DtlsTimeout || error instanceof ConnectionClosed) return undefined;
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
