/**
 * Reads the handshake from `openssl s_client -msg` output: the ServerHello (negotiated version,
 * suite and group) and the server's Certificate message (the broker's chain, checked again by
 * `validateChain` with our pins and fleet profile, as the in-process path does).
 *
 * The format is OpenSSL's message callback (apps/lib/s_cb.c): a header line per protocol message,
 *
 *   <<< TLS 1.3, Handshake [length 0335], Certificate
 *
 * then the message bytes as hex, 16 to a line. `-msg` prints decrypted TLS 1.3 handshake messages
 * with their 4-byte handshake header. Parsing is strict and bounded: at most `MAX_MESSAGE` bytes a
 * message and `MAX_LINE` characters a line; anything else is a `DecodeError`. Only the handshake is
 * read: once the client's Finished has been written, everything after it is ignored.
 *
 * @example
 *   const trace = new SClientTrace();
 *   trace.push(text);                 // as it arrives, in any chunking
 *   if (trace.finished) trace.session // { protocol: 'TLSv1.3', suite: 'TLS_AES_256_GCM_SHA384', group: 'x25519' }
 */
import { MAX_CHAIN_CERTIFICATES } from '../../pki/validate.ts';
import { DecodeError } from '../../util/errors.ts';
import type { TlsSessionInfo } from './tls.ts';

const MAX_MESSAGE = 64 * 1024;
const MAX_LINE = 512;

const HS_SERVER_HELLO = 2;
const HS_CERTIFICATE = 11;
const HS_FINISHED = 20;

const SUITES: Readonly<Record<number, string>> = {
  0x1301: 'TLS_AES_128_GCM_SHA256',
  0x1302: 'TLS_AES_256_GCM_SHA384',
  0x1303: 'TLS_CHACHA20_POLY1305_SHA256',
  0x1304: 'TLS_AES_128_CCM_SHA256',
  0x1305: 'TLS_AES_128_CCM_8_SHA256',
};

/** Names as node:tls's getEphemeralKeyInfo reports them, lower-cased (tls.ts sessionInfoOf). */
const GROUPS: Readonly<Record<number, string>> = {
  0x0017: 'prime256v1',
  0x0018: 'secp384r1',
  0x0019: 'secp521r1',
  0x001d: 'x25519',
  0x001e: 'x448',
};

