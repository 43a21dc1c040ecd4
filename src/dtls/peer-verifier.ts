/**
 * Peer certificate validation behind a small interface, so the DTLS layer does not care who
 * validates: the default here uses node:crypto `X509Certificate` (chain to pinned roots, validity
 * at the injected time, basic constraints, extended key usage, optional SPKI pin); the fleet PKI in
 * src/pki can supply its own implementation (revocation, device registry).
 *
 * @example
 *   const verifier = new X509PeerVerifier({ roots: [caPem], purpose: 'client' });
 *   const identity = await verifier.verify(chainDer, Date.now());
 *   identity.subject; // "CN=device-0042"
 */
import { createHash, X509Certificate, type KeyObject } from 'node:crypto';
import { asBuffer, toHex } from '../util/bytes.ts';
import { CertificateRejected } from './errors.ts';

export interface PeerIdentity {
  /** The leaf certificate's subject, e.g. "CN=device-0042\nO=Example Medical". */
  readonly subject: string;
  /** The leaf's common name: the device or service id. */
  readonly commonName: string | undefined;
  /** DER SubjectPublicKeyInfo of the leaf. */
  readonly spki: Uint8Array;
  /** SHA-256 of `spki`, hex: what SPKI pins name. */
  readonly spkiSha256: string;
  readonly publicKey: KeyObject;
  /** The certificate chain as received, leaf first (DER). */
  readonly chain: readonly Uint8Array[];
}

export interface PeerCertificateVerifier {
  /** Validates `chainDer` (leaf first) at time `now` (ms since the epoch); throws CertificateRejected. */
  verify(chainDer: readonly Uint8Array[], now: number): Promise<PeerIdentity>;
}

export interface X509PeerVerifierOptions {
  /** Trust anchors: PEM strings (one or more certificates each) or DER. */
  readonly roots: readonly (string | Uint8Array)[];
  /** Whose certificate this verifier checks: EKU serverAuth for 'server', clientAuth for 'client'. */
  readonly purpose: 'server' | 'client';
  /** When set, the leaf's SPKI SHA-256 (hex) must be one of these. */
  readonly spkiPins?: readonly string[];
  /** When set, the leaf must match this host name or IP address (server certificates). */
  readonly serverName?: string;
  /** Longest chain accepted, leaf and intermediates (default 4). */
  readonly maxDepth?: number;
  /**
   * Chains already validated, remembered by their SHA-256 (default 256; 0 disables). A fleet
   * reconnects with the same certificates; the signatures, extensions and names of the same bytes
   * do not change, so only the validity window is checked again, at the new `now`.
   */
  readonly cacheSize?: number;
}

interface CachedChain {
  readonly identity: PeerIdentity;
  /** The intersection of the validity windows of the path (ms). */
  readonly notBefore: number;
  readonly notAfter: number;
}

const EKU = { server: '1.3.6.1.5.5.7.3.1', client: '1.3.6.1.5.5.7.3.2', any: '2.5.29.37.0' } as const;

