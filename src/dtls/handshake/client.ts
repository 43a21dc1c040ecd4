/**
 * The DTLS 1.3 client handshake (RFC 8446 §4 with RFC 9147 §5): one class per state, each holding
 * only what is valid when it waits for its message.
 *
 *   startClient → ExpectServerHello ─(HRR)→ ExpectServerHello(retried)
 *     → ExpectEncryptedExtensions → [ExpectCertificateOrRequest → ExpectCertificate
 *     → ExpectCertificateVerify] → ExpectFinished → ClientConnected
 *
 * Each step is fetch → parse → check → derive, commented with the section it implements.
 */
import { zeroize } from '../../util/bytes.ts';
import { PeerIncompatible, PeerMisbehaved } from '../../util/errors.ts';
import type { ResolvedClientConfig, ResumptionTicket } from '../config.ts';
import {
  DTLS12_VERSION, DTLS13_VERSION, ExtensionType, HandshakeType, PskKeyExchangeMode,
} from '../messages/constants.ts';
import {
  encodeConnectionId, encodeCookie, encodeKeyShareClient, encodeOfferedPsks, encodePskModes,
  encodeSupportedVersionsClient, encodeU16List, findExtension, readConnectionId, readCookie, readKeyShareHrr,
  readKeyShareServer, readSelectedPsk, readSupportedVersionsServer, readU16List, type Extension,
} from '../messages/extensions.ts';
import {
  encodeHandshake, isHelloRetryRequest, type Certificate, type CertificateRequest, type ClientHello,
  type HandshakeMessage, type NewSessionTicket, type ServerHello,
} from '../messages/handshake.ts';
import type { PeerIdentity } from '../peer-verifier.ts';
import { suiteById, type DtlsCipherSuite } from '../suites.ts';
import { allowOnly, checkFinished, computeBinder, finishedMessage, sendMessage, unexpected, type HandshakeState } from './common.ts';
import type { AuthMode, HandshakeContext } from './context.ts';
import { generateKeyShare, groupName, type KeyShare } from './key-exchange.ts';
import { KeySchedule, type SecretPair } from './key-schedule.ts';
import { signCertificateVerify, VERIFY_SCHEMES, verifyCertificateVerify, schemeForSigner } from './signatures.ts';
import { Transcript } from './transcript.ts';

/** The one PSK a ClientHello offers: an external key or a resumption ticket. */
interface PskOffer {
  readonly identity: Uint8Array;
  readonly key: Uint8Array;
  readonly external: boolean;
  readonly obfuscatedTicketAge: number;
  readonly ticket: ResumptionTicket | undefined;
}

interface HelloParams {
  readonly random: Uint8Array;
  readonly cookie: Uint8Array | undefined;
  readonly shares: readonly KeyShare[];
}

/** Everything the client decided before the first flight and keeps through the handshake. */
interface ClientBasics {
  readonly config: ResolvedClientConfig;
  readonly ks: KeySchedule;
  readonly psk: PskOffer | undefined;
}

function pskOffer(config: ResolvedClientConfig, now: number): PskOffer | undefined {
  if (config.resumption !== undefined) {
    const t = config.resumption;
    const ageMs = now - t.receivedAt;
    // RFC 8446 §4.6.1: never offer a ticket past its lifetime.
    if (ageMs >= 0 && ageMs <= t.lifetimeSeconds * 1000) {
      return {
        identity: t.ticket,
        key: t.psk,
        external: false,
        // RFC 8446 §4.2.11.1: the age in ms plus ticket_age_add, modulo 2^32.
        obfuscatedTicketAge: (Math.floor(ageMs) + t.ageAdd) % 2 ** 32,
        ticket: t,
      };
    }
  }
  if (config.psk !== undefined) {
    return { identity: config.psk.identity, key: config.psk.key, external: true, obfuscatedTicketAge: 0, ticket: undefined };
  }
  return undefined;
}

