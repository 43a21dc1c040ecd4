/**
 * Keyed AEAD and record-mask contexts on libcrypto: one EVP_CIPHER_CTX per key and direction,
 * keyed once; each message only sets a new IV (EVP_CipherInit_ex with no cipher and no key keeps
 * the key schedule), then AAD, one update, final and the tag.
 *
 * Those per-message calls run in one native call when the record_cipher addon is built (addon.ts,
 * the same calls in the same order, in C), and otherwise one koffi call each. Contexts are always
 * created, keyed and freed here, through koffi: the addon never sees a key.
 *
 * Key handling: the key goes into OpenSSL once, in the constructor, from the caller's array (the
 * caller wipes it); no JavaScript copy is kept. `destroy()` calls EVP_CIPHER_CTX_free, which
 * resets the context and with it cleanses the key schedule (OpenSSL frees cipher contexts with
 * OPENSSL_clear_free). A FinalizationRegistry frees a context that was never destroyed, as a
 * backstop only: the record layer destroys contexts when an epoch retires or the connection ends.
 * Errors name the suite and the step, never bytes.
 */
import { CryptoError } from '../../util/errors.ts';
import type { AeadOpenContext, AeadSealContext, KeyedBackend, MaskKind, RecordMaskContext } from '../keyed.ts';
import { checkOpen, checkSeal, destroyedError } from '../_validate.ts';
import type { AeadId, AeadSuite } from '../suites.ts';
import { loadRecordCipherAddon, type RecordCipherAddon } from './addon.ts';
import { EVP_CTRL_AEAD_GET_TAG, EVP_CTRL_AEAD_SET_IVLEN, EVP_CTRL_AEAD_SET_TAG, type CPointer, type LibcryptoBindings, type LibcryptoCipher } from './native.ts';

const CIPHER: Readonly<Record<AeadId, LibcryptoCipher>> = {
  'chacha20-poly1305': 'chacha20-poly1305',
  'aes-128-ccm-8': 'aes-128-ccm',
  'aes-128-ccm-16': 'aes-128-ccm',
  'aes-128-gcm': 'aes-128-gcm',
  'aes-256-gcm': 'aes-256-gcm',
};

interface Held {
  readonly lib: LibcryptoBindings;
  readonly ctx: CPointer;
}

let live = 0;
// The backstop frees the context but leaves it counted: a context nobody destroyed is a leak even
// when the collector cleans it up later, and the count does not move whenever a collection happens
// to run (tests compare it before and after a piece of work).
const backstop = new FinalizationRegistry<Held>(({ lib, ctx }) => {
  lib.ctxFree(ctx);
});

/**
 * EVP contexts created and not released by `destroy()` in this process (for tests and metrics:
 * leaks show here, including those the garbage collector has since freed).
 */
export function libcryptoContextsLive(): number {
  return live;
}

/**
 * koffi passes a zero-length array as NULL, and OpenSSL's CCM reads a NULL input with a non-NULL
 * output as "finish" rather than "process no data" (the tag would never be computed). Empty inputs
 * and outputs therefore point into this array, with a length of 0.
 */
const NON_NULL = new Uint8Array(16);
/** Where final() may write (it writes nothing for these modes). */
const FINAL_SINK = new Uint8Array(16);
const OUT_LENGTH = new Int32Array(1);

/** The error for a failed call, with OpenSSL's error queue (shared with node:crypto) emptied. */
function failed(lib: LibcryptoBindings, what: string): CryptoError {
  lib.clearErrors();
  return new CryptoError('libcrypto-failed', `libcrypto: ${what} failed`);
}

/** Creates a context keyed for `cipher` in one direction; frees it again if any step fails. */
function keyedContext(lib: LibcryptoBindings, cipher: LibcryptoCipher, key: Uint8Array, enc: 0 | 1, setup: (ctx: CPointer) => boolean): CPointer {
  const ctx = lib.ctxNew();
  if (ctx === null) throw failed(lib, `EVP_CIPHER_CTX_new for ${cipher}`);
  // Cipher first, then parameters (CCM's nonce and tag lengths must precede the key), then the key.
  if (lib.init(ctx, lib.cipher(cipher), null, null, enc) !== 1 || !setup(ctx) || lib.init(ctx, null, key, null, enc) !== 1) {
    lib.ctxFree(ctx);
    throw failed(lib, `setting up ${cipher}`);
  }
  return ctx;
}

