/**
 * AEAD contexts that make nonce reuse impossible by construction.
 *
 * - `CounterSealer` derives every nonce from a base IV and a message counter (RFC 8446 §5.3:
 *   the counter, left-padded to the IV length, XORed with the IV); the counter only moves forward
 *   and the context refuses to seal past the suite's confidentiality limit.
 * - `OneShotSealer` is for callers that must supply explicit nonces (known-answer tests, protocols
 *   that carry the nonce): it remembers every nonce it has sealed with and refuses a repeat.
 *
 * Both copy the key they are given and wipe their copy on `destroy()` (`CounterSealer` keeps it in a
 * keyed context, src/crypto/keyed.ts).
 *
 * @example
 *   const sealer = new CounterSealer(getProvider(), 'aes-128-gcm', key, baseIv);
 *   const { counter, nonce, sealed } = sealer.seal(plaintext, aad);
 *   sealer.destroy();
 */
import { abytes, aint } from '../util/assert.ts';
import { allocUninit, toHex, zeroize } from '../util/bytes.ts';
import { ApiMisuse } from '../util/errors.ts';
import { destroyedError } from './_validate.ts';
import { aeadSealContext, type AeadSealContext, type KeyedBackend } from './keyed.ts';
import type { CryptoProvider } from './provider.ts';
import { aeadSuite, type AeadId, type AeadSuite } from './suites.ts';

/**
 * RFC 8446 §5.3: nonce = iv XOR (counter as big-endian, left-padded to iv.length). Writes into
 * `out` (iv.length bytes) when given, a new array otherwise.
 */
export function xorCounterIntoIv(iv: Uint8Array, counter: number, out?: Uint8Array): Uint8Array {
  aint(counter, 'nonce counter');
  const nonce = out ?? new Uint8Array(iv.length);
  if (nonce.length !== iv.length) throw new RangeError(`nonce output: expected ${iv.length} bytes, got ${nonce.length}`);
  nonce.set(iv);
  let c = counter;
  for (let i = nonce.length - 1; i >= 0 && c > 0; i--) {
    nonce[i] = (nonce[i] as number) ^ (c % 256);
    c = Math.floor(c / 256);
  }
  return nonce;
}

/**
 * One nonce buffer per length, shared by every sealer: the providers copy the nonce before they
 * return, so a sealer borrows it for one call and wipes it (a per-context buffer would cost every
 * idle DTLS session memory for nothing).
 */
const NONCE_SCRATCH = new Map<number, Uint8Array>();
export function nonceScratch(length: number): Uint8Array {
  let b = NONCE_SCRATCH.get(length);
  if (b === undefined) {
    b = new Uint8Array(length);
    NONCE_SCRATCH.set(length, b);
  }
  return b;
}

abstract class KeyedContext {
  protected readonly suite: AeadSuite;
  protected key: Uint8Array | undefined;
  constructor(
    protected readonly provider: CryptoProvider,
    id: AeadId,
    key: Uint8Array,
  ) {
    this.suite = aeadSuite(id);
    this.key = Uint8Array.from(abytes(key, `${id} key`, this.suite.keyLength));
  }
  protected liveKey(): Uint8Array {
    if (this.key === undefined) throw destroyedError(this.suite.id);
    return this.key;
  }
  get aead(): AeadId {
    return this.suite.id;
  }
  destroy(): void {
    zeroize(this.key);
    this.key = undefined;
  }
}

export interface CounterSealResult {
  readonly counter: number;
  readonly nonce: Uint8Array;
  readonly sealed: Uint8Array;
}

export class CounterSealer {
  readonly #suite: AeadSuite;
  readonly #iv: Uint8Array;
  readonly #limit: number;
  /**
   * One keyed context for the whole key (src/crypto/keyed.ts): with the node provider an OpenSSL
   * cipher context keyed once, so a message costs a new IV rather than a cipher set-up.
   */
  #ctx: AeadSealContext | undefined;
  readonly #backend: KeyedBackend;
  #next = 0;

