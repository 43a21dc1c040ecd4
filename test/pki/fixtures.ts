/**
 * A fleet PKI built in memory for tests: keys generated at test time, a fixed start time, and
 * helpers to issue device and service certificates.
 */
import { generateKeyPairSync } from 'node:crypto';
import { keyObjectSigner, type Signer } from '../../src/keystore/signer.ts';
import type { Certificate } from '../../src/pki/certificate.ts';
import { createCsr } from '../../src/pki/csr.ts';
import {
  createIssuingCa, createRootCa, issueDeviceCertificate, issueServiceCertificate, type CertificateAuthority,
} from '../../src/pki/issue.ts';
import type { ValidityPolicy } from '../../src/pki/policy.ts';

/** 2030-01-01T00:00:00Z: tests never depend on the machine's clock. */
export const T0 = Date.UTC(2030, 0, 1);

export function p256Signer(): Signer {
  return keyObjectSigner(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
}

export function ed25519Signer(): Signer {
  return keyObjectSigner(generateKeyPairSync('ed25519').privateKey);
}

export interface TestPki {
  readonly now: number;
  readonly root: Certificate;
  readonly rootCa: CertificateAuthority;
  readonly issuing: Certificate;
  readonly ca: CertificateAuthority;
  device(id: string, opts?: { now?: number; signer?: Signer }): Promise<{ cert: Certificate; signer: Signer }>;
  service(names: { dnsNames?: string[]; ipAddresses?: string[]; clientAuth?: boolean }, opts?: { signer?: Signer }): Promise<{ cert: Certificate; signer: Signer }>;
}

export async function makePki(opts: { now?: number; policy?: ValidityPolicy; caSigner?: () => Signer } = {}): Promise<TestPki> {
  const now = opts.now ?? T0;
  const mk = opts.caSigner ?? p256Signer;
  const policy = opts.policy === undefined ? {} : { policy: opts.policy };
  const rootSigner = mk();
  const issuingSigner = mk();
  const root = await createRootCa({ signer: rootSigner, subject: { organization: 'Test Fleet', commonName: 'Test Fleet Root CA' }, now, ...policy });
  const rootCa = { certificate: root, signer: rootSigner };
  const issuing = await createIssuingCa({ root: rootCa, signer: issuingSigner, subject: { organization: 'Test Fleet', commonName: 'Test Fleet Issuing CA 1' }, now, ...policy });
  const ca = { certificate: issuing, signer: issuingSigner };
  return {
    now,
    root,
    rootCa,
    issuing,
    ca,
    async device(id, o = {}) {
      const signer = o.signer ?? p256Signer();
      const csr = await createCsr({ signer, subject: { commonName: id }, deviceId: id });
      return { cert: await issueDeviceCertificate({ ca, csr, deviceId: id, now: o.now ?? now, ...policy }), signer };
    },
    async service(names, o = {}) {
      const signer = o.signer ?? p256Signer();
      const csr = await createCsr({ signer, subject: { commonName: names.dnsNames?.[0] ?? 'service' } });
      return { cert: await issueServiceCertificate({ ca, csr, ...names, now, ...policy }), signer };
    },
  };
}
