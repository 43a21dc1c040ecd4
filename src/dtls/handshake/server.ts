/**
 * The DTLS 1.3 server handshake (RFC 8446 §4 with RFC 9147 §5). The stateless part (the cookie
 * exchange) lives in the endpoint; a server connection starts from a ClientHello the endpoint
 * accepted, and continues one class per state:
 *
 *   startServer → [ExpectClientCertificate → ExpectClientCertificateVerify] → ExpectClientFinished
 *     → ServerConnected
 */
import { equalBytes, zeroize } from '../../util/bytes.ts';
import { PeerIncompatible, PeerMisbehaved } from '../../util/errors.ts';
import type { ResolvedServerConfig } from '../config.ts';
import {
  DTLS13_VERSION, ExtensionType, HandshakeType, HRR_RANDOM, PskKeyExchangeMode,
} from '../messages/constants.ts';
import {
  encodeConnectionId, encodeCookie, encodeKeyShareHrr, encodeKeyShareServer, encodeSelectedPsk,
  encodeSupportedVersionsServer, encodeU16List, findExtension, readConnectionId, readKeyShareClient,
  readOfferedPsks, readPskModes, readSupportedVersionsClient, readU16List, bindersLength, type Extension, type KeyShareEntry,
} from '../messages/extensions.ts';
import {
  encodeHandshake, serverHello, type ClientHello, type HandshakeMessage, type NewSessionTicket, type ServerHello,
} from '../messages/handshake.ts';
import type { PeerIdentity } from '../peer-verifier.ts';
import type { DtlsCipherSuite } from '../suites.ts';
import { checkFinished, computeBinder, finishedMessage, sendMessage, unexpected, type HandshakeState } from './common.ts';
import type { AuthMode, HandshakeContext } from './context.ts';
import type { CookieFields } from './cookie.ts';
import { generateKeyShare, groupName } from './key-exchange.ts';
import { KeySchedule, type SecretPair } from './key-schedule.ts';
import { schemeForSigner, signCertificateVerify, VERIFY_SCHEMES, verifyCertificateVerify } from './signatures.ts';
import { identityFromTicket, type TicketKeys, type TicketState } from './tickets.ts';
import { Transcript } from './transcript.ts';

/** A ClientHello the endpoint accepted, with the cookie it carried when it answers our HRR. */
export interface AcceptedHello {
  readonly clientHello: ClientHello;
  /** Its TLS-style encoding (the transcript's form). */
  readonly bytes: Uint8Array;
  readonly retry: { readonly cookie: Uint8Array; readonly fields: CookieFields } | undefined;
}

export interface ServerServices {
  readonly tickets: TicketKeys;
  /** The client's IP address, recorded in tickets. */
  readonly clientAddress: string;
}

/** RFC 9147 §5.3 and RFC 8446 §4.1.2: the checks every ClientHello gets, stateless or not. */
export function checkClientHello(ch: ClientHello): void {
  const sv = findExtension(ch.extensions, ExtensionType.supportedVersions);
  if (sv === undefined || !readSupportedVersionsClient(sv).includes(DTLS13_VERSION)) {
    throw new PeerIncompatible('protocol-version', 'the client does not offer DTLS 1.3');
  }
  if (ch.legacyCookie.length !== 0) throw new PeerMisbehaved('bad-legacy-cookie', 'DTLS 1.3 ClientHello with a legacy_cookie');
  if (ch.compressionMethods.length !== 1 || ch.compressionMethods[0] !== 0) {
    throw new PeerMisbehaved('illegal-parameter', 'ClientHello compression methods must be exactly null');
  }
  // RFC 8446 §4.2.11: pre_shared_key must be the last extension.
  const pskAt = ch.extensions.findIndex((e) => e.type === ExtensionType.preSharedKey);
  if (pskAt !== -1 && pskAt !== ch.extensions.length - 1) throw new PeerMisbehaved('psk-not-last', 'pre_shared_key is not the last extension');
}

