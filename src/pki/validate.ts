/**
 * Peer certificate validation, the one entry point both transports use: the DTLS 1.3 handshake
 * for the peer's Certificate message, and node:tls (MQTT over TLS) in a post-handshake check
 * (see node-tls.ts).
 *
 * What it checks, in this order (RFC 5280 §6.1, simplified to the fleet's profile):
 *   1. every certificate parses strictly (bounded DER; unsupported algorithms refused);
 *   2. a path from the leaf through the supplied intermediates to a pinned root, each signature
 *      verified (subject/issuer names compared as DER, key identifiers when both are present);
 *   3. no unprocessed critical extension anywhere on the path;
 *   4. every certificate, the root included, is inside its validity window at `now`;
 *   5. CA certificates: basic constraints cA, keyCertSign, path length (root included);
 *   6. the leaf: not a CA, digitalSignature if key usage is present, the purpose's EKU (required),
 *      and any EKU on a CA allows the purpose too;
 *   7. the server name (purpose 'server', if asked for), against DNS/IP SANs only;
 *   8. the device id (purpose 'client' requires one): URI SAN and CN agree, and equal the expected id;
 *   9. SPKI pins: the SHA-256 of the leaf's or one of its CAs' SPKI is pinned (RFC 7469 §2.6);
 *  10. revocation: CRLs signed by the issuer and current at `now`, and/or a registry callback.
 * The first failure throws a `CertificateError` whose `code` says which check failed.
 *
 * The function is synchronous and does no I/O (a sans-I/O handshake can call it); time comes from
 * the caller's injected clock. Registries that live in a database are cached in memory by the
 * caller (the callback is synchronous for that reason).
 *
 * @example
 *   const roots = [parseCertificate(rootDer)];
 *   const peer = validateChain([leafDer, issuingDer], { roots, now: clock.now(), purpose: 'client', revocation: { crls: [parseCrl(crlDer)] } });
 *   peer.deviceId;   // 'bed-7'
 */
