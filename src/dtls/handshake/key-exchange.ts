/**
 * (EC)DHE key shares (RFC 8446 §4.2.8): X25519 through the crypto provider and secp256r1 through
 * node:crypto ECDH (uncompressed points, RFC 8446 §4.2.8.2). A share's private half lives only in
 * this object and is zeroised by `destroy()`.
 *
 * @example
 *   const mine = generateKeyShare(provider, NamedGroupId.x25519);
 *   const shared = mine.agree(peerKeyExchange); // throws PeerMisbehaved on an invalid point
 *   mine.destroy();
 */
import { createECDH, diffieHellman, generateKeyPairSync, type ECDH, type KeyObject } from 'node:crypto';
import { rawX25519Public, x25519PublicKeyObject } from '../../crypto/node.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { zeroize } from '../../util/bytes.ts';
import { CryptoError, PeerMisbehaved } from '../../util/errors.ts';
import { NamedGroupId, type NamedGroupName } from '../messages/constants.ts';

export interface KeyShare {
  readonly group: number;
  /** The key_exchange bytes sent to the peer. */
  readonly publicKey: Uint8Array;
  /** The shared secret with the peer's key_exchange; throws PeerMisbehaved on a bad public key. */
  agree(peer: Uint8Array): Uint8Array;
  destroy(): void;
}

export const SUPPORTED_GROUPS: readonly NamedGroupName[] = Object.freeze(['x25519', 'secp256r1']);

export function groupName(id: number): NamedGroupName | undefined {
  for (const [name, v] of Object.entries(NamedGroupId) as [NamedGroupName, number][]) if (v === id) return name;
  return undefined;
}

class X25519Share implements KeyShare {
  readonly group = NamedGroupId.x25519;
  readonly publicKey: Uint8Array;
  #privateKey: Uint8Array;

  constructor(private readonly provider: CryptoProvider) {
    const kp = provider.x25519Generate();
    this.#privateKey = kp.privateKey;
    this.publicKey = kp.publicKey;
  }

  agree(peer: Uint8Array): Uint8Array {
    if (peer.length !== 32) throw new PeerMisbehaved('bad-key-share', `x25519 key_exchange of ${peer.length} bytes`);
    try {
      return this.provider.x25519(this.#privateKey, peer);
    } catch (e) {
      // RFC 8446 §7.4.2: an all-zero shared secret means a low-order point: abort.
      if (e instanceof CryptoError) throw new PeerMisbehaved('bad-key-share', 'x25519 key_exchange is a low-order point');
      throw e;
    }
  }

  destroy(): void {
    zeroize(this.#privateKey);
  }
}

/**
 * X25519 on node:crypto KeyObjects: the private key never leaves OpenSSL as bytes, and no DER
 * import happens per handshake (several times cheaper than the provider's raw-bytes API).
 */
class NodeX25519Share implements KeyShare {
  readonly group = NamedGroupId.x25519;
  readonly publicKey: Uint8Array;
  #privateKey: KeyObject | undefined;

  constructor() {
    const { privateKey, publicKey } = generateKeyPairSync('x25519');
    this.#privateKey = privateKey;
    this.publicKey = rawX25519Public(publicKey);
  }

  agree(peer: Uint8Array): Uint8Array {
    if (peer.length !== 32) throw new PeerMisbehaved('bad-key-share', `x25519 key_exchange of ${peer.length} bytes`);
    if (this.#privateKey === undefined) throw new CryptoError('key-share-destroyed', 'key share used after destroy()');
    let shared: Uint8Array;
    try {
      shared = new Uint8Array(diffieHellman({ privateKey: this.#privateKey, publicKey: x25519PublicKeyObject(peer) }));
    } catch {
      throw new PeerMisbehaved('bad-key-share', 'x25519 key_exchange is not a usable public key');
    }
    // RFC 8446 §7.4.2: an all-zero shared secret means a low-order point: abort.
    let acc = 0;
    for (const b of shared) acc |= b;
    if (acc === 0) throw new PeerMisbehaved('bad-key-share', 'x25519 key_exchange is a low-order point');
    return shared;
  }

  destroy(): void {
    this.#privateKey = undefined;
  }
}

class P256Share implements KeyShare {
  readonly group = NamedGroupId.secp256r1;
  readonly publicKey: Uint8Array;
  #ecdh: ECDH | undefined;

  constructor() {
    this.#ecdh = createECDH('prime256v1');
    this.#ecdh.generateKeys();
    this.publicKey = new Uint8Array(this.#ecdh.getPublicKey(null, 'uncompressed'));
  }

  agree(peer: Uint8Array): Uint8Array {
    // RFC 8446 §4.2.8.2: UncompressedPointRepresentation only; OpenSSL checks the point is on the curve.
    if (peer.length !== 65 || peer[0] !== 4) throw new PeerMisbehaved('bad-key-share', 'secp256r1 key_exchange is not an uncompressed point');
    if (this.#ecdh === undefined) throw new CryptoError('key-share-destroyed', 'key share used after destroy()');
    try {
      return new Uint8Array(this.#ecdh.computeSecret(peer));
    } catch {
      throw new PeerMisbehaved('bad-key-share', 'secp256r1 key_exchange is not a point on the curve');
    }
  }

  destroy(): void {
    // node:crypto gives no way to wipe an ECDH object's scalar; drop the only reference.
    this.#ecdh = undefined;
  }
}

export function generateKeyShare(provider: CryptoProvider, group: number): KeyShare {
  switch (group) {
    case NamedGroupId.x25519:
      return provider.name === 'node' ? new NodeX25519Share() : new X25519Share(provider);
    case NamedGroupId.secp256r1:
      return new P256Share();
    default:
      throw new RangeError(`unsupported group 0x${group.toString(16)}`);
  }
}
