/**
 * Sealing and opening COSE_Encrypt0 (direct key) and COSE_Encrypt (ECDH-ES + HKDF-256 recipient
 * over X25519, or direct).
 *
 * Opening checks, in order: structure and tag, header buckets and `crit`, the content algorithm
 * (protected, one we support), the IV length for that algorithm, the recipient algorithm and its
 * ephemeral key, then the AEAD tag. Every failure is a typed error; a wrong key and a tampered
 * byte look the same from outside (`CryptoError('cose-decrypt-failed')`).
 *
 * @example
 *   const msg = sealEncrypt({ alg: 'chacha20-poly1305', recipientPublicKey, plaintext });
 *   const { plaintext } = openCose(msg, { recipient: x25519Recipient(getProvider(), privateKey) });
 */
import { CborRaw, encodeCbor } from '../codec/cbor.ts';
import { OneShotSealer } from '../crypto/aead.ts';
import { getProvider, providerForAead } from '../crypto/registry.ts';
import type { CryptoProvider } from '../crypto/provider.ts';
import { allocUninit, toHex, zeroize } from '../util/bytes.ts';
import { CryptoError, DecodeError, Unsupported } from '../util/errors.ts';
import { ALG_DIRECT, ALG_ECDH_ES_HKDF_256, contentAlgById, contentAlgByName, type CoseAlgName, type CoseContentAlg } from './algorithms.ts';
import { EpochKeyCache } from './epoch-cache.ts';
import { decodeX25519CoseKey, encodeProtected, encodeX25519CoseKey, Header, headerValue, type HeaderMap } from './headers.ts';
import { deriveContentKey, kdfContext } from './kdf.ts';
import type { X25519Recipient } from './keys.ts';
import { aadProtected, encStructure, parseCoseEncrypt, serializeEncrypt0, serializeEncryptWithIv, type CoseLayer, type ParsedCoseEncrypt } from './message.ts';

const EMPTY = new Uint8Array(0);

function fail(code: string, message: string): never {
  throw new DecodeError(code, `COSE: ${message}`);
}

export function requireAlg(name: CoseAlgName | number): CoseContentAlg {
  const alg = typeof name === 'number' ? contentAlgById(name) : contentAlgByName(name);
  if (alg === undefined) throw new Unsupported('cose-alg', `COSE: content algorithm ${String(name)} is not supported`);
  return alg;
}

/** The recipient layer's protected header for ECDH-ES + HKDF-256: {1: -25}. */
export const ECDH_ES_PROTECTED = encodeProtected(new Map([[Header.ALG, ALG_ECDH_ES_HKDF_256]]));

/** ECDH-ES + HKDF-256 content key (RFC 9053 §6.3.1) from our private key and the peer's public key. */
export function ecdhEsContentKey(provider: CryptoProvider, alg: CoseContentAlg, sharedSecret: Uint8Array, recipientProtected: Uint8Array): Uint8Array {
  return deriveContentKey(provider, sharedSecret, kdfContext(alg.id, alg.keyLength, recipientProtected), alg.keyLength);
}

export interface SealEncryptOptions {
  readonly alg: CoseAlgName;
  readonly recipientPublicKey: Uint8Array;
  readonly recipientKid?: Uint8Array;
  readonly plaintext: Uint8Array;
  readonly externalAad?: Uint8Array;
  /** Extra protected header parameters (e.g. the device id and sequence number). */
  readonly protectedExtras?: HeaderMap;
  readonly provider?: CryptoProvider;
}

/**
 * One COSE_Encrypt to one recipient with a fresh ephemeral key: the operator's command and any
 * one-off message. The device's stream uses `SealingSession` (epochs) instead.
 */
export function sealEncrypt(o: SealEncryptOptions): Uint8Array {
  const alg = requireAlg(o.alg);
  const provider = o.provider ?? providerForAead(alg.aead);
  const eph = provider.x25519Generate();
  try {
    const cek = ecdhEsContentKey(provider, alg, provider.x25519(eph.privateKey, o.recipientPublicKey), ECDH_ES_PROTECTED);
    const sealer = new OneShotSealer(provider, alg.aead, cek);
    zeroize(cek);
    try {
      const iv = provider.randomBytes(alg.nonceLength);
      return assembleEncrypt(alg, (aad) => ({ iv, ciphertext: sealer.seal(iv, o.plaintext, aad) }), ecdhEsRecipients(eph.publicKey, o.recipientKid), o);
    } finally {
      sealer.destroy();
    }
  } finally {
    zeroize(eph.privateKey);
  }
}

