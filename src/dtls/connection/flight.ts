/**
 * An outgoing flight (RFC 9147 §5.7, §5.8, §7): its handshake messages, which byte ranges of each the
 * peer has acknowledged, and which fragments went into which record, so an ACK naming record
 * numbers marks exactly those fragments and a retransmission resends only what is missing.
 * Packing into datagrams is done by `planFlight`, a pure function the connection then seals.
 */
import { HANDSHAKE_HEADER_LENGTH } from '../messages/record.ts';

export interface FlightMessage {
  readonly epoch: number;
  readonly msgType: number;
  readonly messageSeq: number;
  /** The message body (without any header). */
  readonly body: Uint8Array;
  /** Acknowledged [start, end) ranges, sorted and merged. */
  acked: [number, number][];
}

export interface FragmentRef {
  readonly message: FlightMessage;
  readonly offset: number;
  readonly length: number;
}

export type FlightPurpose = 'handshake' | 'final' | 'new-session-ticket' | 'key-update' | 'new-connection-id';

export class Flight {
  readonly messages: FlightMessage[] = [];
  /** Record number ("epoch:seq") → the fragments it carried. */
  readonly records = new Map<string, FragmentRef[]>();
  /** When the flight was first sent, and how often it was sent. */
  firstSentAt = 0;
  lastSentAt = 0;
  transmissions = 0;

  constructor(
    /** 'handshake': answered by the peer's next flight; every other purpose is answered by an ACK. */
    public purpose: FlightPurpose,
  ) {}

  get expectsAck(): boolean {
    return this.purpose !== 'handshake';
  }

  add(epoch: number, message: Uint8Array, messageSeq: number): void {
    this.messages.push({ epoch, msgType: message[0] as number, messageSeq, body: message.subarray(4), acked: [] });
  }

  /** Marks what the record carried as acknowledged; true if the record was one of ours. */
  ack(epoch: number, seq: number): boolean {
    const refs = this.records.get(`${epoch}:${seq}`);
    if (refs === undefined) return false;
    for (const r of refs) markRange(r.message, r.offset, r.offset + r.length);
    return true;
  }

  get fullyAcked(): boolean {
    return this.messages.every((m) => isComplete(m));
  }

  /** True when the peer acknowledged anything of this flight (RFC 9147 §5.8.1, exit 3). */
  get anyAcked(): boolean {
    return this.messages.some((m) => m.acked.length > 0);
  }

  /** The unacknowledged ranges, message by message, in order. */
  missing(): FragmentRef[] {
    const out: FragmentRef[] = [];
    for (const m of this.messages) {
      let at = 0;
      for (const [s, e] of m.acked) {
        if (s > at) out.push({ message: m, offset: at, length: s - at });
        at = Math.max(at, e);
      }
      if (at < m.body.length || (m.body.length === 0 && m.acked.length === 0)) out.push({ message: m, offset: at, length: m.body.length - at });
    }
    return out;
  }
}

function isComplete(m: FlightMessage): boolean {
  const [first] = m.acked;
  if (m.body.length === 0) return first !== undefined;
  return m.acked.length === 1 && first !== undefined && first[0] === 0 && first[1] >= m.body.length;
}

function markRange(m: FlightMessage, start: number, end: number): void {
  const ranges = [...m.acked, [start, end] as [number, number]].sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const r of ranges) {
    const last = merged[merged.length - 1];
    if (last !== undefined && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  m.acked = merged;
}

/** One record to seal: its epoch and the fragments it carries. */
export interface PlannedRecord {
  readonly epoch: number;
  readonly fragments: FragmentRef[];
}

/**
 * Packs fragments into records and records into datagrams of at most `mtu` bytes (RFC 9147 §4.4:
 * records never span datagrams; several records and several fragments may share one).
 * `overhead(epoch)` is a record's fixed cost in that epoch (header, content type, tag).
 */
export function planFlight(pieces: readonly FragmentRef[], mtu: number, overhead: (epoch: number) => number): PlannedRecord[][] {
  const datagrams: PlannedRecord[][] = [];
  let current: PlannedRecord[] = [];
  let used = 0;
  let record: { epoch: number; fragments: FragmentRef[]; size: number } | undefined;

  const closeRecord = () => {
    if (record === undefined) return;
    current.push({ epoch: record.epoch, fragments: record.fragments });
    used += record.size;
    record = undefined;
  };
  const closeDatagram = () => {
    closeRecord();
    if (current.length > 0) datagrams.push(current);
    current = [];
    used = 0;
  };

  for (const piece of pieces) {
    let offset = piece.offset;
    let left = piece.length;
    let first = true;
    while (left > 0 || first) {
      first = false;
      if (record !== undefined && record.epoch !== piece.message.epoch) closeRecord();
      const open = record === undefined ? overhead(piece.message.epoch) : 0;
      const inUse = used + (record?.size ?? 0);
      const room = mtu - inUse - open - HANDSHAKE_HEADER_LENGTH;
      // Start a new datagram rather than send a sliver (or nothing) at the end of this one.
      if (room < Math.min(left, 64) || room <= 0) {
        if (inUse === 0) throw new RangeError(`mtu ${mtu} leaves no room for a handshake fragment`);
        closeDatagram();
        first = left === 0;
        continue;
      }
      const take = Math.min(room, left);
      if (record === undefined) record = { epoch: piece.message.epoch, fragments: [], size: open };
      record.fragments.push({ message: piece.message, offset, length: take });
      record.size += HANDSHAKE_HEADER_LENGTH + take;
      offset += take;
      left -= take;
    }
  }
  closeDatagram();
  return datagrams;
}
