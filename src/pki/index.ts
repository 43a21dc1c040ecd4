/**
 * vitalseal/pki: the fleet's X.509 PKI. Certificates, CSRs and CRLs signed through a `Signer` (a
 * TPM, PKCS#11 or in-memory key), strict bounded parsing, and the one validation entry point both
 * transports use. docs/pki.md describes the profiles, the device id binding and revocation.
 *
 * @example
 *   import { createCsr, parseCertificate, parseCrl, validateChain } from 'vitalseal/pki';
 *   const csr = await createCsr({ signer, subject: { commonName: 'bed-7' }, deviceId: 'bed-7' });
 *   const peer = validateChain(chain, { roots: [parseCertificate(rootDer)], now: clock.now(), purpose: 'client',
 *     revocation: { crls: [parseCrl(crlDer)] } });
 *   peer.deviceId;   // 'bed-7'
 */
export { publicKeyFromSpki, type SignatureAlgorithm, type SubjectPublicKeyInfo } from './algorithms.ts';
export {
  authorityKeyIdFor, formatSpkiPin, keyIdentifier, MAX_CERTIFICATE_BYTES, parseCertificate, parseSpkiPin, spkiSha256,
  type Certificate,
} from './certificate.ts';
export { createCrl, crlSignedBy, parseCrl, REVOCATION_REASONS, type Crl, type CrlOptions, type RevocationReason, type RevokedEntry } from './crl.ts';
export { createCsr, parseCsr, type Csr, type CsrOptions } from './csr.ts';
export { DEV_CA_FORMAT, DevCa, initDevCa, openDevCa, type DevCaMetadata, type InitDevCaOptions } from './dev-ca.ts';
export { checkDeviceId, DEVICE_ID_PATTERN, DEVICE_ID_URN_PREFIX, deviceIdOf, deviceIdUri, isDeviceId } from './device-id.ts';
export { KEY_USAGE_BITS, type BasicConstraints, type Extensions, type GeneralNames, type KeyUsage } from './extensions.ts';
export {
  createIssuingCa, createRootCa, issueDeviceCertificate, issueServiceCertificate, randomSerial, type CertificateAuthority,
  type DeviceCertificateOptions, type IssuingCaOptions, type RootCaOptions, type ServiceCertificateOptions,
} from './issue.ts';
export { DEV_KEY_BANNER, decryptPrivateKey, encryptPrivateKey, readKeyFile, writeKeyFile } from './key-file.ts';
export { type Name, type NameSpec } from './name.ts';
export { checkServerIdentityWith, peerChainDer, validateTlsPeer, type TlsValidationOptions } from './node-tls.ts';
export { derOrPem, pemDecode, pemEncode, type PemBlock } from './pem.ts';
export { DEFAULT_VALIDITY_POLICY, validityPolicy, type ValidityPolicy } from './policy.ts';
export {
  checkPayloadDevice, MAX_CHAIN_CERTIFICATES, validateChain, type Purpose, type RevocationOptions, type RevocationQuery,
  type RevocationStatus, type ValidatedPeer, type ValidationOptions,
} from './validate.ts';
