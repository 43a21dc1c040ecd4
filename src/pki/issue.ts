/**
 * Issuing certificates through a `Signer`: the fleet root CA (self-signed), the issuing CA, device
 * certificates and service certificates. The CA key never leaves its store: the TBSCertificate is
 * built here, handed to `signer.sign`, and the result is checked against the issuer's public key
 * before it is returned.
 *
 * Profiles (docs/pki.md has the table):
 *   root CA      BC critical cA pathLen 1 · KU critical keyCertSign cRLSign · SKI
 *   issuing CA   BC critical cA pathLen 0 · KU critical keyCertSign cRLSign · SKI · AKI
 *   device       BC critical (not a CA) · KU critical digitalSignature · EKU clientAuth ·
 *                SAN URI urn:dev:vitalseal:<id> · subject CN <id> · SKI · AKI
 *   service      BC critical (not a CA) · KU critical digitalSignature · EKU serverAuth
 *                (+ clientAuth on request) · SAN DNS/IP · SKI · AKI
 *
 * @example
 *   const root = await createRootCa({ signer: rootSigner, subject: { organization: 'Example Fleet', commonName: 'Example Fleet Root CA' }, now });
 *   const issuing = await createIssuingCa({ root: { certificate: root, signer: rootSigner }, signer: issuingSigner, subject, now });
 *   const device = await issueDeviceCertificate({ ca: { certificate: issuing, signer: issuingSigner }, csr, deviceId: 'bed-7', now });
 */
import { randomBytes } from 'node:crypto';
import type { Signer } from '../keystore/signer.ts';
import { CertificateError } from '../util/errors.ts';
import { parseSpki, publicKeyFromSpki, signatureAlgorithmFor, verifySignature } from './algorithms.ts';
import { authorityKeyIdFor, keyIdentifier, parseCertificate, sameBytes, type Certificate } from './certificate.ts';
import { parseCsr, type Csr } from './csr.ts';
import { bits, explicit, parseOne, seq, TAG, time, uint, uintBytes } from './der.ts';
import { checkDeviceId, DEVICE_ID_URN_PREFIX, deviceIdUri } from './device-id.ts';
import {
  encodeAuthorityKeyId, encodeBasicConstraints, encodeExtension, encodeExtKeyUsage, encodeGeneralNames, encodeKeyUsage,
  encodeSubjectKeyId,
} from './extensions.ts';
import { commonNameOf, encodeName, type NameSpec } from './name.ts';
import { OID } from './oids.ts';
import { DAY_MS, DEFAULT_VALIDITY_POLICY, type ValidityPolicy } from './policy.ts';

/** A CA: its certificate and a Signer for its key (in a key store, an HSM, or memory for tests). */
export interface CertificateAuthority {
  readonly certificate: Certificate;
  readonly signer: Signer;
}

/** Serial numbers: 16 random octets, positive, first octet in 0x40-0x7F (126 random bits, RFC 5280 §4.1.2.2). */
export function randomSerial(): Uint8Array {
  const s = new Uint8Array(randomBytes(16));
  s[0] = ((s[0] as number) & 0x3f) | 0x40;
  return s;
}

interface TbsFields {
  readonly issuerName: Uint8Array;
  readonly subjectName: Uint8Array;
  readonly spki: Uint8Array;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly extensions: readonly Uint8Array[];
}

async function signTbs(signer: Signer, issuerSpki: Uint8Array, f: TbsFields): Promise<Certificate> {
  const alg = signatureAlgorithmFor(signer.scheme);
  const tbs = seq(
    explicit(0, uint(2)), // RFC 5280 §4.1.2.1: v3
    uintBytes(randomSerial()),
    alg,
    f.issuerName,
    seq(time(f.notBefore), time(f.notAfter)),
    f.subjectName,
    f.spki,
    explicit(3, seq(...f.extensions)),
  );
  const signature = await signer.sign(tbs);
  const cert = parseCertificate(seq(tbs, alg, bits(signature)));
  const key = publicKeyFromSpki(issuerSpki, 'issuer public key');
  if (!verifySignature(cert.signatureAlgorithm, key, cert.tbs, cert.signatureValue, 'issued certificate')) {
    throw new CertificateError('bad-signature', 'the CA signer produced a signature that does not verify under the CA certificate key');
  }
  return cert;
}

/** Checks the CA's signer holds the key its certificate names, and the CA may issue at `now`. */
async function checkAuthority(ca: CertificateAuthority, now: number): Promise<void> {
  const spki = await ca.signer.publicKeySpki();
  if (!sameBytes(spki, ca.certificate.spki.der)) {
    throw new CertificateError('bad-signature', `CA signer key does not match the CA certificate (${ca.certificate.subject.text})`);
  }
  const bc = ca.certificate.extensions.basicConstraints;
  const ku = ca.certificate.extensions.keyUsage;
  if (bc?.ca !== true || (ku !== undefined && !ku.has('keyCertSign'))) {
    throw new CertificateError('not-a-ca', `${ca.certificate.subject.text} is not a CA certificate`);
  }
  if (now < ca.certificate.notBefore) throw new CertificateError('not-yet-valid', `CA certificate ${ca.certificate.subject.text} is not valid yet`);
  if (now > ca.certificate.notAfter) throw new CertificateError('expired', `CA certificate ${ca.certificate.subject.text} has expired`);
}