const HEADER = /^(<<<|>>>) ([^[]*) \[length ([0-9a-f]{1,8})\](.*)$/;
const HEX_LINE = /^ {3}(?: [0-9a-f]{2})+(?: \.\.\.)?$/;

function bad(message: string): never {
  throw new DecodeError('s-client-trace', `s_client trace: ${message}`);
}

interface Pending {
  readonly incoming: boolean;
  readonly handshake: boolean;
  readonly length: number;
  readonly bytes: Uint8Array | undefined;
  filled: number;
}

export class SClientTrace {
  #partial = '';
  #pending: Pending | undefined;
  #finished = false;
  #serverHello: Uint8Array | undefined;
  #certificate: Uint8Array | undefined;

  /** True once the client's Finished was written: the handshake is complete on our side. */
  get finished(): boolean {
    return this.#finished;
  }

  /** Feeds output as it arrives. Throws `DecodeError` on anything that is not the expected format. */
  push(text: string): void {
    if (this.#finished) return;
    const lines = (this.#partial + text).split('\n');
    this.#partial = lines.pop() as string;
    if (this.#partial.length > MAX_LINE) bad(`a line longer than ${MAX_LINE} characters`);
    for (const line of lines) {
      this.#line(line);
      if (this.#finished) {
        this.#partial = '';
        return;
      }
    }
  }

  #line(line: string): void {
    if (line.length > MAX_LINE) bad(`a line longer than ${MAX_LINE} characters`);
    const p = this.#pending;
    if (p !== undefined && p.filled < p.length) {
      if (!HEX_LINE.test(line)) bad('message bytes expected');
      const hex = line.replace(/ \.\.\.$/, '').trim().split(' ');
      if (p.filled + hex.length > p.length) bad('more bytes than the message length');
      for (const h of hex) {
        if (p.bytes !== undefined) p.bytes[p.filled] = Number.parseInt(h, 16);
        p.filled++;
      }
      if (p.filled === p.length) this.#complete(p);
      return;
    }
    this.#pending = undefined;
    const m = HEADER.exec(line);
    if (m === null) return; // other callback output (e.g. key update notes): not a message
    const length = Number.parseInt(m[3] as string, 16);
    if (length > MAX_MESSAGE) bad(`a message of ${length} bytes`);
    const handshake = /, Handshake$/.test(m[2] as string);
    const incoming = m[1] === '<<<';
    const next: Pending = { incoming, handshake, length, bytes: handshake ? new Uint8Array(length) : undefined, filled: 0 };
    if (length === 0) this.#complete(next);
    else this.#pending = next;
  }

  #complete(p: Pending): void {
    this.#pending = undefined;
    if (!p.handshake || p.bytes === undefined || p.length < 4) return;
    const type = p.bytes[0] as number;
    const bodyLength = ((p.bytes[1] as number) << 16) | ((p.bytes[2] as number) << 8) | (p.bytes[3] as number);
    if (bodyLength !== p.length - 4) bad('a handshake message whose length disagrees with its header');
    const body = p.bytes.subarray(4);
    if (p.incoming && type === HS_SERVER_HELLO) this.#serverHello = body;
    else if (p.incoming && type === HS_CERTIFICATE) this.#certificate = body;
    else if (!p.incoming && type === HS_FINISHED) this.#finished = true;
  }

  /** What the ServerHello negotiated (the last one, after a HelloRetryRequest). */
  get session(): TlsSessionInfo {
    const sh = this.#serverHello;
    if (sh === undefined) bad('no ServerHello');
    return parseServerHello(sh);
  }

  /** The server's certificate chain, DER, leaf first. */
  get chain(): Uint8Array[] {
    const c = this.#certificate;
    if (c === undefined) bad('no server Certificate');
    return parseCertificateBody(c);
  }
}

class Cursor {
  at = 0;
  constructor(readonly b: Uint8Array, readonly what: string) {}
  take(n: number): Uint8Array {
    if (this.at + n > this.b.length) bad(`${this.what} truncated`);
    const out = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
  uint(n: 1 | 2 | 3): number {
    const b = this.take(n);
    let v = 0;
    for (const x of b) v = (v << 8) | x;
    return v;
  }
  get done(): boolean {
    return this.at === this.b.length;
  }
}

/** RFC 8446 §4.1.3: the suite, and from its extensions the version (§4.2.1) and group (§4.2.8). */
export function parseServerHello(body: Uint8Array): TlsSessionInfo {
  const c = new Cursor(body, 'ServerHello');
  c.take(2 + 32);
  c.take(c.uint(1));
  const suite = c.uint(2);
  c.take(1);
  const ext = new Cursor(c.take(c.uint(2)), 'ServerHello extensions');
  if (!c.done) bad('bytes after the ServerHello extensions');
  let version: number | undefined;
  let group: number | undefined;
  while (!ext.done) {
    const type = ext.uint(2);
    const data = new Cursor(ext.take(ext.uint(2)), 'ServerHello extension');
    if (type === 43) version = data.uint(2);
    else if (type === 51) group = data.uint(2);
  }
  return {
    protocol: version === 0x0304 ? 'TLSv1.3' : 'unknown',
    suite: SUITES[suite] ?? `0x${suite.toString(16).padStart(4, '0')}`,
    group: group === undefined ? 'unknown' : GROUPS[group] ?? `0x${group.toString(16).padStart(4, '0')}`,
  };
}

/** RFC 8446 §4.4.2: certificate_request_context, then CertificateEntry {cert_data, extensions}. */
export function parseCertificateBody(body: Uint8Array): Uint8Array[] {
  const c = new Cursor(body, 'Certificate');
  c.take(c.uint(1));
  const list = new Cursor(c.take(c.uint(3)), 'certificate_list');
  if (!c.done) bad('bytes after the certificate_list');
  const out: Uint8Array[] = [];
  while (!list.done) {
    if (out.length === MAX_CHAIN_CERTIFICATES) bad(`more than ${MAX_CHAIN_CERTIFICATES} certificates`);
    const len = list.uint(3);
    if (len === 0) bad('an empty certificate');
    out.push(new Uint8Array(list.take(len)));
    list.take(list.uint(2));
  }
  if (out.length === 0) bad('an empty certificate_list');
  return out;
}
