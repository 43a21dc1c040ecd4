/**
 * X25519 keys for COSE recipients: PEM import/export as OpenSSL writes them (PKCS#8 private,
 * SubjectPublicKeyInfo public) and the key-agreement handle the opener uses.
 *
 * The ingest's static X25519 key cannot live inside a TPM or PKCS#11 token (neither does X25519):
 * it is held in host memory, unwrapped from the key store at start-up, behind this interface.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import type { CryptoProvider } from '../crypto/provider.ts';
import { zeroize } from '../util/bytes.ts';
import { CryptoError, DecodeError } from '../util/errors.ts';

export interface X25519Recipient {
  readonly publicKey: Uint8Array;
  /** Raw X25519 shared secret with `peerPublic`; the caller zeroises it. */
  agree(peerPublic: Uint8Array): Uint8Array;
  destroy(): void;
}

export function x25519Recipient(provider: CryptoProvider, privateKey: Uint8Array): X25519Recipient {
  let key: Uint8Array | undefined = Uint8Array.from(privateKey);
  const publicKey = provider.x25519PublicKey(key);
  return {
    publicKey,
    agree(peer) {
      if (key === undefined) throw new CryptoError('key-destroyed', 'X25519 recipient key was destroyed');
      return provider.x25519(key, peer);
    },
    destroy() {
      zeroize(key);
      key = undefined;
    },
  };
}

function b64url(s: unknown): Uint8Array {
  if (typeof s !== 'string') throw new DecodeError('pem-key', 'key has no raw component');
  return new Uint8Array(Buffer.from(s, 'base64url'));
}

/** Raw 32-byte private key from a PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"). */
export function x25519PrivateFromPem(pem: string): Uint8Array {
  let k;
  try {
    k = createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw new DecodeError('pem-key', 'not a PEM private key');
  }
  if (k.asymmetricKeyType !== 'x25519') throw new DecodeError('pem-key', `expected an X25519 key, got ${String(k.asymmetricKeyType)}`);
  return b64url(k.export({ format: 'jwk' }).d);
}

/** Raw 32-byte public key from an SPKI PEM ("-----BEGIN PUBLIC KEY-----") or a private key PEM. */
export function x25519PublicFromPem(pem: string): Uint8Array {
  let k;
  try {
    k = createPublicKey({ key: pem, format: 'pem' });
  } catch {
    throw new DecodeError('pem-key', 'not a PEM public key');
  }
  if (k.asymmetricKeyType !== 'x25519') throw new DecodeError('pem-key', `expected an X25519 key, got ${String(k.asymmetricKeyType)}`);
  return b64url(k.export({ format: 'jwk' }).x);
}

/** SPKI PEM of a raw 32-byte X25519 public key (the form the agent pins: `sealing.ingestPublicKeyFile`). */
export function x25519PublicToPem(publicKey: Uint8Array): string {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) throw new RangeError('x25519PublicToPem: expected 32 bytes');
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(publicKey).toString('base64url') }, format: 'jwk' })
    .export({ format: 'pem', type: 'spki' }).toString();
}

/** A new key pair as PEM, in the forms `openssl genpkey -algorithm X25519` and `openssl pkey -pubout` write. */
export function generateX25519Pem(): { privatePem: string; publicPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  return {
    privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    publicPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
  };
}