/**
 * The recipients array of a COSE_Encrypt for one ECDH-ES + HKDF-256 recipient: [[{1: -25},
 * {-1: COSE_Key(ephemeral), 4: kid?}, h'']]. Encoded once per ephemeral key: a sealing epoch
 * reuses it for every message.
 */
export function ecdhEsRecipients(ephemeralPublic: Uint8Array, recipientKid?: Uint8Array): CborRaw {
  const unprotected: HeaderMap = new Map<number, unknown>([[Header.EPHEMERAL_KEY, encodeX25519CoseKey(ephemeralPublic)]]);
  if (recipientKid !== undefined) unprotected.set(Header.KID, recipientKid);
  return new CborRaw(encodeCbor([[ECDH_ES_PROTECTED, unprotected, new Uint8Array(0)]]));
}

/**
 * Builds a COSE_Encrypt. `encrypt` receives the Enc_structure (the AAD) and returns the IV it used
 * and the ciphertext, so the IV comes from whichever nonce discipline the caller's AEAD context has.
 * `recipients` is the encoded recipients array (`ecdhEsRecipients`).
 */
export function assembleEncrypt(
  alg: CoseContentAlg,
  encrypt: (aad: Uint8Array) => { iv: Uint8Array; ciphertext: Uint8Array },
  recipients: CborRaw,
  o: Pick<SealEncryptOptions, 'externalAad' | 'protectedExtras'>,
): Uint8Array {
  const prot: HeaderMap = new Map<number, unknown>([[Header.ALG, alg.id]]);
  for (const [k, v] of o.protectedExtras ?? []) prot.set(k, v);
  const protectedBytes = encodeProtected(prot);
  const { iv, ciphertext } = encrypt(encStructure('Encrypt', protectedBytes, o.externalAad ?? EMPTY));
  return serializeEncryptWithIv(protectedBytes, iv, ciphertext, recipients.bytes);
}

/** Seals a COSE_Encrypt0 under a direct key with an explicit IV; the sealer refuses a repeated IV. */
export function sealEncrypt0(sealer: OneShotSealer, alg: CoseAlgName, iv: Uint8Array, plaintext: Uint8Array, opts: {
  externalAad?: Uint8Array; unprotected?: HeaderMap; protectedExtras?: HeaderMap;
} = {}): Uint8Array {
  const a = requireAlg(alg);
  if (sealer.aead !== a.aead) throw new RangeError(`sealEncrypt0: sealer is keyed for ${sealer.aead}, not ${a.aead}`);
  const prot: HeaderMap = new Map<number, unknown>([[Header.ALG, a.id]]);
  for (const [k, v] of opts.protectedExtras ?? []) prot.set(k, v);
  const protectedBytes = encodeProtected(prot);
  const unprotected: HeaderMap = new Map(opts.unprotected ?? []);
  unprotected.set(Header.IV, iv);
  const ciphertext = sealer.seal(iv, plaintext, encStructure('Encrypt0', protectedBytes, opts.externalAad ?? new Uint8Array(0)));
  return serializeEncrypt0({ protectedBytes, unprotected, ciphertext });
}

export interface OpenKeys {
  /** Our static X25519 key, for ECDH-ES + HKDF-256 recipients. */
  readonly recipient?: X25519Recipient;
  /** Cache of epoch keys; without one, every message costs an ECDH. */
  readonly cache?: EpochKeyCache;
  /** Direct content keys by kid (COSE_Encrypt0, or a 'direct' recipient). */
  readonly direct?: (kid: Uint8Array | undefined) => Uint8Array | undefined;
  readonly provider?: CryptoProvider;
}

