/**
 * PEM (RFC 7468) encoding and a strict, bounded decoder: matching BEGIN/END labels, standard base64
 * only, no headers (RFC 1421 "Proc-Type" style headers are refused). Text between blocks is ignored,
 * as OpenSSL ignores it, so a file with explanatory text before the block still reads.
 *
 * @example
 *   const pem = pemEncode('CERTIFICATE', der);
 *   const [block] = pemDecode(pem, 'CERTIFICATE');
 */
import { malformed } from './der.ts';

export interface PemBlock {
  readonly label: string;
  readonly der: Uint8Array;
}

/** A PEM file larger than this is refused (a chain of a few certificates is a few KiB). */
export const MAX_PEM_CHARS = 1024 * 1024;
const MAX_BLOCKS = 64;

export function pemEncode(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** Every PEM block in `text`; if `label` is given, only blocks with that label (others are skipped). */
export function pemDecode(text: string, label?: string): PemBlock[] {
  if (text.length > MAX_PEM_CHARS) throw malformed('PEM', `more than ${MAX_PEM_CHARS} characters`);
  const lines = text.split(/\r?\n/);
  const out: PemBlock[] = [];
  let current: { label: string; body: string[] } | undefined;
  for (const raw of lines) {
    const line = raw.trimEnd();
    if (current === undefined) {
      const m = /^-----BEGIN ([A-Z0-9 ]{1,64})-----$/.exec(line);
      if (m !== null && m[1] !== undefined) current = { label: m[1], body: [] };
      else if (line.startsWith('-----END ')) throw malformed('PEM', 'END line without BEGIN');
      continue;
    }
    const end = /^-----END ([A-Z0-9 ]{1,64})-----$/.exec(line);
    if (end !== null) {
      if (end[1] !== current.label) throw malformed('PEM', `BEGIN ${current.label} ends with END ${end[1] ?? ''}`);
      const b64 = current.body.join('');
      // RFC 7468 §3: standard base64 alphabet, padding only at the end.
      if (b64.length === 0 || b64.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) throw malformed('PEM', `${current.label}: invalid base64`);
      if (label === undefined || current.label === label) {
        if (out.length >= MAX_BLOCKS) throw malformed('PEM', `more than ${MAX_BLOCKS} blocks`);
        out.push({ label: current.label, der: new Uint8Array(Buffer.from(b64, 'base64')) });
      }
      current = undefined;
      continue;
    }
    if (line.includes(':')) throw malformed('PEM', `${current.label}: encapsulated headers are not supported`);
    if (line.startsWith('-----')) throw malformed('PEM', `${current.label}: unexpected boundary line`);
    current.body.push(line.trim());
  }
  if (current !== undefined) throw malformed('PEM', `BEGIN ${current.label} without END`);
  return out;
}

/** Reads DER or PEM bytes: PEM if the input looks like text with a BEGIN line, else DER as is. */
export function derOrPem(bytes: Uint8Array, label: string): Uint8Array[] {
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, MAX_PEM_CHARS + 1)).toString('latin1');
  if (head.includes('-----BEGIN ')) {
    const blocks = pemDecode(head, label);
    if (blocks.length === 0) throw malformed('PEM', `no ${label} block`);
    return blocks.map((b) => b.der);
  }
  return [bytes];
}