/** The suite by server preference (RFC 8446 §4.1.1). */
export function chooseSuite(config: ResolvedServerConfig, ch: ClientHello): DtlsCipherSuite {
  const suite = config.suites.find((s) => ch.cipherSuites.includes(s.id));
  if (suite === undefined) throw new PeerIncompatible('no-common-suite', 'no cipher suite in common');
  return suite;
}

export interface GroupChoice {
  /** A share we can use now, or undefined when a HelloRetryRequest must ask for `group`. */
  readonly share: KeyShareEntry | undefined;
  readonly group: number;
}

/** RFC 8446 §4.2.8: our most preferred group the client sent a share for, else the best it supports. */
export function chooseGroup(config: ResolvedServerConfig, ch: ClientHello): GroupChoice {
  const ksExt = findExtension(ch.extensions, ExtensionType.keyShare);
  const sgExt = findExtension(ch.extensions, ExtensionType.supportedGroups);
  if (ksExt === undefined || sgExt === undefined) throw new PeerMisbehaved('missing-extension', 'ClientHello lacks key_share or supported_groups');
  const shares = readKeyShareClient(ksExt);
  const supported = readU16List(sgExt, 'supported_groups');
  for (const g of config.groups) {
    const share = shares.find((s) => s.group === g);
    if (share !== undefined) {
      if (!supported.includes(g)) throw new PeerMisbehaved('illegal-parameter', 'key_share for a group not in supported_groups');
      return { share, group: g };
    }
  }
  const group = config.groups.find((g) => supported.includes(g));
  if (group === undefined) throw new PeerIncompatible('no-common-group', 'no key exchange group in common');
  return { share: undefined, group };
}

/** The HelloRetryRequest (RFC 8446 §4.1.4), deterministic so a stateless server can rebuild it. */
export function buildHelloRetryRequest(suite: number, hrrGroup: number, cookie: Uint8Array): ServerHello {
  const extensions: Extension[] = [{ type: ExtensionType.supportedVersions, data: encodeSupportedVersionsServer(DTLS13_VERSION) }];
  if (hrrGroup !== 0) extensions.push({ type: ExtensionType.keyShare, data: encodeKeyShareHrr(hrrGroup) });
  extensions.push({ type: ExtensionType.cookie, data: encodeCookie(cookie) });
  return serverHello({ random: HRR_RANDOM, cipherSuite: suite, extensions });
}

interface AcceptedPsk {
  readonly key: Uint8Array;
  readonly external: boolean;
  readonly identity: Uint8Array;
  readonly ticket: TicketState | undefined;
}

/**
 * RFC 8446 §4.2.11: look at the (first) offered identity; a ticket we issued or an external PSK the
 * application knows. The binder must verify (decrypt_error otherwise). Undefined: no usable PSK.
 */
function acceptPsk(config: ResolvedServerConfig, services: ServerServices, ks: KeySchedule, ch: ClientHello, hello: AcceptedHello, prefix: Transcript, now: number): AcceptedPsk | undefined {
  const ext = findExtension(ch.extensions, ExtensionType.preSharedKey);
  if (ext === undefined) return undefined;
  const modesExt = findExtension(ch.extensions, ExtensionType.pskKeyExchangeModes);
  if (modesExt === undefined) throw new PeerMisbehaved('missing-extension', 'pre_shared_key without psk_key_exchange_modes');
  // psk_dhe_ke only (docs/dtls.md): a client offering only psk_ke gets no PSK handshake.
  if (!readPskModes(modesExt).includes(PskKeyExchangeMode.pskDheKe)) return undefined;
  const offer = readOfferedPsks(ext);
  const first = offer.identities[0];
  const binder = offer.binders[0];
  if (first === undefined || binder === undefined) return undefined;
  let accepted: AcceptedPsk | undefined;
  const ticket = services.tickets.open(first.identity, now);
  if (ticket !== undefined) {
    // A ticket from a mutually authenticated session is the only way to skip a required client certificate.
    if (!config.requireClientCertificate || ticket.authMode === 'mutual') {
      accepted = { key: ticket.psk, external: false, identity: first.identity, ticket };
    }
  } else if (config.pskLookup !== undefined) {
    const key = config.pskLookup(first.identity);
    if (key !== undefined) {
      if (key.length !== 32) throw new RangeError('pskLookup must return a 32-byte key');
      accepted = { key, external: true, identity: first.identity, ticket: undefined };
    }
  }
  if (accepted === undefined) return undefined;
  const truncated = hello.bytes.subarray(0, hello.bytes.length - bindersLength(offer.binders));
  const expected = computeBinder(ks, accepted.key, accepted.external, prefix, truncated);
  if (!equalBytes(expected, binder)) throw new PeerMisbehaved('bad-binder', 'PSK binder does not verify');
  return accepted;
}

