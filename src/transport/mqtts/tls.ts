/**
 * TLS for MQTTS, shared by the in-process connector and the TPM tunnel: the settings every device
 * connection uses (TLS 1.3 only, X25519 only, the pinned fleet roots, client certificate), what a
 * finished handshake reports, and one mapping from what node:tls / OpenSSL / mqtt.js raise to our
 * typed errors.
 *
 * @example
 *   const trust = trustFromPem(rootPem, { spkiPins: [parseSpkiPin('sha256/...')] });
 *   const opts = clientContextOptions(trust);   // + cert and key
 */
import type { ConnectionOptions, SecureContextOptions, TLSSocket } from 'node:tls';
import { parseCertificate, type Certificate } from '../../pki/certificate.ts';
import { pemDecode, pemEncode } from '../../pki/pem.ts';
import { CertificateError, PeerIncompatible, TransportError, UplinkRejected, VitalsealError, type CertificateErrorCode } from '../../util/errors.ts';

/** Whom a device trusts: the fleet roots it pins, and optionally the broker's (or its CA's) key. */
export interface MqttsTrust {
  readonly roots: readonly Certificate[];
  /** SHA-256 of SubjectPublicKeyInfo (RFC 7469 §2.4) of the broker's key or of a CA on its path. */
  readonly spkiPins?: readonly Uint8Array[];
}

/** What a finished handshake negotiated. */
export interface TlsSessionInfo {
  readonly protocol: string;
  readonly suite: string;
  readonly group: string;
}

/** Parses the fleet root CA(s) from PEM once. */
export function trustFromPem(rootPem: string, opts: { spkiPins?: readonly Uint8Array[] } = {}): MqttsTrust {
  const roots = pemDecode(rootPem, 'CERTIFICATE').map((b) => parseCertificate(b.der));
  if (roots.length === 0) throw new CertificateError('malformed', 'trust: no CERTIFICATE in the root PEM');
  return opts.spkiPins === undefined ? { roots } : { roots, spkiPins: opts.spkiPins };
}

export function rootsPem(trust: MqttsTrust): string {
  return trust.roots.map((r) => pemEncode('CERTIFICATE', r.der)).join('');
}

/**
 * The client side's fixed settings: TLS 1.3 and nothing older (RFC 8446), X25519 as the only key
 * exchange group, the pinned roots as the only trust anchors (not the system store).
 */
export function clientContextOptions(trust: MqttsTrust): SecureContextOptions {
  return {
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ecdhCurve: 'X25519',
    ca: rootsPem(trust),
  };
}

/** Per-connection options for `tls.connect` (the context carries the rest). */
export function connectOptions(host: string, port: number, serverName: string): ConnectionOptions {
  return {
    host,
    port,
    // RFC 6066 §3: SNI carries DNS names only, never an IP address literal.
    ...(isIpLiteral(serverName) ? {} : { servername: serverName }),
    rejectUnauthorized: true,
    // No `session`: never resume. A resumed TLS 1.3 session (RFC 8446 §2.2) skips both certificate
    // checks, so a device revoked since its first handshake would still get in; every connection
    // is a full mutual-auth handshake instead.
  };
}

export function isIpLiteral(name: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(name) || name.includes(':');
}

export function sessionInfoOf(socket: TLSSocket): TlsSessionInfo {
  const cipher = socket.getCipher();
  const key = socket.getEphemeralKeyInfo();
  return {
    protocol: socket.getProtocol() ?? 'unknown',
    suite: cipher.standardName ?? cipher.name,
    group: key !== null && typeof key === 'object' && 'name' in key && typeof key.name === 'string' ? key.name.toLowerCase() : 'unknown',
  };
}

/** OpenSSL's verify results for the *broker's* chain (node's `err.code`), as our certificate codes. */
const VERIFY_CODES: Readonly<Record<string, CertificateErrorCode>> = {
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'not-yet-valid',
  UNABLE_TO_GET_ISSUER_CERT: 'unknown-issuer',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unknown-issuer',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unknown-issuer',
  SELF_SIGNED_CERT_IN_CHAIN: 'unknown-issuer',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'unknown-issuer',
  CERT_SIGNATURE_FAILURE: 'bad-signature',
  CERT_REVOKED: 'revoked',
  INVALID_CA: 'not-a-ca',
  PATH_LENGTH_EXCEEDED: 'path-length-exceeded',
  INVALID_PURPOSE: 'wrong-purpose',
  ERR_TLS_CERT_ALTNAME_INVALID: 'name-mismatch',
};

/**
 * TLS alerts the broker sends about *our* certificate (RFC 8446 §6.2): the broker refused the
 * device's credentials. OpenSSL names them `ERR_SSL_SSLV3_ALERT_*` / `ERR_SSL_TLSV1*_ALERT_*`.
 */
