/**
 * An in-memory fleet PKI for tests, benchmarks and the demo: a root and an issuing CA (P-256 keys in
 * memory), device and service certificates issued through `src/pki`, CRLs. Nothing is written to
 * disk; keys are generated when this runs (never committed).
 *
 * @example
 *   const fleet = await createTestFleet('Ward 7 Fleet');
 *   const broker = await fleet.service({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
 *   const bed7 = await fleet.device('bed-7');
 *   const crl = await fleet.crlPem();
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { keyObjectSigner, type Signer } from '../../src/keystore/signer.ts';
import type { Certificate } from '../../src/pki/certificate.ts';
import { createCrl, type RevokedEntry } from '../../src/pki/crl.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { createIssuingCa, createRootCa, issueDeviceCertificate, issueServiceCertificate, type CertificateAuthority } from '../../src/pki/issue.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { validityPolicy, type ValidityPolicy } from '../../src/pki/policy.ts';

const DAY = 86_400_000;

export interface IssuedIdentity {
  readonly cert: Certificate;
  /** Leaf + issuing CA, PEM: what the holder presents in TLS. */
  readonly certChainPem: string;
  /** Present when this module generated the key (not for keys held in a key store). */
  readonly key?: KeyObject;
  readonly keyPem?: string;
}

export interface TestFleet {
  readonly root: Certificate;
  readonly issuing: Certificate;
  readonly rootPem: string;
  /** Issuing CA + root, PEM (mosquitto's cafile). */
  readonly caChainPem: string;
  readonly authority: CertificateAuthority;
  /** A device certificate; with `signer` the key stays where the signer keeps it. */
  device(id: string, opts?: { signer?: Signer; now?: number; policy?: ValidityPolicy }): Promise<IssuedIdentity>;
  service(names: { dnsNames?: readonly string[]; ipAddresses?: readonly string[]; clientAuth?: boolean }): Promise<IssuedIdentity>;
  /** Adds the serial to the revoked set and returns the new CRL (PEM). */
  revoke(serialHex: string): Promise<string>;
  /** A current CRL listing everything revoked so far (PEM). */
  crlPem(): Promise<string>;
}

function newKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
}

/**
 * A new fleet. `validFromDaysAgo` backdates the CAs, so certificates that have already expired can
 * be issued (mosquitto and OpenSSL judge validity by the machine's clock).
 */
export async function createTestFleet(organization: string, opts: { validFromDaysAgo?: number } = {}): Promise<TestFleet> {
  const created = Date.now() - (opts.validFromDaysAgo ?? 30) * DAY;
  const rootSigner = keyObjectSigner(newKey());
  const issuingSigner = keyObjectSigner(newKey());
  const root = await createRootCa({ signer: rootSigner, now: created, subject: { organization, commonName: `${organization} Root CA` } });
  const issuing = await createIssuingCa({
    root: { certificate: root, signer: rootSigner }, signer: issuingSigner, now: created,
    subject: { organization, commonName: `${organization} Issuing CA 1` },
  });
  const authority: CertificateAuthority = { certificate: issuing, signer: issuingSigner };
  const revoked: RevokedEntry[] = [];
  let crlNumber = 0;
  const chain = (leaf: Certificate) => pemEncode('CERTIFICATE', leaf.der) + pemEncode('CERTIFICATE', issuing.der);
  const crlPem = async () => {
    const now = Date.now();
    crlNumber += 1;
    return pemEncode('X509 CRL', await createCrl({ ca: authority, revoked, crlNumber, now, nextUpdate: now + 7 * DAY }));
  };
  return {
    root,
    issuing,
    rootPem: pemEncode('CERTIFICATE', root.der),
    caChainPem: pemEncode('CERTIFICATE', issuing.der) + pemEncode('CERTIFICATE', root.der),
    authority,
    async device(id, o = {}) {
      const key = o.signer === undefined ? newKey() : undefined;
      const signer = o.signer ?? keyObjectSigner(key as KeyObject);
      const csr = await createCsr({ signer, subject: { commonName: id }, deviceId: id });
      const cert = await issueDeviceCertificate({ ca: authority, csr, deviceId: id, now: o.now ?? Date.now(), ...(o.policy === undefined ? {} : { policy: o.policy }) });
      return key === undefined
        ? { cert, certChainPem: chain(cert) }
        : { cert, certChainPem: chain(cert), key, keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString() };
    },
    async service(names) {
      const key = newKey();
      const csr = await createCsr({ signer: keyObjectSigner(key), subject: {} });
      const cert = await issueServiceCertificate({ ca: authority, csr, ...names, now: Date.now() });
      return { cert, certChainPem: chain(cert), key, keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString() };
    },
    async revoke(serialHex) {
      revoked.push({ serialHex, revokedAt: Date.now(), reason: 'keyCompromise' });
      return crlPem();
    },
    crlPem,
  };
}

/** A policy whose device certificates live one day: with `now` in the past, an expired certificate. */
export const ONE_DAY_DEVICES = validityPolicy({ deviceDays: 1 });
