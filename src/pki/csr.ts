/**
 * PKCS#10 certification requests (RFC 2986), signed through a `Signer` so a device's TPM or PKCS#11
 * key signs its own request without leaving the hardware; and a strict parser that checks the
 * proof of possession (the request's signature under its own key).
 *
 * @example
 *   const signer = await store.createSigningKey('device-identity');
 *   const csr = await createCsr({ signer, subject: { commonName: 'bed-7' }, deviceId: 'bed-7' });
 *   const parsed = parseCsr(csr);   // throws CertificateError('bad-signature') if tampered
 */
import type { Signer } from '../keystore/signer.ts';
import { CertificateError } from '../util/errors.ts';
import {
  parseSignatureAlgorithm, parseSpki, publicKeyFromSpki, signatureAlgorithmFor, verifySignature, type SignatureAlgorithm,
  type SubjectPublicKeyInfo,
} from './algorithms.ts';
import { bits, children, ctx, DerReader, malformed, oid, readOctetAlignedBits, readOid, readSmallInt, seq, setOf, TAG, tlv, uint } from './der.ts';
import { deviceIdUri } from './device-id.ts';
import { encodeExtension, encodeGeneralNames, parseExtensions, type Extensions } from './extensions.ts';
import { encodeName, parseName, type Name, type NameSpec } from './name.ts';
import { OID } from './oids.ts';

export const MAX_CSR_BYTES = 16 * 1024;

export interface CsrOptions {
  readonly signer: Signer;
  readonly subject: NameSpec;
  /** Requests the device URI SAN (the CA decides; this only tells an enrolment service what is asked). */
  readonly deviceId?: string;
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
}

/** Builds and signs a CSR. The result is verified before it is returned, so a broken Signer is caught here. */
export async function createCsr(opts: CsrOptions): Promise<Uint8Array> {
  const spki = await opts.signer.publicKeySpki();
  const uris = opts.deviceId === undefined ? [] : [deviceIdUri(opts.deviceId)];
  const attributes: Uint8Array[] = [];
  if (uris.length + (opts.dnsNames?.length ?? 0) + (opts.ipAddresses?.length ?? 0) > 0) {
    const san = encodeGeneralNames({ uris, dns: opts.dnsNames ?? [], ips: opts.ipAddresses ?? [] });
    // RFC 2985 §5.4.2: extensionRequest carries the Extensions the requester asks for.
    attributes.push(seq(oid(OID.extensionRequest), setOf(seq(encodeExtension(OID.subjectAltName, false, san)))));
  }
  const info = seq(
    uint(0), // RFC 2986 §4.1: version 0
    encodeName(opts.subject),
    spki,
    tlv(ctx(0), ...attributes), // [0] IMPLICIT SET OF Attribute (an empty set when none)
  );
  const alg = signatureAlgorithmFor(opts.signer.scheme);
  const signature = await opts.signer.sign(info);
  const der = seq(info, alg, bits(signature));
  parseCsr(der); // verifies the proof of possession
  return der;
}

export interface Csr {
  readonly der: Uint8Array;
  readonly subject: Name;
  readonly spki: SubjectPublicKeyInfo;
  readonly signatureAlgorithm: SignatureAlgorithm;
  /** Extensions asked for in an extensionRequest attribute (informational: the CA decides). */
  readonly requestedExtensions: Extensions;
}

/** Parses a CSR and verifies its signature under its own key (proof of possession). */
export function parseCsr(der: Uint8Array): Csr {
  const what = 'CSR';
  if (!(der instanceof Uint8Array)) throw new TypeError('parseCsr: expected Uint8Array');
  if (der.length > MAX_CSR_BYTES) throw malformed(what, `${der.length} bytes exceeds ${MAX_CSR_BYTES}`);
  const top = new DerReader(der, what);
  const outer = new DerReader(top.expect(TAG.SEQUENCE, what).value, what);
  top.end(what);
  const infoTlv = outer.expect(TAG.SEQUENCE, 'CertificationRequestInfo');
  const signatureAlgorithm = parseSignatureAlgorithm(outer.expect(TAG.SEQUENCE, 'signatureAlgorithm'), 'CSR signatureAlgorithm');
  const signature = readOctetAlignedBits(outer.expect(TAG.BIT_STRING, 'signature'), 'CSR signature');
  outer.end(what);

  const info = new DerReader(infoTlv.value, 'CertificationRequestInfo');
  if (readSmallInt(info.expect(TAG.INTEGER, 'version'), 'CSR version', 0) !== 0) throw malformed(what, 'version is not 0');
  const subject = parseName(info.expect(TAG.SEQUENCE, 'subject'), 'CSR subject');
  const spki = parseSpki(info.expect(TAG.SEQUENCE, 'subjectPKInfo'), 'CSR subjectPKInfo');
  const attrs = info.expect(ctx(0), 'attributes');
  info.end('CertificationRequestInfo');

  let requestedExtensions = parseExtensions(undefined, 'CSR extensions');
  const seenTypes = new Set<string>();
  for (const attr of children(attrs, 'CSR attributes', 16)) {
    if (attr.tag !== TAG.SEQUENCE) throw malformed(what, 'Attribute is not a SEQUENCE');
    const r = new DerReader(attr.value, 'CSR attribute');
    const type = readOid(r.expect(TAG.OID, 'attribute type'), 'CSR attribute type');
    const values = children(r.expect(TAG.SET, 'attribute values'), 'CSR attribute values', 16);
    r.end('CSR attribute');
    if (seenTypes.has(type)) throw malformed(what, `duplicate attribute ${type}`);
    seenTypes.add(type);
    if (type === OID.extensionRequest) {
      const [only] = values;
      if (values.length !== 1 || only === undefined) throw malformed(what, 'extensionRequest must hold one value');
      requestedExtensions = parseExtensions(only, 'CSR extensions');
    }
  }

  const key = publicKeyFromSpki(spki.der, 'CSR public key');
  if (!verifySignature(signatureAlgorithm, key, infoTlv.der, signature, 'CSR')) {
    throw new CertificateError('bad-signature', 'CSR signature does not verify under its own public key (no proof of possession)');
  }
  return { der, subject, spki, signatureAlgorithm, requestedExtensions };
}
