/**
 * Enrolment over HTTPS, in the spirit of EST (RFC 7030): a device that holds a one-time enrolment
 * token sends a CSR and gets a certificate from the service's issuing CA; a device renews with its
 * current certificate (mutual TLS).
 *
 *   GET  /.well-known/est/cacerts         the CA chain (PEM), no authentication (RFC 7030 §4.1)
 *   POST /.well-known/est/simpleenroll    Authorization: Bearer vse_…; body: the PKCS#10 CSR, base64 DER
 *                                         (RFC 7030 §4.2.1); response: application/pem-certificate-chain
 *   POST /.well-known/est/simplereenroll  the device's current certificate in the TLS handshake (§4.2.2)
 *
 * What differs from RFC 7030, on purpose: the proof of authorisation is a bearer token rather than
 * HTTP Basic credentials, and the response is a PEM chain (RFC 8555 §9.1's media type) rather than a
 * PKCS#7 certs-only structure, which constrained devices would have to parse for nothing.
 *
 * The CSR's signature (proof of possession, RFC 2986) is checked before the token is spent, so a
 * malformed request does not burn a token; the token names the device, and the CSR may only ask for
 * that device. The CA decides the certificate's contents (src/pki/issue.ts).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Certificate } from '../../pki/certificate.ts';
import { parseCsr, type Csr } from '../../pki/csr.ts';
import { pemEncode } from '../../pki/pem.ts';
import { commonNameOf } from '../../pki/name.ts';
import { toHex } from '../../util/bytes.ts';
import { isDeviceId } from '../../util/device-id.ts';
import { ApiMisuse, CertificateError } from '../../util/errors.ts';
import { spkiSha256 } from '../../pki/certificate.ts';
import { deviceLabel } from '../audit-trail.ts';
import type { IngestCore } from '../core.ts';
import { ENROL_TOKEN_PREFIX, parseToken } from '../tokens.ts';
import { clientCertificate } from './auth.ts';
import { HttpError, readBody, send } from './respond.ts';

/** The issuing CA the service enrols devices with (the dev CA adapts with `devCaIssuer`). */
export interface DeviceIssuer {
  issueDevice(csr: Csr, deviceId: string, now: number): Promise<Certificate>;
  /** Revokes a certificate (a renewal with a new key supersedes the old one). */
  revoke?(serialHex: string, now: number, reason: 'superseded' | 'keyCompromise' | 'cessationOfOperation'): Promise<unknown>;
  /** Issuing CA first, then up to the root: sent after the leaf, and by `cacerts`. */
  readonly chain: readonly Certificate[];
}

const MAX_CSR_BODY = 24 * 1024;

function csrFromBody(body: Buffer): Csr {
  const text = body.toString('latin1').replace(/\s+/g, '');
  // RFC 7030 §4.2.1: the body is the base64 encoding of the DER CSR.
  if (text.length === 0 || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(text)) throw new HttpError(400, 'bad-request', 'the body must be a base64-encoded DER PKCS#10 CSR');
  try {
    return parseCsr(new Uint8Array(Buffer.from(text, 'base64')));
  } catch (e) {
    if (e instanceof CertificateError) throw new HttpError(400, 'bad-csr', `CSR refused: ${e.message} [${e.code}]`);
    throw e;
  }
}

function chainPem(leaf: Certificate, chain: readonly Certificate[]): string {
  return [leaf, ...chain].map((c) => pemEncode('CERTIFICATE', c.der)).join('');
}

export interface EstContext {
  readonly core: IngestCore;
  readonly issuer: DeviceIssuer;
  /** Roots device certificates chain to (renewal). */
  readonly roots: readonly Certificate[];
}

export function cacerts(ctx: EstContext, res: ServerResponse): void {
  send(res, 200, 'application/pem-certificate-chain', ctx.issuer.chain.map((c) => pemEncode('CERTIFICATE', c.der)).join(''));
}

async function issue(ctx: EstContext, csr: Csr, deviceId: string): Promise<Certificate> {
  try {
    return await ctx.issuer.issueDevice(csr, deviceId, ctx.core.clock.now());
  } catch (e) {
    if (e instanceof CertificateError) {
      const status = e.code === 'device-id-mismatch' ? 403 : 400;
      throw new HttpError(status, e.code, `the CA refused the request: ${e.message}`);
    }
    throw e;
  }
}

