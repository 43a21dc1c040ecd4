/**
 * Keyed AEAD and record-mask contexts: a key is set up once (per DTLS epoch and direction) and
 * reused for every message, instead of a cipher object per message.
 *
 * Two implementations behind one interface:
 * - `libcrypto`: the OpenSSL Node runs, called through FFI (src/crypto/libcrypto/), one
 *   EVP_CIPHER_CTX per key and direction; a message costs a new IV, the AAD, one update, final and
 *   the tag: one native call in all where the record_cipher addon is built, one koffi call each
 *   otherwise. Used for the `node` provider when the binding succeeds.
 * - per call (`node` or `noble`): the provider's one-shot functions with a copy of the key, a cipher
 *   object per message. The reference, and the fallback when libcrypto is not available; the
 *   reason is in `keyedContextStatus()` (never a silent change of behaviour).
 *
 * The contexts take explicit nonces: nonce uniqueness is the caller's counter (the DTLS record
 * layer derives every nonce from its sequence number, RFC 9147 §4). A context never keeps the
 * caller's key array: it copies the key (into OpenSSL, or into its own array) and the caller wipes
 * its own copy. `destroy()` wipes and frees; any use afterwards throws `ApiMisuse('aead-destroyed')`.
 *
 * @example
 *   const tx = aeadSealContext(getProvider(), 'aes-128-gcm', key);
 *   key.fill(0);
 *   tx.sealInto(nonce, plaintext, aad, out, 0); // ciphertext || tag
 *   const rx = aeadOpenContext(getProvider(), 'aes-128-gcm', peerKey);
 *   const n = rx.openInto(nonce, out, aad, plain, 0); // throws CryptoError('aead-auth-failed')
 *   tx.destroy(); rx.destroy();
 */
import { createCipheriv, type Cipher } from 'node:crypto';
import { abytes } from '../util/assert.ts';
import { zeroize } from '../util/bytes.ts';
import { Unsupported } from '../util/errors.ts';
import { checkOpen, checkSeal, destroyedError } from './_validate.ts';
import { loadRecordCipherAddon } from './libcrypto/addon.ts';
import { LibcryptoMask, LibcryptoOpen, LibcryptoSeal } from './libcrypto/contexts.ts';
import { loadLibcrypto, type LibcryptoBindings } from './libcrypto/native.ts';
import type { CryptoProvider, ProviderName } from './provider.ts';
import { aeadSuite, type AeadId, type AeadSuite } from './suites.ts';

export type KeyedBackend = 'libcrypto' | ProviderName;

interface KeyedContext {
  readonly aead: AeadId;
  readonly backend: KeyedBackend;
  readonly nonceLength: number;
  readonly tagLength: number;
  /** Wipes the key (OpenSSL: EVP_CIPHER_CTX_free cleanses it) and frees the context. Idempotent. */
  destroy(): void;
}

export interface AeadSealContext extends KeyedContext {
  /**
   * Writes ciphertext || tag of `plaintext` into `out` from `offset`. `plaintext` may be exactly
   * `out.subarray(offset, offset + plaintext.length)` (sealing in place); no other overlap.
   */
  sealInto(nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): void;
}

export interface AeadOpenContext extends KeyedContext {
  /**
   * Decrypts `sealed` (ciphertext || tag) into `out` from `offset` and returns the plaintext
   * length. Throws `CryptoError('aead-auth-failed')` on any mismatch (tag, AAD, key, nonce,
   * truncation) and leaves zeros where plaintext would have gone.
   */
  openInto(nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): number;
}

export type MaskKind = 'aes-ecb' | 'chacha20';

/**
 * RFC 9147 §4.2.3 record-number mask (the QUIC header-protection construction of RFC 9001 §5.4):
 * AES-ECB of the 16-byte ciphertext sample, or ChaCha20 keystream with the sample as block counter
 * (4 bytes, little-endian) and nonce (12 bytes).
 */
export interface RecordMaskContext {
  readonly kind: MaskKind;
  readonly backend: KeyedBackend;
  /** 16 mask bytes for a 16-byte sample, in an array the context reuses on the next call. */
  mask(sample: Uint8Array): Uint8Array;
  destroy(): void;
}

