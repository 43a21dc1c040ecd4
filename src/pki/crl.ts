/**
 * Certificate revocation lists (RFC 5280 §5): X.509 v2 CRLs signed through the issuing CA's
 * `Signer`, and a strict parser. A CRL written here is what mosquitto's `crlfile` loads and what
 * `openssl verify -crl_check` reads; `validateChain` checks peers against parsed CRLs.
 *
 * Only complete, direct CRLs are supported: a CRL with a critical extension we do not process
 * (delta CRL indicator, issuing distribution point) is refused as a whole (RFC 5280 §5.2, §6.3.3).
 *
 * @example
 *   const crl = await createCrl({ ca, revoked: [{ serialHex, revokedAt: now, reason: 'keyCompromise' }], crlNumber: 7, now, nextUpdate: now + 7 * DAY_MS });
 *   const parsed = parseCrl(crl);
 *   parsed.revoked.has(serialHex);   // true
 */
import type { KeyObject } from 'node:crypto';
import { fromHex, toHex } from '../util/bytes.ts';
import { CertificateError } from '../util/errors.ts';
import { parseSignatureAlgorithm, publicKeyFromSpki, signatureAlgorithmFor, verifySignature, type SignatureAlgorithm } from './algorithms.ts';
import { authorityKeyIdFor, sameBytes, type Certificate } from './certificate.ts';
import {
  bits, children, ctx, DerReader, explicit, malformed, parseOne, readIntegerBytes, readOctetAlignedBits, readSmallInt, readTime,
  seq, TAG, time, tlv, uint,
} from './der.ts';
import { encodeAuthorityKeyId, encodeExtension, parseExtensions } from './extensions.ts';
import type { CertificateAuthority } from './issue.ts';
import { parseName, type Name } from './name.ts';
import { OID } from './oids.ts';

/** RFC 5280 §5.3.1 reason codes (value 7 is unused). */
export const REVOCATION_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  removeFromCRL: 8,
  privilegeWithdrawn: 9,
  aACompromise: 10,
} as const;
export type RevocationReason = keyof typeof REVOCATION_REASONS;

export function isRevocationReason(s: string): s is RevocationReason {
  return Object.hasOwn(REVOCATION_REASONS, s);
}

export interface RevokedEntry {
  /** Lower-case hex of the serial number's INTEGER content octets (as `Certificate.serialHex`). */
  readonly serialHex: string;
  readonly revokedAt: number;
  readonly reason?: RevocationReason;
}

/** A CRL of this size is refused before parsing (about 200 000 entries). */
export const MAX_CRL_BYTES = 8 * 1024 * 1024;
const MAX_CRL_ENTRIES = 250_000;
const ENUMERATED = 0x0a;

export interface CrlOptions {
  readonly ca: CertificateAuthority;
  readonly revoked: readonly RevokedEntry[];
  /** RFC 5280 §5.2.3: monotonically increasing per issuer. */
  readonly crlNumber: number;
  readonly now: number;
  /** When the next CRL will be issued; relying parties treat this CRL as stale after it. */
  readonly nextUpdate: number;
}