export async function simpleEnroll(ctx: EstContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { core } = ctx;
  const fail = (code: string, detail: string) => {
    core.metrics.enrolments.inc({ result: code });
    core.audit.record({ actor: 'est', operation: 'auth-failure', result: 'denied', code, detail });
  };
  const header = req.headers.authorization;
  const m = header === undefined ? null : /^Bearer ([!-~]{1,100})$/.exec(header);
  const hash = m === null ? undefined : parseToken(m[1] as string, ENROL_TOKEN_PREFIX);
  if (hash === undefined) {
    fail('enrol-no-token', 'enrolment without a well-formed enrolment token');
    throw new HttpError(401, 'enrol-token-required', 'an enrolment token (Authorization: Bearer vse_...) is required', { 'www-authenticate': 'Bearer realm="vitalseal-enrol"' });
  }
  const csr = csrFromBody(await readBody(req, MAX_CSR_BODY));
  const result = await core.storage.consumeEnrolToken(hash, core.clock.now());
  if (result.status !== 'ok') {
    fail(`enrol-token-${result.status}`, `enrolment token ${result.status}`);
    throw new HttpError(401, `enrol-token-${result.status}`, `the enrolment token is ${result.status === 'unknown' ? 'not known' : result.status}`, { 'www-authenticate': 'Bearer realm="vitalseal-enrol"' });
  }
  const deviceId = result.token.deviceId;
  const cn = commonNameOf(csr.subject);
  if (cn !== undefined && cn !== deviceId) {
    fail('device-id-mismatch', `token for ${deviceLabel(deviceId)} used for another device`);
    throw new HttpError(403, 'device-id-mismatch', 'the CSR names another device than the token');
  }
  const existing = await core.registry.lookup(deviceId);
  if (existing !== undefined && existing.status !== 'active') {
    fail(`device-${existing.status}`, `enrolment of ${existing.status} device ${deviceLabel(deviceId)}`);
    throw new HttpError(403, `device-${existing.status}`, `device ${deviceId} is ${existing.status}`);
  }
  const cert = await issue(ctx, csr, deviceId);
  try {
    await core.registry.register({
      deviceId, credential: 'certificate', credentialSha256: toHex(spkiSha256(cert.spki.der)), status: 'active',
      enrolledAt: core.clock.now(), certSerial: cert.serialHex, certNotAfter: cert.notAfter,
    });
  } catch (e) {
    if (e instanceof ApiMisuse && e.code === 'device-revoked') throw new HttpError(403, 'device-revoked', e.message);
    throw e;
  }
  core.metrics.enrolments.inc({ result: 'enrolled' });
  await core.audit.append({ actor: 'est', operation: 'enrol', result: 'ok', detail: `device ${deviceLabel(deviceId)} enrolled, certificate valid until ${new Date(cert.notAfter).toISOString()}` });
  send(res, 200, 'application/pem-certificate-chain', chainPem(cert, ctx.issuer.chain));
}

export async function simpleReenroll(ctx: EstContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { core } = ctx;
  const c = clientCertificate(req, ctx.roots, core.clock, true, (q) => core.registry.revocationStatus(q));
  if (!('peer' in c) || c.peer.deviceId === undefined) {
    const code = 'error' in c ? c.error.code : 'no-certificate';
    core.metrics.enrolments.inc({ result: `renew-${code}` });
    core.audit.record({ actor: 'est', operation: 'auth-failure', result: 'denied', code: `renew-${code}`, detail: 'renewal without a valid current device certificate' });
    throw new HttpError(401, 'certificate-required', `renewal needs the device's current certificate (${code})`);
  }
  const deviceId = c.peer.deviceId;
  if (!isDeviceId(deviceId)) throw new HttpError(403, 'device-id-mismatch', 'no device id');
  const csr = csrFromBody(await readBody(req, MAX_CSR_BODY));
  const cn = commonNameOf(csr.subject);
  if (cn !== undefined && cn !== deviceId) throw new HttpError(403, 'device-id-mismatch', 'the CSR names another device than the certificate');
  const before = await core.registry.lookup(deviceId);
  if (before === undefined || before.status !== 'active') throw new HttpError(403, 'device-not-active', `device ${deviceId} is not active`);
  const cert = await issue(ctx, csr, deviceId);
  const newPin = toHex(spkiSha256(cert.spki.der));
  await core.registry.register({
    deviceId, credential: 'certificate', credentialSha256: newPin, status: 'active',
    enrolledAt: before.enrolledAt, certSerial: cert.serialHex, certNotAfter: cert.notAfter,
  });
  // A new key supersedes the old certificate: revoke it, so the broker stops taking it too.
  if (before.certSerial !== undefined && before.credentialSha256 !== newPin && ctx.issuer.revoke !== undefined) {
    await ctx.issuer.revoke(before.certSerial, core.clock.now(), 'superseded').catch((e: unknown) => {
      core.log.warn({ err: String(e), device: deviceLabel(deviceId) }, 'old certificate not revoked after a key change');
    });
  }
  core.metrics.enrolments.inc({ result: 'renewed' });
  await core.audit.append({ actor: 'est', operation: 'enrol', result: 'ok', code: 'renewal', detail: `device ${deviceLabel(deviceId)} renewed${before.credentialSha256 !== newPin ? ' with a new key' : ''}` });
  send(res, 200, 'application/pem-certificate-chain', chainPem(cert, ctx.issuer.chain));
}
