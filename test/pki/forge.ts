/**
 * Builds certificates the fleet CA would never issue (wrong extensions, weak algorithms, odd
 * names), signed by a test key, so each validation check can be shown to fail on its own.
 */
import type { Signer } from '../../src/keystore/signer.ts';
import { parseSpki, signatureAlgorithmFor } from '../../src/pki/algorithms.ts';
import { authorityKeyIdFor, keyIdentifier, parseCertificate, type Certificate } from '../../src/pki/certificate.ts';
import { bits, explicit, oid, parseOne, seq, TAG, time, uint, uintBytes } from '../../src/pki/der.ts';
import {
  encodeAuthorityKeyId, encodeBasicConstraints, encodeExtension, encodeExtKeyUsage, encodeGeneralNames, encodeKeyUsage,
  encodeSubjectKeyId, type KeyUsage,
} from '../../src/pki/extensions.ts';
import { encodeName, type NameSpec } from '../../src/pki/name.ts';
import { OID } from '../../src/pki/oids.ts';
import { randomSerial } from '../../src/pki/issue.ts';

export interface ForgeOptions {
  /** The signing CA (certificate + signer); omit for a self-signed certificate (then `signer` signs). */
  readonly issuer?: { readonly certificate: Certificate; readonly signer: Signer };
  /** The subject's key (its SPKI goes into the certificate; signs when self-signed). */
  readonly signer: Signer;
  readonly subject: NameSpec | Uint8Array;
  readonly notBefore: number;
  readonly notAfter: number;
  /** Extensions as DER (use `ext`); default none. */
  readonly extensions?: readonly Uint8Array[];
  /** Override the signature AlgorithmIdentifier OID (the signature is still made by the signer). */
  readonly sigAlgOid?: string;
}

/** The forged certificate's DER (it may not parse: that is sometimes the point). */
export async function forgeDer(o: ForgeOptions): Promise<Uint8Array> {
  const spki = await o.signer.publicKeySpki();
  const subjectName = o.subject instanceof Uint8Array ? o.subject : encodeName(o.subject);
  const signer = o.issuer?.signer ?? o.signer;
  const issuerName = o.issuer?.certificate.subject.der ?? subjectName;
  const alg = o.sigAlgOid === undefined ? signatureAlgorithmFor(signer.scheme) : seq(oid(o.sigAlgOid));
  const exts = o.extensions ?? [];
  const tbs = seq(
    explicit(0, uint(2)),
    uintBytes(randomSerial()),
    alg,
    issuerName,
    seq(time(o.notBefore), time(o.notAfter)),
    subjectName,
    spki,
    ...(exts.length > 0 ? [explicit(3, seq(...exts))] : []),
  );
  return seq(tbs, alg, bits(await signer.sign(tbs)));
}

export async function forge(o: ForgeOptions): Promise<Certificate> {
  return parseCertificate(await forgeDer(o));
}

/** Extension builders for forged certificates. */
export const ext = {
  ca: (pathLen?: number) => encodeExtension(OID.basicConstraints, true, encodeBasicConstraints(pathLen === undefined ? { ca: true } : { ca: true, pathLen })),
  endEntity: () => encodeExtension(OID.basicConstraints, true, encodeBasicConstraints({ ca: false })),
  keyUsage: (...u: KeyUsage[]) => encodeExtension(OID.keyUsage, true, encodeKeyUsage(u)),
  eku: (...oids: string[]) => encodeExtension(OID.extKeyUsage, false, encodeExtKeyUsage(oids)),
  san: (names: { dns?: string[]; uris?: string[]; ips?: string[] }) => encodeExtension(OID.subjectAltName, false, encodeGeneralNames(names)),
  ski: async (signer: Signer) => {
    const spki = parseSpki(parseOne(await signer.publicKeySpki(), TAG.SEQUENCE, 'spki'), 'spki');
    return encodeExtension(OID.subjectKeyIdentifier, false, encodeSubjectKeyId(keyIdentifier(spki.publicKey)));
  },
  aki: (issuer: Certificate) => encodeExtension(OID.authorityKeyIdentifier, false, encodeAuthorityKeyId(authorityKeyIdFor(issuer))),
  raw: (extOid: string, critical: boolean, value: Uint8Array) => encodeExtension(extOid, critical, value),
};

/** The usual extensions of a device certificate, for forging variations of it. */
export function deviceExtensions(issuer: Certificate, id: string): Uint8Array[] {
  return [ext.endEntity(), ext.keyUsage('digitalSignature'), ext.eku(OID.clientAuth), ext.san({ uris: [`urn:dev:vitalseal:${id}`] }), ext.aki(issuer)];
}

export { seq, oid };