/**
 * Answers an accepted ClientHello with the server's flight: ServerHello, EncryptedExtensions,
 * [CertificateRequest, Certificate, CertificateVerify,] Finished.
 */
export async function startServer(cx: HandshakeContext, config: ResolvedServerConfig, services: ServerServices, hello: AcceptedHello, receiveCid: Uint8Array): Promise<HandshakeState> {
  const provider = config.provider;
  const ks = new KeySchedule(provider);
  const ch = hello.clientHello;
  checkClientHello(ch);
  const suite = chooseSuite(config, ch);
  const transcript = new Transcript(provider);
  if (hello.retry !== undefined) {
    const { fields, cookie } = hello.retry;
    // RFC 8446 §4.1.4: the suite named in the HelloRetryRequest stays.
    if (fields.suite !== suite.id) throw new PeerMisbehaved('illegal-parameter', 'ClientHello2 changed the cipher suites');
    // RFC 9147 §5.1: ClientHello1 enters the transcript as message_hash; the HRR is rebuilt exactly.
    transcript.add(new Uint8Array([HandshakeType.messageHash, 0, 0, 32, ...fields.clientHello1Hash]));
    transcript.add(encodeHandshake(buildHelloRetryRequest(fields.suite, fields.hrrGroup, cookie)));
  }

  const { share, group } = chooseGroup(config, ch);
  if (share === undefined) throw new PeerIncompatible('no-common-group', 'ClientHello has no usable key share');
  if (hello.retry !== undefined && hello.retry.fields.hrrGroup !== 0 && group !== hello.retry.fields.hrrGroup) {
    throw new PeerMisbehaved('illegal-parameter', 'ClientHello2 did not send the key share the HelloRetryRequest asked for');
  }

  const psk = acceptPsk(config, services, ks, ch, hello, transcript, cx.now);
  const signer = config.signer;
  const chain = config.certificateChain;
  if (psk === undefined) {
    if (signer === undefined || chain === undefined) {
      throw new PeerIncompatible(findExtension(ch.extensions, ExtensionType.preSharedKey) === undefined ? 'no-credentials' : 'unknown-psk-identity', 'no PSK we know and no certificate to offer');
    }
    const sa = findExtension(ch.extensions, ExtensionType.signatureAlgorithms);
    if (sa === undefined) {
      // A client that offered only a PSK (no signature_algorithms: it cannot verify a certificate)
      // has nothing to fall back to: its identity is what failed (RFC 8446 §4.2.11, §6.2).
      if (findExtension(ch.extensions, ExtensionType.preSharedKey) !== undefined) throw new PeerIncompatible('unknown-psk-identity', 'unknown PSK identity, and the client cannot take a certificate handshake');
      throw new PeerMisbehaved('missing-extension', 'certificate handshake without signature_algorithms');
    }
    if (!readU16List(sa, 'signature_algorithms').includes(schemeForSigner(signer.scheme))) {
      throw new PeerIncompatible('no-common-signature', 'the client accepts none of our signature schemes');
    }
  }

  // RFC 9146 §3: answer connection_id when offered; ours may be empty (then we take none).
  const cidExt = findExtension(ch.extensions, ExtensionType.connectionId);
  const sendCid = cidExt === undefined ? new Uint8Array(0) : readConnectionId(cidExt);
  const ourCid = cidExt === undefined ? new Uint8Array(0) : receiveCid;

  const mine = generateKeyShare(provider, group);
  const ecdhe = mine.agree(share.keyExchange);
  const extensions: Extension[] = [
    { type: ExtensionType.supportedVersions, data: encodeSupportedVersionsServer(DTLS13_VERSION) },
    { type: ExtensionType.keyShare, data: encodeKeyShareServer({ group, keyExchange: mine.publicKey }) },
  ];
  mine.destroy();
  if (psk !== undefined) extensions.push({ type: ExtensionType.preSharedKey, data: encodeSelectedPsk(0) });
  if (cidExt !== undefined) extensions.push({ type: ExtensionType.connectionId, data: encodeConnectionId(ourCid) });
  transcript.add(hello.bytes);
  sendMessage(cx, transcript, serverHello({ random: provider.randomBytes(32), cipherSuite: suite.id, extensions }));
  cx.setConnectionIds(ourCid, sendCid);

  const early = ks.earlySecret(psk?.key);
  const hs = ks.handshakeSecret(early, ecdhe);
  zeroize(early, ecdhe);
  const secrets = ks.handshakeTrafficSecrets(hs, transcript.hash());
  cx.installWriteKeys(2, suite, secrets.server);
  cx.installReadKeys(2, suite, secrets.client);

  sendMessage(cx, transcript, { type: HandshakeType.encryptedExtensions, extensions: [] });
  const requestCert = psk === undefined && config.requireClientCertificate;
  if (psk === undefined && signer !== undefined && chain !== undefined) {
    if (requestCert) {
      sendMessage(cx, transcript, {
        type: HandshakeType.certificateRequest,
        context: new Uint8Array(0),
        extensions: [{ type: ExtensionType.signatureAlgorithms, data: encodeU16List(VERIFY_SCHEMES) }],
      });
    }
    sendMessage(cx, transcript, { type: HandshakeType.certificate, context: new Uint8Array(0), entries: chain.map((data) => ({ data, extensions: [] })) });
    const { scheme, signature } = await signCertificateVerify(signer, 'server', transcript.hash());
    sendMessage(cx, transcript, { type: HandshakeType.certificateVerify, scheme, signature });
  }
  sendMessage(cx, transcript, finishedMessage(ks, secrets.server, transcript));
  const master = ks.masterSecret(hs);
  zeroize(hs);
  const app = ks.applicationTrafficSecrets(master, transcript.hash());

  let authMode: AuthMode = 'certificate';
  let peer: PeerIdentity | undefined;
  if (psk?.ticket !== undefined) {
    authMode = 'resumption';
    if (psk.ticket.peer !== undefined) peer = identityFromTicket(psk.ticket.peer);
  } else if (psk !== undefined) authMode = 'psk';
  const keys: ServerKeys = {
    ks, suite, group, secrets, master, app, authMode, peer,
    // A ticket issued in a resumed session keeps how the client first authenticated.
    ticketAuthMode: psk?.ticket?.authMode ?? authMode,
    pskIdentity: psk?.external === true ? psk.identity : psk?.ticket?.pskIdentity,
  };
  if (requestCert) return new ExpectClientCertificate(config, services, keys, transcript);
  return new ExpectClientFinished(config, services, keys, transcript);
}

