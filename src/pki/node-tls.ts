/**
 * `validateChain` for node:tls (MQTT over TLS 1.3 with mqtt.js, or any TLS socket): the peer chain
 * as DER, a `checkServerIdentity` for clients, and a post-handshake check for servers.
 *
 * OpenSSL still verifies the chain against `ca` during the handshake (keep `rejectUnauthorized`);
 * these checks add what OpenSSL does not know: the fleet profile (EKU required), the device id
 * binding, SPKI pins and revocation by registry, with the injected clock.
 *
 * @example
 *   const socket = tls.connect({ host, port, ca: rootPem, cert, key, minVersion: 'TLSv1.3',
 *     checkServerIdentity: checkServerIdentityWith({ roots, clock, spkiPins }) });
 *   // server side, in 'secureConnection':
 *   const peer = validateTlsPeer(socket, { roots, clock, revocation: { crls } });
 */
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';
import type { Clock } from '../util/clock.ts';
import { CertificateError } from '../util/errors.ts';
import { malformed } from './der.ts';
import { MAX_CHAIN_CERTIFICATES, validateChain, type ValidatedPeer, type ValidationOptions } from './validate.ts';

export type TlsValidationOptions = Omit<ValidationOptions, 'now' | 'purpose' | 'expectedServerName'> & { readonly clock: Clock };

/**
 * The chain node:tls reports (`getPeerCertificate(true)`), leaf first, as DER. Node links each
 * certificate to its issuer and the root to itself; the walk stops there or at the chain limit.
 */
export function peerChainDer(cert: PeerCertificate | DetailedPeerCertificate): Uint8Array[] {
  if (cert.raw === undefined || cert.raw.length === 0) throw malformed('chain', 'the peer presented no certificate');
  const out: Uint8Array[] = [];
  let current: PeerCertificate | DetailedPeerCertificate | undefined = cert;
  const seen = new Set<unknown>();
  while (current !== undefined && current.raw !== undefined && !seen.has(current) && out.length <= MAX_CHAIN_CERTIFICATES) {
    seen.add(current);
    out.push(new Uint8Array(current.raw));
    const next: DetailedPeerCertificate | undefined = 'issuerCertificate' in current ? current.issuerCertificate : undefined;
    if (next === undefined || next === current || (next.raw !== undefined && next.raw.equals(current.raw))) break;
    current = next;
  }
  return out;
}

/**
 * A `checkServerIdentity` for `tls.connect` (and mqtt.js's TLS options): validates the server's
 * chain for the 'server' purpose against `host`. Returns the `CertificateError` (node:tls then ends
 * the connection) or undefined.
 */
export function checkServerIdentityWith(opts: TlsValidationOptions): (host: string, cert: PeerCertificate) => Error | undefined {
  return (host, cert) => {
    try {
      validateServerChain(peerChainDer(cert), host, opts);
      return undefined;
    } catch (e) {
      return e instanceof Error ? e : new CertificateError('malformed', String(e));
    }
  };
}

/**
 * Validates a server's chain (DER, leaf first) for the 'server' purpose against `host`, however
 * it was obtained (node:tls above, or an `openssl s_client` handshake trace).
 */
export function validateServerChain(chainDer: readonly Uint8Array[], host: string, opts: TlsValidationOptions): ValidatedPeer {
  const { clock, ...rest } = opts;
  return validateChain([...chainDer], { ...rest, now: clock.now(), purpose: 'server', expectedServerName: host });
}

/** Validates the client of an accepted TLS socket for the 'client' purpose (a device). */
export function validateTlsPeer(socket: TLSSocket, opts: TlsValidationOptions): ValidatedPeer {
  const { clock, ...rest } = opts;
  const cert = socket.getPeerCertificate(true);
  if (cert === null || Object.keys(cert).length === 0) throw malformed('chain', 'the peer presented no certificate');
  return validateChain(peerChainDer(cert), { ...rest, now: clock.now(), purpose: 'client' });
}
