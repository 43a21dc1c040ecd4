/**
 * PKI benchmarks, each against a baseline measured in the same run:
 *  - chain validation (device leaf + issuing CA to a pre-parsed root) by `validateChain`, against
 *    node:crypto `X509Certificate` parsing the same two certificates and `verify`ing both
 *    signatures (OpenSSL doing the bare minimum: no EKU, device id, name or policy checks);
 *  - the same with a CRL check (parsed CRL, verified once and cached, as a relying party keeps it);
 *  - CSR + issue latency through `Signer`s (in-memory P-256 keys), against @peculiar/x509 making the
 *    same CSR and certificate with WebCrypto keys.
 */
import { X509Certificate, generateKeyPairSync, webcrypto } from 'node:crypto';
import * as px509 from '@peculiar/x509';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { parseCertificate } from '../../src/pki/certificate.ts';
import { createCrl, parseCrl } from '../../src/pki/crl.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { createIssuingCa, createRootCa, issueDeviceCertificate } from '../../src/pki/issue.ts';
import { DAY_MS } from '../../src/pki/policy.ts';
import { validateChain } from '../../src/pki/validate.ts';
import { compareLatency, compareRates, windows } from './measure.ts';
import type { BenchContext, BenchResult } from './types.ts';

(px509.cryptoProvider.set as (crypto: unknown) => unknown).call(px509.cryptoProvider, webcrypto);

