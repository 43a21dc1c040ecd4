/**
 * Who is calling the HTTPS API: an API token (`Authorization: Bearer vst_…`, looked up by its
 * SHA-256) or a client certificate (mTLS) chaining to the configured roots whose key is on the
 * operator list. Device certificates (they carry a device id) never open the API: a device speaks
 * only to the enrolment endpoint.
 *
 * A certificate is validated once per TLS connection (the result is kept with the socket).
 */
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Certificate } from '../../pki/certificate.ts';
import { validateTlsPeer } from '../../pki/node-tls.ts';
import type { RevocationQuery, RevocationStatus, ValidatedPeer } from '../../pki/validate.ts';
import { toHex } from '../../util/bytes.ts';
import type { Clock } from '../../util/clock.ts';
import { CertificateError } from '../../util/errors.ts';
import type { ApiRole, IngestStorage } from '../storage/types.ts';
import { API_TOKEN_PREFIX, parseToken } from '../tokens.ts';
import { HttpError } from './respond.ts';

export interface Principal {
  /** The audit actor: `api:<token name>` or `mtls:<operator name>`. */
  readonly actor: string;
  readonly role: ApiRole;
}

export interface MtlsOperator {
  readonly name: string;
  /** Hex SHA-256 of the operator certificate's SubjectPublicKeyInfo. */
  readonly spkiSha256: string;
  readonly role: ApiRole;
}

export interface AuthOptions {
  readonly storage: IngestStorage;
  readonly clock: Clock;
  /** Roots client certificates must chain to. */
  readonly roots: readonly Certificate[];
  readonly operators: readonly MtlsOperator[];
}

type PeerResult = { readonly peer: ValidatedPeer } | { readonly error: CertificateError } | { readonly none: true };
const peers = new WeakMap<TLSSocket, PeerResult>();

/** The client certificate of this connection, validated for the 'client' purpose (once per socket). */
export function clientCertificate(req: IncomingMessage, roots: readonly Certificate[], clock: Clock, requireDeviceId: boolean, registry?: (q: RevocationQuery) => RevocationStatus): PeerResult {
  const socket = req.socket as TLSSocket;
  // With a registry the answer can change (a revocation): validate every time.
  const cached = registry === undefined ? peers.get(socket) : undefined;
  if (cached !== undefined) return cached;
  let result: PeerResult;
  const cert = typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate(false) : null;
  if (cert === null || Object.keys(cert).length === 0) result = { none: true };
  else {
    try {
      result = { peer: validateTlsPeer(socket, { roots, clock, requireDeviceId, ...(registry === undefined ? {} : { revocation: { registry } }) }) };
    } catch (e) {
      if (!(e instanceof CertificateError)) throw e;
      result = { error: e };
    }
  }
  if (registry === undefined) peers.set(socket, result);
  return result;
}

export async function authenticate(req: IncomingMessage, o: AuthOptions): Promise<Principal> {
  const header = req.headers.authorization;
  if (header !== undefined) {
    const m = /^Bearer ([!-~]{1,100})$/.exec(header);
    const hash = m === null ? undefined : parseToken(m[1] as string, API_TOKEN_PREFIX);
    if (hash === undefined) throw unauthorized('malformed-token', 'the Authorization header does not carry an API token');
    const t = await o.storage.getApiToken(hash);
    const now = o.clock.now();
    if (t === undefined) throw unauthorized('unknown-token', 'unknown API token');
    if (t.revokedAt !== undefined) throw unauthorized('revoked-token', `API token ${t.name} is revoked`);
    if (t.expiresAt !== undefined && t.expiresAt <= now) throw unauthorized('expired-token', `API token ${t.name} has expired`);
    return { actor: `api:${t.name}`, role: t.role };
  }
  const c = clientCertificate(req, o.roots, o.clock, false);
  if ('none' in c) throw unauthorized('no-credentials', 'an API token or an operator client certificate is required');
  if ('error' in c) throw unauthorized('bad-certificate', `client certificate refused: ${c.error.code}`);
  if (c.peer.deviceId !== undefined) throw new HttpError(403, 'device-certificate', 'a device certificate does not open the API');
  const pin = toHex(c.peer.spkiSha256);
  const op = o.operators.find((x) => x.spkiSha256 === pin);
  if (op === undefined) throw new HttpError(403, 'not-an-operator', 'this client certificate is not on the operator list');
  return { actor: `mtls:${op.name}`, role: op.role };
}

function unauthorized(code: string, message: string): HttpError {
  return new HttpError(401, code, message, { 'www-authenticate': 'Bearer realm="vitalseal-ingest"' });
}
