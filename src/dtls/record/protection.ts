/**
 * Record protection for one epoch and one direction (RFC 9147 §4, §4.2.3, §4.5):
 * DTLSInnerPlaintext framing and padding, the AEAD with the unified header as additional data and
 * the 64-bit sequence number in the nonce, record-number encryption, the replay window, and the
 * AEAD usage limits of §4.5.3.
 *
 * @example
 *   const tx = new WriteEpoch(provider, suite, 3, keys);
 *   const record = tx.protect(ContentType.applicationData, data, peerCid);
 *   const rx = new ReadEpoch(provider, suite, 3, keys);
 *   const opened = rx.unprotect(parsedRecord); // undefined when the record must be dropped
 */
import { CounterSealer, nonceScratch, xorCounterIntoIv } from '../../crypto/aead.ts';
import { aeadOpenContext, recordMaskContext, type AeadOpenContext, type KeyedBackend, type RecordMaskContext } from '../../crypto/keyed.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { aeadSuite } from '../../crypto/suites.ts';
import { allocUninit, zeroize } from '../../util/bytes.ts';
import { ApiMisuse, CryptoError } from '../../util/errors.ts';
import type { TrafficKeys } from '../handshake/key-schedule.ts';
import { MAX_PLAINTEXT } from '../messages/constants.ts';
import { unifiedHeaderLength, unifiedHeaderSeqOffset, writeUnifiedHeader, type CiphertextRecord } from '../messages/record.ts';
import type { DtlsCipherSuite } from '../suites.ts';
import { ReplayWindow } from './replay-window.ts';

/** RFC 9147 §4: sequence numbers are 48 bits per epoch. */
export const MAX_SEQUENCE = 2 ** 48 - 1;

/**
 * RFC 9147 §4.2.3: the record-number mask from the first 16 bytes of the ciphertext, AES-ECB under
 * sn_key for the AES suites, ChaCha20 for ChaCha20-Poly1305. One keyed context per epoch and
 * direction (src/crypto/keyed.ts); the key is copied into it, the caller wipes its own copy.
 */
export class RecordNumberMask {
  readonly #ctx: RecordMaskContext;

  constructor(provider: CryptoProvider, suite: DtlsCipherSuite, snKey: Uint8Array) {
    this.#ctx = recordMaskContext(provider, suite.mask, snKey);
  }

  /** 16 mask bytes, valid until the next call. */
  mask(ciphertext: Uint8Array): Uint8Array {
    return this.#ctx.mask(ciphertext.subarray(0, 16));
  }

  destroy(): void {
    this.#ctx.destroy();
  }
}

/** Limits applied to one key, lowered by configuration for tests and operators. */
export interface EpochLimits {
  /** Records that may be sealed; a key update is started at `keyUpdateAt`. */
  readonly confidentiality: number;
  /** Failed deprotections tolerated before the key must go. */
  readonly integrity: number;
}

export function limitsFor(suite: DtlsCipherSuite, override?: Partial<EpochLimits>): EpochLimits {
  const a = aeadSuite(suite.aead);
  return {
    confidentiality: Math.min(a.confidentialityLimit, MAX_SEQUENCE + 1, override?.confidentiality ?? Infinity),
    integrity: Math.min(a.integrityLimit, override?.integrity ?? Infinity),
  };
}

export class WriteEpoch {
  readonly #sealer: CounterSealer;
  readonly #mask: RecordNumberMask;
  readonly #limit: number;

  /** The keys are copied into the epoch's contexts; the caller wipes `keys`. */
  constructor(
    provider: CryptoProvider,
    readonly suite: DtlsCipherSuite,
    readonly epoch: number,
    keys: TrafficKeys,
    limits: EpochLimits = limitsFor(suite),
  ) {
    this.#limit = limits.confidentiality;
    // The CounterSealer's counter is this epoch's record sequence number: nonce = iv XOR seq. It
    // seals through a keyed context (src/crypto/keyed.ts).
    this.#sealer = new CounterSealer(provider, suite.aead, keys.key, keys.iv, this.#limit);
    this.#mask = new RecordNumberMask(provider, suite, keys.snKey);
  }