const p256 = () => keyObjectSigner(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const w = windows(ctx.quick);
  const now = Date.now();
  const rootSigner = p256();
  const issuingSigner = p256();
  const root = await createRootCa({ signer: rootSigner, subject: { organization: 'Bench Fleet', commonName: 'Bench Root' }, now });
  const issuing = await createIssuingCa({ root: { certificate: root, signer: rootSigner }, signer: issuingSigner, subject: { organization: 'Bench Fleet', commonName: 'Bench Issuing' }, now });
  const ca = { certificate: issuing, signer: issuingSigner };
  const csr = await createCsr({ signer: p256(), subject: { commonName: 'bed-7' }, deviceId: 'bed-7' });
  const leaf = await issueDeviceCertificate({ ca, csr, deviceId: 'bed-7', now });
  const chain = [leaf.der, issuing.der];
  const roots = [parseCertificate(root.der)];
  const crl = parseCrl(await createCrl({ ca, revoked: [{ serialHex: 'aa', revokedAt: now }], crlNumber: 1, now, nextUpdate: now + DAY_MS }));

  // Many devices, one issuing CA: more distinct leaves than the key cache holds, so every leaf key
  // is decoded afresh (the realistic ingest case); the issuing CA's key stays cached.
  const DEVICES = 512;
  const fleet: Uint8Array[] = [];
  for (let n = 0; n < DEVICES; n++) {
    const c = await createCsr({ signer: p256(), subject: {} });
    fleet.push((await issueDeviceCertificate({ ca, csr: c, deviceId: `bed-${n}`, now })).der);
  }
  let iOurs = 0;
  let iNode = 0;

  const nodeRoot = new X509Certificate(root.der);
  const nodeBaseline = () => {
    const l = new X509Certificate(leaf.der);
    const i = new X509Certificate(issuing.der);
    if (!l.verify(i.publicKey) || !i.verify(nodeRoot.publicKey)) throw new Error('baseline chain did not verify');
  };
  const ours = () => {
    validateChain(chain, { roots, now, purpose: 'client', expectedDeviceId: 'bed-7' });
  };
  const oursCrl = () => {
    validateChain(chain, { roots, now, purpose: 'client', expectedDeviceId: 'bed-7', revocation: { crls: [crl] } });
  };
  const oursFleet = () => {
    validateChain([fleet[iOurs++ % DEVICES] as Uint8Array, issuing.der], { roots, now, purpose: 'client' });
  };
  const nodeFleet = () => {
    const l = new X509Certificate(fleet[iNode++ % DEVICES] as Uint8Array);
    const i = new X509Certificate(issuing.der);
    if (!l.verify(i.publicKey) || !i.verify(nodeRoot.publicKey)) throw new Error('baseline chain did not verify');
  };
  ctx.log('chain validation ...');
  const vf = compareRates(oursFleet, nodeFleet, w);
  const v = compareRates(ours, nodeBaseline, w);
  const vc = compareRates(oursCrl, nodeBaseline, w);

  // CSR + issue, through Signers, against @peculiar/x509 over WebCrypto.
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const pxIssuerKeys = await webcrypto.subtle.generateKey(alg, false, ['sign', 'verify']);
  const pxIssuer = await px509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=Bench Issuing', keys: pxIssuerKeys, signingAlgorithm: alg, notBefore: new Date(now), notAfter: new Date(now + 365 * DAY_MS),
    extensions: [new px509.BasicConstraintsExtension(true, 0, true), new px509.KeyUsagesExtension(px509.KeyUsageFlags.keyCertSign | px509.KeyUsageFlags.cRLSign, true)],
  });
  const deviceSigner = p256();
  const pxDeviceKeys = await webcrypto.subtle.generateKey(alg, false, ['sign', 'verify']);
  const oursIssue = async () => {
    const c = await createCsr({ signer: deviceSigner, subject: { commonName: 'bed-7' }, deviceId: 'bed-7' });
    await issueDeviceCertificate({ ca, csr: c, deviceId: 'bed-7', now });
  };
  const pxIssue = async () => {
    const req = await px509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=bed-7', keys: pxDeviceKeys, signingAlgorithm: alg,
      extensions: [new px509.SubjectAlternativeNameExtension([{ type: 'url', value: 'urn:dev:vitalseal:bed-7' }])] });
    if (!(await req.verify())) throw new Error('baseline CSR did not verify');
    await px509.X509CertificateGenerator.create({
      serialNumber: '0102030405060708', subject: 'CN=bed-7', issuer: pxIssuer.subject, notBefore: new Date(now), notAfter: new Date(now + 365 * DAY_MS),
      signingAlgorithm: alg, publicKey: req.publicKey, signingKey: pxIssuerKeys.privateKey,
      extensions: [
        new px509.BasicConstraintsExtension(false, undefined, true),
        new px509.KeyUsagesExtension(px509.KeyUsageFlags.digitalSignature, true),
        new px509.ExtendedKeyUsageExtension([px509.ExtendedKeyUsage.clientAuth]),
        new px509.SubjectAlternativeNameExtension([{ type: 'url', value: 'urn:dev:vitalseal:bed-7' }]),
      ],
    });
  };
  ctx.log('CSR + issue ...');
  const iss = await compareLatency(oursIssue, pxIssue, w);

  return [
    {
      name: `pki validateChain, ${DEVICES} devices round robin`,
      unit: 'chains/s',
      value: vf.value,
      baseline: { name: 'node:crypto X509Certificate parse + verify ×2', value: vf.baseline },
      ratio: vf.value / vf.baseline,
      // validateChain does strictly more (profile, device id, path rules) and also decodes the leaf
      // key it returns; half of OpenSSL's bare parse-and-verify rate is the floor we hold.
      target: { ratio: 0.5, comparison: '>=' },
      meta: { checks: 'path, signatures, validity, CA constraints, EKU, device id; leaf key decoded each time' },
    },
    {
      name: 'pki validateChain, one device reconnecting',
      unit: 'chains/s',
      value: v.value,
      baseline: { name: 'node:crypto X509Certificate parse + verify ×2', value: v.baseline },
      ratio: v.value / v.baseline,
      meta: { checks: 'path, signatures, validity, CA constraints, EKU, device id', leafBytes: leaf.der.length, issuingBytes: issuing.der.length },
    },
    {
      name: 'pki validateChain + CRL check',
      unit: 'chains/s',
      value: vc.value,
      baseline: { name: 'node:crypto X509Certificate parse + verify ×2', value: vc.baseline },
      ratio: vc.value / vc.baseline,
    },
    {
      name: 'pki CSR + issue device certificate (P-256 Signers)',
      unit: 'ms',
      value: iss.value,
      baseline: { name: '@peculiar/x509 CSR + certificate (WebCrypto)', value: iss.baseline },
      ratio: iss.value / iss.baseline,
      target: { ratio: 1, comparison: '<=' },
    },
  ];
}
