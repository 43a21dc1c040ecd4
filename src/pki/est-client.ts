/**
 * The device side of enrolment over HTTPS, in the spirit of EST (RFC 7030; the service side is
 * src/ingest/http/est.ts). A CSR signed by the device's own key goes to `simpleenroll` with a
 * one-time enrolment token, or to `simplereenroll` over mutual TLS with the device's current
 * certificate; the answer, a PEM chain (`application/pem-certificate-chain`, RFC 8555 §9.1), is
 * checked here before anyone uses it: it must chain to the pinned root, name this device and carry
 * this device's key, by the same `validateChain` the ingest runs on the device's connections.
 *
 * The TLS connection comes from the caller as an `EstConnector` (the shape of the MQTTS
 * `TlsConnector`): in this process for enrolment (no client certificate: the token authenticates),
 * and for renewal wherever the device key can sign (openssl s_client signing in the TPM, or this
 * process for the development store). The connector checks the server's chain against the
 * pinned roots and the host name before a byte of the request leaves.
 *
 * Every refusal the endpoint gives becomes an `EnrolmentError` with its own code; the answer is
 * read up to `maxResponseBytes` and no further. The token is a secret: it goes into the
 * Authorization header and nowhere else (not into an error, not into a log line); text the server
 * sends back is cut short and scrubbed of anything shaped like a token before it is quoted.
 *
 * What this module leaves to its caller: reading the token (a 0600 file or the environment),
 * retrying (`EnrolmentError.retryable`), writing files.
 *
 * @example
 *   const endpoint = parseEstUrl('https://ingest.hospital.example:8443');
 *   const issued = await enrol({ endpoint, connector: serverAuthTls({ trust }), signer, deviceId: 'bed-7', token,
 *     roots: trust.roots, clock: systemClock });
 *   writeFileSync('chain.pem', chainPem(issued));
 */
import type { Duplex } from 'node:stream';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Signer } from '../keystore/signer.ts';
import { equalBytes } from '../util/bytes.ts';
import type { Clock } from '../util/clock.ts';
import { ApiMisuse, CertificateError, EnrolmentError, PeerIncompatible, UplinkRejected, VitalsealError, type EnrolmentErrorCode } from '../util/errors.ts';
import type { Certificate } from './certificate.ts';
import { createCsr } from './csr.ts';
import { isDeviceId } from './device-id.ts';
import type { EstEndpoint } from './est-url.ts';
import { pemDecode, pemEncode } from './pem.ts';
import { MAX_CHAIN_CERTIFICATES, validateChain, type ValidatedPeer } from './validate.ts';

/** RFC 7030 §3.2.2: the well-known paths (no CA label). */
export const EST_PATHS = {
  cacerts: '/.well-known/est/cacerts',
  enrol: '/.well-known/est/simpleenroll',
  renew: '/.well-known/est/simplereenroll',
} as const;

/** An answer larger than this is refused: a chain of fleet certificates is a few KiB. */
export const MAX_EST_RESPONSE_BYTES = 64 * 1024;
const DEFAULT_TIMEOUT_MS = 30_000;
/** The ingest's enrolment tokens (src/ingest/tokens.ts): `vse_` and 32 random bytes in base64url. */
const ENROL_TOKEN = /^vse_[A-Za-z0-9_-]{43}$/;
/** Anything token-shaped in text the server sends back is blanked before it is quoted. */
const TOKEN_LIKE = /vs[a-z]_[A-Za-z0-9_-]{8,}/g;

export type EstOperation = 'enrol' | 'renew';

export { parseEstUrl, type EstEndpoint } from './est-url.ts';

export interface EstTlsTarget {
  readonly host: string;
  readonly port: number;
  readonly serverName: string;
}

/** A TLS connection's plaintext side; `secured` settles once the server's chain passed (or failed) our checks. */
export interface EstConnection {
  readonly stream: Duplex;
  readonly secured: Promise<unknown>;
}

/** Opens TLS connections to the endpoint (the MQTTS `TlsConnector`s fit this shape). */
export interface EstConnector {
  open(target: EstTlsTarget): EstConnection;
}

