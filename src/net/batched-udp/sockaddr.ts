/**
 * `struct sockaddr_in` / `sockaddr_in6` to and from the `{ address, port }` node:dgram uses, with the
 * same text forms (RFC 5952 for IPv6, as inet_ntop writes them), so a peer looks the same to the
 * DTLS server whichever socket received it.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { AF_INET, AF_INET6 } from './native.ts';

export interface SocketAddress {
  readonly address: string;
  readonly port: number;
}

/** The encoded address and its length (16 for IPv4, 28 for IPv6). Throws TypeError on a non-literal. */
export function encodeSockaddr(address: string, port: number): Uint8Array {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new TypeError(`port ${port} is out of range`);
  if (isIPv4(address)) {
    const out = new Uint8Array(16);
    const v = new DataView(out.buffer);
    v.setUint16(0, AF_INET, true);
    v.setUint16(2, port, false);
    out.set(address.split('.').map(Number), 4);
    return out;
  }
  if (isIPv6(address)) {
    const out = new Uint8Array(28);
    const v = new DataView(out.buffer);
    v.setUint16(0, AF_INET6, true);
    v.setUint16(2, port, false);
    out.set(ipv6Bytes(address), 8);
    return out;
  }
  throw new TypeError('not an IP address literal');
}

/** The address in `bytes` (as recvmmsg wrote it), or undefined for another family. */
export function decodeSockaddr(bytes: Uint8Array, length: number): SocketAddress | undefined {
  if (length < 16) return undefined;
  const family = bytes[0]! | (bytes[1]! << 8);
  const port = (bytes[2]! << 8) | bytes[3]!;
  if (family === AF_INET) return { address: `${bytes[4]}.${bytes[5]}.${bytes[6]}.${bytes[7]}`, port };
  if (family === AF_INET6 && length >= 24) return { address: ipv6Text(bytes.subarray(8, 24)), port };
  return undefined;
}

function ipv6Bytes(text: string): Uint8Array {
  const out = new Uint8Array(16);
  const zone = text.indexOf('%');
  const bare = zone >= 0 ? text.slice(0, zone) : text;
  const [head = '', tail] = bare.split('::') as [string, string | undefined];
  const groups = (part: string): number[] => {
    if (part === '') return [];
    const out: number[] = [];
    for (const g of part.split(':')) {
      if (g.includes('.')) {
        const [a, b, c, d] = g.split('.').map(Number) as [number, number, number, number];
        out.push((a << 8) | b, (c << 8) | d);
      } else out.push(parseInt(g, 16));
    }
    return out;
  };
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const all = tail === undefined ? h : [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  all.forEach((g, i) => {
    out[i * 2] = g >> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  return out;
}

function ipv6Text(b: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((b[i]! << 8) | b[i + 1]!);
  // IPv4-mapped (::ffff:a.b.c.d), written with the IPv4 part in dotted form as inet_ntop does.
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  }
  // The longest run of two or more zero groups becomes "::" (the first such run on a tie).
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLength))}`;
}
