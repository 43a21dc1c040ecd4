/**
 * Self-encrypted session tickets (RFC 8446 §4.6.1; the server keeps no per-session state). A ticket
 * is `version || key id || nonce || AES-128-GCM(state)`; the state holds the resumption PSK, the
 * suite, issue time and lifetime, and who the peer was, so a resumed session still knows which
 * device it talks to. Ticket keys rotate every ticket lifetime and the previous key stays valid for
 * one more, so every ticket is usable for its whole lifetime.
 *
 * @example
 *   const keys = new TicketKeys(provider, now, 86_400_000);
 *   const ticket = keys.seal(state, now);
 *   const back = keys.open(ticket, now); // undefined when unknown, tampered or expired
 */
import { createHash } from 'node:crypto';
import { CounterSealer } from '../../crypto/aead.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { concatBytes, toHex, zeroize } from '../../util/bytes.ts';
import { VitalsealError } from '../../util/errors.ts';
import { publicKeyFromSpki } from '../../pki/algorithms.ts';
import { decodeAll, Reader, Writer } from '../messages/codec.ts';
import type { PeerIdentity } from '../peer-verifier.ts';
import type { AuthMode } from './context.ts';

export interface TicketState {
  readonly suite: number;
  readonly psk: Uint8Array;
  readonly issuedAt: number;
  readonly lifetimeSeconds: number;
  readonly ageAdd: number;
  /** How the original handshake authenticated the client. */
  readonly authMode: AuthMode;
  /** The client identity of the original handshake (mutual authentication). */
  readonly peer: Pick<PeerIdentity, 'subject' | 'commonName' | 'deviceId' | 'spki' | 'notAfter'> | undefined;
  /** The external PSK identity of the original handshake. */
  readonly pskIdentity: Uint8Array | undefined;
  /** The client's IP address when the ticket was issued (RFC 9147 §5.1: resumption may skip the cookie from there). */
  readonly clientAddress: string;
}

const VERSION = 1;
const AUTH_MODES: readonly AuthMode[] = ['certificate', 'mutual', 'psk', 'resumption'];

interface Key {
  readonly id: number;
  readonly secret: Uint8Array;
  readonly sealer: CounterSealer;
  readonly created: number;
}

function encodeState(s: TicketState): Uint8Array {
  const w = new Writer(256);
  w.u16(s.suite).opaque(1, s.psk).u64(s.issuedAt).u32(s.lifetimeSeconds).u32(s.ageAdd).u8(AUTH_MODES.indexOf(s.authMode));
  if (s.peer === undefined) w.u8(0);
  else {
    w.u8(1).opaque(2, new TextEncoder().encode(s.peer.subject)).opaque(2, new TextEncoder().encode(s.peer.commonName ?? ''))
      .opaque(1, new TextEncoder().encode(s.peer.deviceId ?? '')).opaque(2, s.peer.spki).u64(s.peer.notAfter);
  }
  w.opaque(2, s.pskIdentity ?? new Uint8Array(0));
  w.opaque(1, new TextEncoder().encode(s.clientAddress));
  return w.finish();
}

function decodeState(b: Uint8Array): TicketState {
  return decodeAll(b, 'ticket state', (r: Reader) => {
    const suite = r.u16();
    const psk = r.opaque(1, 32, 32);
    const issuedAt = r.u64();
    const lifetimeSeconds = r.u32();
    const ageAdd = r.u32();
    const authMode = AUTH_MODES[r.u8()];
    if (authMode === undefined) throw new RangeError('ticket auth mode');
    let peer: TicketState['peer'];
    if (r.u8() === 1) {
      const subject = new TextDecoder().decode(r.opaque(2, 0, 0xffff));
      const cn = new TextDecoder().decode(r.opaque(2, 0, 0xffff));
      const deviceId = new TextDecoder().decode(r.opaque(1, 0, 64));
      peer = { subject, commonName: cn === '' ? undefined : cn, deviceId: deviceId === '' ? undefined : deviceId, spki: r.opaque(2, 1, 0xffff), notAfter: r.u64() };
    }
    const id = r.opaque(2, 0, 0xffff);
    const clientAddress = new TextDecoder().decode(r.opaque(1, 0, 255));
    return { suite, psk, issuedAt, lifetimeSeconds, ageAdd, authMode, peer, pskIdentity: id.length === 0 ? undefined : id, clientAddress };
  });
}

/** Rebuilds a PeerIdentity from what a ticket keeps (no certificate chain is carried). */
export function identityFromTicket(peer: NonNullable<TicketState['peer']>): PeerIdentity {
  // The same decoder and cache as certificate validation (OpenSSL's SPKI decoding is slow, and a
  // resuming device presents the key the server saw at its full handshake).
  const publicKey = publicKeyFromSpki(peer.spki, 'resumed peer');
  return {
    subject: peer.subject,
    commonName: peer.commonName,
    deviceId: peer.deviceId,
    spki: peer.spki,
    notAfter: peer.notAfter,
    spkiSha256: toHex(createHash('sha256').update(peer.spki).digest()),
    publicKey,
    chain: [],
  };
}

export class TicketKeys {
  #current: Key;
  #previous: Key | undefined;

  constructor(
    private readonly provider: CryptoProvider,
    now: number,
    private readonly rotateMs: number,
  ) {
    this.#current = this.#newKey(0, now);
  }

  #newKey(id: number, now: number): Key {
    const secret = this.provider.randomBytes(16);
    return { id, secret, sealer: new CounterSealer(this.provider, 'aes-128-gcm', secret, this.provider.randomBytes(12)), created: now };
  }

  #rotateIfDue(now: number): void {
    if (now - this.#current.created < this.rotateMs && !this.#current.sealer.exhausted) return;
    if (this.#previous !== undefined) {
      this.#previous.sealer.destroy();
      zeroize(this.#previous.secret);
    }
    this.#previous = this.#current;
    this.#current = this.#newKey((this.#current.id + 1) & 0xff, now);
  }

  seal(state: TicketState, now: number): Uint8Array {
    this.#rotateIfDue(now);
    const header = Uint8Array.of(VERSION, this.#current.id);
    const plain = encodeState(state);
    const { nonce, sealed } = this.#current.sealer.seal(plain, header);
    zeroize(plain);
    return concatBytes(header, nonce, sealed);
  }

  /** The state inside a ticket we issued that is still within its lifetime, else undefined. */
  open(ticket: Uint8Array, now: number): TicketState | undefined {
    if (ticket.length < 2 + 12 + 16 || ticket[0] !== VERSION) return undefined;
    this.#rotateIfDue(now);
    const id = ticket[1];
    const key = id === this.#current.id ? this.#current : id === this.#previous?.id ? this.#previous : undefined;
    if (key === undefined) return undefined;
    let state: TicketState;
    try {
      const plain = this.provider.aeadOpen('aes-128-gcm', key.secret, ticket.subarray(2, 14), ticket.subarray(14), ticket.subarray(0, 2));
      state = decodeState(plain);
    } catch (e) {
      if (e instanceof VitalsealError || e instanceof RangeError) return undefined;
      throw e;
    }
    if (now < state.issuedAt || now > state.issuedAt + state.lifetimeSeconds * 1000) return undefined;
    // A ticket never outlives the certificate that authenticated its session.
    if (state.peer !== undefined && now > state.peer.notAfter) return undefined;
    return state;
  }
}
