/**
 * The handshake transcript (RFC 8446 §4.4.1 with RFC 9147 §5.2: TLS-style messages, without the
 * DTLS message_seq and fragment fields). Messages are kept and hashed on demand: a handshake has a
 * handful of messages of a few KiB, and the provider's one-shot SHA-256 keeps the hash pluggable.
 *
 * @example
 *   const t = new Transcript(provider);
 *   t.add(encodeHandshake(clientHello));
 *   t.hash(); // Transcript-Hash(ClientHello)
 */
import type { CryptoProvider } from '../../crypto/provider.ts';
import { concatBytes } from '../../util/bytes.ts';
import { HandshakeType } from '../messages/constants.ts';
import { HASH_LENGTH } from './key-schedule.ts';

export class Transcript {
  #messages: Uint8Array[] = [];

  constructor(private readonly provider: CryptoProvider) {}

  add(message: Uint8Array): void {
    this.#messages.push(message);
  }

  /** Transcript-Hash of everything added so far. */
  hash(): Uint8Array {
    return this.provider.sha256(concatBytes(...this.#messages));
  }

  /** Transcript-Hash of everything so far followed by `extra` (not added): PSK binders, CertificateVerify. */
  hashWith(extra: Uint8Array): Uint8Array {
    return this.provider.sha256(concatBytes(...this.#messages, extra));
  }

  /**
   * RFC 8446 §4.4.1: after a HelloRetryRequest, ClientHello1 is replaced by the synthetic
   * message_hash message `254 || 00 00 20 || Hash(ClientHello1)`.
   */
  replaceWithMessageHash(): void {
    const h = this.hash();
    this.#messages = [messageHash(h)];
  }

  /** A copy, for states that branch (a client trying a PSK binder, tests). */
  clone(): Transcript {
    const t = new Transcript(this.provider);
    t.#messages = [...this.#messages];
    return t;
  }

  /** The running transcript's total length: bounded by the handshake layer's message limits. */
  get length(): number {
    let n = 0;
    for (const m of this.#messages) n += m.length;
    return n;
  }
}

/** The synthetic message_hash handshake message standing in for ClientHello1 (RFC 8446 §4.4.1). */
export function messageHash(clientHello1Hash: Uint8Array): Uint8Array {
  return concatBytes(Uint8Array.of(HandshakeType.messageHash, 0, 0, HASH_LENGTH), clientHello1Hash);
}
