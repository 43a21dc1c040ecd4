/**
 * Handshake message bodies (RFC 8446 §4 with the DTLS 1.3 ClientHello of RFC 9147 §5.3 and the
 * Connection ID messages of RFC 9147 §9). A `HandshakeMessage` is the TLS-style message: its
 * encoding `type || uint24 length || body` is what the transcript hashes (RFC 9147 §5.2).
 *
 * @example
 *   const bytes = encodeHandshake({ type: HandshakeType.finished, verifyData });
 *   const msg = decodeHandshake(bytes); // msg.type === HandshakeType.finished
 */
import { DecodeError } from '../../util/errors.ts';
import { decodeAll, Reader, Writer } from './codec.ts';
import { DTLS12_VERSION, HandshakeType, HRR_RANDOM } from './constants.ts';
import { readExtensions, writeExtensions, type Extension } from './extensions.ts';

export interface ClientHello {
  readonly type: typeof HandshakeType.clientHello;
  readonly legacyVersion: number;
  readonly random: Uint8Array;
  readonly legacySessionId: Uint8Array;
  readonly legacyCookie: Uint8Array;
  readonly cipherSuites: readonly number[];
  readonly compressionMethods: Uint8Array;
  readonly extensions: readonly Extension[];
}

/** A ServerHello or, when `random` is the special value, a HelloRetryRequest (RFC 8446 §4.1.3). */
export interface ServerHello {
  readonly type: typeof HandshakeType.serverHello;
  readonly legacyVersion: number;
  readonly random: Uint8Array;
  readonly legacySessionIdEcho: Uint8Array;
  readonly cipherSuite: number;
  readonly compressionMethod: number;
  readonly extensions: readonly Extension[];
}

export interface EncryptedExtensions {
  readonly type: typeof HandshakeType.encryptedExtensions;
  readonly extensions: readonly Extension[];
}

export interface CertificateRequest {
  readonly type: typeof HandshakeType.certificateRequest;
  readonly context: Uint8Array;
  readonly extensions: readonly Extension[];
}

export interface CertificateEntry {
  readonly data: Uint8Array;
  readonly extensions: readonly Extension[];
}

export interface Certificate {
  readonly type: typeof HandshakeType.certificate;
  readonly context: Uint8Array;
  readonly entries: readonly CertificateEntry[];
}

export interface CertificateVerify {
  readonly type: typeof HandshakeType.certificateVerify;
  readonly scheme: number;
  readonly signature: Uint8Array;
}

export interface Finished {
  readonly type: typeof HandshakeType.finished;
  readonly verifyData: Uint8Array;
}

export interface NewSessionTicket {
  readonly type: typeof HandshakeType.newSessionTicket;
  readonly lifetime: number;
  readonly ageAdd: number;
  readonly nonce: Uint8Array;
  readonly ticket: Uint8Array;
  readonly extensions: readonly Extension[];
}

export interface KeyUpdate {
  readonly type: typeof HandshakeType.keyUpdate;
  readonly updateRequested: boolean;
}

export interface NewConnectionId {
  readonly type: typeof HandshakeType.newConnectionId;
  readonly cids: readonly Uint8Array[];
  /** 0 cid_immediate, 1 cid_spare (RFC 9147 §9). */
  readonly usage: number;
}

export interface RequestConnectionId {
  readonly type: typeof HandshakeType.requestConnectionId;
  readonly numCids: number;
}

export type HandshakeMessage =
  | ClientHello
  | ServerHello
  | EncryptedExtensions
  | CertificateRequest
  | Certificate
  | CertificateVerify
  | Finished
  | NewSessionTicket
  | KeyUpdate
  | NewConnectionId
  | RequestConnectionId;

/** The SHA-256 length: every suite here uses SHA-256, so Finished carries 32 bytes. */
export const VERIFY_DATA_LENGTH = 32;

export function isHelloRetryRequest(sh: ServerHello): boolean {
  if (sh.random.length !== HRR_RANDOM.length) return false;
  for (let i = 0; i < HRR_RANDOM.length; i++) if (sh.random[i] !== HRR_RANDOM[i]) return false;
  return true;
}

export function writeHandshakeBody(w: Writer, m: HandshakeMessage): void {
  switch (m.type) {
    case HandshakeType.clientHello:
      w.u16(m.legacyVersion).bytes(m.random).opaque(1, m.legacySessionId).opaque(1, m.legacyCookie);
      w.vector(2, (v) => m.cipherSuites.forEach((s) => v.u16(s)));
      w.opaque(1, m.compressionMethods);
      writeExtensions(w, m.extensions);
      return;
    case HandshakeType.serverHello:
      w.u16(m.legacyVersion).bytes(m.random).opaque(1, m.legacySessionIdEcho).u16(m.cipherSuite).u8(m.compressionMethod);
      writeExtensions(w, m.extensions);
      return;
    case HandshakeType.encryptedExtensions:
      writeExtensions(w, m.extensions);
      return;
    case HandshakeType.certificateRequest:
      w.opaque(1, m.context);
      writeExtensions(w, m.extensions);
      return;
    case HandshakeType.certificate:
      w.opaque(1, m.context);
      w.vector(3, (v) => {
        for (const e of m.entries) {
          v.opaque(3, e.data);
          writeExtensions(v, e.extensions);
        }
      });
      return;
    case HandshakeType.certificateVerify:
      w.u16(m.scheme).opaque(2, m.signature);
      return;
    case HandshakeType.finished:
      w.bytes(m.verifyData);
      return;
    case HandshakeType.newSessionTicket:
      w.u32(m.lifetime).u32(m.ageAdd).opaque(1, m.nonce).opaque(2, m.ticket);
      writeExtensions(w, m.extensions);
      return;
    case HandshakeType.keyUpdate:
      w.u8(m.updateRequested ? 1 : 0);
      return;
    case HandshakeType.newConnectionId:
      w.vector(2, (v) => m.cids.forEach((c) => v.opaque(1, c)));
      w.u8(m.usage);
      return;
    case HandshakeType.requestConnectionId:
      w.u8(m.numCids);
      return;
    default: {
      const never: never = m;
      throw new TypeError(`unknown handshake message ${String((never as { type: unknown }).type)}`);
    }
  }
}

