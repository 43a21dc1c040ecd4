/**
 * What a handshake state may do to its connection, and what a finished handshake hands over.
 * States call these in protocol order; the connection layer turns them into records, flights and
 * key changes (rustls: `Context` / `CommonState`).
 */
import type { NamedGroupName } from '../messages/constants.ts';
import type { NewSessionTicket } from '../messages/handshake.ts';
import type { PeerIdentity } from '../peer-verifier.ts';
import type { DtlsCipherSuite } from '../suites.ts';
import type { ResumptionTicket } from '../config.ts';

export type AuthMode = 'certificate' | 'mutual' | 'psk' | 'resumption';

export interface HandshakeContext {
  /** The time of the input being processed (ms since the epoch). */
  readonly now: number;
  /** Queues a TLS-encoded handshake message in the flight being built, under the current write epoch. */
  send(message: Uint8Array): void;
  /** Installs keys for records we receive in `epoch`. */
  installReadKeys(epoch: number, suite: DtlsCipherSuite, secret: Uint8Array): void;
  /** Makes `epoch` the one handshake messages and data are sent under from now on. */
  installWriteKeys(epoch: number, suite: DtlsCipherSuite, secret: Uint8Array): void;
  /**
   * Connection IDs agreed in the hellos (RFC 9146 §3, RFC 9147 §9): `receive` is what the peer puts
   * in records to us (empty: none), `send` what we put in records to the peer. Protected records
   * use them from the first encrypted flight on.
   */
  setConnectionIds(receive: Uint8Array, send: Uint8Array): void;
  /** The handshake is complete on this side. */
  complete(result: HandshakeResult): void;
  /** A ticket arrived (client): hand it to the application. */
  ticket(ticket: ResumptionTicket): void;
}

export interface HandshakeResult {
  readonly suite: DtlsCipherSuite;
  /** The (EC)DHE group, undefined for a PSK handshake without key exchange (never negotiated here). */
  readonly group: NamedGroupName | undefined;
  readonly authMode: AuthMode;
  /** The authenticated peer: from its certificate, or from the ticket on resumption. */
  readonly peer: PeerIdentity | undefined;
  /** The external PSK identity used, if any. */
  readonly pskIdentity: Uint8Array | undefined;
  readonly clientApplicationSecret: Uint8Array;
  readonly serverApplicationSecret: Uint8Array;
  readonly resumptionMasterSecret: Uint8Array;
  /** Tickets to send after the handshake (server). */
  readonly tickets: readonly NewSessionTicket[];
}
