/**
 * Extensions (RFC 8446 §4.2, RFC 9146 §3). At the message level an extension is kept raw
 * (`type`, `data`) so messages re-encode byte for byte; the typed body codecs below read the
 * extensions a DTLS 1.3 endpoint acts on, each strictly (exact length, bounded vectors).
 */
import { PeerMisbehaved } from '../../util/errors.ts';
import { decodeAll, encodeWith, type Reader, type Writer } from './codec.ts';

export interface Extension {
  readonly type: number;
  readonly data: Uint8Array;
}

/** `Extension extensions<min..2^16-1>`: refuses a repeated type (RFC 8446 §4.2). */
export function readExtensions(r: Reader, min: number, what: string): Extension[] {
  const list = r.list(2, min, 0xffff, `${what} extensions`, (sub) => {
    const type = sub.u16('extension type');
    const data = sub.opaque(2, 0, 0xffff, `extension ${type}`);
    return { type, data };
  });
  const seen = new Set<number>();
  for (const e of list) {
    if (seen.has(e.type)) throw new PeerMisbehaved('duplicate-extension', `${what}: extension ${e.type} appears twice`);
    seen.add(e.type);
  }
  return list;
}

export function writeExtensions(w: Writer, extensions: readonly Extension[]): void {
  w.vector(2, (v) => {
    for (const e of extensions) v.u16(e.type).opaque(2, e.data);
  });
}

export function findExtension(extensions: readonly Extension[], type: number): Uint8Array | undefined {
  for (const e of extensions) if (e.type === type) return e.data;
  return undefined;
}

// ---- supported_versions (RFC 8446 §4.2.1) ----

export function encodeSupportedVersionsClient(versions: readonly number[]): Uint8Array {
  return encodeWith((w) => w.vector(1, (v) => versions.forEach((x) => v.u16(x))));
}
export function readSupportedVersionsClient(data: Uint8Array): number[] {
  return decodeAll(data, 'supported_versions', (r) =>
    r.list(1, 2, 254, 'supported_versions', (s) => s.u16('version')));
}
export function encodeSupportedVersionsServer(version: number): Uint8Array {
  return encodeWith((w) => w.u16(version));
}
export function readSupportedVersionsServer(data: Uint8Array): number {
  return decodeAll(data, 'supported_versions', (r) => r.u16('selected_version'));
}

// ---- supported_groups (RFC 8446 §4.2.7), signature_algorithms (§4.2.3) ----

export function encodeU16List(values: readonly number[]): Uint8Array {
  return encodeWith((w) => w.vector(2, (v) => values.forEach((x) => v.u16(x))));
}
export function readU16List(data: Uint8Array, what: string): number[] {
  return decodeAll(data, what, (r) => r.list(2, 2, 0xfffe, what, (s) => s.u16(what)));
}

// ---- key_share (RFC 8446 §4.2.8) ----

export interface KeyShareEntry {
  readonly group: number;
  readonly keyExchange: Uint8Array;
}

function readKeyShareEntry(r: Reader): KeyShareEntry {
  const group = r.u16('key_share group');
  const keyExchange = r.opaque(2, 1, 0xffff, 'key_exchange');
  return { group, keyExchange };
}

export function encodeKeyShareClient(shares: readonly KeyShareEntry[]): Uint8Array {
  return encodeWith((w) => w.vector(2, (v) => shares.forEach((s) => v.u16(s.group).opaque(2, s.keyExchange))));
}
export function readKeyShareClient(data: Uint8Array): KeyShareEntry[] {
  const shares = decodeAll(data, 'key_share', (r) => r.list(2, 0, 0xffff, 'client_shares', readKeyShareEntry));
  // RFC 8446 §4.2.8: clients MUST NOT offer two shares for one group.
  const groups = new Set<number>();
  for (const s of shares) {
    if (groups.has(s.group)) throw new PeerMisbehaved('duplicate-key-share', `key_share: group ${s.group} offered twice`);
    groups.add(s.group);
  }
  return shares;
}
export function encodeKeyShareServer(share: KeyShareEntry): Uint8Array {
  return encodeWith((w) => w.u16(share.group).opaque(2, share.keyExchange));
}
export function readKeyShareServer(data: Uint8Array): KeyShareEntry {
  return decodeAll(data, 'key_share', readKeyShareEntry);
}
export function encodeKeyShareHrr(group: number): Uint8Array {
  return encodeWith((w) => w.u16(group));
}
export function readKeyShareHrr(data: Uint8Array): number {
  return decodeAll(data, 'key_share', (r) => r.u16('selected_group'));
}

