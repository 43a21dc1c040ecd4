/** Loads a wolfSSL DTLS 1.3 capture from test/vectors/dtls13-wolfssl/ and insists it names its source. */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface CaptureDatagram {
  readonly frame: number;
  readonly from: 'client' | 'server';
  readonly hex: string;
}

export interface KeylogEntry {
  readonly label: string;
  readonly client_random: string;
  readonly secret: string;
}

export interface Capture {
  readonly source: string;
  readonly description: string;
  readonly peer_options: string;
  readonly datagrams: readonly CaptureDatagram[];
  readonly keylog: readonly KeylogEntry[];
  readonly [pem: string]: unknown;
}

export const CAPTURE_NAMES = ['dtls13-chacha', 'c-mutual-ecc', 'd-psk-ke', 'e1-hrr-keyshare-cookie'] as const;

export function loadCapture(name: string): Capture {
  const path = fileURLToPath(new URL(`../../vectors/dtls13-wolfssl/${name}.json`, import.meta.url));
  const data = JSON.parse(readFileSync(path, 'utf8')) as Partial<Capture>;
  if (typeof data.source !== 'string' || data.source.length === 0) throw new Error(`${name}: no source field`);
  if (!Array.isArray(data.datagrams) || data.datagrams.length === 0) throw new Error(`${name}: no datagrams`);
  if (!Array.isArray(data.keylog) || data.keylog.length === 0) throw new Error(`${name}: no keylog`);
  return data as Capture;
}

export function keylogSecret(cap: Capture, label: string): string {
  const e = cap.keylog.find((k) => k.label === label);
  if (e === undefined) throw new Error(`capture has no ${label}`);
  return e.secret;
}
