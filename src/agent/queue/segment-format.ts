/**
 * On-disk framing of one queued message (all integers big-endian):
 *
 *   u32 payload length | u64 seq (as u32 high, u32 low) | u32 CRC-32C over (seq bytes || payload) | payload
 *
 * The CRC covers the sequence number so a record that lands at the wrong offset, or a torn write
 * that leaves a stale header, is never taken for a valid message.
 */
import { DecodeError } from '../../util/errors.ts';
import { crc32c } from './crc32c.ts';

export const RECORD_HEADER_BYTES = 16;

export function encodeRecord(seq: number, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payload.length);
  out.writeUInt32BE(payload.length, 0);
  out.writeUInt32BE(Math.floor(seq / 2 ** 32), 4);
  out.writeUInt32BE(seq >>> 0, 8);
  out.set(payload, RECORD_HEADER_BYTES);
  const crc = crc32c(out.subarray(RECORD_HEADER_BYTES), crc32c(out.subarray(4, 12)));
  out.writeUInt32BE(crc, 12);
  return out;
}

export interface ScannedRecord {
  readonly seq: number;
  readonly offset: number;
  readonly length: number;
}

export interface ScanResult {
  readonly records: ScannedRecord[];
  /** Bytes from the start of the file that hold whole, valid records. */
  readonly validBytes: number;
  /** Why scanning stopped early, if it did: a torn tail or a corrupt record. */
  readonly stop?: DecodeError;
}

/**
 * Reads records until the end of `data` or the first record that is short, fails its CRC, claims
 * more than `maxPayload` bytes, or breaks the sequence (each seq must be the previous + 1).
 */
export function scanRecords(data: Uint8Array, maxPayload: number, expectFirstSeq?: number): ScanResult {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const records: ScannedRecord[] = [];
  let offset = 0;
  let expected = expectFirstSeq;
  const stopAt = (code: string, message: string): ScanResult => ({
    records, validBytes: offset, stop: new DecodeError(code, `queue record at byte ${offset}: ${message}`),
  });
  while (offset < buf.length) {
    if (buf.length - offset < RECORD_HEADER_BYTES) return stopAt('queue-torn-record', 'header cut short');
    const length = buf.readUInt32BE(offset);
    if (length > maxPayload) return stopAt('queue-corrupt-record', `length ${length} exceeds the ${maxPayload}-byte limit`);
    if (buf.length - offset - RECORD_HEADER_BYTES < length) return stopAt('queue-torn-record', 'payload cut short');
    const seq = buf.readUInt32BE(offset + 4) * 2 ** 32 + buf.readUInt32BE(offset + 8);
    const crc = buf.readUInt32BE(offset + 12);
    const body = buf.subarray(offset + RECORD_HEADER_BYTES, offset + RECORD_HEADER_BYTES + length);
    if (crc32c(body, crc32c(buf.subarray(offset + 4, offset + 12))) !== crc) return stopAt('queue-corrupt-record', 'CRC-32C mismatch');
    if (expected !== undefined && seq !== expected) return stopAt('queue-corrupt-record', `sequence ${seq} where ${expected} was due`);
    records.push({ seq, offset, length });
    expected = seq + 1;
    offset += RECORD_HEADER_BYTES + length;
  }
  return { records, validBytes: offset };
}
