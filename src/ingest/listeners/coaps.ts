/**
 * The ingest's CoAPS listener (docs/ingest.md "Wiring the listeners"; docs/transport-coaps.md): a
 * CoAPS server (src/transport/coaps/server.ts) whose DTLS 1.3 handshakes authenticate devices
 * against the fleet, and whose telemetry POSTs go to `core.service.accept`.
 *
 * - Certificates: the client chain is validated in the handshake by `validateChain` (src/pki) with
 *   the configured fleet roots, purpose 'client', a device id required, revocation by the registry
 *   (`core.registry.revocationStatus`: an unknown, suspended, revoked device or a superseded key is
 *   refused) and by the configured CRLs (reloaded when the registry's CRL changes); time from the
 *   core's clock. The alert sent is counted (`recordHandshakeFailure('coaps', alert)`).
 * - PSKs (`psk: true`): `PskStore` answers the handshake's lookup from the registry's PSK devices;
 *   a suspended or revoked device is refused there.
 * - Each POST: `core.service.accept` with a `CertificatePeer` or `PskPeer`; the response is
 *   `coapResponseCode(outcome)`; a duplicate is 2.04 with the "duplicate" payload; a refusal's
 *   diagnostic payload is its reason code.
 * - `core.registry.onStatusChange`: a device suspended or revoked loses its open sessions at once.
 *
 * @example
 *   await startIngest(cfg, { env, selfTest, log, listeners: { coaps: coapsListener } });
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { PeerCertificateVerifier } from '../../dtls/peer-verifier.ts';
import { X509PeerVerifier } from '../../dtls/peer-verifier.ts';
import { readKeyFile } from '../../pki/key-file.ts';
import { parseCertificate, sameBytes, type Certificate } from '../../pki/certificate.ts';
import { parseCrl, type Crl } from '../../pki/crl.ts';
import { pemDecode } from '../../pki/pem.ts';
import { readSecret } from '../../keystore/secret-source.ts';
import { keyObjectSigner, type Signer } from '../../keystore/signer.ts';
import { createCoapsServer, type CoapsPeer, type CoapsReply, type CoapsRequest, type CoapsServer } from '../../transport/coaps/server.ts';
import { COSE_CONTENT_FORMAT_IDS } from '../../transport/types.ts';
import { ApiMisuse } from '../../util/errors.ts';
import type { CoapsListenerConfig } from '../config.ts';
import type { IngestCore } from '../core.ts';
import { coapResponseCode, type AcceptOutcome, type PeerIdentity } from '../outcome.ts';
import { PskStore } from '../psk-store.ts';
import type { ListenerFactory } from '../runtime.ts';
import type { IngestLogger } from '../service.ts';

function readPemFile(path: string, field: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new ApiMisuse('invalid-config', `${field}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

function certificates(path: string, field: string): Certificate[] {
  const certs = pemDecode(readPemFile(path, field), 'CERTIFICATE').map((b) => parseCertificate(b.der));
  if (certs.length === 0) throw new ApiMisuse('invalid-config', `${field}: ${path} holds no certificate`);
  return certs;
}

/** A CRL file, PEM ("X509 CRL") or DER. */
async function readCrl(path: string): Promise<Crl> {
  const bytes = new Uint8Array(await readFile(path));
  const text = new TextDecoder().decode(bytes.subarray(0, 64));
  if (!text.includes('-----BEGIN')) return parseCrl(bytes);
  const blocks = pemDecode(new TextDecoder().decode(bytes), 'X509 CRL');
  if (blocks.length !== 1) throw new ApiMisuse('invalid-config', `coaps.crls: ${path} must hold one CRL`);
  return parseCrl((blocks[0] as { der: Uint8Array }).der);
}

/** The identity the ingest service binds messages to, from what the handshake authenticated. */
export function ingestPeer(peer: CoapsPeer, suite: string): PeerIdentity | undefined {
  switch (peer.kind) {
    case 'certificate':
      if (peer.deviceId === undefined) return undefined;
      return { kind: 'certificate', deviceId: peer.deviceId, spkiSha256: peer.spkiSha256, certNotAfter: peer.notAfter, transport: 'coaps', suite };
    case 'psk':
      return { kind: 'psk', pskIdentity: peer.identity, transport: 'coaps', suite };
    case 'anonymous':
      return undefined;
    default: {
      const never: never = peer;
      throw new TypeError(`unknown peer ${String(never)}`);
    }
  }
}