  /** Which implementation protects this epoch's records. */
  get backend(): KeyedBackend {
    return this.#sealer.backend;
  }

  /** Sequence number the next record gets. */
  get nextSequence(): number {
    return this.#sealer.count;
  }

  /** RFC 9147 §4.5.3: start a key update once three quarters of the limit are used. */
  get keyUpdateDue(): boolean {
    return this.#sealer.count >= Math.floor(this.#limit * 0.75);
  }

  get exhausted(): boolean {
    return this.#sealer.exhausted;
  }

  /** Records still allowed under this key. */
  get remaining(): number {
    return this.#limit - this.#sealer.count;
  }

  /** Wire size of a record carrying `contentLength` bytes. */
  recordSize(contentLength: number, cid: Uint8Array | undefined): number {
    return unifiedHeaderSeqOffset(cid) + 4 + this.#innerLength(contentLength) + this.suite.tagLength;
  }

  #innerLength(contentLength: number): number {
    // RFC 9147 §4.2.3: the ciphertext must be at least 16 bytes; pad short ones (CCM_8).
    return Math.max(contentLength + 1, 16 - this.suite.tagLength);
  }

  /**
   * A whole DTLSCiphertext record: unified header (sequence number masked) and encrypted record,
   * built and sealed in place in one buffer.
   */
  protect(contentType: number, content: Uint8Array, cid: Uint8Array | undefined): Uint8Array {
    if (content.length > MAX_PLAINTEXT) throw new ApiMisuse('record-too-large', `record content of ${content.length} bytes exceeds 2^14`);
    const innerLength = this.#innerLength(content.length);
    const headerLength = unifiedHeaderLength(cid);
    const out = allocUninit(headerLength + innerLength + this.suite.tagLength);
    writeUnifiedHeader(out, this.epoch, this.#sealer.count, cid, innerLength + this.suite.tagLength);
    // DTLSInnerPlaintext: content || type || zeros (RFC 9147 §4), written where its ciphertext goes
    // and sealed in place. The buffer comes from Node's pool uninitialised: the padding is zeroed.
    const inner = out.subarray(headerLength, headerLength + innerLength);
    inner.set(content);
    inner[content.length] = contentType;
    inner.fill(0, content.length + 1);
    // RFC 9147 §4: the additional data is the header before record-number encryption. The sealer
    // spends the sequence number written above (refusing past the limit) and never hands it out twice.
    this.#sealer.sealInto(inner, out.subarray(0, headerLength), out, headerLength);
    const mask = this.#mask.mask(out.subarray(headerLength));
    const at = unifiedHeaderSeqOffset(cid);
    out[at] = (out[at] as number) ^ (mask[0] as number);
    out[at + 1] = (out[at + 1] as number) ^ (mask[1] as number);
    return out;
  }

  destroy(): void {
    this.#sealer.destroy();
    this.#mask.destroy();
  }
}

export interface OpenedRecord {
  readonly epoch: number;
  readonly sequenceNumber: number;
  readonly contentType: number;
  readonly content: Uint8Array;
}

/** Why a record was dropped (counted, never answered: RFC 9147 §4.5.2). */
export type DropReason =
  | 'too-short'
  | 'bad-sequence'
  | 'replayed'
  | 'auth-failed'
  | 'no-content-type'
  | 'record-overflow'
  | 'integrity-limit';

export type UnprotectResult = { readonly ok: true; readonly record: OpenedRecord } | { readonly ok: false; readonly reason: DropReason };

/** RFC 9147 §4.2.2: the full number closest to `expected` whose low `bits` bits are `low`. */
export function reconstructSequence(expected: number, low: number, bits: 8 | 16): number {
  const span = 2 ** bits;
  const half = span / 2;
  let candidate = expected - (expected % span) + low;
  if (candidate > expected + half && candidate >= span) candidate -= span;
  else if (candidate + half < expected) candidate += span;
  return candidate;
}

