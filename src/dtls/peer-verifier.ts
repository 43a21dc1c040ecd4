/**
 * Peer certificate validation behind a small interface, so the DTLS layer does not care who
 * validates. The implementation here is the fleet PKI's own `validateChain` (src/pki): chain to
 * pinned roots through the presented intermediates, validity at the injected time, basic
 * constraints and path length, key usage and EKU for the purpose, device id binding, revocation
 * (CRLs or a registry callback), name checks and SPKI pins. Its `CertificateError` codes are mapped
 * to alerts by `alertFor` (src/dtls/errors.ts).
 *
 * @example
 *   const verifier = new X509PeerVerifier({ roots: [caPem], purpose: 'client', requireDeviceId: true });
 *   const identity = await verifier.verify(chainDer, Date.now());
 *   identity.deviceId; // "bed-7"
 */
import type { KeyObject } from 'node:crypto';
import { parseCertificate, parseSpkiPin, type Certificate } from '../pki/certificate.ts';
import { pemDecode } from '../pki/pem.ts';
import { validateChain, type RevocationOptions } from '../pki/validate.ts';
import { toHex } from '../util/bytes.ts';
import { CertificateRejected } from './errors.ts';

export interface PeerIdentity {
  /** The leaf certificate's subject, RFC 4514 style, e.g. "CN=bed-7,O=Example Medical". */
  readonly subject: string;
  /** The leaf's common name. */
  readonly commonName: string | undefined;
  /** The device id the certificate binds (URI SAN urn:dev:vitalseal:<id>, docs/pki.md), if any. */
  readonly deviceId: string | undefined;
  /** DER SubjectPublicKeyInfo of the leaf. */
  readonly spki: Uint8Array;
  /** SHA-256 of `spki`, hex: what SPKI pins name. */
  readonly spkiSha256: string;
  readonly publicKey: KeyObject;
  /** The earliest notAfter on the validated path (ms since the epoch). */
  readonly notAfter: number;
  /** The certificate chain as received, leaf first (DER). */
  readonly chain: readonly Uint8Array[];
}

export interface PeerCertificateVerifier {
  /** Validates `chainDer` (leaf first) at time `now` (ms since the epoch); throws CertificateError or CertificateRejected. */
  verify(chainDer: readonly Uint8Array[], now: number): Promise<PeerIdentity>;
}

export interface X509PeerVerifierOptions {
  /** Trust anchors: PEM strings (one or more certificates each) or DER. */
  readonly roots: readonly (string | Uint8Array)[];
  /** Whose certificate this verifier checks: EKU serverAuth for 'server', clientAuth for 'client'. */
  readonly purpose: 'server' | 'client';
  /** When set, the leaf's SPKI SHA-256 must be one of these (64 hex digits or sha256/<base64>). */
  readonly spkiPins?: readonly string[];
  /** When set, the leaf must name this host or IP address (server certificates). */
  readonly serverName?: string;
  /** The leaf must carry a device id (the ingest's CoAPS server sets this). Default false. */
  readonly requireDeviceId?: boolean;
  /** CRLs and/or a registry callback (the ingest's device registry). */
  readonly revocation?: RevocationOptions;
}

const CN = /(?:^|,)CN=((?:[^,\\]|\\.)*)/;

/** The PeerCertificateVerifier on the fleet PKI's `validateChain`. */
export class X509PeerVerifier implements PeerCertificateVerifier {
  readonly #roots: Certificate[];
  readonly #options: X509PeerVerifierOptions;
  readonly #pins: Uint8Array[] | undefined;

  constructor(options: X509PeerVerifierOptions) {
    this.#options = options;
    this.#roots = [];
    for (const r of options.roots) {
      if (typeof r === 'string') for (const block of pemDecode(r, 'CERTIFICATE')) this.#roots.push(parseCertificate(block.der));
      else this.#roots.push(parseCertificate(r));
    }
    if (this.#roots.length === 0) throw new RangeError('X509PeerVerifier: no root certificates');
    this.#pins = options.spkiPins?.map((p) => parseSpkiPin(p));
  }

  async verify(chainDer: readonly Uint8Array[], now: number): Promise<PeerIdentity> {
    if (chainDer.length === 0) throw new CertificateRejected('empty-certificate', 'the peer sent no certificate');
    const o = this.#options;
    const peer = validateChain(chainDer, {
      roots: this.#roots,
      now,
      purpose: o.purpose,
      requireDeviceId: o.requireDeviceId ?? false,
      ...(o.serverName === undefined ? {} : { expectedServerName: o.serverName }),
      ...(o.revocation === undefined ? {} : { revocation: o.revocation }),
      ...(this.#pins === undefined ? {} : { spkiPins: this.#pins }),
    });
    return {
      subject: peer.subject,
      commonName: CN.exec(peer.subject)?.[1],
      deviceId: peer.deviceId,
      // Its own bytes, as the chain's: a view would pin the handshake message's buffer for the session's life.
      spki: Uint8Array.from(peer.spki),
      spkiSha256: toHex(peer.spkiSha256),
      publicKey: peer.publicKey,
      notAfter: peer.notAfter,
      chain: chainDer.map((d) => Uint8Array.from(d)),
    };
  }
}
