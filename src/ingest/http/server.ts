/**
 * The ingest service's HTTPS front end: API, enrolment, dashboard and metrics on one TLS 1.3 port,
 * with HSTS; an optional plain-HTTP port that only redirects to HTTPS (RFC 6797 §7.2: no content
 * over plain HTTP).
 *
 * TLS: 1.3 only (`minVersion`/`maxVersion`), the server certificate chain and key from files, and a
 * client-certificate request that is optional at the TLS layer (`requestCert`, not
 * `rejectUnauthorized`): token users connect without one; each route decides what a certificate
 * means (an operator on the API, a device on renewal) after validating it with src/pki.
 *
 * Limits: header bytes (8 KiB), body bytes per route, request and header timeouts, connections.
 * Every response carries the security headers (respond.ts). Errors are typed JSON bodies.
 *
 * @example
 *   const http = await startIngestHttp(core, { host: '127.0.0.1', port: 8443, redirectPort: 8080, certPem, keyPem, roots, issuer });
 *   ...
 *   await http.close();
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Certificate } from '../../pki/certificate.ts';
import { pemEncode } from '../../pki/pem.ts';
import { isDeviceId } from '../../util/device-id.ts';
import type { IngestCore } from '../core.ts';
import * as api from './api.ts';
import { authenticate, type MtlsOperator, type Principal } from './auth.ts';
import { serveAsset } from './dashboard.ts';
import { cacerts, simpleEnroll, simpleReenroll, type DeviceIssuer, type EstContext } from './est.ts';
import { HttpError, readBody, securityHeaders, sendError, sendJson } from './respond.ts';

export interface IngestHttpOptions {
  readonly host: string;
  /** 0 picks a free port (tests). */
  readonly port: number;
  /** A plain-HTTP port that redirects to HTTPS; omitted: none. */
  readonly redirectPort?: number;
  /** The server certificate chain (leaf first) and its private key, PEM. */
  readonly certPem: string;
  readonly keyPem: string | Buffer;
  /** For an encrypted private key. */
  readonly keyPassphrase?: string;
  /** Roots client certificates (devices renewing, operators) must chain to. */
  readonly roots: readonly Certificate[];
  readonly operators?: readonly MtlsOperator[];
  /** The CA enrolment issues from; without one the enrolment routes answer 503. */
  readonly issuer?: DeviceIssuer;
  readonly hstsMaxAge?: number;
  readonly maxLiveStreams?: number;
  readonly maxConnections?: number;
}

export interface IngestHttp {
  readonly url: string;
  readonly port: number;
  readonly redirectPort: number | undefined;
  close(): Promise<void>;
}

type Handler = (req: IncomingMessage, res: ServerResponse, url: URL, params: readonly string[]) => Promise<void>;

interface Route {
  readonly method: 'GET' | 'POST';
  readonly path: RegExp;
  readonly auth: 'none' | 'reader' | 'admin';
  /** Stable name for metrics. */
  readonly name: string;
  readonly handler: (p: Principal | undefined, req: IncomingMessage, res: ServerResponse, url: URL, params: readonly string[]) => Promise<void>;
}

const DEVICE = '([A-Za-z0-9][A-Za-z0-9._-]{0,63})';

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

