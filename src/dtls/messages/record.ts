/**
 * Record-level wire structures (RFC 9147 §4, §5.2, §7; RFC 8446 §6): the DTLSPlaintext header,
 * the unified header of DTLSCiphertext, the DTLSHandshake fragment header, ACK and Alert.
 * Parsing a datagram yields records still protected; the record layer (../record/) removes
 * protection.
 */
import { DecodeError } from '../../util/errors.ts';
import { decodeAll, Reader, Writer } from './codec.ts';
import { ContentType, MAX_CIPHERTEXT, MAX_PLAINTEXT } from './constants.ts';

/** RFC 9147 §4: the 13-byte DTLSPlaintext header. */
export const PLAINTEXT_HEADER_LENGTH = 13;

export interface PlaintextRecord {
  readonly kind: 'plaintext';
  readonly contentType: number;
  readonly version: number;
  /** The low 16 bits of the epoch (always 0 for DTLS 1.3 plaintext). */
  readonly epoch: number;
  readonly sequenceNumber: number;
  readonly fragment: Uint8Array;
}

export interface CiphertextRecord {
  readonly kind: 'ciphertext';
  /** The header as received, sequence number still encrypted (RFC 9147 §4.2.3). */
  readonly header: Uint8Array;
  readonly epochBits: number;
  readonly cid: Uint8Array | undefined;
  /** 1 or 2 (the S bit). */
  readonly seqLength: 1 | 2;
  /** Offset of the sequence number within `header`. */
  readonly seqOffset: number;
  readonly encrypted: Uint8Array;
}

export type WireRecord = PlaintextRecord | CiphertextRecord;

export interface ParsedDatagram {
  readonly records: WireRecord[];
  /** Set when the rest of the datagram could not be parsed and was discarded. */
  readonly error?: DecodeError;
}

const FIXED_BITS_MASK = 0xe0;
const FIXED_BITS = 0x20;
const C_BIT = 0x10;
const S_BIT = 0x08;
const L_BIT = 0x04;

/** RFC 9147 §4.1: demultiplex by the first byte. */
export function isCiphertextHeaderByte(b: number): boolean {
  return (b & FIXED_BITS_MASK) === FIXED_BITS;
}

export function isPlaintextContentType(b: number): boolean {
  return b === ContentType.alert || b === ContentType.handshake || b === ContentType.ack;
}

/**
 * Splits a datagram into records (RFC 9147 §4.1, §4.3). `cidLength` is the length of the CID this
 * endpoint asked its peer to use (0 when none): the unified header does not carry it. Whether a
 * record without a CID is acceptable is the connection's decision (RFC 9146 §3: once negotiated,
 * every protected record carries it).
 * A record that cannot be parsed ends the walk: its boundary is unknown, so the rest is dropped.
 */
export function parseDatagram(datagram: Uint8Array, cidLength: number): ParsedDatagram {
  const records: WireRecord[] = [];
  const r = new Reader(datagram);
  try {
    while (r.remaining > 0) {
      const first = datagram[r.offset] as number;
      if (isPlaintextContentType(first)) {
        records.push(readPlaintextRecord(r));
      } else if (isCiphertextHeaderByte(first)) {
        records.push(readCiphertextRecord(r, datagram, cidLength));
      } else {
        throw new DecodeError('bad-record-type', `record starts with ${first}: neither DTLSPlaintext nor DTLSCiphertext`);
      }
    }
    return { records };
  } catch (e) {
    if (e instanceof DecodeError) return { records, error: e };
    throw e;
  }
}

function readPlaintextRecord(r: Reader): PlaintextRecord {
  const contentType = r.u8('content type');
  const version = r.u16('legacy_record_version');
  const epoch = r.u16('epoch');
  const sequenceNumber = r.u48('sequence_number');
  const length = r.u16('length');
  if (length > MAX_PLAINTEXT) throw new DecodeError('record-overflow', `DTLSPlaintext length ${length} exceeds 2^14`);
  const fragment = r.bytes(length, 'DTLSPlaintext fragment');
  return { kind: 'plaintext', contentType, version, epoch, sequenceNumber, fragment };
}

function readCiphertextRecord(r: Reader, datagram: Uint8Array, cidLength: number): CiphertextRecord {
  const start = r.offset;
  const flags = r.u8('unified header');
  let cid: Uint8Array | undefined;
  if ((flags & C_BIT) !== 0) {
    // RFC 9147 §9: a record with a CID where none was negotiated is invalid.
    if (cidLength === 0) throw new DecodeError('unexpected-cid', 'record carries a connection ID but none was negotiated');
    cid = r.bytes(cidLength, 'connection ID');
  }
  const seqLength: 1 | 2 = (flags & S_BIT) !== 0 ? 2 : 1;
  const seqOffset = r.offset - start;
  r.bytes(seqLength, 'sequence number');
  let length: number;
  if ((flags & L_BIT) !== 0) length = r.u16('length');
  else length = r.remaining; // RFC 9147 §4: no length, the record runs to the datagram's end
  if (length > MAX_CIPHERTEXT) throw new DecodeError('record-overflow', `DTLSCiphertext length ${length} exceeds 2^14 + 256`);
  const header = datagram.subarray(start, r.offset);
  const encrypted = r.bytes(length, 'encrypted_record');
  return { kind: 'ciphertext', header, epochBits: flags & 0x03, cid, seqLength, seqOffset, encrypted };
}