/** Builds the ClientHello (RFC 9147 §5.3) with the PSK binder computed over `prefix` (RFC 8446 §4.2.11.2). */
function buildClientHello(b: ClientBasics, p: HelloParams, prefix: Transcript): Uint8Array {
  const { config } = b;
  const ext: Extension[] = [
    { type: ExtensionType.supportedVersions, data: encodeSupportedVersionsClient([DTLS13_VERSION]) },
    { type: ExtensionType.supportedGroups, data: encodeU16List(config.groups) },
    { type: ExtensionType.keyShare, data: encodeKeyShareClient(p.shares.map((s) => ({ group: s.group, keyExchange: s.publicKey }))) },
    // RFC 9147 §5.1: clients SHOULD offer connection_id even when they want none (empty CID).
    { type: ExtensionType.connectionId, data: encodeConnectionId(config.connectionId) },
  ];
  if (config.verifier !== undefined) ext.push({ type: ExtensionType.signatureAlgorithms, data: encodeU16List(VERIFY_SCHEMES) });
  if (p.cookie !== undefined) ext.push({ type: ExtensionType.cookie, data: encodeCookie(p.cookie) });
  if (b.psk !== undefined) {
    // psk_dhe_ke only: every PSK handshake here still does (EC)DHE (forward secrecy, docs/dtls.md).
    ext.push({ type: ExtensionType.pskKeyExchangeModes, data: encodePskModes([PskKeyExchangeMode.pskDheKe]) });
    // RFC 8446 §4.2.11: pre_shared_key MUST be the last extension.
    ext.push({
      type: ExtensionType.preSharedKey,
      data: encodeOfferedPsks({ identities: [{ identity: b.psk.identity, obfuscatedTicketAge: b.psk.obfuscatedTicketAge }], binders: [new Uint8Array(32)] }),
    });
  }
  const ch: ClientHello = {
    type: HandshakeType.clientHello,
    legacyVersion: DTLS12_VERSION,
    random: p.random,
    legacySessionId: new Uint8Array(0),
    legacyCookie: new Uint8Array(0), // RFC 9147 §5.3: a DTLS 1.3-only client sends it empty
    cipherSuites: config.suites.map((s) => s.id),
    compressionMethods: Uint8Array.of(0),
    extensions: ext,
  };
  const bytes = encodeHandshake(ch);
  if (b.psk !== undefined) {
    // The binder is the last 32 bytes; it covers everything before the binders list (2 + 1 + 32 bytes).
    const truncated = bytes.subarray(0, bytes.length - 35);
    bytes.set(computeBinder(b.ks, b.psk.key, b.psk.external, prefix, truncated), bytes.length - 32);
  }
  return bytes;
}

/** Sends ClientHello1 and returns the state waiting for the server's answer. */
export function startClient(cx: HandshakeContext, config: ResolvedClientConfig): HandshakeState {
  const provider = config.provider;
  const ks = new KeySchedule(provider);
  const basics: ClientBasics = { config, ks, psk: pskOffer(config, cx.now) };
  const first = config.groups[0] as number;
  const params: HelloParams = { random: provider.randomBytes(32), cookie: undefined, shares: [generateKeyShare(provider, first)] };
  const transcript = new Transcript(provider);
  const ch = buildClientHello(basics, params, transcript);
  transcript.add(ch);
  cx.send(ch);
  return new ExpectServerHello(basics, params, transcript, false);
}

class ExpectServerHello implements HandshakeState {
  readonly name = 'ServerHello';

  constructor(
    private readonly b: ClientBasics,
    private readonly params: HelloParams,
    private readonly transcript: Transcript,
    private readonly retried: boolean,
    private readonly hrrSuite?: number,
  ) {}