/** The TLS-style encoding `msg_type || uint24 length || body` (what the transcript hashes). */
export function encodeHandshake(m: HandshakeMessage): Uint8Array {
  const w = new Writer(512);
  w.u8(m.type);
  w.vector(3, (v) => writeHandshakeBody(v, m));
  return w.finish();
}

/** Reads one message body of type `type`; the body must be consumed exactly. */
export function readHandshakeBody(type: number, body: Uint8Array): HandshakeMessage {
  const what = `handshake ${type}`;
  return decodeAll(body, what, (r): HandshakeMessage => {
    switch (type) {
      case HandshakeType.clientHello:
        return {
          type,
          legacyVersion: r.u16('legacy_version'),
          random: Uint8Array.from(r.bytes(32, 'random')),
          legacySessionId: r.opaque(1, 0, 32, 'legacy_session_id'),
          legacyCookie: r.opaque(1, 0, 255, 'legacy_cookie'),
          cipherSuites: readSuites(r),
          compressionMethods: r.opaque(1, 1, 255, 'legacy_compression_methods'),
          extensions: readExtensions(r, 0, 'ClientHello'),
        };
      case HandshakeType.serverHello:
        return {
          type,
          legacyVersion: r.u16('legacy_version'),
          random: Uint8Array.from(r.bytes(32, 'random')),
          legacySessionIdEcho: r.opaque(1, 0, 32, 'legacy_session_id_echo'),
          cipherSuite: r.u16('cipher_suite'),
          compressionMethod: r.u8('legacy_compression_method'),
          extensions: readExtensions(r, 0, 'ServerHello'),
        };
      case HandshakeType.encryptedExtensions:
        return { type, extensions: readExtensions(r, 0, 'EncryptedExtensions') };
      case HandshakeType.certificateRequest:
        return {
          type,
          context: r.opaque(1, 0, 255, 'certificate_request_context'),
          extensions: readExtensions(r, 2, 'CertificateRequest'),
        };
      case HandshakeType.certificate:
        return {
          type,
          context: r.opaque(1, 0, 255, 'certificate_request_context'),
          entries: r.list(3, 0, 0xffffff, 'certificate_list', (s) => ({
            data: s.opaque(3, 1, 0xffffff, 'cert_data'),
            extensions: readExtensions(s, 0, 'CertificateEntry'),
          })),
        };
      case HandshakeType.certificateVerify:
        return { type, scheme: r.u16('algorithm'), signature: r.opaque(2, 0, 0xffff, 'signature') };
      case HandshakeType.finished:
        return { type, verifyData: Uint8Array.from(r.bytes(VERIFY_DATA_LENGTH, 'verify_data')) };
      case HandshakeType.newSessionTicket:
        return {
          type,
          lifetime: r.u32('ticket_lifetime'),
          ageAdd: r.u32('ticket_age_add'),
          nonce: r.opaque(1, 0, 255, 'ticket_nonce'),
          ticket: r.opaque(2, 1, 0xffff, 'ticket'),
          extensions: readExtensions(r, 0, 'NewSessionTicket'),
        };
      case HandshakeType.keyUpdate: {
        const v = r.u8('request_update');
        if (v > 1) throw new DecodeError('bad-key-update', `KeyUpdate: request_update ${v} is neither 0 nor 1`);
        return { type, updateRequested: v === 1 };
      }
      case HandshakeType.newConnectionId: {
        const cids = r.list(2, 0, 0xffff, 'cids', (s) => s.opaque(1, 0, 255, 'cid'));
        const usage = r.u8('usage');
        if (usage > 1) throw new DecodeError('bad-cid-usage', `NewConnectionId: usage ${usage} unknown`);
        return { type, cids, usage };
      }
      case HandshakeType.requestConnectionId:
        return { type, numCids: r.u8('num_cids') };
      default:
        throw new DecodeError('unknown-handshake-type', `handshake type ${type} is not expected in DTLS 1.3`);
    }
  });
}

function readSuites(r: Reader): number[] {
  return r.list(2, 2, 0xfffe, 'cipher_suites', (s) => s.u16('cipher_suite'));
}

/** Decodes a TLS-style message `type || uint24 length || body`. */
export function decodeHandshake(bytes: Uint8Array): HandshakeMessage {
  const r = new Reader(bytes);
  const type = r.u8('msg_type');
  const length = r.u24('length');
  const body = r.bytes(length, 'handshake body');
  r.expectEnd('handshake message');
  return readHandshakeBody(type, body);
}

/** The fields of a ServerHello every DTLS 1.3 ServerHello and HelloRetryRequest share (RFC 9147 §5.4). */
export function serverHello(fields: Omit<ServerHello, 'type' | 'legacyVersion' | 'compressionMethod' | 'legacySessionIdEcho'>): ServerHello {
  return {
    type: HandshakeType.serverHello,
    legacyVersion: DTLS12_VERSION,
    legacySessionIdEcho: new Uint8Array(0),
    compressionMethod: 0,
    ...fields,
  };
}
