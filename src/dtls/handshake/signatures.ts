/**
 * CertificateVerify (RFC 8446 §4.4.3): the signed content, signing through a `Signer` (so a TPM or
 * PKCS#11 key never leaves its store) and verification with node:crypto for the schemes we accept:
 * ecdsa_secp256r1_sha256, ed25519 and rsa_pss_rsae_sha256.
 */
import { constants, verify as nodeVerify, type KeyObject } from 'node:crypto';
import type { SignatureScheme, Signer } from '../../keystore/signer.ts';
import { asBuffer, concatBytes, utf8 } from '../../util/bytes.ts';
import { PeerIncompatible, PeerMisbehaved } from '../../util/errors.ts';
import { SignatureSchemeId } from '../messages/constants.ts';

/** What we accept from peers, in preference order (the signature_algorithms we send). */
export const VERIFY_SCHEMES: readonly number[] = Object.freeze([
  SignatureSchemeId.ecdsa_secp256r1_sha256,
  SignatureSchemeId.ed25519,
  SignatureSchemeId.rsa_pss_rsae_sha256,
]);

const CONTEXT_SERVER = 'TLS 1.3, server CertificateVerify';
const CONTEXT_CLIENT = 'TLS 1.3, client CertificateVerify';

/** RFC 8446 §4.4.3: 64 spaces, the context string, a zero byte, then the transcript hash. */
export function certificateVerifyContent(side: 'server' | 'client', transcriptHash: Uint8Array): Uint8Array {
  return concatBytes(new Uint8Array(64).fill(0x20), utf8(side === 'server' ? CONTEXT_SERVER : CONTEXT_CLIENT), Uint8Array.of(0), transcriptHash);
}

export function schemeForSigner(s: SignatureScheme): number {
  switch (s) {
    case 'ecdsa-p256-sha256':
      return SignatureSchemeId.ecdsa_secp256r1_sha256;
    case 'ed25519':
      return SignatureSchemeId.ed25519;
    default: {
      const never: never = s;
      throw new TypeError(`unknown signer scheme ${String(never)}`);
    }
  }
}

/** Signs the CertificateVerify content through the Signer; returns the scheme code and signature. */
export async function signCertificateVerify(signer: Signer, side: 'server' | 'client', transcriptHash: Uint8Array): Promise<{ scheme: number; signature: Uint8Array }> {
  const signature = await signer.sign(certificateVerifyContent(side, transcriptHash));
  return { scheme: schemeForSigner(signer.scheme), signature };
}

/** True when `key` can make signatures of `scheme` (RFC 8446 §4.2.3 ties each scheme to a key type). */
export function keyFitsScheme(key: KeyObject, scheme: number): boolean {
  switch (scheme) {
    case SignatureSchemeId.ecdsa_secp256r1_sha256:
      return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
    case SignatureSchemeId.ed25519:
      return key.asymmetricKeyType === 'ed25519';
    case SignatureSchemeId.rsa_pss_rsae_sha256:
      return key.asymmetricKeyType === 'rsa';
    default:
      return false;
  }
}

/**
 * Verifies a peer's CertificateVerify. Throws `PeerIncompatible('bad-signature-scheme')` for a
 * scheme we did not offer or that does not fit the key, and `PeerMisbehaved('bad-signature')`
 * when the signature does not verify (alert decrypt_error, RFC 8446 §4.4.3).
 */
export function verifyCertificateVerify(key: KeyObject, side: 'server' | 'client', scheme: number, signature: Uint8Array, transcriptHash: Uint8Array): void {
  if (!VERIFY_SCHEMES.includes(scheme) || !keyFitsScheme(key, scheme)) {
    throw new PeerIncompatible('bad-signature-scheme', `CertificateVerify uses scheme 0x${scheme.toString(16)}, not offered or not the key's`);
  }
  const content = asBuffer(certificateVerifyContent(side, transcriptHash));
  let ok: boolean;
  try {
    switch (scheme) {
      case SignatureSchemeId.ecdsa_secp256r1_sha256:
        ok = nodeVerify('sha256', content, { key, dsaEncoding: 'der' }, asBuffer(signature));
        break;
      case SignatureSchemeId.ed25519:
        ok = nodeVerify(null, content, key, asBuffer(signature));
        break;
      default:
        // rsa_pss_rsae_sha256: PSS with MGF1-SHA-256 and a salt as long as the hash (RFC 8446 §4.2.3).
        ok = nodeVerify('sha256', content, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, asBuffer(signature));
    }
  } catch {
    ok = false;
  }
  if (!ok) throw new PeerMisbehaved('bad-signature', `${side} CertificateVerify signature does not verify`);
}