/** [notBefore, notAfter] for a child of `issuer`: backdated by policy, never outside the issuer's window. */
function window(now: number, days: number, policy: ValidityPolicy, issuer?: Certificate): [number, number] {
  let notBefore = now - policy.backdateSeconds * 1000;
  let notAfter = now + days * DAY_MS;
  if (issuer !== undefined) {
    notBefore = Math.max(notBefore, issuer.notBefore);
    notAfter = Math.min(notAfter, issuer.notAfter);
  }
  return [notBefore, notAfter];
}

function caExtensions(spki: Uint8Array, pathLen: number, issuerKeyId?: Uint8Array): Uint8Array[] {
  const keyId = keyIdentifier(parseSpki(parseOne(spki, TAG.SEQUENCE, 'SPKI'), 'SPKI').publicKey);
  const ext = [
    encodeExtension(OID.basicConstraints, true, encodeBasicConstraints({ ca: true, pathLen })),
    encodeExtension(OID.keyUsage, true, encodeKeyUsage(['keyCertSign', 'cRLSign'])),
    encodeExtension(OID.subjectKeyIdentifier, false, encodeSubjectKeyId(keyId)),
  ];
  if (issuerKeyId !== undefined) ext.push(encodeExtension(OID.authorityKeyIdentifier, false, encodeAuthorityKeyId(issuerKeyId)));
  return ext;
}

export interface RootCaOptions {
  readonly signer: Signer;
  readonly subject: NameSpec;
  readonly now: number;
  readonly policy?: ValidityPolicy;
  /** Intermediate CAs allowed below the root (RFC 5280 §4.2.1.9); 1 = root → issuing → leaf. */
  readonly pathLen?: number;
}

/** A self-signed fleet root CA. */
export async function createRootCa(opts: RootCaOptions): Promise<Certificate> {
  const policy = opts.policy ?? DEFAULT_VALIDITY_POLICY;
  const spki = await opts.signer.publicKeySpki();
  publicKeyFromSpki(spki, 'root CA key');
  const name = encodeName(opts.subject);
  const [notBefore, notAfter] = window(opts.now, policy.rootCaDays, policy);
  return signTbs(opts.signer, spki, {
    issuerName: name, subjectName: name, spki, notBefore, notAfter, extensions: caExtensions(spki, opts.pathLen ?? 1),
  });
}

export interface IssuingCaOptions {
  readonly root: CertificateAuthority;
  /** The issuing CA's own key (its public half goes into the certificate). */
  readonly signer: Signer;
  readonly subject: NameSpec;
  readonly now: number;
  readonly policy?: ValidityPolicy;
}

/** An issuing CA certificate signed by the root: issues device and service certificates, signs CRLs. */
export async function createIssuingCa(opts: IssuingCaOptions): Promise<Certificate> {
  const policy = opts.policy ?? DEFAULT_VALIDITY_POLICY;
  await checkAuthority(opts.root, opts.now);
  const spki = await opts.signer.publicKeySpki();
  publicKeyFromSpki(spki, 'issuing CA key');
  const [notBefore, notAfter] = window(opts.now, policy.issuingCaDays, policy, opts.root.certificate);
  return signTbs(opts.root.signer, opts.root.certificate.spki.der, {
    issuerName: opts.root.certificate.subject.der,
    subjectName: encodeName(opts.subject),
    spki,
    notBefore,
    notAfter,
    extensions: caExtensions(spki, 0, authorityKeyIdFor(opts.root.certificate)),
  });
}

function leafExtensions(ca: CertificateAuthority, spki: Uint8Array, eku: readonly string[], san: Uint8Array): Uint8Array[] {
  return [
    // RFC 5280 §4.2.1.9: an end entity; the empty SEQUENCE is cA FALSE (the DEFAULT).
    encodeExtension(OID.basicConstraints, true, encodeBasicConstraints({ ca: false })),
    // TLS 1.3 and DTLS 1.3 authenticate with signatures only: digitalSignature and nothing else.
    encodeExtension(OID.keyUsage, true, encodeKeyUsage(['digitalSignature'])),
    encodeExtension(OID.extKeyUsage, false, encodeExtKeyUsage(eku)),
    encodeExtension(OID.subjectAltName, false, san),
    encodeExtension(OID.subjectKeyIdentifier, false, encodeSubjectKeyId(keyIdentifier(parseSpki(parseOne(spki, TAG.SEQUENCE, 'SPKI'), 'SPKI').publicKey))),
    encodeExtension(OID.authorityKeyIdentifier, false, encodeAuthorityKeyId(authorityKeyIdFor(ca.certificate))),
  ];
}

