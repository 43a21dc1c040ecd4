/**
 * Handshake message reassembly (RFC 9147 §5.2, §5.5): fragments of the next expected messages
 * are buffered until complete and released in message_seq order; fragments of messages already
 * processed are reported as old (the peer is retransmitting); overlapping fragments must carry
 * identical bytes. Memory is bounded: a message may not exceed `maxMessageLength`, and only
 * `maxAhead` messages beyond the next expected one are buffered, `maxBufferedBytes` in all.
 *
 * @example
 *   const r = new HandshakeReassembler();
 *   r.add(fragment);
 *   for (const m of r.takeReady()) handle(m.message);
 */
import { PeerMisbehaved } from '../../util/errors.ts';
import type { HandshakeFragment } from '../messages/record.ts';

export interface ReassemblyLimits {
  readonly maxMessageLength: number;
  readonly maxAhead: number;
  readonly maxBufferedBytes: number;
}

export const DEFAULT_REASSEMBLY_LIMITS: ReassemblyLimits = Object.freeze({
  maxMessageLength: 64 * 1024,
  maxAhead: 8,
  maxBufferedBytes: 128 * 1024,
});

export type FragmentOutcome =
  /** message_seq below the next expected: already processed (a retransmission). */
  | 'old'
  /** Buffered (possibly completing a message). */
  | 'buffered'
  /** Nothing new: every byte was already held. */
  | 'duplicate'
  /** Dropped to respect the memory bounds; the peer will retransmit. */
  | 'dropped';

export interface ReadyMessage {
  readonly messageSeq: number;
  readonly msgType: number;
  /** The TLS-style message `msg_type || uint24 length || body` (the transcript's form). */
  readonly message: Uint8Array;
}

class Assembly {
  readonly buf: Uint8Array;
  /** Sorted, disjoint, non-adjacent [start, end) ranges received. */
  ranges: [number, number][] = [];

  constructor(
    readonly msgType: number,
    readonly length: number,
  ) {
    this.buf = new Uint8Array(4 + length);
    this.buf[0] = msgType;
    this.buf[1] = (length >>> 16) & 0xff;
    this.buf[2] = (length >>> 8) & 0xff;
    this.buf[3] = length & 0xff;
  }

  get complete(): boolean {
    const [first] = this.ranges;
    return this.length === 0 ? this.#seen : this.ranges.length === 1 && first !== undefined && first[0] === 0 && first[1] === this.length;
  }

  #seen = false;

  /** Adds a fragment; returns false if it brought nothing new. Throws when held bytes would change. */
  add(offset: number, body: Uint8Array): boolean {
    const end = offset + body.length;
    // RFC 9147 §5.5: retransmitted bytes must not change (illegal_parameter).
    for (const [s, e] of this.ranges) {
      for (let i = Math.max(s, offset), to = Math.min(e, end); i < to; i++) {
        if (this.buf[4 + i] !== body[i - offset]) throw new PeerMisbehaved('fragment-mismatch', 'a retransmitted handshake fragment changed its bytes');
      }
    }
    const fresh = !this.#seen || (body.length > 0 && !this.ranges.some(([s, e]) => s <= offset && end <= e));
    this.#seen = true;
    if (!fresh || body.length === 0) return fresh;
    this.buf.set(body, 4 + offset);
    this.ranges.push([offset, end]);
    this.ranges.sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const r of this.ranges) {
      const last = merged[merged.length - 1];
      if (last !== undefined && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
      else merged.push([r[0], r[1]]);
    }
    this.ranges = merged;
    return true;
  }
}

export class HandshakeReassembler {
  #next = 0;
  readonly #pending = new Map<number, Assembly>();
  #bufferedBytes = 0;
  /** Messages already released, kept during the handshake to check retransmissions against. */
  #completed: Map<number, Uint8Array> | undefined = new Map();

  constructor(private readonly limits: ReassemblyLimits = DEFAULT_REASSEMBLY_LIMITS) {}

  /** The next message_seq expected. */
  get nextSeq(): number {
    return this.#next;
  }

  /** Bytes held for incomplete or not-yet-released messages. */
  get bufferedBytes(): number {
    return this.#bufferedBytes;
  }

  /** True when fragments are held that do not yet form the next message. */
  get hasGap(): boolean {
    return this.#pending.size > 0 && !(this.#pending.get(this.#next)?.complete ?? false);
  }

  add(f: HandshakeFragment): FragmentOutcome {
    if (f.messageSeq < this.#next) {
      // RFC 9147 §5.5: a retransmission must repeat the bytes we processed; a change means what we
      // acted on (or this copy) was damaged or forged, and the handshake cannot continue.
      const done = this.#completed?.get(f.messageSeq);
      if (done !== undefined && !sameFragment(done, f)) throw new PeerMisbehaved('fragment-mismatch', `retransmitted message ${f.messageSeq} differs from the one processed`);
      return 'old';
    }
    if (f.messageSeq > this.#next + this.limits.maxAhead) return 'dropped';
    if (f.length > this.limits.maxMessageLength) throw new PeerMisbehaved('handshake-message-too-large', `handshake message of ${f.length} bytes exceeds ${this.limits.maxMessageLength}`);
    let a = this.#pending.get(f.messageSeq);
    if (a === undefined) {
      if (this.#bufferedBytes + f.length > this.limits.maxBufferedBytes) return 'dropped';
      a = new Assembly(f.msgType, f.length);
      this.#pending.set(f.messageSeq, a);
      this.#bufferedBytes += f.length;
    } else if (a.msgType !== f.msgType || a.length !== f.length) {
      throw new PeerMisbehaved('fragment-mismatch', `fragments of message ${f.messageSeq} disagree on its type or length`);
    }
    return a.add(f.fragmentOffset, f.body) ? 'buffered' : 'duplicate';
  }

  /** Complete messages in order from the next expected one; advances `nextSeq`. */
  takeReady(): ReadyMessage[] {
    const out: ReadyMessage[] = [];
    for (;;) {
      const a = this.#pending.get(this.#next);
      if (a === undefined || !a.complete) return out;
      this.#pending.delete(this.#next);
      this.#bufferedBytes -= a.length;
      out.push({ messageSeq: this.#next, msgType: a.msgType, message: a.buf });
      this.#completed?.set(this.#next, a.buf);
      this.#next++;
    }
  }

  /** Starts expecting `seq` (a server that answered a HelloRetryRequest without keeping state). */
  skipTo(seq: number): void {
    if (seq < this.#next) throw new RangeError('skipTo cannot go back');
    this.#next = seq;
    for (const k of [...this.#pending.keys()]) {
      if (k < seq) {
        this.#bufferedBytes -= this.#pending.get(k)?.length ?? 0;
        this.#pending.delete(k);
      }
    }
  }

  /** Stops checking retransmissions of message `seq` (a HelloRetryRequest: stateless servers vary it). */
  forget(seq: number): void {
    this.#completed?.delete(seq);
  }

  /** The handshake is over: drop the copies kept for checking retransmissions. */
  forgetCompleted(): void {
    this.#completed = undefined;
  }

  /** Forgets everything buffered (a state change that makes queued messages meaningless). */
  clear(): void {
    this.#pending.clear();
    this.#bufferedBytes = 0;
  }
}

function sameFragment(message: Uint8Array, f: HandshakeFragment): boolean {
  if (message[0] !== f.msgType || message.length - 4 !== f.length) return false;
  for (let i = 0; i < f.body.length; i++) if (message[4 + f.fragmentOffset + i] !== f.body[i]) return false;
  return true;
}
