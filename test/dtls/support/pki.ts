/**
 * A throw-away PKI made at test time (nothing is written to disk or committed): a root CA and leaf
 * certificates for servers and devices, with node:crypto key objects and Signers for the leaves.
 */
import { createPrivateKey, webcrypto, type KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { keyObjectSigner, type Signer } from '../../../src/keystore/signer.ts';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKeyPair = webcrypto.CryptoKeyPair;

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;

export interface TestCa {
  readonly pem: string;
  readonly der: Uint8Array;
  readonly name: string;
  readonly keys: CryptoKeyPair;
}

export interface TestLeaf {
  readonly der: Uint8Array;
  readonly pem: string;
  readonly privateKey: KeyObject;
  readonly signer: Signer;
}

export interface LeafOptions {
  readonly keyType?: 'p256' | 'ed25519';
  readonly eku?: 'server' | 'client' | 'both' | 'none';
  readonly notBefore?: Date;
  readonly notAfter?: Date;
  readonly dnsName?: string;
  readonly ip?: string;
}

export async function makeCa(name = 'vitalseal test CA', notAfter = new Date(Date.now() + 86_400_000)): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${name}`,
    notBefore: new Date(Date.now() - 3_600_000),
    notAfter,
    keys,
    signingAlgorithm: SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  return { pem: cert.toString('pem'), der: new Uint8Array(cert.rawData), name, keys };
}

export async function issueLeaf(ca: TestCa, commonName: string, o: LeafOptions = {}): Promise<TestLeaf> {
  const alg = o.keyType === 'ed25519' ? { name: 'Ed25519' } : ECDSA;
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
  ];
  const eku = o.eku ?? 'both';
  if (eku !== 'none') {
    const usages = eku === 'server' ? [x509.ExtendedKeyUsage.serverAuth] : eku === 'client' ? [x509.ExtendedKeyUsage.clientAuth] : [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
    extensions.push(new x509.ExtendedKeyUsageExtension(usages));
  }
  const names: x509.JsonGeneralNames = [];
  if (o.dnsName !== undefined) names.push({ type: 'dns', value: o.dnsName });
  if (o.ip !== undefined) names.push({ type: 'ip', value: o.ip });
  if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names));
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${commonName}`,
    issuer: `CN=${ca.name}`,
    notBefore: o.notBefore ?? new Date(Date.now() - 3_600_000),
    notAfter: o.notAfter ?? new Date(Date.now() + 86_400_000),
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: SIGN,
    extensions,
  });
  const pkcs8 = new Uint8Array(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const privateKey = createPrivateKey({ key: Buffer.from(pkcs8), format: 'der', type: 'pkcs8' });
  return { der: new Uint8Array(cert.rawData), pem: cert.toString('pem'), privateKey, signer: keyObjectSigner(privateKey) };
}

/** An intermediate CA signed by `parent` (for chain tests). */
export async function makeIntermediate(parent: TestCa, name: string): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${name}`,
    issuer: `CN=${parent.name}`,
    notBefore: new Date(Date.now() - 3_600_000),
    notAfter: new Date(Date.now() + 86_400_000),
    publicKey: keys.publicKey,
    signingKey: parent.keys.privateKey,
    signingAlgorithm: SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  return { pem: cert.toString('pem'), der: new Uint8Array(cert.rawData), name, keys };
}