// ---- cookie (RFC 8446 §4.2.2) ----

export function encodeCookie(cookie: Uint8Array): Uint8Array {
  return encodeWith((w) => w.opaque(2, cookie));
}
export function readCookie(data: Uint8Array): Uint8Array {
  return decodeAll(data, 'cookie', (r) => r.opaque(2, 1, 0xffff, 'cookie'));
}

// ---- psk_key_exchange_modes (RFC 8446 §4.2.9) ----

export function encodePskModes(modes: readonly number[]): Uint8Array {
  return encodeWith((w) => w.vector(1, (v) => modes.forEach((m) => v.u8(m))));
}
export function readPskModes(data: Uint8Array): number[] {
  return decodeAll(data, 'psk_key_exchange_modes', (r) => r.list(1, 1, 255, 'ke_modes', (s) => s.u8('mode')));
}

// ---- pre_shared_key (RFC 8446 §4.2.11) ----

export interface PskIdentity {
  readonly identity: Uint8Array;
  readonly obfuscatedTicketAge: number;
}

export interface OfferedPsks {
  readonly identities: readonly PskIdentity[];
  readonly binders: readonly Uint8Array[];
}

export function encodeOfferedPsks(offer: OfferedPsks): Uint8Array {
  return encodeWith((w) => {
    w.vector(2, (v) => offer.identities.forEach((i) => v.opaque(2, i.identity).u32(i.obfuscatedTicketAge)));
    w.vector(2, (v) => offer.binders.forEach((b) => v.opaque(1, b)));
  });
}

/** Bytes the binders list takes at the end of the extension (and so of the ClientHello). */
export function bindersLength(binders: readonly Uint8Array[]): number {
  let n = 2;
  for (const b of binders) n += 1 + b.length;
  return n;
}

export function readOfferedPsks(data: Uint8Array): OfferedPsks {
  return decodeAll(data, 'pre_shared_key', (r) => {
    const identities = r.list(2, 7, 0xffff, 'identities', (s) => ({
      identity: s.opaque(2, 1, 0xffff, 'identity'),
      obfuscatedTicketAge: s.u32('obfuscated_ticket_age'),
    }));
    const binders = r.list(2, 33, 0xffff, 'binders', (s) => s.opaque(1, 32, 255, 'binder'));
    if (binders.length !== identities.length) {
      throw new PeerMisbehaved('psk-binder-count', `pre_shared_key: ${identities.length} identities but ${binders.length} binders`);
    }
    return { identities, binders };
  });
}
export function encodeSelectedPsk(index: number): Uint8Array {
  return encodeWith((w) => w.u16(index));
}
export function readSelectedPsk(data: Uint8Array): number {
  return decodeAll(data, 'pre_shared_key', (r) => r.u16('selected_identity'));
}

// ---- connection_id (RFC 9146 §3) ----

export function encodeConnectionId(cid: Uint8Array): Uint8Array {
  return encodeWith((w) => w.opaque(1, cid));
}
export function readConnectionId(data: Uint8Array): Uint8Array {
  return decodeAll(data, 'connection_id', (r) => r.opaque(1, 0, 255, 'cid'));
}

// ---- early_data (RFC 8446 §4.2.10), in NewSessionTicket ----

export function readEarlyDataTicket(data: Uint8Array): number {
  return decodeAll(data, 'early_data', (r) => r.u32('max_early_data_size'));
}

/** Throws unless every extension in `extensions` is one of `allowed` (RFC 8446 §4.2: unexpected ones are fatal). */
export function checkAllowed(extensions: readonly Extension[], allowed: readonly number[], what: string): void {
  for (const e of extensions) {
    if (!allowed.includes(e.type)) {
      throw new PeerMisbehaved('unsupported-extension', `${what}: extension ${e.type} is not allowed here`);
    }
  }
}