export interface OpenedCose {
  readonly plaintext: Uint8Array;
  readonly alg: CoseContentAlg;
  readonly protected: HeaderMap;
  /** Hex of the sender's ephemeral public key (its sealing epoch), for ECDH-ES messages. */
  readonly epoch?: string;
}

export interface OpenOptions {
  readonly externalAad?: Uint8Array;
  readonly maxBytes?: number;
  /**
   * Accept a content algorithm in the unprotected bucket (RFC 9052 allows it; vitalseal never
   * writes it and by default refuses it, so the algorithm is always integrity protected).
   */
  readonly allowUnprotectedAlg?: boolean;
  /** The structure, when the context says it and the message carries no CBOR tag. */
  readonly untagged?: 'encrypt0' | 'encrypt';
}

function contentAlgOf(l: CoseLayer, allowUnprotected: boolean): CoseContentAlg {
  // The content algorithm must be integrity protected (RFC 9052 §3.1 recommends it; we require it).
  const id = allowUnprotected ? headerValue(l.protected, l.unprotected, Header.ALG) : l.protected.get(Header.ALG);
  if (id === undefined) fail('cose-alg', l.unprotected.has(Header.ALG) ? 'content alg is not protected' : 'no content alg');
  const alg = contentAlgById(id);
  if (alg === undefined) throw new Unsupported('cose-alg', `COSE: content algorithm ${String(id)} is not supported`);
  return alg;
}

function ivOf(l: CoseLayer, alg: CoseContentAlg): Uint8Array {
  if (headerValue(l.protected, l.unprotected, Header.PARTIAL_IV) !== undefined) {
    throw new Unsupported('cose-partial-iv', 'COSE: Partial IV is not supported');
  }
  const iv = headerValue(l.protected, l.unprotected, Header.IV);
  if (!(iv instanceof Uint8Array)) fail('cose-iv', 'no IV');
  if (iv.length !== alg.nonceLength) fail('cose-iv', `IV of ${iv.length} bytes for ${alg.name}, which takes ${alg.nonceLength}`);
  return iv;
}

function kidOf(l: CoseLayer): Uint8Array | undefined {
  const kid = headerValue(l.protected, l.unprotected, Header.KID);
  if (kid !== undefined && !(kid instanceof Uint8Array)) fail('cose-header', 'kid is not a byte string');
  return kid;
}

function providerFor(provider: CryptoProvider | undefined, alg: CoseContentAlg): CryptoProvider {
  return provider?.supportsAead(alg.aead) ? provider : providerForAead(alg.aead);
}

/** One error for every way a message fails to decrypt, whichever path opened it. */
function decryptFailed(): CryptoError {
  return new CryptoError('cose-decrypt-failed', 'COSE: decryption failed (wrong key or tampered message)');
}

function checkKey(alg: CoseContentAlg, key: Uint8Array): void {
  if (key.length !== alg.keyLength) throw new CryptoError('cose-wrong-key', `COSE: ${alg.name} needs a ${alg.keyLength}-byte key`);
}

function decrypt(provider: CryptoProvider | undefined, alg: CoseContentAlg, key: Uint8Array, iv: Uint8Array, ct: Uint8Array, aad: Uint8Array): Uint8Array {
  checkKey(alg, key);
  try {
    return providerFor(provider, alg).aeadOpen(alg.aead, key, iv, ct, aad);
  } catch (e) {
    throw e instanceof CryptoError ? decryptFailed() : e;
  }
}

/** `decrypt` through the epoch's cached keyed context (one cipher set-up per epoch, not per message). */
function decryptCached(provider: CryptoProvider | undefined, alg: CoseContentAlg, cache: EpochKeyCache, id: string, key: Uint8Array, iv: Uint8Array, ct: Uint8Array, aad: Uint8Array): Uint8Array {
  checkKey(alg, key);
  const opener = cache.opener(id, providerFor(provider, alg), alg.aead, alg.nonceLength);
  if (opener === undefined) return decrypt(provider, alg, key, iv, ct, aad);
  if (ct.length < opener.tagLength) throw decryptFailed();
  // From the shared pool, as record plaintext in src/dtls is: the caller wipes it after use
  // (the ingest does, once sealed at rest), and a failed open wipes what was written before the
  // tag was checked.
  const out = allocUninit(ct.length - opener.tagLength);
  try {
    opener.openInto(iv, ct, aad, out, 0);
  } catch (e) {
    out.fill(0);
    throw e instanceof CryptoError ? decryptFailed() : e;
  }
  return out;
}

