/**
 * Key derivation for ECDH-ES + HKDF-256 (RFC 9053 §5.1, §5.2, §6.3.1).
 */
import { encodeCbor } from '../codec/cbor.ts';
import { hkdf } from '../crypto/hkdf.ts';
import type { CryptoProvider } from '../crypto/provider.ts';
import { zeroize } from '../util/bytes.ts';

export interface PartyInfo {
  readonly identity?: Uint8Array;
  readonly nonce?: Uint8Array;
  readonly other?: Uint8Array;
}

/**
 * COSE_KDF_Context = [AlgorithmID, PartyUInfo, PartyVInfo, SuppPubInfo] with
 * PartyInfo = [identity / nil, nonce / nil, other / nil] and
 * SuppPubInfo = [keyDataLength (bits), protected (the recipient's protected bstr)] (RFC 9053 §5.2).
 */
export function kdfContext(contentAlgId: number, keyBytes: number, recipientProtected: Uint8Array, u: PartyInfo = {}, v: PartyInfo = {}): Uint8Array {
  const party = (p: PartyInfo) => [p.identity ?? null, p.nonce ?? null, p.other ?? null];
  return encodeCbor([contentAlgId, party(u), party(v), [keyBytes * 8, recipientProtected]]);
}

/** HKDF-SHA-256 over the ECDH secret with an empty salt (no salt header, RFC 9053 §5.1) and the context as info. */
export function deriveContentKey(p: CryptoProvider, sharedSecret: Uint8Array, context: Uint8Array, keyBytes: number): Uint8Array {
  try {
    return hkdf(p, undefined, sharedSecret, context, keyBytes);
  } finally {
    zeroize(sharedSecret);
  }
}