export class ReadEpoch {
  readonly #open: AeadOpenContext;
  readonly #iv: Uint8Array;
  readonly #mask: RecordNumberMask;
  readonly window = new ReplayWindow();
  readonly #integrityLimit: number;
  #failures = 0;
  /**
   * The additional data (the header with its sequence number unmasked), rebuilt in place for each
   * record: a connection's headers all have one or two lengths, so the view is rarely remade.
   */
  #aad = new Uint8Array(0);

  /** The keys are copied into the epoch's contexts; the caller wipes `keys`. */
  constructor(
    provider: CryptoProvider,
    readonly suite: DtlsCipherSuite,
    readonly epoch: number,
    keys: TrafficKeys,
    limits: EpochLimits = limitsFor(suite),
  ) {
    this.#open = aeadOpenContext(provider, suite.aead, keys.key);
    this.#iv = Uint8Array.from(keys.iv);
    this.#mask = new RecordNumberMask(provider, suite, keys.snKey);
    this.#integrityLimit = limits.integrity;
  }

  /** Which implementation deprotects this epoch's records. */
  get backend(): KeyedBackend {
    return this.#open.backend;
  }

  /** Records that failed authentication under this key (RFC 9147 §4.5.3). */
  get failures(): number {
    return this.#failures;
  }

  /** RFC 9147 §4.5.3: ask for a key update well before the limit. */
  get keyUpdateDue(): boolean {
    return this.#failures >= Math.floor(this.#integrityLimit / 2);
  }

  get integrityExhausted(): boolean {
    return this.#failures >= this.#integrityLimit;
  }

  /** Removes record-number protection, decrypts, and checks and updates the replay window. */
  unprotect(rec: CiphertextRecord): UnprotectResult {
    if (this.integrityExhausted) return { ok: false, reason: 'integrity-limit' };
    // RFC 9147 §4.2.3: shorter ciphertexts are rejected as if deprotection failed.
    if (rec.encrypted.length < 16) return { ok: false, reason: 'too-short' };
    const mask = this.#mask.mask(rec.encrypted);
    if (this.#aad.length !== rec.header.length) this.#aad = new Uint8Array(rec.header.length);
    const header = this.#aad;
    header.set(rec.header);
    let low = 0;
    for (let i = 0; i < rec.seqLength; i++) {
      const b = (header[rec.seqOffset + i] as number) ^ (mask[i] as number);
      header[rec.seqOffset + i] = b;
      low = (low << 8) | b;
    }
    const seq = reconstructSequence(this.window.highest + 1, low, rec.seqLength === 2 ? 16 : 8);
    if (seq < 0 || seq > MAX_SEQUENCE) return { ok: false, reason: 'bad-sequence' };
    // A range of its own per record (a slab view, util/bytes.ts): the content goes to the application as it is.
    const inner = allocUninit(rec.encrypted.length - this.suite.tagLength);
    const nonce = xorCounterIntoIv(this.#iv, seq, nonceScratch(this.#iv.length));
    try {
      this.#open.openInto(nonce, rec.encrypted, header, inner, 0);
    } catch (e) {
      if (!(e instanceof CryptoError)) throw e;
      this.#failures++;
      return { ok: false, reason: 'auth-failed' };
    } finally {
      nonce.fill(0);
    }
    // RFC 9147 §4.5.1: the replay check follows deprotection (no timing channel on the record
    // number), and the window moves only for a record that deprotected.
    if (!this.window.check(seq)) return { ok: false, reason: 'replayed' };
    // DTLSInnerPlaintext: the content type is the last non-zero byte (RFC 8446 §5.4).
    let end = inner.length - 1;
    while (end >= 0 && inner[end] === 0) end--;
    if (end < 0) return { ok: false, reason: 'no-content-type' };
    if (end > MAX_PLAINTEXT) return { ok: false, reason: 'record-overflow' };
    this.window.mark(seq);
    return { ok: true, record: { epoch: this.epoch, sequenceNumber: seq, contentType: inner[end] as number, content: inner.subarray(0, end) } };
  }

  destroy(): void {
    this.#open.destroy();
    this.#mask.destroy();
    zeroize(this.#iv);
  }
}