  async handle(cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.serverHello) throw unexpected(this.name, msg);
    const { config } = this.b;
    // RFC 9147 §5.4 / RFC 8446 §4.1.3: legacy fields, version and suite.
    if (msg.legacyVersion !== DTLS12_VERSION) throw new PeerIncompatible('protocol-version', `ServerHello legacy_version 0x${msg.legacyVersion.toString(16)}`);
    const sv = findExtension(msg.extensions, ExtensionType.supportedVersions);
    if (sv === undefined || readSupportedVersionsServer(sv) !== DTLS13_VERSION) throw new PeerIncompatible('protocol-version', 'server did not select DTLS 1.3');
    if (msg.legacySessionIdEcho.length !== 0) throw new PeerMisbehaved('illegal-parameter', 'DTLS 1.3 servers must not echo a session id');
    if (msg.compressionMethod !== 0) throw new PeerMisbehaved('illegal-parameter', 'ServerHello compression method not null');
    const suite = suiteById(msg.cipherSuite);
    if (suite === undefined || !config.suites.includes(suite)) throw new PeerMisbehaved('illegal-parameter', 'server chose a suite we did not offer');
    return isHelloRetryRequest(msg) ? this.#retry(cx, msg, suite) : this.#serverHello(cx, msg, suite);
  }

  /** RFC 8446 §4.1.4 and RFC 9147 §5.1: the HelloRetryRequest, at most once. */
  #retry(cx: HandshakeContext, hrr: ServerHello, suite: DtlsCipherSuite): HandshakeState {
    if (this.retried) throw new PeerMisbehaved('second-hrr', 'a second HelloRetryRequest');
    allowOnly(hrr.extensions, [ExtensionType.supportedVersions, ExtensionType.keyShare, ExtensionType.cookie], 'HelloRetryRequest');
    const cookieExt = findExtension(hrr.extensions, ExtensionType.cookie);
    const keyShareExt = findExtension(hrr.extensions, ExtensionType.keyShare);
    let shares = this.params.shares;
    if (keyShareExt !== undefined) {
      const group = readKeyShareHrr(keyShareExt);
      if (!this.b.config.groups.includes(group)) throw new PeerMisbehaved('illegal-parameter', 'HelloRetryRequest asks for a group we did not offer');
      if (shares.some((s) => s.group === group)) throw new PeerMisbehaved('illegal-parameter', 'HelloRetryRequest asks for a group we already sent');
      for (const s of shares) s.destroy();
      shares = [generateKeyShare(this.b.config.provider, group)];
    }
    // RFC 8446 §4.1.4: an HRR that would change nothing is an illegal_parameter.
    if (cookieExt === undefined && keyShareExt === undefined) throw new PeerMisbehaved('illegal-parameter', 'HelloRetryRequest changes nothing');
    const cookie = cookieExt === undefined ? undefined : readCookie(cookieExt);
    // RFC 8446 §4.4.1: ClientHello1 becomes message_hash, then the HRR, then ClientHello2.
    this.transcript.replaceWithMessageHash();
    this.transcript.add(encodeHandshake(hrr));
    const params: HelloParams = { random: this.params.random, cookie, shares };
    const ch2 = buildClientHello(this.b, params, this.transcript);
    this.transcript.add(ch2);
    cx.send(ch2);
    return new ExpectServerHello(this.b, params, this.transcript, true, suite.id);
  }

  #serverHello(cx: HandshakeContext, sh: ServerHello, suite: DtlsCipherSuite): HandshakeState {
    const { config, ks } = this.b;
    // RFC 8446 §4.1.4: the suite must be the one the HelloRetryRequest named.
    if (this.hrrSuite !== undefined && suite.id !== this.hrrSuite) throw new PeerMisbehaved('illegal-parameter', 'ServerHello suite differs from the HelloRetryRequest');
    allowOnly(sh.extensions, [ExtensionType.supportedVersions, ExtensionType.keyShare, ExtensionType.preSharedKey, ExtensionType.connectionId], 'ServerHello');

    // RFC 8446 §4.2.11: the server may accept our one PSK (selected_identity 0).
    let psk: PskOffer | undefined;
    const pskExt = findExtension(sh.extensions, ExtensionType.preSharedKey);
    if (pskExt !== undefined) {
      if (this.b.psk === undefined || readSelectedPsk(pskExt) !== 0) throw new PeerMisbehaved('illegal-parameter', 'server selected a PSK we did not offer');
      psk = this.b.psk;
    } else if (config.verifier === undefined) {
      throw new PeerIncompatible('no-credentials', 'server refused our PSK and we have no way to verify a certificate');
    }

    // RFC 8446 §4.2.8: key_share is required (psk_dhe_ke or certificate mode) and names our group.
    const ksExt = findExtension(sh.extensions, ExtensionType.keyShare);
    if (ksExt === undefined) throw new PeerMisbehaved('missing-extension', 'ServerHello without key_share');
    const serverShare = readKeyShareServer(ksExt);
    const mine = this.params.shares.find((s) => s.group === serverShare.group);
    if (mine === undefined) throw new PeerMisbehaved('illegal-parameter', 'ServerHello key_share for a group we did not send');
    const ecdhe = mine.agree(serverShare.keyExchange);
    for (const s of this.params.shares) s.destroy();

    // RFC 9146 §3: connection_id in the ServerHello is what the server wants in our records.
    const cidExt = findExtension(sh.extensions, ExtensionType.connectionId);
    const sendCid = cidExt === undefined ? new Uint8Array(0) : readConnectionId(cidExt);
    cx.setConnectionIds(cidExt === undefined ? new Uint8Array(0) : config.connectionId, sendCid);

    this.transcript.add(encodeHandshake(sh));
    const early = ks.earlySecret(psk?.key);
    const hs = ks.handshakeSecret(early, ecdhe);
    zeroize(early, ecdhe);
    const secrets = ks.handshakeTrafficSecrets(hs, this.transcript.hash());
    // RFC 9147 §6.1: epoch 2 protects the rest of the handshake in both directions.
    cx.installReadKeys(2, suite, secrets.server);
    cx.installWriteKeys(2, suite, secrets.client);
    const keys: HandshakeKeys = { suite, group: serverShare.group, handshakeSecret: hs, secrets, psk };
    return new ExpectEncryptedExtensions(this.b, keys, this.transcript);
  }
}