/** The device a session belongs to (for closing a suspended or revoked device's sessions). */
function deviceOf(peer: CoapsPeer): string | undefined {
  return peer.kind === 'certificate' ? peer.deviceId : peer.kind === 'psk' ? peer.identity : undefined;
}

/** The CoAP answer to an outcome (coapResponseCode, and the duplicate and diagnostic conventions). */
export function coapsReply(outcome: AcceptOutcome): CoapsReply {
  const code = coapResponseCode(outcome);
  switch (outcome.status) {
    case 'accepted':
      return { code };
    case 'duplicate':
      return { code, duplicate: true };
    case 'rejected':
      // The reason only: the detail names devices and is for the audit log.
      return { code, diagnostic: outcome.reason };
    case 'unavailable':
      return { code, diagnostic: 'not taken; send it again later' };
    default: {
      const never: never = outcome;
      throw new TypeError(`unknown outcome ${String(never)}`);
    }
  }
}

async function serverSigner(core: IngestCore, cfg: CoapsListenerConfig, leaf: Certificate): Promise<Signer> {
  let signer: Signer;
  if (cfg.keyStoreKey !== undefined) signer = await core.keyStore.openSigningKey(cfg.keyStoreKey);
  else {
    const passphrase = cfg.keyPassphrase === undefined ? undefined : await readSecret(cfg.keyPassphrase, { env: process.env, what: 'CoAPS key passphrase' });
    try {
      signer = keyObjectSigner(readKeyFile(cfg.key as string, passphrase));
    } finally {
      passphrase?.fill(0);
    }
  }
  if (!sameBytes(await signer.publicKeySpki(), leaf.spki.der)) {
    throw new ApiMisuse('invalid-config', `coaps: the key (${cfg.keyStoreKey === undefined ? 'coaps.key' : `key store key ${cfg.keyStoreKey}`}) does not match the certificate in ${cfg.certificate}`);
  }
  return signer;
}

/** Prometheus series read from the server's counters at scrape time. */
class CoapsMetrics {
  server: CoapsServer | undefined;
  readonly name = 'vitalseal_ingest_coaps';

  render(): string {
    const s = this.server;
    const c = s?.counters();
    const lines = [
      '# HELP vitalseal_ingest_coaps_sessions Open DTLS sessions of the CoAPS listener.',
      '# TYPE vitalseal_ingest_coaps_sessions gauge',
      `vitalseal_ingest_coaps_sessions ${s?.sessions().length ?? 0}`,
      '# HELP vitalseal_ingest_coaps_requests_refused_total CoAP requests answered without reaching the ingest path, by reason.',
      '# TYPE vitalseal_ingest_coaps_requests_refused_total counter',
      ...Object.entries(c?.refused ?? {}).map(([reason, n]) => `vitalseal_ingest_coaps_requests_refused_total{reason="${reason}"} ${n}`),
      '# HELP vitalseal_ingest_coaps_responses_total CoAP responses sent, by code.',
      '# TYPE vitalseal_ingest_coaps_responses_total counter',
      ...Object.entries(c?.responses ?? {}).map(([code, n]) => `vitalseal_ingest_coaps_responses_total{code="${code}"} ${n}`),
      '# HELP vitalseal_ingest_coaps_retransmissions_total Retransmitted CoAP requests answered from the exchange (not processed again).',
      '# TYPE vitalseal_ingest_coaps_retransmissions_total counter',
      `vitalseal_ingest_coaps_retransmissions_total ${c?.duplicates ?? 0}`,
      '# HELP vitalseal_ingest_coaps_datagrams_dropped_total UDP datagrams the DTLS endpoint dropped before any session saw them, by reason.',
      '# TYPE vitalseal_ingest_coaps_datagrams_dropped_total counter',
      ...Object.entries(s?.dtls.endpoint.stats.dropped ?? {}).map(([reason, n]) => `vitalseal_ingest_coaps_datagrams_dropped_total{reason="${reason}"} ${n ?? 0}`),
    ];
    return lines.join('\n');
  }
}

const metricsOf = new WeakMap<object, CoapsMetrics>();

/** A running CoAPS listener: the server (its address, sessions, counters) and how to stop it. */
export interface CoapsListener {
  readonly server: CoapsServer;
  /** The PSK store (with `psk: true`). */
  readonly psks: PskStore | undefined;
  stop(): Promise<void>;
}