export interface EstRequestOptions {
  readonly endpoint: EstEndpoint;
  readonly connector: EstConnector;
  /** The whole exchange (connect, handshake, request, answer) must finish within this; default 30 s. */
  readonly timeoutMs?: number;
  /** Default `MAX_EST_RESPONSE_BYTES`. */
  readonly maxResponseBytes?: number;
}

/** An answer as it came: status, media type, body. */
export interface EstReply {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly body: Uint8Array;
}

/** What the service issued, after our checks. */
export interface IssuedChain {
  readonly leaf: Certificate;
  /** Leaf first, then the intermediates: what the device presents (the pinned root left out). */
  readonly presented: readonly Certificate[];
  /** The pinned root the chain validated against. */
  readonly root: Certificate;
  readonly peer: ValidatedPeer;
}

/** An issued chain and the CSR it answers (public; provisioning keeps it). */
export interface Enrolment extends IssuedChain {
  readonly csr: Uint8Array;
}

/** Refuses a malformed token before it is sent anywhere; the message never quotes it. */
export function checkEnrolToken(token: string): void {
  if (!ENROL_TOKEN.test(token)) {
    throw new EnrolmentError('token-invalid', 'the enrolment token is not well-formed (expected vse_ followed by 43 base64url characters, as `vitalseal ingest enrol-token` prints it)');
  }
}

/**
 * Enrols: a CSR signed by `signer` for `deviceId`, the token, the answer checked.
 * Throws `EnrolmentError` for every refusal.
 */
export async function enrol(o: EstRequestOptions & { signer: Signer; deviceId: string; token: string; roots: readonly Certificate[]; clock: Clock }): Promise<Enrolment> {
  checkEnrolToken(o.token);
  const csr = await deviceCsr(o.signer, o.deviceId);
  const reply = await postCsr(o, 'enrol', csr, o.token);
  const issued = checkIssuedChain(chainFromReply(reply, 'enrol', o.endpoint), { roots: o.roots, now: o.clock.now(), deviceId: o.deviceId, keySpki: await o.signer.publicKeySpki() });
  return { ...issued, csr };
}

/**
 * Re-enrols with the same key over the connector's mutual TLS (the current certificate
 * authenticates). With `currentNotAfter`, a certificate that does not outlive the current one is
 * refused (`chain-refused`): renewing into it again and again would help nobody.
 */
export async function reenrol(o: EstRequestOptions & { signer: Signer; deviceId: string; roots: readonly Certificate[]; clock: Clock; currentNotAfter?: number }): Promise<Enrolment> {
  const csr = await deviceCsr(o.signer, o.deviceId);
  const reply = await postCsr(o, 'renew', csr);
  const issued = checkIssuedChain(chainFromReply(reply, 'renew', o.endpoint), {
    roots: o.roots, now: o.clock.now(), deviceId: o.deviceId, keySpki: await o.signer.publicKeySpki(),
    ...(o.currentNotAfter === undefined ? {} : { notAfterBeyond: o.currentNotAfter }),
  });
  return { ...issued, csr };
}

function deviceCsr(signer: Signer, deviceId: string): Promise<Uint8Array> {
  if (!isDeviceId(deviceId)) throw new ApiMisuse('invalid-device-id', 'device id: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit');
  return createCsr({ signer, subject: { commonName: deviceId }, deviceId });
}

/** The PEM chain (leaf + intermediates) a device presents and stores as its chain file. */
export function chainPem(issued: IssuedChain): string {
  return issued.presented.map((c) => pemEncode('CERTIFICATE', c.der)).join('');
}

/**
 * POSTs the CSR (RFC 7030 §4.2.1: base64 of the DER) to `simpleenroll` (with the token) or
 * `simplereenroll`, and returns the answer as it came. Transport and TLS failures become
 * `EnrolmentError`s: `server-untrusted` when the server's certificate failed our checks,
 * `unavailable` when it could not be reached or did not answer in time, `bad-response` when the
 * answer was cut short or too large.
 */
export function postCsr(o: EstRequestOptions, op: EstOperation, csrDer: Uint8Array, token?: string): Promise<EstReply> {
  if (op === 'enrol' && token === undefined) throw new ApiMisuse('token-required', 'postCsr: enrolment needs the token');
  if (op === 'renew' && token !== undefined) throw new ApiMisuse('token-not-allowed', 'postCsr: renewal authenticates with the certificate, not a token');
  const body = Buffer.from(Buffer.from(csrDer.buffer, csrDer.byteOffset, csrDer.byteLength).toString('base64'), 'latin1');
  return exchange(o, op, EST_PATHS[op], {
    'content-type': 'application/pkcs10',
    'content-transfer-encoding': 'base64',
    'content-length': String(body.length),
    ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
  }, body);
}

