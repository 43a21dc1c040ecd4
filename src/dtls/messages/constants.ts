/**
 * Code points used by DTLS 1.3 (RFC 9147 §4, §5.2, §7; RFC 8446 §4, §6, Appendix B; RFC 9146 §3).
 */

/** RFC 9147 §4, Figure 4 and §7: record content types. */
export const ContentType = {
  alert: 21,
  handshake: 22,
  applicationData: 23,
  ack: 26,
} as const;
export type ContentTypeValue = (typeof ContentType)[keyof typeof ContentType];

/** RFC 9147 §5.2. */
export const HandshakeType = {
  clientHello: 1,
  serverHello: 2,
  newSessionTicket: 4,
  endOfEarlyData: 5,
  encryptedExtensions: 8,
  requestConnectionId: 9,
  newConnectionId: 10,
  certificate: 11,
  certificateRequest: 13,
  certificateVerify: 15,
  finished: 20,
  keyUpdate: 24,
  messageHash: 254,
} as const;
export type HandshakeTypeValue = (typeof HandshakeType)[keyof typeof HandshakeType];

const HANDSHAKE_NAMES = new Map<number, string>(Object.entries(HandshakeType).map(([k, v]) => [v, k]));
export function handshakeTypeName(type: number): string {
  return HANDSHAKE_NAMES.get(type) ?? `handshake(${type})`;
}

/** RFC 8446 §4.2 and RFC 9146 §3 extension types. */
export const ExtensionType = {
  serverName: 0,
  supportedGroups: 10,
  signatureAlgorithms: 13,
  preSharedKey: 41,
  earlyData: 42,
  supportedVersions: 43,
  cookie: 44,
  pskKeyExchangeModes: 45,
  certificateAuthorities: 47,
  signatureAlgorithmsCert: 50,
  keyShare: 51,
  connectionId: 54,
} as const;

/** Wire versions: RFC 9147 §5.3. */
export const DTLS12_VERSION = 0xfefd;
export const DTLS13_VERSION = 0xfefc;
/** The legacy version on the first ClientHello record may also be DTLS 1.0 (RFC 9147 §4). */
export const DTLS10_VERSION = 0xfeff;

/** TLS 1.3 cipher suites usable in DTLS (RFC 8446 Appendix B.4). */
export const CipherSuiteId = {
  TLS_AES_128_GCM_SHA256: 0x1301,
  TLS_CHACHA20_POLY1305_SHA256: 0x1303,
  TLS_AES_128_CCM_SHA256: 0x1304,
  TLS_AES_128_CCM_8_SHA256: 0x1305,
} as const;
export type CipherSuiteName = keyof typeof CipherSuiteId;

/** RFC 8446 §4.2.7 named groups. */
export const NamedGroupId = {
  secp256r1: 0x0017,
  x25519: 0x001d,
} as const;
export type NamedGroupName = keyof typeof NamedGroupId;

/** RFC 8446 §4.2.3 signature schemes. */
export const SignatureSchemeId = {
  ecdsa_secp256r1_sha256: 0x0403,
  rsa_pss_rsae_sha256: 0x0804,
  ed25519: 0x0807,
  rsa_pss_pss_sha256: 0x0809,
} as const;
export type SignatureSchemeName = keyof typeof SignatureSchemeId;

/** RFC 8446 §4.2.9. */
export const PskKeyExchangeMode = {
  pskKe: 0,
  pskDheKe: 1,
} as const;

/** RFC 8446 §4.6.3. */
export const KeyUpdateRequest = {
  notRequested: 0,
  requested: 1,
} as const;

/** RFC 8446 §6: alert levels. */
export const AlertLevel = { warning: 1, fatal: 2 } as const;

/** RFC 8446 §6 and RFC 9147 §9 alert descriptions. */
export const AlertDescription = {
  close_notify: 0,
  unexpected_message: 10,
  bad_record_mac: 20,
  record_overflow: 22,
  handshake_failure: 40,
  bad_certificate: 42,
  unsupported_certificate: 43,
  certificate_revoked: 44,
  certificate_expired: 45,
  certificate_unknown: 46,
  illegal_parameter: 47,
  unknown_ca: 48,
  access_denied: 49,
  decode_error: 50,
  decrypt_error: 51,
  too_many_cids_requested: 52,
  protocol_version: 70,
  insufficient_security: 71,
  internal_error: 80,
  user_canceled: 90,
  missing_extension: 109,
  unsupported_extension: 110,
  unrecognized_name: 112,
  unknown_psk_identity: 115,
  certificate_required: 116,
  no_application_protocol: 120,
} as const;
export type AlertName = keyof typeof AlertDescription;

const ALERT_NAMES = new Map<number, AlertName>(
  (Object.entries(AlertDescription) as [AlertName, number][]).map(([k, v]) => [v, k]),
);
export function alertName(code: number): string {
  return ALERT_NAMES.get(code) ?? `alert(${code})`;
}

/** RFC 8446 §4.1.3: the Random of a HelloRetryRequest, SHA-256("HelloRetryRequest"). */
export const HRR_RANDOM = Uint8Array.from([
  0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
  0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
]);

/** RFC 8446 §5.1: TLSInnerPlaintext may hold at most 2^14 bytes of content. */
export const MAX_PLAINTEXT = 1 << 14;
/** RFC 8446 §5.2: a protected record's payload is at most 2^14 + 256 bytes. */
export const MAX_CIPHERTEXT = (1 << 14) + 256;