export interface KeyedContextStatus {
  /** What contexts for the `node` provider use. */
  readonly backend: 'libcrypto' | 'node';
  /** libcrypto's file and version when it is in use. */
  readonly library?: string;
  /** Why node:crypto is used instead, in one line. */
  readonly reason?: string;
  /**
   * libcrypto only: how a message's EVP calls are made: `addon`, one native call in all (the
   * record_cipher addon); `koffi`, one FFI call each (a few times the per-message overhead).
   */
  readonly calls?: 'addon' | 'koffi';
  /** Why the addon is not used, when `calls` is `koffi`. */
  readonly addonReason?: string;
}

let processDefault: { readonly implementation: 'auto' } | { readonly implementation: 'per-call'; readonly reason: string } = { implementation: 'auto' };

/**
 * What contexts made without an explicit `implementation` use in this process. A process that
 * seals about one message a second (the device agent) sets `per-call`: there a cipher set-up per
 * message costs nothing measurable, while binding OpenSSL through koffi adds resident memory,
 * which a device's budget counts. `reason` is what `keyedContextStatus()` reports.
 *
 * @example
 *   setKeyedContextDefault('per-call', 'the agent seals ~1 message/s: no FFI binding');
 */
export function setKeyedContextDefault(implementation: 'auto' | 'per-call', reason?: string): void {
  processDefault = implementation === 'auto' ? { implementation } : { implementation, reason: reason ?? 'per-call contexts chosen for this process' };
}

/** Which implementation keyed contexts use in this process, and why (for status and metrics). */
export function keyedContextStatus(): KeyedContextStatus {
  if (processDefault.implementation === 'per-call') return { backend: 'node', reason: processDefault.reason };
  const { bindings, reason } = loadLibcrypto();
  if (bindings !== undefined) {
    const addon = loadRecordCipherAddon(bindings.versionNumber);
    const library = `${bindings.library} (${bindings.version})`;
    return addon.bindings !== undefined ? { backend: 'libcrypto', library, calls: 'addon' } : { backend: 'libcrypto', library, calls: 'koffi', addonReason: addon.reason ?? 'unknown' };
  }
  return { backend: 'node', reason: reason ?? 'libcrypto unavailable' };
}

export interface KeyedOptions {
  /** Nonce length the context takes: 12 (the default; TLS/DTLS) or, for CCM, 13 (COSE). */
  readonly nonceLength?: number;
  /**
   * `auto` (default): libcrypto for the node provider when it loads, else per call. `libcrypto`:
   * throws `Unsupported('libcrypto-unavailable')` when it does not load. `per-call`: the provider.
   */
  readonly implementation?: 'auto' | 'libcrypto' | 'per-call';
}

/**
 * What both AEAD context factories need: the suite, the nonce length, and libcrypto's bindings when
 * the context runs there (else the provider must have the suite itself).
 */
function prepare(provider: CryptoProvider, id: AeadId, key: Uint8Array, opts: KeyedOptions): { suite: AeadSuite; nonceLength: number; lib: LibcryptoBindings | undefined } {
  const suite = aeadSuite(id);
  abytes(key, `${id} key`, suite.keyLength);
  const nonceLength = opts.nonceLength ?? 12;
  if (!suite.nonceLengths.includes(nonceLength)) throw new RangeError(`${id}: nonce length ${nonceLength} not supported (${suite.nonceLengths.join(' or ')})`);
  const lib = useLibcrypto(provider, opts);
  if (lib === undefined && !provider.supportsAead(id)) throw new Unsupported('suite-unsupported', `${provider.name} provider has no ${id}`);
  return { suite, nonceLength, lib };
}

function useLibcrypto(provider: CryptoProvider, opts: KeyedOptions): LibcryptoBindings | undefined {
  const want = opts.implementation ?? processDefault.implementation;
  if (want === 'per-call' || (want === 'auto' && provider.name !== 'node')) return undefined;
  const { bindings, reason } = loadLibcrypto();
  if (bindings === undefined && want === 'libcrypto') throw new Unsupported('libcrypto-unavailable', `libcrypto contexts unavailable: ${reason ?? 'unknown'}`);
  return bindings;
}

/** A sealing context for `id` under `key` (copied; the caller wipes its own array). */
export function aeadSealContext(provider: CryptoProvider, id: AeadId, key: Uint8Array, opts: KeyedOptions = {}): AeadSealContext {
  const { suite, nonceLength, lib } = prepare(provider, id, key, opts);
  return lib !== undefined ? new LibcryptoSeal(lib, suite, key, nonceLength) : new PerCallSeal(provider, suite, key, nonceLength);
}

