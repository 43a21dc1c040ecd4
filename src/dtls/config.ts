/**
 * Configuration of DTLS 1.3 endpoints, validated once at the public boundary and resolved into
 * the typed, defaulted form the core uses. Defaults and the reasons for them are in docs/dtls.md.
 *
 * @example
 *   const client = resolveClientConfig({
 *     verifier: new X509PeerVerifier({ roots: [caPem], purpose: 'server' }),
 *     certificateChain: [deviceCertDer], signer: keyStoreSigner,
 *   });
 */
import type { CryptoProvider } from '../crypto/provider.ts';
import { getProvider } from '../crypto/registry.ts';
import type { Signer } from '../keystore/signer.ts';
import { abytes, aint } from '../util/assert.ts';
import { NamedGroupId, type CipherSuiteName, type NamedGroupName } from './messages/constants.ts';
import type { PeerCertificateVerifier, PeerIdentity } from './peer-verifier.ts';
import type { EpochLimits } from './record/protection.ts';
import { CIPHER_SUITES, DEFAULT_CIPHER_SUITES, type DtlsCipherSuite } from './suites.ts';
import { ApiMisuse } from '../util/errors.ts';

/** An external pre-shared key (RFC 8446 §4.2.11) for constrained devices. */
export interface ExternalPsk {
  readonly identity: Uint8Array;
  /** 32 bytes: every suite here hashes with SHA-256. */
  readonly key: Uint8Array;
}

/** What the client keeps to resume: delivered by the `session-ticket` event (RFC 8446 §4.6.1). */
export interface ResumptionTicket {
  readonly ticket: Uint8Array;
  readonly psk: Uint8Array;
  readonly suite: CipherSuiteName;
  readonly receivedAt: number;
  readonly lifetimeSeconds: number;
  readonly ageAdd: number;
  /** The server identity authenticated in the session that issued the ticket. */
  readonly serverIdentity: PeerIdentity | undefined;
}

export interface CommonConfig {
  /** Offer/preference order (default: AES-128-GCM, ChaCha20-Poly1305, AES-128-CCM). */
  readonly cipherSuites?: readonly CipherSuiteName[];
  /** Offer/preference order (default: x25519, secp256r1); the client sends a share for the first. */
  readonly groups?: readonly NamedGroupName[];
  /** Largest UDP payload sent (default 1200). */
  readonly mtu?: number;
  /** First retransmission timeout (RFC 9147 §5.8.2: 1000 ms); it doubles up to `maxRetransmitMs`. */
  readonly initialRetransmitMs?: number;
  readonly maxRetransmitMs?: number;
  /** Give up a handshake or an unacknowledged post-handshake message after this long (default 120 s). */
  readonly handshakeTimeoutMs?: number;
  /** Our certificate chain (DER, leaf first) and the Signer holding its key. */
  readonly certificateChain?: readonly Uint8Array[];
  readonly signer?: Signer;
  /** Validates the peer's certificate chain. */
  readonly verifier?: PeerCertificateVerifier;
  readonly provider?: CryptoProvider;
  /** Lower the AEAD limits (tests, operators with stricter policies). */
  readonly aeadLimits?: Partial<EpochLimits>;
}

export interface ClientConfig extends CommonConfig {
  /** Authenticate with an external PSK (psk_dhe_ke). */
  readonly psk?: ExternalPsk;
  /** Resume a previous session with this ticket. */
  readonly resumption?: ResumptionTicket;
  /**
   * The CID we ask the server to use toward us (RFC 9146): 'none' offers an empty CID (we accept
   * to send one), a number generates a random CID of that many bytes (0-7 advised), or explicit
   * bytes. Default 'none'.
   */
  readonly connectionId?: 'none' | number | Uint8Array;
}

export interface ServerConfig extends CommonConfig {
  /** Ask for and require a client certificate (mutual authentication). */
  readonly requireClientCertificate?: boolean;
  /** External PSK identities: returns the 32-byte key, or undefined for an unknown identity. */
  readonly pskLookup?: (identity: Uint8Array) => Uint8Array | undefined;
  /** Issue NewSessionTicket after each full handshake (default true). */
  readonly sessionTickets?: boolean;
  readonly ticketLifetimeSeconds?: number;
  /**
   * Always perform the cookie exchange (RFC 9147 §5.1 SHOULD; default true). When false, a
   * HelloRetryRequest is still sent when the client's key shares are unusable.
   */
  readonly requireCookie?: boolean;
  /**
   * Resume without the cookie exchange when the ticket was issued to the same IP address
   * (RFC 9147 §5.1 MAY; default true): the binder proves the ticket, and the answer goes back to
   * the address the session already proved and is smaller than the ClientHello.
   */
  readonly resumeWithoutCookie?: boolean;
  /** Length of the CIDs this server hands out (0 disables CIDs; default 6, at most 7 advised). */
  readonly connectionIdLength?: number;
}

export interface ResolvedCommon {
  readonly provider: CryptoProvider;
  readonly suites: readonly DtlsCipherSuite[];
  readonly groups: readonly number[];
  readonly mtu: number;
  readonly initialRetransmitMs: number;
  readonly maxRetransmitMs: number;
  readonly handshakeTimeoutMs: number;
  readonly certificateChain: readonly Uint8Array[] | undefined;
  readonly signer: Signer | undefined;
  readonly verifier: PeerCertificateVerifier | undefined;
  readonly aeadLimits: Partial<EpochLimits> | undefined;
}