function asCsr(csr: Csr | Uint8Array): Csr {
  return csr instanceof Uint8Array ? parseCsr(csr) : csr;
}

export interface DeviceCertificateOptions {
  readonly ca: CertificateAuthority;
  /** The device's CSR (DER or parsed): its signature is the proof that the device holds the key. */
  readonly csr: Csr | Uint8Array;
  readonly deviceId: string;
  readonly now: number;
  readonly policy?: ValidityPolicy;
  /** Subject O; defaults to the issuing CA's organisation. */
  readonly organization?: string;
}

/**
 * A device identity certificate. The device id goes into the subject CN and the URI SAN
 * `urn:dev:vitalseal:<id>`; the key must be ECDSA P-256 (DESIGN.md "Keys"). A CSR that names a
 * different device (CN or requested device URI) is refused.
 */
export async function issueDeviceCertificate(opts: DeviceCertificateOptions): Promise<Certificate> {
  const policy = opts.policy ?? DEFAULT_VALIDITY_POLICY;
  const deviceId = checkDeviceId(opts.deviceId);
  await checkAuthority(opts.ca, opts.now);
  const csr = asCsr(opts.csr);
  const key = publicKeyFromSpki(csr.spki.der, 'device key');
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new CertificateError('unsupported-algorithm', 'device identity keys must be ECDSA P-256');
  }
  const csrCn = commonNameOf(csr.subject);
  if (csrCn !== undefined && csrCn !== deviceId) {
    throw new CertificateError('device-id-mismatch', `CSR subject CN ${JSON.stringify(csrCn)} is not device ${JSON.stringify(deviceId)}`);
  }
  for (const uri of csr.requestedExtensions.subjectAltName?.uris ?? []) {
    if (uri.toLowerCase().startsWith(DEVICE_ID_URN_PREFIX) && uri !== deviceIdUri(deviceId)) {
      throw new CertificateError('device-id-mismatch', `CSR asks for ${JSON.stringify(uri)}, not device ${JSON.stringify(deviceId)}`);
    }
  }
  const organization = opts.organization ?? opts.ca.certificate.subject.attributes.find((a) => a.type === OID.organization)?.value;
  const [notBefore, notAfter] = window(opts.now, policy.deviceDays, policy, opts.ca.certificate);
  return signTbs(opts.ca.signer, opts.ca.certificate.spki.der, {
    issuerName: opts.ca.certificate.subject.der,
    subjectName: encodeName({ ...(organization === undefined ? {} : { organization }), commonName: deviceId }),
    spki: csr.spki.der,
    notBefore,
    notAfter,
    extensions: leafExtensions(opts.ca, csr.spki.der, [OID.clientAuth], encodeGeneralNames({ uris: [deviceIdUri(deviceId)] })),
  });
}

export interface ServiceCertificateOptions {
  readonly ca: CertificateAuthority;
  readonly csr: Csr | Uint8Array;
  /** DNS names for the SAN; the first (or the first IP) becomes the subject CN. */
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
  /** Also allow client authentication (a service that connects to the broker as a client). */
  readonly clientAuth?: boolean;
  readonly now: number;
  readonly policy?: ValidityPolicy;
  readonly organization?: string;
}

/** A service certificate (serverAuth) for an ingest listener or the MQTT broker. */
export async function issueServiceCertificate(opts: ServiceCertificateOptions): Promise<Certificate> {
  const policy = opts.policy ?? DEFAULT_VALIDITY_POLICY;
  await checkAuthority(opts.ca, opts.now);
  const csr = asCsr(opts.csr);
  publicKeyFromSpki(csr.spki.der, 'service key');
  const dns = opts.dnsNames ?? [];
  const ips = opts.ipAddresses ?? [];
  if (dns.length + ips.length === 0) throw new RangeError('issueServiceCertificate: give at least one DNS name or IP address');
  const san = encodeGeneralNames({ dns, ips });
  // The CN repeats the first name for tools that show only the subject; RFC 5280 caps it at 64.
  const first = (dns[0] ?? ips[0] ?? '').toLowerCase();
  const commonName = first.length <= 64 ? first : undefined;
  const organization = opts.organization ?? opts.ca.certificate.subject.attributes.find((a) => a.type === OID.organization)?.value;
  const [notBefore, notAfter] = window(opts.now, policy.serviceDays, policy, opts.ca.certificate);
  const eku = opts.clientAuth === true ? [OID.serverAuth, OID.clientAuth] : [OID.serverAuth];
  return signTbs(opts.ca.signer, opts.ca.certificate.spki.der, {
    issuerName: opts.ca.certificate.subject.der,
    subjectName: encodeName({
      ...(organization === undefined ? {} : { organization }),
      ...(commonName === undefined ? {} : { commonName }),
    }),
    spki: csr.spki.der,
    notBefore,
    notAfter,
    extensions: leafExtensions(opts.ca, csr.spki.der, eku, san),
  });
}