/** DTLSPlaintext header for epoch 0 (RFC 9147 §4). */
export function writePlaintextHeader(w: Writer, contentType: number, version: number, sequenceNumber: number, length: number): void {
  w.u8(contentType).u16(version).u16(0).u48(sequenceNumber).u16(length);
}

/**
 * The unified header we send (RFC 9147 §4): 16-bit sequence number and a length field always
 * (docs/dtls.md: so records can share a datagram), the CID when the peer asked for one.
 */
export function encodeUnifiedHeader(epoch: number, sequenceNumber: number, cid: Uint8Array | undefined, length: number): Uint8Array {
  const out = new Uint8Array(unifiedHeaderLength(cid));
  writeUnifiedHeader(out, epoch, sequenceNumber, cid, length);
  return out;
}

/** `encodeUnifiedHeader` into the start of `out` (a record being built in place); returns its length. */
export function writeUnifiedHeader(out: Uint8Array, epoch: number, sequenceNumber: number, cid: Uint8Array | undefined, length: number): number {
  const hasCid = cid !== undefined && cid.length > 0;
  out[0] = FIXED_BITS | (hasCid ? C_BIT : 0) | S_BIT | L_BIT | (epoch & 0x03);
  let at = 1;
  if (hasCid) {
    out.set(cid, 1);
    at += cid.length;
  }
  out[at] = (sequenceNumber >>> 8) & 0xff;
  out[at + 1] = sequenceNumber & 0xff;
  out[at + 2] = (length >>> 8) & 0xff;
  out[at + 3] = length & 0xff;
  return at + 4;
}

/** Bytes of a header made by `encodeUnifiedHeader`. */
export function unifiedHeaderLength(cid: Uint8Array | undefined): number {
  return unifiedHeaderSeqOffset(cid) + 4;
}

/** Offset of the 16-bit sequence number in a header made by `encodeUnifiedHeader`. */
export function unifiedHeaderSeqOffset(cid: Uint8Array | undefined): number {
  return 1 + (cid?.length ?? 0);
}

// ---- DTLSHandshake fragments (RFC 9147 §5.2) ----

export const HANDSHAKE_HEADER_LENGTH = 12;

export interface HandshakeFragment {
  readonly msgType: number;
  /** The whole message's body length. */
  readonly length: number;
  readonly messageSeq: number;
  readonly fragmentOffset: number;
  readonly body: Uint8Array;
}

/** Reads every fragment in a handshake record's payload; each must lie within its message. */
export function readHandshakeFragments(payload: Uint8Array): HandshakeFragment[] {
  const r = new Reader(payload);
  const out: HandshakeFragment[] = [];
  if (r.remaining === 0) throw new DecodeError('empty-handshake-record', 'handshake record with no fragment');
  while (r.remaining > 0) {
    const msgType = r.u8('msg_type');
    const length = r.u24('length');
    const messageSeq = r.u16('message_seq');
    const fragmentOffset = r.u24('fragment_offset');
    const fragmentLength = r.u24('fragment_length');
    if (fragmentOffset + fragmentLength > length) {
      throw new DecodeError('bad-fragment', `fragment [${fragmentOffset}, +${fragmentLength}) exceeds message length ${length}`);
    }
    const body = r.bytes(fragmentLength, 'fragment');
    out.push({ msgType, length, messageSeq, fragmentOffset, body });
  }
  return out;
}

export function writeHandshakeFragment(w: Writer, f: HandshakeFragment): void {
  w.u8(f.msgType).u24(f.length).u16(f.messageSeq).u24(f.fragmentOffset).u24(f.body.length).bytes(f.body);
}

// ---- ACK (RFC 9147 §7) ----

export interface RecordNumber {
  readonly epoch: number;
  readonly sequenceNumber: number;
}

export function encodeAck(records: readonly RecordNumber[]): Uint8Array {
  const w = new Writer(2 + 16 * records.length);
  w.vector(2, (v) => records.forEach((rn) => v.u64(rn.epoch).u64(rn.sequenceNumber)));
  return w.finish();
}

export function readAck(payload: Uint8Array): RecordNumber[] {
  return decodeAll(payload, 'ACK', (r) => {
    // A list length that is not a multiple of 16 leaves a partial entry: `truncated`.
    return r.list(2, 0, 0xffff, 'record_numbers', (s) => ({ epoch: s.u64('epoch'), sequenceNumber: s.u64('sequence_number') }));
  });
}

// ---- Alert (RFC 8446 §6) ----

export interface Alert {
  readonly level: number;
  readonly description: number;
}

export function encodeAlert(a: Alert): Uint8Array {
  return Uint8Array.of(a.level, a.description);
}

export function readAlert(payload: Uint8Array): Alert {
  return decodeAll(payload, 'alert', (r) => ({ level: r.u8('alert level'), description: r.u8('alert description') }));
}
