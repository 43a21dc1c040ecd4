/**
 * The messages between an uplink and its TPM TLS child process (tpm-tunnel.ts ↔
 * tpm-tunnel-child.ts), over Node's IPC channel with structured-clone ("advanced") serialization.
 * Each side checks every message it receives against these shapes; anything else is a protocol
 * error that ends the child.
 *
 * Nothing secret crosses: the key goes over as a TSS2 PRIVATE KEY PEM, which only this TPM can
 * load; the bytes of each connection are plaintext MQTT (sealed COSE payloads) between two
 * processes of the same user.
 *
 * @example
 *   const msg = parseToChild(raw);   // undefined when `raw` is not a valid message
 */

/** At most this many bytes in one `write`/`data` message (larger chunks are split). */
export const MAX_CHUNK = 256 * 1024;
/** At most this many certificates in a peer chain report, each at most 16 KiB. */
export const MAX_CHAIN = 5;
const MAX_CERT = 16 * 1024;
const MAX_TEXT = 64 * 1024;

export interface ConfigureMessage {
  readonly t: 'configure';
  readonly keyPem: string;
  readonly certChainPem: string;
  readonly caPem: string;
}

export type ToChild =
  | ConfigureMessage
  | { readonly t: 'open'; readonly id: number; readonly host: string; readonly port: number; readonly serverName: string }
  | { readonly t: 'write'; readonly id: number; readonly data: Uint8Array }
  | { readonly t: 'end'; readonly id: number }
  | { readonly t: 'destroy'; readonly id: number };

export interface WireError {
  /** node's error code (e.g. ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED, ECONNREFUSED), when it had one. */
  readonly code?: string;
  readonly message: string;
}

export type ToParent =
  | { readonly t: 'ready' }
  | { readonly t: 'configured' }
  | { readonly t: 'failed'; readonly error: WireError }
  | { readonly t: 'secure'; readonly id: number; readonly protocol: string; readonly suite: string; readonly group: string; readonly chain: readonly Uint8Array[] }
  | { readonly t: 'data'; readonly id: number; readonly data: Uint8Array }
  | { readonly t: 'eof'; readonly id: number }
  | { readonly t: 'closed'; readonly id: number; readonly error?: WireError };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isId(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
}

function isText(v: unknown, max = MAX_TEXT): v is string {
  return typeof v === 'string' && v.length <= max;
}

function isChunk(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array && v.length <= MAX_CHUNK;
}

function wireError(v: unknown): WireError | undefined {
  if (!isObject(v) || !isText(v['message'], 1024)) return undefined;
  const code = v['code'];
  if (code !== undefined && !isText(code, 128)) return undefined;
  return code === undefined ? { message: v['message'] } : { code, message: v['message'] };
}

export function parseToChild(v: unknown): ToChild | undefined {
  if (!isObject(v)) return undefined;
  switch (v['t']) {
    case 'configure':
      return isText(v['keyPem']) && isText(v['certChainPem']) && isText(v['caPem'])
        ? { t: 'configure', keyPem: v['keyPem'], certChainPem: v['certChainPem'], caPem: v['caPem'] }
        : undefined;
    case 'open': {
      const port = v['port'];
      return isId(v['id']) && isText(v['host'], 255) && isText(v['serverName'], 255) && typeof port === 'number' && Number.isInteger(port) && port > 0 && port < 65536
        ? { t: 'open', id: v['id'], host: v['host'], port, serverName: v['serverName'] }
        : undefined;
    }
    case 'write':
      return isId(v['id']) && isChunk(v['data']) ? { t: 'write', id: v['id'], data: v['data'] } : undefined;
    case 'end':
    case 'destroy':
      return isId(v['id']) ? { t: v['t'], id: v['id'] } : undefined;
    default:
      return undefined;
  }
}

export function parseToParent(v: unknown): ToParent | undefined {
  if (!isObject(v)) return undefined;
  switch (v['t']) {
    case 'ready':
    case 'configured':
      return { t: v['t'] };
    case 'failed': {
      const error = wireError(v['error']);
      return error === undefined ? undefined : { t: 'failed', error };
    }
    case 'secure': {
      const chain = v['chain'];
      if (!isId(v['id']) || !isText(v['protocol'], 32) || !isText(v['suite'], 128) || !isText(v['group'], 64)) return undefined;
      if (!Array.isArray(chain) || chain.length === 0 || chain.length > MAX_CHAIN) return undefined;
      if (!chain.every((c) => c instanceof Uint8Array && c.length > 0 && c.length <= MAX_CERT)) return undefined;
      return { t: 'secure', id: v['id'], protocol: v['protocol'], suite: v['suite'], group: v['group'], chain: chain as Uint8Array[] };
    }
    case 'data':
      return isId(v['id']) && isChunk(v['data']) ? { t: 'data', id: v['id'], data: v['data'] } : undefined;
    case 'eof':
      return isId(v['id']) ? { t: 'eof', id: v['id'] } : undefined;
    case 'closed': {
      if (!isId(v['id'])) return undefined;
      if (v['error'] === undefined) return { t: 'closed', id: v['id'] };
      const error = wireError(v['error']);
      return error === undefined ? undefined : { t: 'closed', id: v['id'], error };
    }
    default:
      return undefined;
  }
}