export async function startIngestHttp(core: IngestCore, o: IngestHttpOptions): Promise<IngestHttp> {
  const hstsMaxAge = o.hstsMaxAge ?? 31_536_000;
  const headers = securityHeaders(hstsMaxAge);
  const operators = o.operators ?? [];
  const ctx: api.ApiContext = {
    core, tls: { protocol: 'TLSv1.3', hstsMaxAge, mtlsOperators: operators.length }, maxLiveStreams: o.maxLiveStreams ?? 32,
    startedAt: core.clock.now(), liveState: { streams: 0 },
  };
  const est: EstContext | undefined = o.issuer === undefined ? undefined : { core, issuer: o.issuer, roots: o.roots };
  const needEst = (): EstContext => {
    if (est === undefined) throw new HttpError(503, 'enrolment-disabled', 'this service has no issuing CA configured (pki section)');
    return est;
  };
  const noBody = async (req: IncomingMessage) => {
    if ((await readBody(req, 0)).length !== 0) throw new HttpError(400, 'bad-request', 'no body expected');
  };

  const routes: Route[] = [
    { method: 'GET', path: /^\/$/, auth: 'none', name: 'dashboard', handler: async (_p, _q, res) => serveAsset(res, 'index.html') },
    { method: 'GET', path: /^\/assets\/(dashboard\.js|dashboard\.css)$/, auth: 'none', name: 'asset', handler: async (_p, _q, res, _u, [f]) => serveAsset(res, f as string) },
    { method: 'GET', path: /^\/healthz$/, auth: 'none', name: 'health', handler: async (_p, _q, res) => sendJson(res, 200, { status: core.service === undefined ? 'no-static-key' : 'ok' }) },
    { method: 'GET', path: /^\/metrics$/, auth: 'reader', name: 'metrics', handler: (p, _q, res) => api.metrics(ctx, p as Principal, res) },
    { method: 'GET', path: /^\/api\/v1\/devices$/, auth: 'reader', name: 'devices', handler: (p, _q, res) => api.listDevices(ctx, p as Principal, res) },
    { method: 'GET', path: new RegExp(`^/api/v1/devices/${DEVICE}$`), auth: 'reader', name: 'device', handler: (p, _q, res, _u, [id]) => api.getDevice(ctx, p as Principal, res, id as string) },
    { method: 'GET', path: new RegExp(`^/api/v1/devices/${DEVICE}/readings$`), auth: 'reader', name: 'readings', handler: (p, _q, res, u, [id]) => api.readings(ctx, p as Principal, res, id as string, u) },
    { method: 'GET', path: new RegExp(`^/api/v1/devices/${DEVICE}/gaps$`), auth: 'reader', name: 'gaps', handler: (p, _q, res, _u, [id]) => api.gaps(ctx, p as Principal, res, id as string) },
    { method: 'GET', path: /^\/api\/v1\/posture$/, auth: 'reader', name: 'posture', handler: (p, _q, res) => api.posture(ctx, p as Principal, res) },
    { method: 'GET', path: /^\/api\/v1\/live$/, auth: 'reader', name: 'live', handler: (p, q, res, u) => api.live(ctx, p as Principal, q, res, u) },
    {
      method: 'POST', path: new RegExp(`^/api/v1/devices/${DEVICE}/(suspend|resume|revoke)$`), auth: 'admin', name: 'device-status',
      handler: async (p, q, res, _u, [id, action]) => {
        await noBody(q);
        await api.setStatus(ctx, p as Principal, res, id as string, action as 'suspend' | 'resume' | 'revoke');
      },
    },
    { method: 'GET', path: /^\/\.well-known\/est\/cacerts$/, auth: 'none', name: 'est-cacerts', handler: async (_p, _q, res) => cacerts(needEst(), res) },
    { method: 'POST', path: /^\/\.well-known\/est\/simpleenroll$/, auth: 'none', name: 'est-enroll', handler: (_p, q, res) => simpleEnroll(needEst(), q, res) },
    { method: 'POST', path: /^\/\.well-known\/est\/simplereenroll$/, auth: 'none', name: 'est-reenroll', handler: (_p, q, res) => simpleReenroll(needEst(), q, res) },
  ];

  const handle: Handler = async (req, res, url) => {
    const matches = routes.filter((r) => r.path.test(url.pathname));
    if (matches.length === 0) throw new HttpError(404, 'not-found', 'no such resource');
    const route = matches.find((r) => r.method === req.method);
    if (route === undefined) throw new HttpError(405, 'method-not-allowed', `use ${matches.map((r) => r.method).join(', ')}`, { allow: matches.map((r) => r.method).join(', ') });
    const params = (route.path.exec(url.pathname) as RegExpExecArray).slice(1);
    if (params.length > 0 && route.path.source.includes(DEVICE) && !isDeviceId(params[0])) throw new HttpError(400, 'bad-device-id', 'not a device id');
    let principal: Principal | undefined;
    if (route.auth !== 'none') {
      try {
        principal = await authenticate(req, { storage: core.storage, clock: core.clock, roots: o.roots, operators });
      } catch (e) {
        if (e instanceof HttpError) {
          core.audit.record({ actor: 'api', operation: 'auth-failure', result: 'denied', code: e.code, detail: `${req.method ?? '?'} ${route.name} from ${req.socket.remoteAddress ?? '?'}` });
        }
        throw e;
      }
      if (route.auth === 'admin' && principal.role !== 'admin') {
        core.audit.record({ actor: principal.actor, operation: 'auth-failure', result: 'denied', code: 'not-admin', detail: `${req.method ?? '?'} ${route.name}` });
        throw new HttpError(403, 'forbidden', 'this operation needs an admin token');
      }
    }
    await route.handler(principal, req, res, url, params);
    core.metrics.apiRequests.inc({ route: route.name, code: String(res.statusCode) });
  };

  const tlsServer = createHttpsServer({
    cert: o.certPem,
    key: o.keyPem,
    ...(o.keyPassphrase === undefined ? {} : { passphrase: o.keyPassphrase }),
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    requestCert: true,
    rejectUnauthorized: false,
    ca: o.roots.map((c) => pemEncode('CERTIFICATE', c.der)),
    maxHeaderSize: 8192,
    requestTimeout: 30_000,
    headersTimeout: 10_000,
    keepAliveTimeout: 5_000,
  }, (req, res) => {
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    let url: URL;
    try {
      if ((req.url ?? '').length > 2048) throw new HttpError(414, 'uri-too-long', 'request URI longer than 2048 characters');
      url = new URL(req.url ?? '/', 'https://ingest.invalid');
    } catch (e) {
      sendError(res, e instanceof HttpError ? e : new HttpError(400, 'bad-request', 'malformed request URI'));
      return;
    }
    handle(req, res, url, []).catch((e: unknown) => {
      if (e instanceof HttpError) {
        core.metrics.apiRequests.inc({ route: 'error', code: String(e.status) });
        // A 413 carries `connection: close`: the rest of an oversized body is not read.
        sendError(res, e);
        return;
      }
      core.log.error({ err: e instanceof Error ? e.message : String(e) }, 'HTTPS request failed');
      core.metrics.apiRequests.inc({ route: 'error', code: '500' });
      sendError(res, new HttpError(500, 'internal', 'internal error'));
    });
  });
  tlsServer.maxConnections = o.maxConnections ?? 1024;
  tlsServer.on('tlsClientError', () => core.metrics.handshakeFailures.inc({ transport: 'https', alert: 'handshake_failure' }));
  const port = await listen(tlsServer, o.port, o.host);

  let redirect: Server | undefined;
  let redirectPort: number | undefined;
  if (o.redirectPort !== undefined) {
    // RFC 6797 §7.2: over plain HTTP, only a permanent redirect to the HTTPS origin.
    redirect = createHttpServer({ maxHeaderSize: 8192, requestTimeout: 10_000, headersTimeout: 5_000 }, (req, res) => {
      const host = (req.headers.host ?? '').replace(/:\d+$/, '');
      const path = req.url ?? '/';
      if (!/^([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$|^\[[0-9A-Fa-f:.]{2,45}\]$/.test(host) || !path.startsWith('/') || path.length > 2048) {
        res.writeHead(400, { 'content-type': 'text/plain', connection: 'close' });
        res.end('bad request\n');
        return;
      }
      res.writeHead(308, { location: `https://${host}:${port}${path}`, 'content-length': '0', connection: 'close' });
      res.end();
      req.resume();
    });
    redirectPort = await listen(redirect, o.redirectPort, o.host);
  }

  const urlHost = o.host.includes(':') ? `[${o.host}]` : o.host;
  return {
    url: `https://${urlHost}:${port}`,
    port,
    redirectPort,
    async close() {
      const closing = [new Promise<void>((r) => tlsServer.close(() => r()))];
      if (redirect !== undefined) closing.push(new Promise<void>((r) => (redirect as Server).close(() => r())));
      tlsServer.closeAllConnections();
      redirect?.closeAllConnections();
      await Promise.all(closing);
    },
  };
}