/** An opening context for `id` under `key` (copied; the caller wipes its own array). */
export function aeadOpenContext(provider: CryptoProvider, id: AeadId, key: Uint8Array, opts: KeyedOptions = {}): AeadOpenContext {
  const { suite, nonceLength, lib } = prepare(provider, id, key, opts);
  return lib !== undefined ? new LibcryptoOpen(lib, suite, key, nonceLength) : new PerCallOpen(provider, suite, key, nonceLength);
}

/** A record-number mask context under `key` (16 or 32 bytes for AES, 32 for ChaCha20; copied). */
export function recordMaskContext(provider: CryptoProvider, kind: MaskKind, key: Uint8Array, opts: Pick<KeyedOptions, 'implementation'> = {}): RecordMaskContext {
  if (kind === 'aes-ecb') abytes(key, 'aes-ecb mask key', 16, 32);
  else abytes(key, 'chacha20 mask key', 32);
  const lib = useLibcrypto(provider, opts);
  if (lib !== undefined) return new LibcryptoMask(lib, kind, key);
  return new PerCallMask(provider, kind, key);
}

// ------------------------------------------------------------------ per call (the reference)

abstract class PerCall {
  protected key: Uint8Array | undefined;
  constructor(
    protected readonly provider: CryptoProvider,
    protected readonly suite: AeadSuite,
    key: Uint8Array,
    readonly nonceLength: number,
  ) {
    this.key = Uint8Array.from(key);
  }
  get aead(): AeadId {
    return this.suite.id;
  }
  get backend(): KeyedBackend {
    return this.provider.name;
  }
  get tagLength(): number {
    return this.suite.tagLength;
  }
  protected live(): Uint8Array {
    if (this.key === undefined) throw destroyedError(this.suite.id);
    return this.key;
  }
  destroy(): void {
    zeroize(this.key);
    this.key = undefined;
  }
}

class PerCallSeal extends PerCall implements AeadSealContext {
  sealInto(nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): void {
    const key = this.live();
    checkSeal(this.suite, this.nonceLength, nonce, plaintext, aad, out, offset);
    // The providers read all of the plaintext before they write (node: update() returns a new
    // buffer), so sealing in place is safe.
    this.provider.aeadSealInto(this.suite.id, key, nonce, plaintext, aad, out, offset);
  }
}

class PerCallOpen extends PerCall implements AeadOpenContext {
  openInto(nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number): number {
    const key = this.live();
    const length = checkOpen(this.suite, this.nonceLength, nonce, sealed, aad, out, offset);
    let plain: Uint8Array;
    try {
      plain = this.provider.aeadOpen(this.suite.id, key, nonce, sealed, aad);
    } catch (e) {
      out.fill(0, offset, offset + length);
      throw e;
    }
    out.set(plain, offset);
    plain.fill(0);
    return length;
  }
}

class PerCallMask implements RecordMaskContext {
  #key: Uint8Array | undefined;
  /** node:crypto: one ECB context per key (ECB keeps no state between whole blocks). */
  #ecb: Cipher | undefined;
  readonly #zeros = new Uint8Array(16);
  constructor(
    private readonly provider: CryptoProvider,
    readonly kind: MaskKind,
    key: Uint8Array,
  ) {
    this.#key = Uint8Array.from(key);
    if (kind === 'aes-ecb' && provider.name === 'node') {
      this.#ecb = createCipheriv(key.length === 16 ? 'aes-128-ecb' : 'aes-256-ecb', this.#key, null);
      this.#ecb.setAutoPadding(false);
    }
  }
  get backend(): KeyedBackend {
    return this.provider.name;
  }
  mask(sample: Uint8Array): Uint8Array {
    const key = this.#key;
    if (key === undefined) throw destroyedError(`${this.kind} mask`);
    if (!(sample instanceof Uint8Array) || sample.length !== 16) abytes(sample, 'mask sample', 16);
    if (this.kind === 'aes-ecb') return this.#ecb !== undefined ? this.#ecb.update(sample) : this.provider.aesEcbBlock(key, sample);
    // RFC 9001 §5.4.4, as RFC 9147 §4.2.3 uses it: counter = sample[0..4] little-endian, nonce = sample[4..16].
    const counter = ((sample[0] as number) | ((sample[1] as number) << 8) | ((sample[2] as number) << 16) | ((sample[3] as number) << 24)) >>> 0;
    return this.provider.chacha20(key, sample.subarray(4, 16), counter, this.#zeros);
  }
  destroy(): void {
    // A node:crypto Cipher cannot be wiped from JavaScript: drop the only reference.
    this.#ecb = undefined;
    zeroize(this.#key);
    this.#key = undefined;
  }
}