/** Builds and signs a CRL; the signature is checked against the CA certificate before returning. */
export async function createCrl(opts: CrlOptions): Promise<Uint8Array> {
  if (!(opts.nextUpdate > opts.now)) throw new RangeError('createCrl: nextUpdate must be after now');
  const spki = await opts.ca.signer.publicKeySpki();
  if (!sameBytes(spki, opts.ca.certificate.spki.der)) throw new CertificateError('bad-signature', 'CA signer key does not match the CA certificate');
  const ku = opts.ca.certificate.extensions.keyUsage;
  // RFC 5280 §4.2.1.3: a CRL issuer's key usage asserts cRLSign.
  if (ku !== undefined && !ku.has('cRLSign')) throw new CertificateError('wrong-purpose', 'the CA certificate does not allow cRLSign');
  const alg = signatureAlgorithmFor(opts.ca.signer.scheme);
  const seen = new Set<string>();
  const entries = [...opts.revoked]
    .sort((a, b) => a.revokedAt - b.revokedAt || (a.serialHex < b.serialHex ? -1 : 1))
    .map((e) => {
      if (seen.has(e.serialHex)) throw new RangeError(`createCrl: serial ${e.serialHex} listed twice`);
      seen.add(e.serialHex);
      const serial = fromHex(e.serialHex);
      // The serial INTEGER is written with exactly the content octets the certificate carries.
      const fields = [tlv(TAG.INTEGER, serial), time(e.revokedAt)];
      // RFC 5280 §5.3.1: "unspecified" SHOULD be expressed by omitting the extension.
      if (e.reason !== undefined && e.reason !== 'unspecified') {
        fields.push(seq(encodeExtension(OID.crlReason, false, tlv(ENUMERATED, Uint8Array.of(REVOCATION_REASONS[e.reason])))));
      }
      readIntegerBytes(parseOne(fields[0] as Uint8Array, TAG.INTEGER, 'serial'), `serial ${e.serialHex}`);
      return seq(...fields);
    });
  const tbs = seq(
    uint(1), // RFC 5280 §5.1.2.1: v2
    alg,
    opts.ca.certificate.subject.der,
    time(opts.now),
    time(opts.nextUpdate),
    // RFC 5280 §5.1.2.6: with no revoked certificates the list is absent, not empty.
    ...(entries.length > 0 ? [seq(...entries)] : []),
    explicit(0, seq(
      encodeExtension(OID.authorityKeyIdentifier, false, encodeAuthorityKeyId(authorityKeyIdFor(opts.ca.certificate))),
      encodeExtension(OID.crlNumber, false, uint(opts.crlNumber)),
    )),
  );
  const signature = await opts.ca.signer.sign(tbs);
  const der = seq(tbs, alg, bits(signature));
  const parsed = parseCrl(der);
  if (!crlSignedBy(parsed, opts.ca.certificate)) throw new CertificateError('bad-signature', 'the CA signer produced a CRL signature that does not verify');
  return der;
}

export interface Crl {
  readonly der: Uint8Array;
  readonly tbs: Uint8Array;
  readonly issuer: Name;
  readonly thisUpdate: number;
  readonly nextUpdate?: number;
  readonly crlNumber?: bigint;
  readonly authorityKeyId?: Uint8Array;
  readonly signatureAlgorithm: SignatureAlgorithm;
  readonly signatureValue: Uint8Array;
  /** By serial hex. */
  readonly revoked: ReadonlyMap<string, RevokedEntry>;
  /** Critical CRL or entry extensions we do not process; such a CRL is not used. */
  readonly unhandledCritical: readonly string[];
}

function reasonName(code: number): RevocationReason | undefined {
  for (const [name, value] of Object.entries(REVOCATION_REASONS)) if (value === code) return name as RevocationReason;
  return undefined;
}