interface HandshakeKeys {
  readonly suite: DtlsCipherSuite;
  readonly group: number;
  readonly handshakeSecret: Uint8Array;
  readonly secrets: SecretPair;
  readonly psk: PskOffer | undefined;
}

class ExpectEncryptedExtensions implements HandshakeState {
  readonly name = 'EncryptedExtensions';
  constructor(
    private readonly b: ClientBasics,
    private readonly keys: HandshakeKeys,
    private readonly transcript: Transcript,
  ) {}

  async handle(_cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.encryptedExtensions) throw unexpected(this.name, msg);
    // RFC 8446 §4.3.1: nothing we did not ask for; supported_groups and server_name acks are harmless.
    allowOnly(msg.extensions, [ExtensionType.supportedGroups, ExtensionType.serverName], 'EncryptedExtensions');
    const sg = findExtension(msg.extensions, ExtensionType.supportedGroups);
    if (sg !== undefined) readU16List(sg, 'supported_groups');
    this.transcript.add(encodeHandshake(msg));
    if (this.keys.psk !== undefined) return new ExpectFinished(this.b, this.keys, this.transcript, undefined, undefined);
    return new ExpectCertificateOrRequest(this.b, this.keys, this.transcript);
  }
}

class ExpectCertificateOrRequest implements HandshakeState {
  readonly name = 'Certificate or CertificateRequest';
  constructor(
    private readonly b: ClientBasics,
    private readonly keys: HandshakeKeys,
    private readonly transcript: Transcript,
  ) {}

  async handle(cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type === HandshakeType.certificateRequest) {
      // RFC 8446 §4.3.2: in the handshake the context is empty; signature_algorithms is required.
      if (msg.context.length !== 0) throw new PeerMisbehaved('illegal-parameter', 'CertificateRequest context must be empty in the handshake');
      const sa = findExtension(msg.extensions, ExtensionType.signatureAlgorithms);
      if (sa === undefined) throw new PeerMisbehaved('missing-extension', 'CertificateRequest without signature_algorithms');
      readU16List(sa, 'signature_algorithms');
      this.transcript.add(encodeHandshake(msg));
      return new ExpectCertificate(this.b, this.keys, this.transcript, msg);
    }
    return new ExpectCertificate(this.b, this.keys, this.transcript, undefined).handle(cx, msg);
  }
}

class ExpectCertificate implements HandshakeState {
  readonly name = 'Certificate';
  constructor(
    private readonly b: ClientBasics,
    private readonly keys: HandshakeKeys,
    private readonly transcript: Transcript,
    private readonly request: CertificateRequest | undefined,
  ) {}

  async handle(cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.certificate) throw unexpected(this.name, msg);
    if (msg.context.length !== 0) throw new PeerMisbehaved('illegal-parameter', 'server Certificate context must be empty');
    if (msg.entries.length === 0) throw new PeerMisbehaved('empty-certificate', 'server sent an empty Certificate');
    const verifier = this.b.config.verifier;
    if (verifier === undefined) throw new PeerIncompatible('no-credentials', 'server authenticates with a certificate and we have no verifier');
    // RFC 8446 §4.4.2.4: validate the chain before trusting its key.
    const peer = await verifier.verify(msg.entries.map((e) => e.data), cx.now);
    this.transcript.add(encodeHandshake(msg));
    return new ExpectCertificateVerify(this.b, this.keys, this.transcript, this.request, peer);
  }
}

class ExpectCertificateVerify implements HandshakeState {
  readonly name = 'CertificateVerify';
  constructor(
    private readonly b: ClientBasics,
    private readonly keys: HandshakeKeys,
    private readonly transcript: Transcript,
    private readonly request: CertificateRequest | undefined,
    private readonly peer: PeerIdentity,
  ) {}

  async handle(_cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.certificateVerify) throw unexpected(this.name, msg);
    // RFC 8446 §4.4.3: the signature covers the transcript through Certificate.
    verifyCertificateVerify(this.peer.publicKey, 'server', msg.scheme, msg.signature, this.transcript.hash());
    this.transcript.add(encodeHandshake(msg));
    return new ExpectFinished(this.b, this.keys, this.transcript, this.request, this.peer);
  }
}

