/**
 * The device side of sealing epochs. One ephemeral X25519 key and the content key derived from it
 * (ECDH-ES + HKDF-256 against the ingest's static public key) serve an epoch of up to `maxMessages`
 * messages or `maxAgeMs` milliseconds, whichever ends first; then both are zeroised and a new epoch
 * starts. Within an epoch the IV is the epoch's random base IV XOR the message counter (a
 * `CounterSealer`), so no IV repeats under a key by construction.
 *
 * Every message is a complete, standard COSE_Encrypt (any COSE library with the private key opens
 * it); the receiver recognises the epoch by its ephemeral key and derives the key once
 * (`EpochKeyCache`).
 *
 * @example
 *   const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey, clock: systemClock });
 *   const cose = session.seal(senmlCbor, { protectedExtras: new Map([[Header.SEQUENCE, 42]]) });
 */
import { CounterSealer } from '../crypto/aead.ts';
import { providerForAead } from '../crypto/registry.ts';
import type { CryptoProvider } from '../crypto/provider.ts';
import { abytes } from '../util/assert.ts';
import { toHex, zeroize } from '../util/bytes.ts';
import type { Clock } from '../util/clock.ts';
import type { CoseAlgName, CoseContentAlg } from './algorithms.ts';
import type { CborRaw } from '../codec/cbor.ts';
import { assembleEncrypt, ECDH_ES_PROTECTED, ecdhEsContentKey, ecdhEsRecipients, requireAlg } from './encrypt.ts';
import type { HeaderMap } from './headers.ts';

export interface SealingSessionOptions {
  readonly alg: CoseAlgName;
  readonly recipientPublicKey: Uint8Array;
  readonly recipientKid?: Uint8Array;
  readonly clock: Clock;
  /** Messages per epoch (default 1000). */
  readonly maxMessages?: number;
  /** Epoch lifetime in ms (default one hour). */
  readonly maxAgeMs?: number;
  readonly provider?: CryptoProvider;
}

export interface EpochInfo {
  /** Hex of the epoch's ephemeral public key: how the receiver names the epoch. */
  readonly id: string;
  readonly startedAt: number;
  readonly messages: number;
}

interface Epoch {
  readonly publicKey: Uint8Array;
  /** The encoded recipients array, the same for every message of the epoch. */
  readonly recipients: CborRaw;
  readonly sealer: CounterSealer;
  readonly startedAt: number;
}

export class SealingSession {
  readonly #alg: CoseContentAlg;
  readonly #provider: CryptoProvider;
  readonly #recipient: Uint8Array;
  readonly #kid: Uint8Array | undefined;
  readonly #clock: Clock;
  readonly #maxMessages: number;
  readonly #maxAgeMs: number;
  #epoch: Epoch | undefined;
  #epochs = 0;

  constructor(o: SealingSessionOptions) {
    this.#alg = requireAlg(o.alg);
    this.#provider = o.provider ?? providerForAead(this.#alg.aead);
    this.#recipient = Uint8Array.from(abytes(o.recipientPublicKey, 'recipient public key', 32));
    this.#kid = o.recipientKid === undefined ? undefined : Uint8Array.from(o.recipientKid);
    this.#clock = o.clock;
    this.#maxMessages = o.maxMessages ?? 1000;
    this.#maxAgeMs = o.maxAgeMs ?? 3_600_000;
    if (!Number.isInteger(this.#maxMessages) || this.#maxMessages < 1) throw new RangeError('maxMessages must be a positive integer');
    if (!(this.#maxAgeMs > 0)) throw new RangeError('maxAgeMs must be positive');
  }

  get alg(): CoseAlgName {
    return this.#alg.name;
  }

  /** How many epochs this session has started. */
  get epochsStarted(): number {
    return this.#epochs;
  }

  epoch(): EpochInfo | undefined {
    const e = this.#epoch;
    return e === undefined ? undefined : { id: toHex(e.publicKey), startedAt: e.startedAt, messages: e.sealer.count };
  }

  seal(plaintext: Uint8Array, opts: { externalAad?: Uint8Array; protectedExtras?: HeaderMap } = {}): Uint8Array {
    const e = this.#current();
    return assembleEncrypt(this.#alg, (aad) => {
      const { nonce, sealed } = e.sealer.seal(plaintext, aad);
      return { iv: nonce, ciphertext: sealed };
    }, e.recipients, opts);
  }

  /** Ends the current epoch now (key compromise drill, configuration change). */
  rotate(): void {
    this.#epoch?.sealer.destroy();
    this.#epoch = undefined;
  }

  destroy(): void {
    this.rotate();
    zeroize(this.#recipient);
  }

  #current(): Epoch {
    const now = this.#clock.now();
    const e = this.#epoch;
    if (e !== undefined && !e.sealer.exhausted && now - e.startedAt < this.#maxAgeMs && now >= e.startedAt) return e;
    this.rotate();
    const eph = this.#provider.x25519Generate();
    let cek: Uint8Array | undefined;
    try {
      cek = ecdhEsContentKey(this.#provider, this.#alg, this.#provider.x25519(eph.privateKey, this.#recipient), ECDH_ES_PROTECTED);
      const sealer = new CounterSealer(this.#provider, this.#alg.aead, cek, this.#provider.randomBytes(this.#alg.nonceLength), this.#maxMessages);
      this.#epoch = { publicKey: eph.publicKey, recipients: ecdhEsRecipients(eph.publicKey, this.#kid), sealer, startedAt: now };
      this.#epochs++;
      return this.#epoch;
    } finally {
      zeroize(eph.privateKey, cek);
    }
  }
}
