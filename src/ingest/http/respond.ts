/**
 * HTTP plumbing shared by the API, the enrolment endpoint and the dashboard: security headers on
 * every response, JSON and error bodies, and bounded body reading.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** A refusal the handler maps to a status code; `code` is a stable string for clients. */
export class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly headers: Record<string, string> = {}) {
    super(message);
  }
}

/**
 * Headers on every HTTPS response. HSTS (RFC 6797 §6.1) makes browsers refuse plain HTTP for the
 * host from then on; the CSP allows only this origin's own scripts and styles (no CDN, no inline
 * code), and no framing.
 */
export function securityHeaders(hstsMaxAge: number): Record<string, string> {
  return {
    'strict-transport-security': `max-age=${hstsMaxAge}; includeSubDomains`,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'x-frame-options': 'DENY',
    'cross-origin-opener-policy': 'same-origin',
    'cross-origin-resource-policy': 'same-origin',
    'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  };
}

export function send(res: ServerResponse, status: number, contentType: string, body: string | Uint8Array, extra: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.writeHead(status, { 'content-type': contentType, 'content-length': String(Buffer.byteLength(body)), 'cache-control': 'no-store', ...extra });
  res.end(body);
}

export function sendJson(res: ServerResponse, status: number, value: unknown, extra: Record<string, string> = {}): void {
  send(res, status, 'application/json; charset=utf-8', `${JSON.stringify(value)}\n`, extra);
}

export function sendError(res: ServerResponse, e: HttpError): void {
  sendJson(res, e.status, { error: e.code, message: e.message }, e.headers);
}

/**
 * The request body, refusing more than `maxBytes` (413) as soon as the count passes it, whatever the
 * Content-Length said, and a declared length above the limit before reading anything.
 */
export async function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && (!/^\d{1,12}$/.test(declared) || Number(declared) > maxBytes)) {
    throw new HttpError(413, 'too-large', `request body larger than ${maxBytes} bytes`, { connection: 'close' });
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    const b = chunk as Buffer;
    total += b.length;
    if (total > maxBytes) throw new HttpError(413, 'too-large', `request body larger than ${maxBytes} bytes`, { connection: 'close' });
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}