/**
 * Owns one EVP_CIPHER_CTX: counted while alive, freed once by `destroy()` (or, as a backstop, when
 * the owner is collected without it).
 */
abstract class OwnedContext {
  #ctx: CPointer | undefined;
  /** The per-message calls in one native call, when the addon is built and not switched off. */
  protected readonly addon: RecordCipherAddon | undefined;
  constructor(
    protected readonly lib: LibcryptoBindings,
    ctx: CPointer,
  ) {
    this.#ctx = ctx;
    this.addon = loadRecordCipherAddon(lib.versionNumber).bindings;
    live++;
    backstop.register(this, { lib, ctx }, this);
  }
  get backend(): KeyedBackend {
    return 'libcrypto';
  }
  /** The context, or ApiMisuse('aead-destroyed') naming `what`. */
  protected ctx(what: string): CPointer {
    if (this.#ctx === undefined) throw destroyedError(what);
    return this.#ctx;
  }
  destroy(): void {
    if (this.#ctx === undefined) return;
    backstop.unregister(this);
    live--;
    this.lib.ctxFree(this.#ctx);
    this.#ctx = undefined;
  }
}

abstract class LibcryptoAead extends OwnedContext {
  protected readonly ccm: boolean;
  constructor(
    lib: LibcryptoBindings,
    protected readonly suite: AeadSuite,
    key: Uint8Array,
    readonly nonceLength: number,
    enc: 0 | 1,
  ) {
    const ccm = CIPHER[suite.id] === 'aes-128-ccm';
    super(lib, keyedContext(lib, CIPHER[suite.id], key, enc, (ctx) =>
      // CCM's default nonce is 7 bytes (L = 8): its length is always set (RFC 3610 §2: L = 15 - nonce length).
      ((nonceLength === 12 && !ccm) || lib.ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, nonceLength, null) === 1) &&
      // RFC 3610 §2: CCM's tag length M is a parameter of the context.
      (!ccm || lib.ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, suite.tagLength, null) === 1)));
    this.ccm = ccm;
  }
  get aead(): AeadId {
    return this.suite.id;
  }
  get tagLength(): number {
    return this.suite.tagLength;
  }
  protected live(): CPointer {
    return this.ctx(this.suite.id);
  }
}

export class LibcryptoSeal extends LibcryptoAead implements AeadSealContext {
  constructor(lib: LibcryptoBindings, suite: AeadSuite, key: Uint8Array, nonceLength: number) {
    super(lib, suite, key, nonceLength, 1);
  }

  sealInto(nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): void {
    const ctx = this.live();
    checkSeal(this.suite, this.nonceLength, nonce, plaintext, aad, out, offset);
    if (this.addon !== undefined) {
      if (!this.addon.seal(ctx, this.ccm, nonce, plaintext, aad, out, offset, this.suite.tagLength)) throw new CryptoError('libcrypto-failed', `libcrypto: ${this.suite.id} seal failed`);
      return;
    }
    const lib = this.lib;
    const n = plaintext.length;
    const body = n > 0 ? out.subarray(offset, offset + n) : NON_NULL;
    const ok = lib.init(ctx, null, null, nonce, 1) === 1 &&
      // RFC 3610 §2.2: CCM needs the message length before the AAD (OpenSSL: update with no data).
      (!this.ccm || lib.update(ctx, null, OUT_LENGTH, null, n) === 1) &&
      (aad.length === 0 || lib.update(ctx, null, OUT_LENGTH, aad, aad.length) === 1) &&
      lib.update(ctx, body, OUT_LENGTH, n > 0 ? plaintext : NON_NULL, n) === 1 && OUT_LENGTH[0] === n &&
      lib.final(ctx, FINAL_SINK, OUT_LENGTH) === 1 &&
      lib.ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, this.suite.tagLength, out.subarray(offset + n, offset + n + this.suite.tagLength)) === 1;
    if (!ok) {
      out.fill(0, offset, offset + n + this.suite.tagLength);
      throw failed(lib, `${this.suite.id} seal`);
    }
  }
}