interface ServerKeys {
  readonly ks: KeySchedule;
  readonly suite: DtlsCipherSuite;
  readonly group: number;
  readonly secrets: SecretPair;
  readonly master: Uint8Array;
  readonly app: SecretPair;
  readonly authMode: AuthMode;
  readonly ticketAuthMode: AuthMode;
  readonly peer: PeerIdentity | undefined;
  readonly pskIdentity: Uint8Array | undefined;
}

class ExpectClientCertificate implements HandshakeState {
  readonly name = 'client Certificate';
  constructor(
    private readonly config: ResolvedServerConfig,
    private readonly services: ServerServices,
    private readonly keys: ServerKeys,
    private readonly transcript: Transcript,
  ) {}

  async handle(cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.certificate) throw unexpected(this.name, msg);
    if (msg.context.length !== 0) throw new PeerMisbehaved('illegal-parameter', 'client Certificate context must be empty');
    // RFC 8446 §4.4.2.4: an empty Certificate when we require one: certificate_required.
    if (msg.entries.length === 0) throw new PeerIncompatible('certificate-required', 'the client sent no certificate');
    const verifier = this.config.verifier;
    if (verifier === undefined) throw new PeerIncompatible('no-credentials', 'no verifier for client certificates');
    const peer = await verifier.verify(msg.entries.map((e) => e.data), cx.now);
    this.transcript.add(encodeHandshake(msg));
    return new ExpectClientCertificateVerify(this.config, this.services, { ...this.keys, peer, authMode: 'mutual', ticketAuthMode: 'mutual' }, this.transcript);
  }
}