/** Opens a tagged COSE_Encrypt0 or COSE_Encrypt. */
export function openCose(bytes: Uint8Array, keys: OpenKeys, opts: OpenOptions = {}): OpenedCose {
  return openParsedCose(parseCoseEncrypt(bytes, opts.maxBytes, opts.untagged), keys, opts);
}

/**
 * Opens a message `parseCoseEncrypt` has already parsed (a receiver that inspected its protected
 * header first need not parse it twice). `maxBytes` and `untagged` were the parser's business.
 */
export function openParsedCose(msg: ParsedCoseEncrypt, keys: OpenKeys, opts: Omit<OpenOptions, 'maxBytes' | 'untagged'> = {}): OpenedCose {
  const alg = contentAlgOf(msg, opts.allowUnprotectedAlg === true);
  const iv = ivOf(msg, alg);
  const extAad = opts.externalAad ?? new Uint8Array(0);
  if (msg.kind === 'encrypt0') {
    const key = keys.direct?.(kidOf(msg));
    if (key === undefined) throw new CryptoError('cose-no-key', 'COSE: no key for this COSE_Encrypt0');
    const plaintext = decrypt(keys.provider, alg, key, iv, msg.ciphertext, encStructure('Encrypt0', aadProtected(msg), extAad));
    return { plaintext, alg, protected: msg.protected };
  }
  const aad = encStructure('Encrypt', aadProtected(msg), extAad);
  let lastError: Error | undefined;
  for (const r of msg.recipients) {
    const ralg = r.protected.get(Header.ALG) ?? r.unprotected.get(Header.ALG);
    if (ralg === ALG_ECDH_ES_HKDF_256 && keys.recipient !== undefined) {
      if (!r.protected.has(Header.ALG)) fail('cose-alg', 'recipient alg is not protected');
      if (r.ciphertext.length !== 0) fail('cose-structure', 'ECDH-ES direct agreement carries no recipient ciphertext');
      const epk = decodeX25519CoseKey(headerValue(r.protected, r.unprotected, Header.EPHEMERAL_KEY));
      const epoch = toHex(epk);
      // The cache key binds everything the derivation depends on.
      const id = `${epoch}/${alg.id}/${toHex(r.protectedBytes)}`;
      let cek = keys.cache?.get(id);
      if (cek === undefined) {
        cek = ecdhEsContentKey(keys.provider ?? getProvider(), alg, keys.recipient.agree(epk), r.protectedBytes);
        keys.cache?.set(id, cek);
      }
      try {
        const plaintext = keys.cache === undefined
          ? decrypt(keys.provider, alg, cek, iv, msg.ciphertext, aad)
          : decryptCached(keys.provider, alg, keys.cache, id, cek, iv, msg.ciphertext, aad);
        return { plaintext, alg, protected: msg.protected, epoch };
      } catch (e) {
        // A key that fails must not stay cached: a forged epk would otherwise pin a useless entry.
        keys.cache?.forget(id);
        lastError = e as Error;
      } finally {
        if (keys.cache === undefined) zeroize(cek);
      }
    } else if (ralg === ALG_DIRECT && keys.direct !== undefined) {
      const key = keys.direct(kidOf(r));
      if (key === undefined) continue;
      if (r.ciphertext.length !== 0) fail('cose-structure', 'direct recipient carries ciphertext');
      return { plaintext: decrypt(keys.provider, alg, key, iv, msg.ciphertext, aad), alg, protected: msg.protected };
    } else if (ralg !== ALG_ECDH_ES_HKDF_256 && ralg !== ALG_DIRECT) {
      lastError = new Unsupported('cose-alg', `COSE: recipient algorithm ${String(ralg)} is not supported`);
    }
  }
  throw lastError ?? new CryptoError('cose-no-key', 'COSE: no recipient this key can open');
}
