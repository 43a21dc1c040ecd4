/**
 * The host's end of the rig protocol (protocol.ts): a small HTTP server on 127.0.0.1 that hands the
 * guest its job and receives its progress and result. The guest reaches it as 10.0.2.2:<port>.
 * The device's enrolment token is handed out once, and only when the guest asks for it; it is never
 * logged, never part of the job and never in an error.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { MAX_BODY_BYTES, parseProgress, parseResult, ProtocolError, TOKEN_HEADER, type RigJob, type RigResult } from './protocol.ts';

export interface JobServer {
  readonly port: number;
  /** Goes on the kernel command line; the guest sends it back with every request. */
  readonly token: string;
  /** The guest's checked result (rejects if the guest sent a malformed one). */
  readonly result: Promise<RigResult>;
  close(): Promise<void>;
}

export interface JobServerOptions {
  readonly onProgress?: (step: string, ms: number) => void;
  /** A guest step that reports failure ("guest-job failed: ...") ends the wait early. */
  readonly failOnGuestError?: boolean;
  /** Issues the device's one-time enrolment token; GET /enrol-token serves it once. */
  readonly enrolToken?: () => Promise<string>;
  /** Answers GET /phase/N: has agent phase N delivered (or run out of time)? */
  readonly phaseDone?: (index: number) => Promise<boolean>;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new ProtocolError(`request body over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** Starts the server for one run with `job`. */
export function startJobServer(job: RigJob, opts: JobServerOptions = {}): Promise<JobServer> {
  const token = randomBytes(24).toString('base64url');
  let settle: { resolve: (r: RigResult) => void; reject: (e: Error) => void } | undefined;
  const result = new Promise<RigResult>((resolve, reject) => {
    settle = { resolve, reject };
  });
  // A rejection nobody awaits yet must not end the process.
  result.catch(() => undefined);
  const reply = (res: ServerResponse, status: number, body: string) => {
    res.writeHead(status, { 'content-type': 'application/json' }).end(body);
  };
  let tokenServed = false;
  const server = createServer((req, res) => {
    if (req.headers[TOKEN_HEADER] !== token) {
      reply(res, 403, '{"error":"wrong token"}');
      return;
    }
    void (async () => {
      try {
        if (req.method === 'GET' && req.url === '/job') {
          reply(res, 200, JSON.stringify(job));
        } else if (req.method === 'POST' && req.url === '/progress') {
          const p = parseProgress(await readBody(req));
          opts.onProgress?.(p.step, p.ms);
          if (opts.failOnGuestError === true && p.step.startsWith('guest-job failed')) settle?.reject(new ProtocolError(p.step));
          reply(res, 200, '{}');
        } else if (req.method === 'GET' && req.url === '/enrol-token' && opts.enrolToken !== undefined) {
          // Once: a second request (a replay, a confused guest) gets nothing.
          if (tokenServed) {
            reply(res, 410, '{"error":"the enrolment token was already handed out"}');
            return;
          }
          tokenServed = true;
          const token = await opts.enrolToken();
          res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' }).end(token);
        } else if (req.method === 'GET' && /^\/phase\/\d{1,2}$/.test(req.url ?? '') && opts.phaseDone !== undefined) {
          const done = await opts.phaseDone(Number((req.url as string).slice('/phase/'.length)));
          reply(res, 200, JSON.stringify({ done }));
        } else if (req.method === 'POST' && req.url === '/result') {
          const r = parseResult(await readBody(req));
          settle?.resolve(r);
          reply(res, 200, '{}');
        } else {
          reply(res, 404, '{"error":"no such endpoint"}');
        }
      } catch (e) {
        if (req.url === '/result') settle?.reject(e instanceof Error ? e : new Error(String(e)));
        // An error from issuing the token is not repeated to the guest: its text is the host's business.
        if (req.url === '/enrol-token') reply(res, 500, '{"error":"the host could not issue an enrolment token (see the rig\'s log)"}');
        else reply(res, 400, JSON.stringify({ error: e instanceof Error ? e.message : String(e) }));
      }
    })();
  });
  // The guest's steps are minutes apart: keep its connection rather than close it under a request.
  server.keepAliveTimeout = 15 * 60_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      if (addr === null || typeof addr === 'string') {
        reject(new Error('job server: no port'));
        return;
      }
      resolve({
        port: addr.port,
        token,
        result,
        close: () => new Promise<void>((r) => {
          server.closeAllConnections();
          server.close(() => r());
        }),
      });
    });
  });
}