class ExpectClientCertificateVerify implements HandshakeState {
  readonly name = 'client CertificateVerify';
  constructor(
    private readonly config: ResolvedServerConfig,
    private readonly services: ServerServices,
    private readonly keys: ServerKeys,
    private readonly transcript: Transcript,
  ) {}

  async handle(_cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.certificateVerify) throw unexpected(this.name, msg);
    const peer = this.keys.peer;
    if (peer === undefined) throw new PeerMisbehaved('unexpected-message', 'CertificateVerify without a certificate');
    verifyCertificateVerify(peer.publicKey, 'client', msg.scheme, msg.signature, this.transcript.hash());
    this.transcript.add(encodeHandshake(msg));
    return new ExpectClientFinished(this.config, this.services, this.keys, this.transcript);
  }
}

class ExpectClientFinished implements HandshakeState {
  readonly name = 'client Finished';
  constructor(
    private readonly config: ResolvedServerConfig,
    private readonly services: ServerServices,
    private readonly keys: ServerKeys,
    private readonly transcript: Transcript,
  ) {}

  async handle(cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.finished) throw unexpected(this.name, msg);
    const { ks, suite, secrets, master, app } = this.keys;
    checkFinished(ks, secrets.client, this.transcript, msg, 'client');
    const resumptionMasterSecret = ks.resumptionMasterSecret(master, this.transcript.hash());
    zeroize(master, secrets.client, secrets.server);
    // RFC 9147 §6.1: epoch 3 both ways once the client's Finished is verified.
    cx.installReadKeys(3, suite, app.client);
    cx.installWriteKeys(3, suite, app.server);
    const tickets: NewSessionTicket[] = [];
    if (this.config.sessionTickets) tickets.push(this.#ticket(cx, resumptionMasterSecret));
    cx.complete({
      suite,
      group: groupName(this.keys.group),
      authMode: this.keys.authMode,
      peer: this.keys.peer,
      pskIdentity: this.keys.pskIdentity,
      clientApplicationSecret: app.client,
      serverApplicationSecret: app.server,
      resumptionMasterSecret,
      tickets,
    });
    zeroize(resumptionMasterSecret);
    return new ServerConnected();
  }

  /** RFC 8446 §4.6.1: a self-encrypted ticket carrying the resumption PSK and who the client is. */
  #ticket(cx: HandshakeContext, resumptionMasterSecret: Uint8Array): NewSessionTicket {
    const provider = this.config.provider;
    const nonce = Uint8Array.of(0);
    const ageAdd = new DataView(provider.randomBytes(4).buffer).getUint32(0);
    const psk = this.keys.ks.resumptionPsk(resumptionMasterSecret, nonce);
    const peer = this.keys.peer;
    const ticket = this.services.tickets.seal({
      suite: this.keys.suite.id,
      psk,
      issuedAt: cx.now,
      lifetimeSeconds: this.config.ticketLifetimeSeconds,
      ageAdd,
      authMode: this.keys.ticketAuthMode,
      peer: peer === undefined ? undefined : { subject: peer.subject, commonName: peer.commonName, deviceId: peer.deviceId, spki: peer.spki, notAfter: peer.notAfter },
      pskIdentity: this.keys.pskIdentity,
      clientAddress: this.services.clientAddress,
    }, cx.now);
    zeroize(psk);
    return { type: HandshakeType.newSessionTicket, lifetime: this.config.ticketLifetimeSeconds, ageAdd, nonce, ticket, extensions: [] };
  }
}

/** After the handshake the server expects no handshake message the connection layer does not handle itself. */
export class ServerConnected implements HandshakeState {
  readonly name = 'post-handshake';
  async handle(_cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    throw unexpected(this.name, msg);
  }
}
