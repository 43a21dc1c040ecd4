/**
 * What every `Uplink` implementation shares, whatever its protocol: the checks a message passes
 * before anything is sent, the counters and the `rejected` event, and the bounded window of sends
 * awaiting their acknowledgement.
 *
 * @example
 *   const tally = new UplinkTally(this);
 *   const window = new InFlightWindow(() => (connected ? 64 : 0));
 *   const seq = checkUplinkMessage(message, deviceId, maxPayloadBytes, tally);
 *   await window.take();
 *   ...
 *   window.give();
 *   tally.ended(seq, { seq, status: 'accepted' });
 */
import type { EventEmitter } from 'node:events';
import { aint, isBytes } from '../util/assert.ts';
import { ApiMisuse, UplinkRejected, type VitalsealError } from '../util/errors.ts';
import { hasCoseTag } from './mqtts/topics.ts';
import type { UplinkAck, UplinkCounters, UplinkEvents, UplinkMessage, UplinkRejectReason } from './types.ts';

/** The counters of `Uplink.counters()`, and the `rejected` event that goes with a refusal. */
export class UplinkTally {
  readonly #emitter: EventEmitter<UplinkEvents>;
  readonly #c = { sent: 0, acknowledged: 0, duplicates: 0, rejected: 0, transportErrors: 0, connects: 0, disconnects: 0 };

  constructor(emitter: EventEmitter<UplinkEvents>) {
    this.#emitter = emitter;
  }

  snapshot(): UplinkCounters {
    return { ...this.#c };
  }

  connected(): void {
    this.#c.connects += 1;
  }

  disconnected(): void {
    this.#c.disconnects += 1;
  }

  sent(): void {
    this.#c.sent += 1;
  }

  /** A send that failed before it went out (not connected). */
  transportError(): void {
    this.#c.transportErrors += 1;
  }

  /** Refuses a message before sending: counted and reported; returns the error to throw. */
  refuse(seq: number, reason: UplinkRejectReason, detail: string): UplinkRejected {
    this.#c.rejected += 1;
    this.#emitter.emit('rejected', { seq, reason, detail });
    return new UplinkRejected(reason, detail);
  }

  /** Counts how a send ended; a refusal by the receiver is reported with the `rejected` event. */
  ended(seq: number, outcome: UplinkAck | VitalsealError): void {
    if (outcome instanceof UplinkRejected) {
      this.#c.rejected += 1;
      this.#emitter.emit('rejected', { seq, reason: outcome.code as UplinkRejectReason, detail: outcome.message });
    } else if (outcome instanceof Error) {
      this.#c.transportErrors += 1;
    } else {
      this.#c.acknowledged += 1;
      if (outcome.status === 'duplicate') this.#c.duplicates += 1;
    }
  }
}

/**
 * The checks every uplink makes before sending (Uplink contract, "bad input"): a malformed message
 * is a TypeError or RangeError, another device's message `ApiMisuse`, and a payload that is not the
 * COSE object it claims (never plaintext on the wire) or is too large a counted `UplinkRejected`.
 * Returns the sequence number.
 */
export function checkUplinkMessage(message: UplinkMessage, deviceId: string, maxPayloadBytes: number, tally: UplinkTally): number {
  if (typeof message !== 'object' || message === null) throw new TypeError('send: expected an UplinkMessage');
  const seq = aint(message.seq, 'seq');
  if (message.deviceId !== deviceId) {
    throw new ApiMisuse('wrong-device', `send: this uplink carries device ${deviceId}'s messages, not ${String(message.deviceId)}'s`);
  }
  if (!isBytes(message.payload)) throw new TypeError('send: payload must be a Uint8Array');
  if (message.contentFormat !== 'cose-encrypt' && message.contentFormat !== 'cose-encrypt0') {
    throw new TypeError(`send: unknown content format ${String(message.contentFormat)}`);
  }
  if (!hasCoseTag(message.payload, message.contentFormat)) {
    throw tally.refuse(seq, 'unsupported-format', `message ${seq} does not start with the CBOR tag of ${message.contentFormat}; refusing to send it`);
  }
  if (message.payload.length > maxPayloadBytes) {
    throw tally.refuse(seq, 'too-large', `message ${seq} is ${message.payload.length} bytes; the uplink sends at most ${maxPayloadBytes}`);
  }
  return seq;
}

/**
 * Slots for sends awaiting acknowledgement. `take` resolves at once while slots are free and
 * nobody waits, else in order as `give` frees them; `limit` is read each time (it may depend on
 * the connection: 0 while disconnected, so freed slots are not handed on then).
 */
export class InFlightWindow {
  readonly #limit: () => number;
  #taken = 0;
  #waiters: { resolve: () => void; reject: (e: VitalsealError) => void }[] = [];
  #head = 0;

  constructor(limit: () => number) {
    this.#limit = limit;
  }

  take(): Promise<void> {
    if (this.#taken < this.#limit() && this.#head === this.#waiters.length) {
      this.#taken += 1;
      return Promise.resolve();
    }
    // `give` takes the slot on the waiter's behalf before resolving.
    return new Promise<void>((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  give(): void {
    this.#taken -= 1;
    while (this.#head < this.#waiters.length && this.#taken < this.#limit()) {
      this.#taken += 1;
      (this.#waiters[this.#head++] as { resolve: () => void }).resolve();
    }
    // A queue, not shift(): thousands may wait; compact once the consumed part dominates.
    if (this.#head > 1024 && this.#head * 2 > this.#waiters.length) {
      this.#waiters = this.#waiters.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Rejects every waiter with `e` (the connection is gone or the uplink closed). */
  fail(e: VitalsealError): void {
    const waiting = this.#waiters.slice(this.#head);
    this.#waiters = [];
    this.#head = 0;
    for (const w of waiting) w.reject(e);
  }
}