export function parseCrl(der: Uint8Array): Crl {
  const what = 'CRL';
  if (!(der instanceof Uint8Array)) throw new TypeError('parseCrl: expected Uint8Array');
  if (der.length > MAX_CRL_BYTES) throw malformed(what, `${der.length} bytes exceeds ${MAX_CRL_BYTES}`);
  const top = new DerReader(der, what);
  const outer = new DerReader(top.expect(TAG.SEQUENCE, what).value, what);
  top.end(what);
  const tbsTlv = outer.expect(TAG.SEQUENCE, 'TBSCertList');
  const signatureAlgorithm = parseSignatureAlgorithm(outer.expect(TAG.SEQUENCE, 'CRL signatureAlgorithm'), 'CRL signatureAlgorithm');
  const signatureValue = readOctetAlignedBits(outer.expect(TAG.BIT_STRING, 'CRL signatureValue'), 'CRL signatureValue');
  outer.end(what);

  const t = new DerReader(tbsTlv.value, 'TBSCertList');
  let version = 1;
  const v = t.optional(TAG.INTEGER, 'CRL version');
  // RFC 5280 §5.1.2.1: if present, the version is v2 (integer 1).
  if (v !== undefined && (version = readSmallInt(v, 'CRL version', 1) + 1) !== 2) throw malformed(what, 'version must be v2 when present');
  const algTlv = t.expect(TAG.SEQUENCE, 'CRL signature');
  if (!sameBytes(algTlv.der, signatureAlgorithm.der)) throw malformed(what, 'TBS signature algorithm differs from the outer one');
  const issuer = parseName(t.expect(TAG.SEQUENCE, 'CRL issuer'), 'CRL issuer');
  const thisUpdate = readTime(t.read('thisUpdate'), 'thisUpdate');
  let nextUpdate: number | undefined;
  const nextTag = t.peekTag();
  if (nextTag === TAG.UTC_TIME || nextTag === TAG.GENERALIZED_TIME) nextUpdate = readTime(t.read('nextUpdate'), 'nextUpdate');
  const unhandledCritical: string[] = [];
  const revoked = new Map<string, RevokedEntry>();
  const list = t.optional(TAG.SEQUENCE, 'revokedCertificates');
  if (list !== undefined) {
    const items = children(list, 'revokedCertificates', MAX_CRL_ENTRIES);
    if (items.length === 0) throw malformed(what, 'empty revokedCertificates must be absent');
    for (const item of items) {
      if (item.tag !== TAG.SEQUENCE) throw malformed(what, 'revoked entry is not a SEQUENCE');
      const r = new DerReader(item.value, 'revoked entry');
      const serialHex = toHex(readIntegerBytes(r.expect(TAG.INTEGER, 'userCertificate'), 'userCertificate'));
      const revokedAt = readTime(r.read('revocationDate'), 'revocationDate');
      let reason: RevocationReason | undefined;
      const extTlv = r.optional(TAG.SEQUENCE, 'crlEntryExtensions');
      r.end('revoked entry');
      if (extTlv !== undefined) {
        if (version !== 2) throw malformed(what, 'entry extensions in a v1 CRL');
        const ext = parseExtensions(extTlv, 'crlEntryExtensions');
        for (const e of ext.all) {
          if (e.oid === OID.crlReason) {
            const en = parseOne(e.value, ENUMERATED, 'reasonCode');
            reason = reasonName(readSmallInt({ ...en, tag: TAG.INTEGER }, 'reasonCode', 10));
            if (reason === undefined) throw malformed(what, 'unknown reasonCode');
          } else if (e.critical) {
            unhandledCritical.push(e.oid);
          }
        }
      }
      if (revoked.has(serialHex)) throw malformed(what, `serial ${serialHex} listed twice`);
      revoked.set(serialHex, reason === undefined ? { serialHex, revokedAt } : { serialHex, revokedAt, reason });
    }
  }
  let crlNumber: bigint | undefined;
  let authorityKeyId: Uint8Array | undefined;
  const extWrap = t.optional(ctx(0), 'crlExtensions');
  if (extWrap !== undefined) {
    if (version !== 2) throw malformed(what, 'extensions in a v1 CRL');
    const r = new DerReader(extWrap.value, 'crlExtensions');
    const ext = parseExtensions(r.expect(TAG.SEQUENCE, 'crlExtensions'), 'crlExtensions');
    r.end('crlExtensions');
    authorityKeyId = ext.authorityKeyId;
    for (const e of ext.all) {
      if (e.oid === OID.crlNumber) {
        const n = readIntegerBytes(parseOne(e.value, TAG.INTEGER, 'cRLNumber'), 'cRLNumber');
        // RFC 5280 §5.2.3: a non-negative integer of at most 20 octets.
        if (((n[0] as number) & 0x80) !== 0 || n.length > 21) throw malformed(what, 'cRLNumber out of range');
        crlNumber = BigInt(`0x${toHex(n)}`);
      } else if (e.critical && e.oid !== OID.authorityKeyIdentifier) {
        unhandledCritical.push(e.oid);
      }
    }
  }
  t.end('TBSCertList');
  return {
    der,
    tbs: tbsTlv.der,
    issuer,
    thisUpdate,
    ...(nextUpdate === undefined ? {} : { nextUpdate }),
    ...(crlNumber === undefined ? {} : { crlNumber }),
    ...(authorityKeyId === undefined ? {} : { authorityKeyId }),
    signatureAlgorithm,
    signatureValue,
    revoked,
    unhandledCritical,
  };
}

// A CRL is verified once per issuer key; relying parties keep parsed CRLs and check many peers.
const verifiedBy = new WeakMap<Crl, Map<string, boolean>>();

/** True if `crl` names `issuer` as its issuer and carries a valid signature by its key. */
export function crlSignedBy(crl: Crl, issuer: Certificate, issuerKey?: KeyObject): boolean {
  if (!sameBytes(crl.issuer.der, issuer.subject.der)) return false;
  const ski = issuer.extensions.subjectKeyId;
  if (crl.authorityKeyId !== undefined && ski !== undefined && !sameBytes(crl.authorityKeyId, ski)) return false;
  let cache = verifiedBy.get(crl);
  if (cache === undefined) {
    cache = new Map();
    verifiedBy.set(crl, cache);
  }
  const cacheKey = toHex(issuer.spki.der);
  let ok = cache.get(cacheKey);
  if (ok === undefined) {
    const key = issuerKey ?? publicKeyFromSpki(issuer.spki.der, 'CRL issuer key');
    ok = verifySignature(crl.signatureAlgorithm, key, crl.tbs, crl.signatureValue, 'CRL');
    cache.set(cacheKey, ok);
  }
  return ok;
}