import { createHash, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { CertificateError } from '../util/errors.ts';
import { publicKeyFromSpki, verifySignature } from './algorithms.ts';
import { parseCertificate, sameBytes, spkiSha256, type Certificate } from './certificate.ts';
import { crlSignedBy, type Crl } from './crl.ts';
import { malformed } from './der.ts';
import { deviceIdOf } from './device-id.ts';
import { OID, oidName } from './oids.ts';

export type Purpose = 'client' | 'server';

/** At most this many certificates in a presented chain (leaf + 3 intermediates + a root). */
export const MAX_CHAIN_CERTIFICATES = 5;

export type RevocationStatus = 'good' | 'revoked' | 'unknown';

/** What a revocation registry is asked about the leaf. Identifies the certificate; holds no secret. */
export interface RevocationQuery {
  readonly serialHex: string;
  /** Issuer name text (RFC 4514 style). */
  readonly issuer: string;
  readonly subject: string;
  readonly spkiSha256: Uint8Array;
  readonly deviceId?: string;
}

export interface RevocationOptions {
  /**
   * Parsed CRLs (`parseCrl`, once, when loaded). When given, the leaf must be covered by a current
   * CRL from its issuer, else `revocation-unknown`; intermediates are checked when a CRL from their
   * issuer (the root) is supplied.
   */
  readonly crls?: readonly Crl[];
  /** A registry lookup (e.g. the ingest's device table, cached in memory). 'unknown' fails closed. */
  readonly registry?: (query: RevocationQuery) => RevocationStatus;
}

export interface ValidationOptions {
  /** Pinned trust anchors: the fleet root CA(s). Pre-parsed certificates avoid re-parsing per call. */
  readonly roots: readonly (Certificate | Uint8Array)[];
  /** Milliseconds since the epoch, from the caller's injected Clock. */
  readonly now: number;
  /** 'client': a device authenticating to the ingest; 'server': a service a device connects to. */
  readonly purpose: Purpose;
  /** The device id the caller expects (a payload's id, a registry entry); compared exactly. */
  readonly expectedDeviceId?: string;
  /** Whether the leaf must carry a device id; default true for 'client', false for 'server'. */
  readonly requireDeviceId?: boolean;
  /** For 'server': the DNS name or IP address the client connected to. */
  readonly expectedServerName?: string;
  readonly revocation?: RevocationOptions;
  /** SHA-256 digests (32 bytes) of pinned SubjectPublicKeyInfo; see `spkiSha256` and `parseSpkiPin`. */
  readonly spkiPins?: readonly Uint8Array[];
}

export interface ValidatedPeer {
  /** The device id bound to the certificate (client purpose), if any. */
  readonly deviceId?: string;
  /** Leaf subject, RFC 4514 style. */
  readonly subject: string;
  readonly serialHex: string;
  /** Leaf SubjectPublicKeyInfo DER. */
  readonly spki: Uint8Array;
  readonly spkiSha256: Uint8Array;
  /** The leaf's public key, for CertificateVerify. */
  readonly publicKey: KeyObject;
  /** The earliest notAfter on the path (when this validation stops holding). */
  readonly notAfter: number;
  /** The validated path, leaf first, root last. */
  readonly path: readonly Certificate[];
}

const keyCache = new WeakMap<Certificate, KeyObject>();

function keyOf(cert: Certificate): KeyObject {
  let k = keyCache.get(cert);
  if (k === undefined) {
    k = publicKeyFromSpki(cert.spki.der, `public key of ${cert.subject.text}`);
    keyCache.set(cert, k);
  }
  return k;
}

/**
 * Signatures that have verified, across validations: a device reconnects with the same chain, and a
 * service validates every device against the same issuing CA, so the same certificate is checked
 * under the same key again and again (an ECDSA P-256 verification is ~130 µs in OpenSSL 3.0 on the
 * development machine). Keyed by SHA-256 of the child's whole DER and of the issuer's SPKI, so a
 * hit means exactly these bytes verified under exactly this key: a pure function, cached. Only
 * successes are kept; every other check (validity at `now`, purposes, revocation, pins) still runs
 * on every validation. Least recently used entries go first.
 */
const VERIFIED_CACHE_SIZE = 1024;
const verifiedSignatures = new Map<string, true>();
const signatureStats = { verified: 0, remembered: 0 };

/** Certificate signatures verified by OpenSSL, and those answered from the cache (for tests and metrics). */
export function signatureCacheStats(): { readonly verified: number; readonly remembered: number } {
  return { ...signatureStats };
}

function signatureKey(child: Certificate, issuer: Certificate): string {
  return createHash('sha256').update(child.der).update(issuer.spki.der).digest('base64');
}

function signatureVerifies(child: Certificate, issuer: Certificate): boolean {
  const key = signatureKey(child, issuer);
  if (verifiedSignatures.delete(key)) {
    verifiedSignatures.set(key, true);
    signatureStats.remembered++;
    return true;
  }
  signatureStats.verified++;
  const ok = verifySignature(child.signatureAlgorithm, keyOf(issuer), child.tbs, child.signatureValue, child.subject.text);
  if (ok) {
    verifiedSignatures.set(key, true);
    if (verifiedSignatures.size > VERIFIED_CACHE_SIZE) verifiedSignatures.delete(verifiedSignatures.keys().next().value as string);
  }
  return ok;
}

function asCertificate(c: Certificate | Uint8Array): Certificate {
  return c instanceof Uint8Array ? parseCertificate(c) : c;
}

const PURPOSE_EKU: Record<Purpose, string> = { client: OID.clientAuth, server: OID.serverAuth };

/**
 * Validates a presented chain (leaf first, then intermediates in any order, optionally the root)
 * against pinned roots. Throws `CertificateError` on the first failed check.
 */
export function validateChain(chainDer: readonly Uint8Array[], opts: ValidationOptions): ValidatedPeer {
  if (!Array.isArray(chainDer)) throw new TypeError('validateChain: chain must be an array of DER certificates');
  if (chainDer.length === 0) throw malformed('chain', 'no certificate presented');
  if (chainDer.length > MAX_CHAIN_CERTIFICATES) throw malformed('chain', `${chainDer.length} certificates exceeds ${MAX_CHAIN_CERTIFICATES}`);
  if (!Number.isFinite(opts.now)) throw new TypeError('validateChain: now must be a number of milliseconds');
  if (opts.roots.length === 0) throw new RangeError('validateChain: no trust anchors');
  if (opts.spkiPins !== undefined && opts.spkiPins.length === 0) throw new RangeError('validateChain: spkiPins is empty (omit it to disable pinning)');

  const presented = chainDer.map((d) => parseCertificate(d));
  const leaf = presented[0] as Certificate;
  const roots = opts.roots.map(asCertificate);
  const path = buildPath(leaf, presented.slice(1), roots);

  // 3. RFC 5280 §4.2: unrecognised critical extensions make the certificate unusable.
  for (const c of path) {
    const [first] = c.extensions.unhandledCritical;
    if (first !== undefined) throw new CertificateError('unhandled-critical-extension', `${c.subject.text}: critical ${oidName(first)} extension is not supported`);
  }

  // 4. Validity, at the seconds granularity X.509 times have (RFC 5280 §4.1.2.5: bounds inclusive).
  const nowSec = Math.floor(opts.now / 1000) * 1000;
  for (const c of path) {
    if (nowSec < c.notBefore) throw new CertificateError('not-yet-valid', `${c.subject.text} is not valid before ${new Date(c.notBefore).toISOString()}`);
    if (nowSec > c.notAfter) throw new CertificateError('expired', `${c.subject.text} expired at ${new Date(c.notAfter).toISOString()}`);
  }

  // 5. CA certificates (RFC 5280 §6.1.4 (k), (l), (m), (n)).
  let intermediatesBelow = 0;
  for (let i = 1; i < path.length; i++) {
    const ca = path[i] as Certificate;
    const bc = ca.extensions.basicConstraints;
    if (bc?.ca !== true) throw new CertificateError('not-a-ca', `${ca.subject.text} signs certificates but is not a CA (basicConstraints)`);
    const ku = ca.extensions.keyUsage;
    if (ku !== undefined && !ku.has('keyCertSign')) throw new CertificateError('not-a-ca', `${ca.subject.text} key usage does not allow keyCertSign`);
    if (bc.pathLen !== undefined && intermediatesBelow > bc.pathLen) {
      throw new CertificateError('path-length-exceeded', `${ca.subject.text} allows ${bc.pathLen} intermediate CA(s) below it, found ${intermediatesBelow}`);
    }
    // Self-issued certificates do not count (RFC 5280 §6.1.4 (l)).
    if (!sameBytes(ca.subject.der, ca.issuer.der)) intermediatesBelow++;
  }

  // 6. The leaf's purpose.
  const purposeOid = PURPOSE_EKU[opts.purpose];
  if (leaf.extensions.basicConstraints?.ca === true) throw new CertificateError('wrong-purpose', `${leaf.subject.text} is a CA certificate, not an end entity`);
  const leafKu = leaf.extensions.keyUsage;
  if (leafKu !== undefined && !leafKu.has('digitalSignature')) throw new CertificateError('wrong-purpose', `${leaf.subject.text} key usage does not allow digitalSignature`);
  const leafEku = leaf.extensions.extKeyUsage;
  if (leafEku === undefined || !leafEku.includes(purposeOid)) {
    throw new CertificateError('wrong-purpose', `${leaf.subject.text} is not for ${oidName(purposeOid)} (extended key usage)`);
  }
  for (let i = 1; i < path.length; i++) {
    const eku = (path[i] as Certificate).extensions.extKeyUsage;
    if (eku !== undefined && !eku.includes(purposeOid) && !eku.includes(OID.anyExtendedKeyUsage)) {
      throw new CertificateError('wrong-purpose', `${(path[i] as Certificate).subject.text} restricts its extended key usage to exclude ${oidName(purposeOid)}`);
    }
  }
  const publicKey = keyOf(leaf);

  // 7. Server identity (RFC 6125 §6.4: DNS-ID / IP-ID from the SAN only, no CN fallback).
  if (opts.expectedServerName !== undefined) checkServerName(leaf, opts.expectedServerName);

  // 8. Device id binding.
  const deviceId = deviceIdOf(leaf);
  const requireDeviceId = opts.requireDeviceId ?? opts.purpose === 'client';
  if (deviceId === undefined && (requireDeviceId || opts.expectedDeviceId !== undefined)) {
    throw new CertificateError('device-id-missing', `${leaf.subject.text} carries no device id`);
  }
  if (opts.expectedDeviceId !== undefined && deviceId !== opts.expectedDeviceId) {
    throw new CertificateError('device-id-mismatch', `certificate is for device ${JSON.stringify(deviceId)}, expected ${JSON.stringify(opts.expectedDeviceId)}`);
  }

  // 9. SPKI pins.
  const leafPin = spkiSha256(leaf.spki.der);
  if (opts.spkiPins !== undefined) {
    const pins = opts.spkiPins;
    const matched = path.some((c, i) => {
      const digest = i === 0 ? leafPin : spkiSha256(c.spki.der);
      return pins.some((p) => sameBytes(p, digest));
    });
    if (!matched) throw new CertificateError('pin-mismatch', `no public key on the path to ${leaf.subject.text} is pinned`);
  }

  // 10. Revocation.
  if (opts.revocation !== undefined) checkRevocation(path, opts.revocation, opts.now, leafPin, deviceId);

  return {
    ...(deviceId === undefined ? {} : { deviceId }),
    subject: leaf.subject.text,
    serialHex: leaf.serialHex,
    spki: leaf.spki.der,
    spkiSha256: leafPin,
    publicKey,
    notAfter: Math.min(...path.map((c) => c.notAfter)),
    path,
  };
}

/**
 * Finds a path leaf → intermediates → root by depth-first search. Signature results are memoised
 * per (child, issuer) pair, so the work is bounded by chain length × candidates, whatever the peer sends.
 */
function buildPath(leaf: Certificate, intermediates: readonly Certificate[], roots: readonly Certificate[]): Certificate[] {
  const verified = new Map<Certificate, Map<Certificate, boolean>>();
  let badSignature: string | undefined;

  const signs = (issuer: Certificate, child: Certificate): boolean => {
    let row = verified.get(child);
    if (row === undefined) verified.set(child, (row = new Map()));
    let ok = row.get(issuer);
    if (ok === undefined) {
      ok = signatureVerifies(child, issuer);
      row.set(issuer, ok);
      if (!ok) badSignature ??= `signature on ${child.subject.text} does not verify under ${issuer.subject.text}`;
    }
    return ok;
  };

  const candidates = (child: Certificate, used: ReadonlySet<Certificate>): { cert: Certificate; root: boolean }[] => {
    const fits = (c: Certificate) => {
      if (!sameBytes(c.subject.der, child.issuer.der)) return false;
      // RFC 5280 §4.2.1.1: when both identifiers are present they must agree.
      const aki = child.extensions.authorityKeyId;
      const ski = c.extensions.subjectKeyId;
      return aki === undefined || ski === undefined || sameBytes(aki, ski);
    };
    return [
      ...roots.filter(fits).map((cert) => ({ cert, root: true })),
      ...intermediates.filter((c) => !used.has(c) && fits(c)).map((cert) => ({ cert, root: false })),
    ];
  };

  const search = (current: Certificate, path: Certificate[], used: Set<Certificate>): Certificate[] | undefined => {
    if (path.length >= MAX_CHAIN_CERTIFICATES) return undefined;
    for (const { cert, root } of candidates(current, used)) {
      if (!signs(cert, current)) continue;
      if (root) return [...path, cert];
      used.add(cert);
      const found = search(cert, [...path, cert], used);
      used.delete(cert);
      if (found !== undefined) return found;
    }
    return undefined;
  };

  const path = search(leaf, [leaf], new Set());
  if (path !== undefined) return path;
  if (badSignature !== undefined) throw new CertificateError('bad-signature', badSignature);
  throw new CertificateError('unknown-issuer', `no path from ${leaf.subject.text} (issuer ${leaf.issuer.text}) to a pinned root`);
}

function checkServerName(leaf: Certificate, name: string): void {
  const san = leaf.extensions.subjectAltName;
  const ipVersion = isIP(name);
  let ok = false;
  if (ipVersion !== 0) {
    const want = normaliseIp(name);
    ok = (san?.ips ?? []).some((ip) => normaliseIp(ip) === want);
  } else {
    const host = name.toLowerCase().replace(/\.$/, '');
    ok = (san?.dns ?? []).some((d) => dnsMatches(d.toLowerCase(), host));
  }
  if (!ok) throw new CertificateError('name-mismatch', `${leaf.subject.text} is not valid for ${JSON.stringify(name)}`);
}

/** RFC 6125 §6.4.3: a wildcard only as the whole left-most label, matching exactly one label. */
function dnsMatches(pattern: string, host: string): boolean {
  if (!pattern.startsWith('*.')) return pattern === host;
  const suffix = pattern.slice(1); // ".example.com"
  if (!host.endsWith(suffix)) return false;
  const label = host.slice(0, host.length - suffix.length);
  return label.length > 0 && !label.includes('.');
}

function normaliseIp(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  const [head = '', tail] = ip.toLowerCase().split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.map((g) => parseInt(g, 16).toString(16)).join(':');
}

function checkRevocation(path: readonly Certificate[], rev: RevocationOptions, now: number, leafPin: Uint8Array, deviceId: string | undefined): void {
  const leaf = path[0] as Certificate;
  if (rev.crls !== undefined) {
    for (let i = 0; i + 1 < path.length; i++) {
      const cert = path[i] as Certificate;
      const issuer = path[i + 1] as Certificate;
      // RFC 5280 §6.3.3 (f): the CRL issuer's key usage must allow cRLSign.
      const issuerKu = issuer.extensions.keyUsage;
      const usable = issuerKu === undefined || issuerKu.has('cRLSign');
      // Every current CRL from the issuer is consulted: a serial listed on any of them is revoked
      // (this PKI never un-revokes: no certificateHold / removeFromCRL).
      let current = 0;
      let stale = false;
      for (const crl of rev.crls) {
        if (!usable || crl.unhandledCritical.length > 0 || !crlSignedBy(crl, issuer, keyOf(issuer))) continue;
        if (crl.thisUpdate > now) continue;
        if (crl.nextUpdate !== undefined && now > crl.nextUpdate) {
          stale = true;
          continue;
        }
        current++;
        const entry = crl.revoked.get(cert.serialHex);
        if (entry !== undefined) {
          throw new CertificateError('revoked', `${cert.subject.text} (serial ${cert.serialHex}) was revoked${entry.reason === undefined ? '' : ` (${entry.reason})`}`);
        }
      }
      if (current === 0 && i === 0) {
        throw new CertificateError('revocation-unknown', stale
          ? `the CRL from ${issuer.subject.text} is past its nextUpdate`
          : `no usable CRL from ${issuer.subject.text}`);
      }
    }
  }
  if (rev.registry !== undefined) {
    const status = rev.registry({
      serialHex: leaf.serialHex,
      issuer: leaf.issuer.text,
      subject: leaf.subject.text,
      spkiSha256: leafPin,
      ...(deviceId === undefined ? {} : { deviceId }),
    });
    if (status === 'revoked') throw new CertificateError('revoked', `${leaf.subject.text} is revoked in the device registry`);
    if (status !== 'good') throw new CertificateError('revocation-unknown', `the device registry does not know ${leaf.subject.text}`);
  }
}

/**
 * The ingest's identity check (DESIGN.md): the device id inside a sealed payload must be the device
 * the transport authenticated.
 */
export function checkPayloadDevice(peer: Pick<ValidatedPeer, 'deviceId'>, payloadDeviceId: string): void {
  if (peer.deviceId === undefined) throw new CertificateError('device-id-missing', 'the authenticated peer has no device id');
  if (peer.deviceId !== payloadDeviceId) {
    throw new CertificateError('device-id-mismatch', `payload names device ${JSON.stringify(payloadDeviceId)} but the peer is ${JSON.stringify(peer.deviceId)}`);
  }
}