export class LibcryptoOpen extends LibcryptoAead implements AeadOpenContext {
  constructor(lib: LibcryptoBindings, suite: AeadSuite, key: Uint8Array, nonceLength: number) {
    super(lib, suite, key, nonceLength, 0);
  }

  openInto(nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): number {
    const ctx = this.live();
    const n = checkOpen(this.suite, this.nonceLength, nonce, sealed, aad, out, offset);
    if (this.addon !== undefined) {
      // -1 for any failure (the output range is zeroed): reported as the one error a forgery gets.
      if (this.addon.open(ctx, this.ccm, nonce, sealed, aad, out, offset, this.suite.tagLength) !== n) throw new CryptoError('aead-auth-failed', `${this.suite.id}: authentication failed`);
      return n;
    }
    const lib = this.lib;
    const tag = sealed.subarray(n);
    const body = n > 0 ? out.subarray(offset, offset + n) : NON_NULL;
    let ok = lib.init(ctx, null, null, nonce, 0) === 1;
    if (this.ccm) {
      // CCM verifies inside the one update: the expected tag and the length come first.
      ok &&= lib.ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, this.suite.tagLength, tag) === 1 && lib.update(ctx, null, OUT_LENGTH, null, n) === 1;
    }
    ok &&= (aad.length === 0 || lib.update(ctx, null, OUT_LENGTH, aad, aad.length) === 1) &&
      lib.update(ctx, body, OUT_LENGTH, n > 0 ? sealed.subarray(0, n) : NON_NULL, n) === 1;
    if (!this.ccm) {
      ok &&= lib.ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, this.suite.tagLength, tag) === 1 && lib.final(ctx, FINAL_SINK, OUT_LENGTH) === 1;
    }
    if (!ok) {
      // Unauthenticated plaintext never reaches the caller.
      if (n > 0) body.fill(0);
      lib.clearErrors();
      throw new CryptoError('aead-auth-failed', `${this.suite.id}: authentication failed`);
    }
    return n;
  }
}

/** RFC 9147 §4.2.3 record-number mask with one keyed context per epoch. */
export class LibcryptoMask extends OwnedContext implements RecordMaskContext {
  readonly #out = new Uint8Array(16);
  readonly #zeros = new Uint8Array(16);
  constructor(
    lib: LibcryptoBindings,
    readonly kind: MaskKind,
    key: Uint8Array,
  ) {
    const cipher: LibcryptoCipher = kind === 'chacha20' ? 'chacha20' : key.length === 16 ? 'aes-128-ecb' : 'aes-256-ecb';
    super(lib, keyedContext(lib, cipher, key, 1, (ctx) => kind === 'chacha20' || lib.setPadding(ctx, 0) === 1));
  }
  mask(sample: Uint8Array): Uint8Array {
    const ctx = this.ctx(`${this.kind} mask`);
    if (!(sample instanceof Uint8Array) || sample.length !== 16) throw new RangeError('mask sample: expected 16 bytes');
    if (this.addon !== undefined) {
      if (!this.addon.mask(ctx, this.kind === 'chacha20', sample, this.#out)) throw failed(this.lib, `${this.kind} mask`);
      return this.#out;
    }
    const lib = this.lib;
    const ok = this.kind === 'aes-ecb'
      ? lib.update(ctx, this.#out, OUT_LENGTH, sample, 16) === 1
      // OpenSSL's chacha20 IV is the 32-bit little-endian block counter then the 96-bit nonce:
      // exactly the sample's layout (RFC 9001 §5.4.4).
      : lib.init(ctx, null, null, sample, 1) === 1 && lib.update(ctx, this.#out, OUT_LENGTH, this.#zeros, 16) === 1;
    if (!ok || OUT_LENGTH[0] !== 16) throw failed(lib, `${this.kind} mask`);
    return this.#out;
  }
  override destroy(): void {
    super.destroy();
    this.#out.fill(0);
  }
}