/** Starts the CoAPS listener on `core`; see the module comment. */
export async function startCoapsListener(core: IngestCore, cfg: CoapsListenerConfig, log: IngestLogger): Promise<CoapsListener> {
  const service = core.service;
  if (service === undefined) throw new ApiMisuse('no-static-key', 'the ingest has no static key yet: run `vitalseal ingest keygen --config FILE` first');
  const chain = certificates(cfg.certificate, 'coaps.certificate');
  const signer = await serverSigner(core, cfg, chain[0] as Certificate);
  const roots = cfg.clientRoots.flatMap((p, i) => certificates(p, `coaps.clientRoots[${i}]`));
  const registry = (q: Parameters<typeof core.registry.revocationStatus>[0]) => core.registry.revocationStatus(q);
  const verifierWith = (crls: readonly Crl[]) => new X509PeerVerifier({
    roots: roots.map((r) => r.der), purpose: 'client', requireDeviceId: true,
    revocation: { registry, ...(crls.length === 0 ? {} : { crls }) },
  });
  let current = verifierWith(await Promise.all(cfg.crls.map(readCrl)));
  // Validity and revocation at the core's clock, the one the registry and the audit log use.
  const verifier: PeerCertificateVerifier = { verify: (der) => current.verify(der, core.clock.now()) };
  const psks = cfg.psk ? await PskStore.open({ registry: core.registry, hierarchy: core.hierarchy, log }) : undefined;

  const handle = async (req: CoapsRequest): Promise<CoapsReply> => {
    const peer = ingestPeer(req.peer, req.suite);
    if (peer === undefined) return { code: '4.01', diagnostic: 'unknown-device' };
    return coapsReply(await service.accept({ payload: req.payload, contentFormat: req.contentFormat, peer }));
  };

  let server: CoapsServer;
  try {
    server = await createCoapsServer({
      host: cfg.host,
      port: cfg.port,
      path: cfg.path,
      // The ingest opens COSE_Encrypt only (docs/ingest.md): anything else is 4.15 at the door.
      contentFormats: [COSE_CONTENT_FORMAT_IDS['cose-encrypt']],
      maxPayloadBytes: service.maxMessageBytes,
      piggybackMs: cfg.piggybackMs,
      limits: { maxHandlingPerSession: cfg.limits.maxHandlingPerSession, maxHandling: cfg.limits.maxHandling, maxBodiesPerSession: cfg.limits.maxBodiesPerSession },
      handler: handle,
      dtls: {
        certificateChain: chain.map((c) => c.der),
        signer,
        verifier,
        requireClientCertificate: true,
        ...(psks === undefined ? {} : { pskLookup: (identity: Uint8Array) => psks.lookup(identity) }),
        mtu: cfg.mtu,
        limits: { maxSessions: cfg.limits.maxSessions, maxPendingHandshakes: cfg.limits.maxPendingHandshakes, maxPendingPerAddress: cfg.limits.maxPendingPerAddress },
      },
    });
  } catch (e) {
    psks?.destroy();
    throw e;
  }

  server.on('handshake-error', ({ alert }) => service.recordHandshakeFailure('coaps', alert));
  server.on('error', (e) => log.error({ err: e.message }, 'CoAPS socket error'));
  const unsubscribe = [
    core.registry.onStatusChange((deviceId, status) => {
      if (status === 'active') return;
      // Revocation and suspension take effect at once for open sessions (close_notify).
      void server.closeSessions((peer) => deviceOf(peer) === deviceId).then((n) => {
        if (n > 0) log.warn({ device: deviceId, status, sessions: n }, 'closed the CoAPS sessions of a device that is no longer active');
      });
    }),
    core.registry.onCrlChange(() => {
      if (cfg.crls.length === 0) return;
      Promise.all(cfg.crls.map(readCrl)).then((crls) => {
        current = verifierWith(crls);
      }, (e: unknown) => log.error({ err: e instanceof Error ? e.message : String(e) }, 'CoAPS: the CRLs could not be reloaded; the previous ones stay in force'));
    }),
  ];

  let metrics = metricsOf.get(core.metrics);
  if (metrics === undefined) {
    metrics = new CoapsMetrics();
    core.metrics.registry.register(metrics);
    metricsOf.set(core.metrics, metrics);
  }
  metrics.server = server;
  const address = server.address();
  log.info({ host: address.address, port: address.port, psk: cfg.psk, path: cfg.path }, 'CoAPS listener started');

  return {
    server,
    psks,
    async stop() {
      for (const u of unsubscribe) u();
      await server.close();
      psks?.destroy();
      log.info({}, 'CoAPS listener stopped');
    },
  };
}

/** The CoAPS listener as the runtime starts it (`startIngest(..., { listeners: { coaps: coapsListener } })`). */
export const coapsListener: ListenerFactory<CoapsListenerConfig> = { start: startCoapsListener };