const REFUSED_CREDENTIAL_ALERTS = /ALERT_(CERTIFICATE_REVOKED|CERTIFICATE_EXPIRED|CERTIFICATE_UNKNOWN|BAD_CERTIFICATE|UNSUPPORTED_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_REQUIRED|ACCESS_DENIED|DECRYPT_ERROR)$/;
/** Alerts and local errors that mean the two sides share no protocol version or group. */
const INCOMPATIBLE = /ALERT_(PROTOCOL_VERSION|HANDSHAKE_FAILURE|INSUFFICIENT_SECURITY|ILLEGAL_PARAMETER)$|UNSUPPORTED_PROTOCOL|NO_PROTOCOLS_AVAILABLE|WRONG_VERSION_NUMBER|NO_SHARED_GROUPS|NO_SUITABLE_KEY_SHARE/;

const SOCKET_CODES: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection-refused',
  ECONNRESET: 'connection-reset',
  ETIMEDOUT: 'timeout',
  EPIPE: 'connection-lost',
  ENOTFOUND: 'host-not-found',
  EAI_AGAIN: 'host-not-found',
  EHOSTUNREACH: 'host-unreachable',
  ENETUNREACH: 'network-unreachable',
  EADDRNOTAVAIL: 'network-unreachable',
};

function codeOf(e: unknown): string | undefined {
  if (typeof e !== 'object' || e === null || !('code' in e)) return undefined;
  const c = (e as { code: unknown }).code;
  return typeof c === 'string' ? c : undefined;
}

function describe(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  // OpenSSL messages carry library paths and internal codes; keep the meaningful tail, bounded.
  return msg.replace(/^error:[0-9A-F]+:/, '').slice(0, 200);
}

/**
 * One mapping for every failure on the way to a session: our certificate checks pass through;
 * OpenSSL verify failures of the broker's chain become `CertificateError`; alerts about our own
 * certificate become `UplinkRejected('unauthorized')`; version/group mismatches `PeerIncompatible`;
 * the rest `TransportError`.
 */
export function mapConnectionError(e: unknown, where: string): VitalsealError {
  if (e instanceof VitalsealError) return e;
  const code = alertCodeOf(e) ?? codeOf(e);
  if (code !== undefined) {
    const cert = VERIFY_CODES[code];
    if (cert !== undefined) return new CertificateError(cert, `the broker's certificate was refused (${code}): ${describe(e)}`, { cause: e });
    if (REFUSED_CREDENTIAL_ALERTS.test(code)) {
      return new UplinkRejected('unauthorized', `the broker refused this device's certificate (${alertName(code)})`, { cause: e });
    }
    if (INCOMPATIBLE.test(code)) return new PeerIncompatible('tls-negotiation', `no common TLS 1.3 / X25519 settings with ${where} (${alertName(code)})`, { cause: e });
    const sock = SOCKET_CODES[code];
    if (sock !== undefined) return new TransportError(sock, `${where}: ${sock.replace(/-/g, ' ')} (${code})`, { cause: e });
  }
  return new TransportError('connection-failed', `${where}: ${describe(e)}`, { cause: e });
}

/**
 * An alert that arrives while writing surfaces as `EPROTO` with OpenSSL's text ("... tlsv1 alert
 * protocol version ..."); name it as OpenSSL's own error codes do (ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION).
 */
function alertCodeOf(e: unknown): string | undefined {
  const code = codeOf(e);
  if (code !== undefined && code !== 'EPROTO') return undefined;
  const m = /\b(sslv3|tlsv1|tlsv13) alert ([a-z ]+?)(?::|$)/.exec(e instanceof Error ? e.message : String(e));
  if (m === null) return undefined;
  return `ERR_SSL_${(m[1] as string).toUpperCase()}_ALERT_${(m[2] as string).trim().replace(/ /g, '_').toUpperCase()}`;
}

/**
 * The TLS alert behind a connection failure, by its RFC 8446 §6.2 name ('certificate_revoked',
 * 'unknown_ca', 'protocol_version', ...), when OpenSSL reported one; for errors `mapConnectionError`
 * made, the alert is read from their cause.
 */
export function tlsAlertName(e: unknown): string | undefined {
  const cause = e instanceof VitalsealError && e.cause !== undefined ? e.cause : e;
  const code = alertCodeOf(cause) ?? codeOf(cause);
  const m = code === undefined ? null : /_ALERT_([A-Z_]+)$/.exec(code);
  return m === null ? undefined : (m[1] as string).toLowerCase();
}

function alertName(code: string): string {
  const m = /ALERT_([A-Z_]+)$/.exec(code);
  return m === null ? code : `${(m[1] as string).toLowerCase()} alert`;
}
