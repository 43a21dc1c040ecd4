/**
 * Typed, layered errors. Every error carries a string-literal `code` so callers (and the one
 * error→alert mapping in the DTLS layer) switch on codes, never on message text.
 *
 * Messages never contain secret material: no key bytes, no plaintext, no passphrases.
 */
export abstract class VitalsealError extends Error {
  abstract readonly kind: string;
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Malformed, truncated, oversized or otherwise invalid input bytes. */
export class DecodeError extends VitalsealError {
  readonly kind = 'decode';
}

/** A cryptographic check failed: authentication tag, signature, low-order point, ... */
export class CryptoError extends VitalsealError {
  readonly kind = 'crypto';
}

/** The caller used an API wrongly (nonce reuse, use after destroy, wrong argument). */
export class ApiMisuse extends VitalsealError {
  readonly kind = 'api-misuse';
}

/** A provider, peer or configuration lacks a required algorithm or feature. */
export class Unsupported extends VitalsealError {
  readonly kind = 'unsupported';
}

/** The peer broke the protocol. */
export class PeerMisbehaved extends VitalsealError {
  readonly kind = 'peer-misbehaved';
}

/** The peer offered nothing we can use. */
export class PeerIncompatible extends VitalsealError {
  readonly kind = 'peer-incompatible';
}

/** A key store (TPM, PKCS#11, software) failed or refused. */
export class KeyStoreError extends VitalsealError {
  readonly kind = 'keystore';
}

/** Durable storage failed (disk full, I/O error); the operation was rolled back. */
export class StorageError extends VitalsealError {
  readonly kind = 'storage';
}

/**
 * A transport failed transiently (connection lost, timeout, broker or ingest unreachable): the
 * message was not acknowledged and may be sent again.
 */
export class TransportError extends VitalsealError {
  readonly kind = 'transport';
}

/**
 * The receiving side refused a message for good (malformed, unauthorised, forbidden, too large):
 * sending the same bytes again will not help. `code` names the reason.
 */
export class UplinkRejected extends VitalsealError {
  readonly kind = 'rejected';
}

/**
 * An X.509 certificate, chain, CSR or CRL was rejected (src/pki). Transports map `code` to an alert
 * (bad_certificate, certificate_expired, certificate_revoked, unknown_ca, ...).
 */
export type CertificateErrorCode =
  | 'malformed'
  | 'unsupported-algorithm'
  | 'expired'
  | 'not-yet-valid'
  | 'unknown-issuer'
  | 'bad-signature'
  | 'not-a-ca'
  | 'path-length-exceeded'
  | 'unhandled-critical-extension'
  | 'wrong-purpose'
  | 'name-mismatch'
  | 'revoked'
  | 'revocation-unknown'
  | 'pin-mismatch'
  | 'device-id-missing'
  | 'device-id-mismatch';

export class CertificateError extends VitalsealError {
  readonly kind = 'certificate';
  declare readonly code: CertificateErrorCode;
  constructor(code: CertificateErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/**
 * Enrolment or renewal through the ingest service's enrolment endpoint (src/pki/est-client.ts) did
 * not produce a usable certificate. `code` says why; `retryable` says whether the same request may
 * succeed later (the service was unreachable or busy) or needs someone to act (a new token, a
 * reactivated device). Messages name the refusal, never the token.
 */
export type EnrolmentErrorCode =
  /** The enrolment token is malformed or not known to the service. */
  | 'token-invalid'
  /** The token was used already (tokens are single-use). */
  | 'token-spent'
  | 'token-expired'
  /** The token or the certificate is for another device than the CSR asks for. */
  | 'device-mismatch'
  /** The device is suspended or revoked at the service. */
  | 'device-not-active'
  /** Renewal: the service did not accept the current certificate (revoked, superseded, expired, unknown). */
  | 'certificate-refused'
  /** The service or its CA refused the CSR. */
  | 'csr-refused'
  /** The enrolment server's TLS certificate failed our checks (another CA, wrong host name, expired). */
  | 'server-untrusted'
  /** No enrolment endpoint at that URL (404/405). */
  | 'not-found'
  /** Unreachable, timed out, busy (429) or failing (5xx), or enrolment is not configured there (503). */
  | 'unavailable'
  /** The answer is not an enrolment answer: wrong media type, oversized, cut short, not PEM. */
  | 'bad-response'
  /** The returned chain does not pass our checks: not from the pinned root, another device, another key. */
  | 'chain-refused';

export class EnrolmentError extends VitalsealError {
  readonly kind = 'enrolment';
  declare readonly code: EnrolmentErrorCode;
  /** The HTTP status, when the service answered. */
  readonly status: number | undefined;
  /** The service's own error code (its JSON `error` field), when it gave one. */
  readonly serverCode: string | undefined;
  constructor(code: EnrolmentErrorCode, message: string, options?: { cause?: unknown; status?: number; serverCode?: string }) {
    super(code, message, options);
    this.status = options?.status;
    this.serverCode = options?.serverCode;
  }

  /** True when the same request may succeed later without anyone acting. */
  get retryable(): boolean {
    return this.code === 'unavailable';
  }
}