class ExpectFinished implements HandshakeState {
  readonly name = 'Finished';
  constructor(
    private readonly b: ClientBasics,
    private readonly keys: HandshakeKeys,
    private readonly transcript: Transcript,
    private readonly request: CertificateRequest | undefined,
    private readonly peer: PeerIdentity | undefined,
  ) {}

  async handle(cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.finished) throw unexpected(this.name, msg);
    const { ks, config } = this.b;
    const { suite, secrets } = this.keys;
    checkFinished(ks, secrets.server, this.transcript, msg, 'server');

    // RFC 8446 §7.1: application secrets over the transcript through the server Finished.
    const master = ks.masterSecret(this.keys.handshakeSecret);
    zeroize(this.keys.handshakeSecret);
    const app = ks.applicationTrafficSecrets(master, this.transcript.hash());
    cx.installReadKeys(3, suite, app.server);

    // RFC 8446 §4.4.2: answer a CertificateRequest with our chain (or an empty one) and CertificateVerify.
    let authMode: AuthMode = this.keys.psk === undefined ? 'certificate' : this.keys.psk.external ? 'psk' : 'resumption';
    if (this.request !== undefined) {
      const chain = config.certificateChain;
      const signer = config.signer;
      const cert: Certificate = {
        type: HandshakeType.certificate,
        context: new Uint8Array(0),
        entries: (chain ?? []).map((data) => ({ data, extensions: [] })),
      };
      sendMessage(cx, this.transcript, cert);
      if (chain !== undefined && signer !== undefined) {
        const offered = readU16List(findExtension(this.request.extensions, ExtensionType.signatureAlgorithms) ?? new Uint8Array(), 'signature_algorithms');
        if (!offered.includes(schemeForSigner(signer.scheme))) {
          throw new PeerIncompatible('no-common-signature', 'server accepts none of our signature schemes');
        }
        const { scheme, signature } = await signCertificateVerify(signer, 'client', this.transcript.hash());
        sendMessage(cx, this.transcript, { type: HandshakeType.certificateVerify, scheme, signature });
        authMode = 'mutual';
      }
    }
    sendMessage(cx, this.transcript, finishedMessage(ks, secrets.client, this.transcript));
    const resumptionMasterSecret = ks.resumptionMasterSecret(master, this.transcript.hash());
    zeroize(master, secrets.client, secrets.server);
    // RFC 9147 §6.1: from here on we send in epoch 3 (the final flight stays in epoch 2).
    cx.installWriteKeys(3, suite, app.client);
    const peer = this.peer ?? this.keys.psk?.ticket?.serverIdentity;
    cx.complete({
      suite,
      group: groupName(this.keys.group),
      authMode,
      peer,
      pskIdentity: this.keys.psk?.external === true ? this.keys.psk.identity : undefined,
      clientApplicationSecret: app.client,
      serverApplicationSecret: app.server,
      resumptionMasterSecret,
      tickets: [],
    });
    return new ClientConnected(ks, suite, resumptionMasterSecret, peer);
  }
}

/** After the handshake: NewSessionTicket becomes a resumption ticket for the application. */
export class ClientConnected implements HandshakeState {
  readonly name = 'post-handshake';
  constructor(
    private readonly ks: KeySchedule,
    private readonly suite: DtlsCipherSuite,
    private readonly resumptionMasterSecret: Uint8Array,
    private readonly peer: PeerIdentity | undefined,
  ) {}

  async handle(cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState> {
    if (msg.type !== HandshakeType.newSessionTicket) throw unexpected(this.name, msg);
    this.#ticket(cx, msg);
    return this;
  }

  #ticket(cx: HandshakeContext, nst: NewSessionTicket): void {
    // RFC 8446 §4.6.1: lifetime 0 means "do not use"; more than seven days is illegal.
    if (nst.lifetime > 7 * 24 * 3600) throw new PeerMisbehaved('illegal-parameter', 'ticket lifetime exceeds seven days');
    allowOnly(nst.extensions, [ExtensionType.earlyData], 'NewSessionTicket');
    if (nst.lifetime === 0) return;
    cx.ticket({
      ticket: Uint8Array.from(nst.ticket),
      psk: this.ks.resumptionPsk(this.resumptionMasterSecret, nst.nonce),
      suite: this.suite.name,
      receivedAt: cx.now,
      lifetimeSeconds: nst.lifetime,
      ageAdd: nst.ageAdd,
      serverIdentity: this.peer,
    });
  }
}
