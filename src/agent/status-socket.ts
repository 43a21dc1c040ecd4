/**
 * `vitalseal agent status` talks to the running agent over a local Unix socket (mode 0600, beside
 * the queue): connect, read one JSON document, done. Local only, no network exposure, no secrets in
 * the document (counts, times, names of suites and peers).
 *
 * @example
 *   const s = await serveStatus('/var/lib/vitalseal/agent.sock', () => agent.status());
 *   const doc = await readStatus('/var/lib/vitalseal/agent.sock');
 */
import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';

export async function serveStatus(path: string, snapshot: () => unknown): Promise<Server> {
  // A stale socket from a crashed run is removed; any other kind of file is left alone.
  if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
  const server = createServer((c) => {
    c.on('error', () => undefined);
    let body: string;
    try {
      body = JSON.stringify(snapshot());
    } catch {
      body = JSON.stringify({ error: 'status unavailable' });
    }
    c.end(`${body}\n`);
  });
  server.maxConnections = 8;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  chmodSync(path, 0o600);
  return server;
}

export function readStatus(path: string, timeoutMs = 3000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const s = connect(path);
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer from the agent on ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('data', (d: Buffer) => {
      size += d.length;
      if (size > 1024 * 1024) s.destroy(new Error('status document too large'));
      else chunks.push(d);
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      reject(new Error(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? `no agent is running (nothing listening on ${path})` : `cannot reach the agent on ${path}: ${e.code ?? e.message}`));
    });
    s.on('end', () => {
      clearTimeout(t);
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(new Error('the agent sent a malformed status document'));
      }
    });
  });
}
