/**
 * The narrow signing interface. Protocol code (DTLS CertificateVerify, CSRs, audit checkpoints)
 * signs only through a `Signer`, so a key held in a TPM or a PKCS#11 token signs without ever being
 * exported. Key stores hand out Signers; they never hand out private keys.
 */
import { createPublicKey, sign as nodeSign, type KeyObject } from 'node:crypto';

export type SignatureScheme = 'ecdsa-p256-sha256' | 'ed25519';

export interface Signer {
  readonly scheme: SignatureScheme;
  /** The public key as DER SubjectPublicKeyInfo. */
  publicKeySpki(): Promise<Uint8Array>;
  /**
   * Signs `message` (the signer hashes it as the scheme says). ECDSA signatures are DER-encoded
   * (as TLS 1.3 and X.509 carry them); Ed25519 signatures are the raw 64 bytes.
   */
  sign(message: Uint8Array): Promise<Uint8Array>;
}

/**
 * A Signer over an in-memory node:crypto private key: for the software key store and tests only.
 *
 * @example
 *   const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
 *   const signer = keyObjectSigner(privateKey);
 */
export function keyObjectSigner(privateKey: KeyObject): Signer {
  const details = privateKey.asymmetricKeyType;
  let scheme: SignatureScheme;
  if (details === 'ed25519') scheme = 'ed25519';
  else if (details === 'ec' && privateKey.asymmetricKeyDetails?.namedCurve === 'prime256v1') scheme = 'ecdsa-p256-sha256';
  else throw new RangeError(`keyObjectSigner: unsupported key type ${String(details)}`);
  const spki = new Uint8Array(createPublicKey(privateKey).export({ format: 'der', type: 'spki' }));
  return {
    scheme,
    publicKeySpki: async () => spki,
    sign: async (message) =>
      new Uint8Array(nodeSign(scheme === 'ed25519' ? null : 'sha256', message, { key: privateKey, dsaEncoding: 'der' })),
  };
}