function exchange(o: EstRequestOptions, op: EstOperation, path: string, headers: Record<string, string>, body: Buffer): Promise<EstReply> {
  const { endpoint } = o;
  const limit = o.maxResponseBytes ?? MAX_EST_RESPONSE_BYTES;
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const where = endpoint.origin;
  return new Promise<EstReply>((resolve, reject) => {
    let conn: EstConnection;
    try {
      conn = o.connector.open({ host: endpoint.host, port: endpoint.port, serverName: endpoint.serverName });
    } catch (e) {
      reject(new EnrolmentError('unavailable', `${opName(op)}: cannot open a TLS connection to ${where} (${codeOf(e)})`, { cause: e }));
      return;
    }
    let settled = false;
    const settle = (result: { error: EnrolmentError } | { reply: EstReply }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      conn.stream.destroy();
      if ('error' in result) reject(result.error);
      else resolve(result.reply);
    };
    const fail = (error: EnrolmentError) => settle({ error });
    const timer = setTimeout(() => fail(new EnrolmentError('unavailable', `${opName(op)}: no answer from ${where} within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    const hostHeader = endpoint.host.includes(':') ? `[${endpoint.host}]:${endpoint.port}` : `${endpoint.host}:${endpoint.port}`;
    const req = httpRequest({
      method: 'POST',
      path,
      headers: { host: hostHeader, accept: 'application/pem-certificate-chain', connection: 'close', ...headers },
      // Node runs HTTP over any Duplex a createConnection returns (the http.Agent contract); the
      // typings say Socket. The stream is the connector's: node:tls here, or the TPM tunnel.
      createConnection: () => conn.stream as unknown as Socket,
      maxHeaderSize: 8192,
    });
    req.on('response', (res: IncomingMessage) => readReply(res, limit, op, where, (r) => ('reply' in r ? settle(r) : fail(r.error))));
    req.on('error', (e) => {
      // Whether the handshake had finished decides what the failure means: before it, the
      // connector's typed reason (our check of the server's chain, a refused connection).
      conn.secured.then(
        () => fail(new EnrolmentError('unavailable', `${opName(op)}: the connection to ${where} failed (${codeOf(e)})`, { cause: e })),
        (t: unknown) => fail(handshakeFailure(t, op, where)),
      );
    });
    req.end(body);
  });
}

function readReply(res: IncomingMessage, limit: number, op: EstOperation, where: string, done: (r: { reply: EstReply } | { error: EnrolmentError }) => void): void {
  const tooLarge = () => new EnrolmentError('bad-response', `${opName(op)}: the answer from ${where} is larger than ${limit} bytes`);
  const declared = res.headers['content-length'];
  if (declared !== undefined && (!/^\d{1,12}$/.test(declared) || Number(declared) > limit)) {
    done({ error: tooLarge() });
    return;
  }
  const chunks: Buffer[] = [];
  let total = 0;
  let over = false;
  res.on('data', (c: Buffer) => {
    if (over) return;
    total += c.length;
    if (total > limit) {
      over = true;
      done({ error: tooLarge() });
      return;
    }
    chunks.push(c);
  });
  const cut = () => done({ error: new EnrolmentError('bad-response', `${opName(op)}: the answer from ${where} was cut short`, { status: res.statusCode ?? 0 }) });
  res.on('error', cut);
  res.on('close', () => {
    if (!res.complete) cut();
  });
  res.on('end', () => {
    if (!res.complete) {
      cut();
      return;
    }
    const type = res.headers['content-type'];
    done({ reply: { status: res.statusCode ?? 0, contentType: type === undefined ? undefined : type.split(';')[0]?.trim().toLowerCase(), body: new Uint8Array(Buffer.concat(chunks)) } });
  });
}

function handshakeFailure(t: unknown, op: EstOperation, where: string): EnrolmentError {
  if (t instanceof CertificateError) {
    return new EnrolmentError('server-untrusted', `${opName(op)}: the server certificate of ${where} was refused (${t.code}): ${t.message}`, { cause: t });
  }
  if (t instanceof UplinkRejected) {
    return new EnrolmentError('certificate-refused', `${opName(op)}: ${where} refused this device's certificate in the TLS handshake (${t.message})`, { cause: t });
  }
  if (t instanceof PeerIncompatible) return new EnrolmentError('unavailable', `${opName(op)}: no common TLS 1.3 settings with ${where} (${t.message})`, { cause: t });
  return new EnrolmentError('unavailable', `${opName(op)}: cannot reach ${where} (${codeOf(t)})`, { cause: t });
}

/**
 * The chain out of a 200 answer, or the typed refusal for anything else. The service's own error
 * code and message (JSON `{ error, message }`) are quoted, bounded and scrubbed.
 */
export function chainFromReply(reply: EstReply, op: EstOperation, endpoint: Pick<EstEndpoint, 'origin'>): string {
  const where = endpoint.origin;
  if (reply.status === 200) {
    // RFC 8555 §9.1: the chain's media type; anything else is not an answer to this request.
    if (reply.contentType !== 'application/pem-certificate-chain') {
      throw new EnrolmentError('bad-response', `${opName(op)}: ${where} answered 200 with ${reply.contentType === undefined ? 'no media type' : printable(reply.contentType, 60)}, not application/pem-certificate-chain`, { status: 200 });
    }
    return Buffer.from(reply.body.buffer, reply.body.byteOffset, reply.body.byteLength).toString('latin1');
  }
  const { serverCode, serverMessage } = serverError(reply);
  const code = refusalCode(reply.status, serverCode, op);
  const detail = `HTTP ${reply.status}${serverCode === undefined ? '' : ` ${serverCode}`}${serverMessage === undefined ? '' : `: ${serverMessage}`}`;
  throw new EnrolmentError(code, `${opName(op)} refused by ${where}: ${REFUSAL_TEXT[code](op)} (${detail})`, {
    status: reply.status, ...(serverCode === undefined ? {} : { serverCode }),
  });
}

/** From the service's codes (src/ingest/http/est.ts) to ours. */
function refusalCode(status: number, serverCode: string | undefined, op: EstOperation): EnrolmentErrorCode {
  if (status === 404 || status === 405) return 'not-found';
  if (status === 429 || status >= 500) return 'unavailable';
  switch (serverCode) {
    case 'enrol-token-used': return 'token-spent';
    case 'enrol-token-expired': return 'token-expired';
    case 'enrol-token-required': case 'enrol-token-unknown': return 'token-invalid';
    case 'device-id-mismatch': return 'device-mismatch';
    case 'device-revoked': case 'device-suspended': case 'device-not-active': return 'device-not-active';
    case 'certificate-required': return 'certificate-refused';
    default: break;
  }
  if (status === 401) return op === 'enrol' ? 'token-invalid' : 'certificate-refused';
  if (status === 400 || status === 403 || status === 413) return 'csr-refused';
  return 'bad-response';
}

const REFUSAL_TEXT: Record<EnrolmentErrorCode, (op: EstOperation) => string> = {
  'token-invalid': () => 'the enrolment token is not known to the service (mistyped, or made by another service)',
  'token-spent': () => 'the enrolment token was used already; tokens are single-use: make a new one (vitalseal ingest enrol-token)',
  'token-expired': () => 'the enrolment token has expired: make a new one (vitalseal ingest enrol-token)',
  'device-mismatch': (op) => (op === 'enrol' ? 'the token is for another device than the one asked for' : 'the current certificate names another device than the request'),
  'device-not-active': () => 'the device is suspended or revoked at the service',
  'certificate-refused': () => 'the service did not accept the current certificate (revoked, superseded, expired or unknown); the device needs a new enrolment token',
  'csr-refused': () => 'the service refused the certificate request',
  'server-untrusted': () => 'the server is not trusted',
  'not-found': () => 'there is no enrolment endpoint at this address',
  unavailable: () => 'the enrolment service is unavailable; try again later',
  'bad-response': () => 'the answer is not an enrolment answer',
  'chain-refused': () => 'the issued chain was refused',
};

function serverError(reply: EstReply): { serverCode?: string; serverMessage?: string } {
  if (reply.contentType !== 'application/json' || reply.body.length > 4096) return {};
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(reply.body.buffer, reply.body.byteOffset, reply.body.byteLength).toString('utf8'));
  } catch {
    return {};
  }
  if (typeof doc !== 'object' || doc === null) return {};
  const { error, message } = doc as { error?: unknown; message?: unknown };
  return {
    ...(typeof error === 'string' && /^[a-z0-9-]{1,64}$/.test(error) ? { serverCode: error } : {}),
    ...(typeof message === 'string' ? { serverMessage: printable(message, 200) } : {}),
  };
}

/** Text from the peer, safe to quote: printable ASCII, bounded, nothing token-shaped. */
function printable(text: string, max: number): string {
  return JSON.stringify(text.replace(/[^\x20-\x7e]/g, '?').replace(TOKEN_LIKE, '[redacted]').slice(0, max));
}

export interface IssuedChainChecks {
  readonly roots: readonly Certificate[];
  /** From the caller's injected clock. */
  readonly now: number;
  readonly deviceId: string;
  /** The device key's SubjectPublicKeyInfo (DER): the leaf must carry exactly this key. */
  readonly keySpki: Uint8Array;
  /** The new leaf must expire after this (renewal: the current certificate's notAfter). */
  readonly notAfterBeyond?: number;
}

/**
 * Checks an issued PEM chain: CERTIFICATE blocks only, at most `MAX_CHAIN_CERTIFICATES`; a path to
 * a pinned root, valid at `now`, for client authentication, naming `deviceId` (validateChain, as
 * the ingest checks the device's connections); the leaf's key is the device's key.
 */
export function checkIssuedChain(pem: string, o: IssuedChainChecks): IssuedChain {
  let ders: Uint8Array[];
  try {
    const blocks = pemDecode(pem);
    const other = blocks.find((b) => b.label !== 'CERTIFICATE');
    if (other !== undefined) throw new EnrolmentError('bad-response', `the answer holds a ${printable(other.label, 40)} block; only certificates belong in a chain`);
    ders = blocks.map((b) => b.der);
  } catch (e) {
    if (e instanceof EnrolmentError) throw e;
    throw new EnrolmentError('bad-response', `the answer is not a PEM certificate chain (${codeOf(e)}: ${e instanceof Error ? e.message : 'unreadable'})`, { cause: e });
  }
  if (ders.length === 0) throw new EnrolmentError('bad-response', 'the answer holds no certificate');
  if (ders.length > MAX_CHAIN_CERTIFICATES) throw new EnrolmentError('bad-response', `the answer holds ${ders.length} certificates; a chain has at most ${MAX_CHAIN_CERTIFICATES}`);
  let peer: ValidatedPeer;
  try {
    peer = validateChain(ders, { roots: o.roots, now: o.now, purpose: 'client', expectedDeviceId: o.deviceId });
  } catch (e) {
    if (e instanceof CertificateError) throw new EnrolmentError('chain-refused', `the issued chain fails validation (${e.code}): ${e.message}`, { cause: e });
    throw e;
  }
  if (!equalBytes(peer.spki, o.keySpki)) {
    throw new EnrolmentError('chain-refused', 'the issued certificate carries another key than this device\'s: not usable, and not a certificate for this request');
  }
  const leaf = peer.path[0] as Certificate;
  if (o.notAfterBeyond !== undefined && leaf.notAfter <= o.notAfterBeyond) {
    throw new EnrolmentError('chain-refused', `the new certificate expires at ${new Date(leaf.notAfter).toISOString()}, no later than the current one (${new Date(o.notAfterBeyond).toISOString()}); is the issuing CA near its own expiry?`);
  }
  return { leaf, presented: peer.path.slice(0, -1), root: peer.path[peer.path.length - 1] as Certificate, peer };
}

function opName(op: EstOperation): string {
  return op === 'enrol' ? 'enrolment' : 'renewal';
}

function codeOf(e: unknown): string {
  if (e instanceof VitalsealError) return e.code;
  if (typeof e === 'object' && e !== null && 'code' in e && typeof (e as { code: unknown }).code === 'string') return (e as { code: string }).code;
  return e instanceof Error ? e.name : 'error';
}