export interface ResolvedClientConfig extends ResolvedCommon {
  readonly psk: ExternalPsk | undefined;
  readonly resumption: ResumptionTicket | undefined;
  readonly connectionId: Uint8Array;
}

export interface ResolvedServerConfig extends ResolvedCommon {
  readonly requireClientCertificate: boolean;
  readonly pskLookup: ((identity: Uint8Array) => Uint8Array | undefined) | undefined;
  readonly sessionTickets: boolean;
  readonly ticketLifetimeSeconds: number;
  readonly requireCookie: boolean;
  readonly resumeWithoutCookie: boolean;
  readonly connectionIdLength: number;
}

/** RFC 8446 §4.6.1: ticket lifetimes are at most seven days. */
export const MAX_TICKET_LIFETIME_S = 7 * 24 * 3600;

function resolveCommon(c: CommonConfig): ResolvedCommon {
  const suiteNames = c.cipherSuites ?? DEFAULT_CIPHER_SUITES;
  if (suiteNames.length === 0) throw new RangeError('cipherSuites: at least one suite');
  const suites = suiteNames.map((n) => {
    const s = CIPHER_SUITES[n];
    if (s === undefined) throw new RangeError(`cipherSuites: unknown suite ${String(n)}`);
    return s;
  });
  const groupNames = c.groups ?? ['x25519', 'secp256r1'];
  if (groupNames.length === 0) throw new RangeError('groups: at least one group');
  const groups = groupNames.map((g) => {
    const id = NamedGroupId[g];
    if (id === undefined) throw new RangeError(`groups: unknown group ${String(g)}`);
    return id;
  });
  const mtu = aint(c.mtu ?? 1200, 'mtu', 256, 65507);
  const initialRetransmitMs = aint(c.initialRetransmitMs ?? 1000, 'initialRetransmitMs', 1, 600_000);
  const maxRetransmitMs = aint(c.maxRetransmitMs ?? 60_000, 'maxRetransmitMs', initialRetransmitMs, 3_600_000);
  const handshakeTimeoutMs = aint(c.handshakeTimeoutMs ?? 120_000, 'handshakeTimeoutMs', 1, 24 * 3_600_000);
  if ((c.certificateChain === undefined) !== (c.signer === undefined)) {
    throw new ApiMisuse('config-credentials', 'certificateChain and signer go together');
  }
  if (c.certificateChain !== undefined) {
    if (c.certificateChain.length === 0) throw new RangeError('certificateChain: at least the leaf certificate');
    c.certificateChain.forEach((d, i) => abytes(d, `certificateChain[${i}]`));
  }
  return {
    provider: c.provider ?? getProvider(),
    suites,
    groups,
    mtu,
    initialRetransmitMs,
    maxRetransmitMs,
    handshakeTimeoutMs,
    certificateChain: c.certificateChain,
    signer: c.signer,
    verifier: c.verifier,
    aeadLimits: c.aeadLimits,
  };
}

function checkPsk(psk: ExternalPsk | undefined, what: string): void {
  if (psk === undefined) return;
  abytes(psk.identity, `${what}.identity`);
  if (psk.identity.length === 0 || psk.identity.length > 0xffff) throw new RangeError(`${what}.identity: 1 to 65535 bytes`);
  abytes(psk.key, `${what}.key`, 32);
}

export function resolveClientConfig(c: ClientConfig): ResolvedClientConfig {
  const common = resolveCommon(c);
  checkPsk(c.psk, 'psk');
  if (c.psk === undefined && c.resumption === undefined && common.verifier === undefined) {
    throw new ApiMisuse('config-no-verifier', 'a client needs a verifier for the server certificate, or a PSK');
  }
  const p = common.provider;
  const cidOption = c.connectionId ?? 'none';
  let connectionId: Uint8Array;
  if (cidOption === 'none') connectionId = new Uint8Array(0);
  else if (typeof cidOption === 'number') connectionId = p.randomBytes(aint(cidOption, 'connectionId', 0, 255));
  else connectionId = Uint8Array.from(abytes(cidOption, 'connectionId'));
  return { ...common, psk: c.psk, resumption: c.resumption, connectionId };
}

export function resolveServerConfig(c: ServerConfig): ResolvedServerConfig {
  const common = resolveCommon(c);
  if (common.certificateChain === undefined && c.pskLookup === undefined) {
    throw new ApiMisuse('config-credentials', 'a server needs a certificate chain and signer, or a pskLookup');
  }
  const requireClientCertificate = c.requireClientCertificate ?? false;
  if (requireClientCertificate && common.verifier === undefined) {
    throw new ApiMisuse('config-no-verifier', 'requireClientCertificate needs a verifier for client certificates');
  }
  return {
    ...common,
    requireClientCertificate,
    pskLookup: c.pskLookup,
    sessionTickets: c.sessionTickets ?? true,
    ticketLifetimeSeconds: aint(c.ticketLifetimeSeconds ?? 86_400, 'ticketLifetimeSeconds', 1, MAX_TICKET_LIFETIME_S),
    requireCookie: c.requireCookie ?? true,
    resumeWithoutCookie: c.resumeWithoutCookie ?? true,
    connectionIdLength: aint(c.connectionIdLength ?? 6, 'connectionIdLength', 0, 255),
  };
}
