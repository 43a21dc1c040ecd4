/**
 * The dashboard's static files (dashboard/): one HTML page, one script, one style sheet, all served
 * from this process (no CDN, no inline code: the CSP allows only 'self'). The page holds no data;
 * it asks the API with the operator's token, which it keeps in sessionStorage only.
 */
import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { send } from './respond.ts';

const ASSETS: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'dashboard.js': 'text/javascript; charset=utf-8',
  'dashboard.css': 'text/css; charset=utf-8',
};

const cache = new Map<string, Buffer>();

export function serveAsset(res: ServerResponse, name: string): void {
  const type = ASSETS[name];
  if (type === undefined) throw new RangeError(`no asset ${name}`);
  let body = cache.get(name);
  if (body === undefined) {
    body = readFileSync(new URL(`./dashboard/${name}`, import.meta.url));
    cache.set(name, body);
  }
  send(res, 200, type, body);
}