  /** `limit` lowers the suite's confidentiality limit (for rotation every N messages). */
  constructor(provider: CryptoProvider, id: AeadId, key: Uint8Array, baseIv: Uint8Array, limit?: number) {
    this.#suite = aeadSuite(id);
    this.#iv = Uint8Array.from(abytes(baseIv, `${id} base IV`, ...this.#suite.nonceLengths));
    this.#limit = Math.min(limit ?? Infinity, this.#suite.confidentialityLimit);
    this.#ctx = aeadSealContext(provider, id, key, { nonceLength: this.#iv.length });
    this.#backend = this.#ctx.backend;
  }

  get aead(): AeadId {
    return this.#suite.id;
  }

  /** Which implementation seals (src/crypto/keyed.ts); still answers after `destroy()`. */
  get backend(): KeyedBackend {
    return this.#backend;
  }

  /** Messages sealed so far. */
  get count(): number {
    return this.#next;
  }

  /** True once the context may seal no more: rotate the key. */
  get exhausted(): boolean {
    return this.#next >= this.#limit;
  }

  seal(plaintext: Uint8Array, aad: Uint8Array): CounterSealResult {
    const ctx = this.#live();
    const counter = this.#take();
    const nonce = xorCounterIntoIv(this.#iv, counter);
    // Ciphertext, written in full: from the shared pool, not a buffer of its own per message.
    const sealed = allocUninit(plaintext.length + this.#suite.tagLength);
    ctx.sealInto(nonce, plaintext, aad, sealed, 0);
    return { counter, nonce, sealed };
  }

  /**
   * Seals the next message into `out` from `offset` (ciphertext || tag, plaintext.length + the tag
   * length) and returns its counter; the nonce is not kept.
   */
  sealInto(plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): number {
    const ctx = this.#live();
    const counter = this.#take();
    const nonce = xorCounterIntoIv(this.#iv, counter, nonceScratch(this.#iv.length));
    try {
      ctx.sealInto(nonce, plaintext, aad, out, offset);
    } finally {
      nonce.fill(0);
    }
    return counter;
  }

  #live(): AeadSealContext {
    if (this.#ctx === undefined) throw destroyedError(this.#suite.id);
    return this.#ctx;
  }

  /** The next counter: refused past the limit, and never handed out twice. */
  #take(): number {
    if (this.exhausted) {
      throw new ApiMisuse('aead-limit-reached', `${this.#suite.id}: ${this.#limit} messages sealed under this key; rotate it`);
    }
    return this.#next++;
  }

  /** Wipes the key and the base IV. Idempotent. */
  destroy(): void {
    zeroize(this.#iv);
    this.#ctx?.destroy();
    this.#ctx = undefined;
  }
}

export class OneShotSealer extends KeyedContext {
  static readonly MAX_NONCES = 65_536;
  readonly #used = new Set<string>();

  /** Seals with an explicit nonce; throws `ApiMisuse('nonce-reuse')` if this context used it before. */
  seal(nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
    const key = this.liveKey();
    abytes(nonce, `${this.suite.id} nonce`, ...this.suite.nonceLengths);
    const tag = toHex(nonce);
    if (this.#used.has(tag)) throw new ApiMisuse('nonce-reuse', `${this.suite.id}: this nonce was already used with this key`);
    if (this.#used.size >= OneShotSealer.MAX_NONCES) {
      throw new ApiMisuse('aead-limit-reached', `${this.suite.id}: explicit-nonce context full; use a CounterSealer`);
    }
    this.#used.add(tag);
    return this.provider.aeadSeal(this.suite.id, key, nonce, plaintext, aad);
  }
}

/**
 * Opens under one key and counts authentication failures against the suite's integrity limit
 * (RFC 9147 §4.5.3); past it the context refuses further use.
 */
export class Opener extends KeyedContext {
  #failures = 0;

  get failures(): number {
    return this.#failures;
  }

  open(nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Uint8Array {
    const key = this.liveKey();
    if (this.#failures >= this.suite.integrityLimit) {
      throw new ApiMisuse('aead-integrity-limit', `${this.suite.id}: too many forged records under this key; rekey`);
    }
    try {
      return this.provider.aeadOpen(this.suite.id, key, nonce, sealed, aad);
    } catch (e) {
      this.#failures++;
      throw e;
    }
  }
}