function splitPem(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

function parse(der: Uint8Array | string, what: string): X509Certificate {
  try {
    return new X509Certificate(typeof der === 'string' ? der : asBuffer(der));
  } catch {
    throw new CertificateRejected('bad-certificate', `${what} is not a parsable X.509 certificate`);
  }
}

/** The default PeerCertificateVerifier on node:crypto. */
export class X509PeerVerifier implements PeerCertificateVerifier {
  readonly #roots: X509Certificate[];
  readonly #options: X509PeerVerifierOptions;
  readonly #cache = new Map<string, CachedChain>();

  constructor(options: X509PeerVerifierOptions) {
    this.#options = options;
    this.#roots = [];
    for (const r of options.roots) {
      if (typeof r === 'string') for (const pem of splitPem(r)) this.#roots.push(parse(pem, 'root'));
      else this.#roots.push(parse(r, 'root'));
    }
    if (this.#roots.length === 0) throw new RangeError('X509PeerVerifier: no root certificates');
  }

  async verify(chainDer: readonly Uint8Array[], now: number): Promise<PeerIdentity> {
    const cacheSize = this.#options.cacheSize ?? 256;
    const key = cacheSize > 0 ? chainKey(chainDer) : '';
    const hit = cacheSize > 0 ? this.#cache.get(key) : undefined;
    if (hit !== undefined) {
      checkWindow(hit.notBefore, hit.notAfter, now);
      // Refresh its place in the LRU order.
      this.#cache.delete(key);
      this.#cache.set(key, hit);
      return hit.identity;
    }
    const { identity, notBefore, notAfter } = this.#validate(chainDer, now);
    if (cacheSize > 0) {
      if (this.#cache.size >= cacheSize) this.#cache.delete(this.#cache.keys().next().value as string);
      this.#cache.set(key, { identity, notBefore, notAfter });
    }
    return identity;
  }

  #validate(chainDer: readonly Uint8Array[], now: number): CachedChain {
    const maxDepth = this.#options.maxDepth ?? 4;
    if (chainDer.length === 0) throw new CertificateRejected('empty-certificate', 'the peer sent no certificate');
    if (chainDer.length > maxDepth) throw new CertificateRejected('bad-certificate', `chain of ${chainDer.length} certificates exceeds ${maxDepth}`);
    const chain = chainDer.map((d, i) => parse(d, i === 0 ? 'leaf certificate' : `chain certificate ${i}`));
    const leaf = chain[0] as X509Certificate;

    // Build the path: each certificate must be signed by the next one sent, or by a root.
    const path: X509Certificate[] = [leaf];
    let current = leaf;
    let anchor: X509Certificate | undefined;
    for (let depth = 0; depth <= maxDepth; depth++) {
      anchor = this.#roots.find((root) => issuedBy(current, root));
      if (anchor !== undefined) break;
      const next = chain.find((c) => c !== current && !path.includes(c) && issuedBy(current, c));
      if (next === undefined) break;
      if (!next.ca) throw new CertificateRejected('bad-certificate', 'an intermediate certificate is not a CA');
      path.push(next);
      current = next;
    }
    if (anchor === undefined) throw new CertificateRejected('unknown-ca', 'the chain does not lead to a trusted root');
    if (!anchor.ca) throw new CertificateRejected('bad-certificate', 'the trust anchor is not a CA certificate');

    let notBefore = -Infinity;
    let notAfter = Infinity;
    for (const c of [...path, anchor]) {
      notBefore = Math.max(notBefore, Date.parse(c.validFrom));
      notAfter = Math.min(notAfter, Date.parse(c.validTo));
    }
    checkWindow(notBefore, notAfter, now);
    if (leaf.ca && path.length === 1 && this.#roots.some((r) => r.fingerprint256 === leaf.fingerprint256)) {
      // A root presented as the leaf identifies no device.
      throw new CertificateRejected('bad-certificate', 'the peer presented a CA certificate as its own');
    }

    // RFC 5280 §4.2.1.12: with an EKU extension present, it must allow this purpose.
    const eku = leaf.keyUsage;
    if (eku !== undefined && eku.length > 0 && !eku.includes(EKU[this.#options.purpose]) && !eku.includes(EKU.any)) {
      throw new CertificateRejected('certificate-purpose', `the certificate is not for ${this.#options.purpose} authentication`);
    }
    const name = this.#options.serverName;
    if (name !== undefined) {
      const isIp = /^[0-9.]+$|:/.test(name);
      const match = isIp ? leaf.checkIP(name) : leaf.checkHost(name);
      if (match === undefined) throw new CertificateRejected('certificate-name-mismatch', `the certificate does not name ${name}`);
    }
    const publicKey = leaf.publicKey;
    const spki = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
    const spkiSha256 = toHex(createHash('sha256').update(spki).digest());
    const pins = this.#options.spkiPins;
    if (pins !== undefined && !pins.map((p) => p.toLowerCase()).includes(spkiSha256)) {
      throw new CertificateRejected('certificate-pin-mismatch', 'the certificate key is not one of the pinned keys');
    }
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(leaf.subject)?.[1];
    const identity = { subject: leaf.subject, commonName: cn, spki, spkiSha256, publicKey, chain: chainDer.map((d) => Uint8Array.from(d)) };
    return { identity, notBefore, notAfter };
  }
}

function checkWindow(notBefore: number, notAfter: number, now: number): void {
  if (!(now >= notBefore)) throw new CertificateRejected('certificate-not-yet-valid', `a certificate in the chain is not valid before ${new Date(notBefore).toISOString()}`);
  if (!(now <= notAfter)) throw new CertificateRejected('certificate-expired', `a certificate in the chain expired on ${new Date(notAfter).toISOString()}`);
}

function chainKey(chain: readonly Uint8Array[]): string {
  const h = createHash('sha256');
  for (const c of chain) h.update(Uint8Array.of(c.length >>> 16, (c.length >>> 8) & 0xff, c.length & 0xff)).update(c);
  return h.digest('hex');
}

/** Issuer public keys, parsed once per certificate object (X509Certificate.publicKey builds a new one per call). */
const ISSUER_KEYS = new WeakMap<X509Certificate, KeyObject>();

function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  if (!cert.checkIssued(issuer)) return false;
  let key = ISSUER_KEYS.get(issuer);
  if (key === undefined) {
    key = issuer.publicKey;
    ISSUER_KEYS.set(issuer, key);
  }
  try {
    return cert.verify(key);
  } catch {
    return false;
  }
}
