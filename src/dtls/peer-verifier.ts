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

    for (const c of [...path, anchor]) {
      const from = Date.parse(c.validFrom);
      const to = Date.parse(c.validTo);
      if (!(now >= from)) throw new CertificateRejected('certificate-not-yet-valid', `a certificate in the chain is valid only from ${c.validFrom}`);
      if (!(now <= to)) throw new CertificateRejected('certificate-expired', `a certificate in the chain expired on ${c.validTo}`);
    }
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
    const spki = new Uint8Array(leaf.publicKey.export({ type: 'spki', format: 'der' }));
    const spkiSha256 = toHex(createHash('sha256').update(spki).digest());
    const pins = this.#options.spkiPins;
    if (pins !== undefined && !pins.map((p) => p.toLowerCase()).includes(spkiSha256)) {
      throw new CertificateRejected('certificate-pin-mismatch', 'the certificate key is not one of the pinned keys');
    }
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(leaf.subject)?.[1];
    return { subject: leaf.subject, commonName: cn, spki, spkiSha256, publicKey: leaf.publicKey, chain: chainDer.map((d) => Uint8Array.from(d)) };
  }
}

function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  if (!cert.checkIssued(issuer)) return false;
  try {
    return cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}
