/**
 * A complete CoAPS setup on loopback for tests, benchmarks and the demo: an in-memory fleet PKI
 * (scripts/lib/test-fleet.ts), a CoAPS server (src/transport/coaps/server.ts) requiring client
 * certificates (and taking the PSKs added here), device identities with software keys, the
 * ingest's X25519 key for sealing, and a default handler that opens each message, checks its device
 * id against the authenticated peer, dedupes by (device, seq) and records it.
 *
 * @example
 *   const rig = await startCoapsRig({ devices: ['bed-7'] });
 *   const uplink = rig.uplink('bed-7');
 *   await uplink.connect();
 *   await uplink.send(rig.seal('bed-7', 1));
 *   await rig.waitFor(1);
 *   await rig.stop();
 */
import { getProvider } from '../../src/crypto/index.ts';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { createCoapsServer, type CoapsHandler, type CoapsPeer, type CoapsServer, type CoapsServerOptions } from '../../src/transport/coaps/server.ts';
import { createCoapsUplink, type CoapsUplink, type CoapsUplinkOptions } from '../../src/transport/coaps/uplink.ts';
import type { UplinkMessage } from '../../src/transport/types.ts';
import { createTestFleet, type IssuedIdentity, type TestFleet } from './test-fleet.ts';
import { createTestSealer } from './test-sealer.ts';

export interface CoapsReceived {
  readonly deviceId: string;
  readonly seq: number;
  readonly payload: Uint8Array;
  readonly peer: CoapsPeer;
}

export interface CoapsRig {
  readonly fleet: TestFleet;
  readonly serverIdentity: IssuedIdentity;
  readonly devices: ReadonlyMap<string, IssuedIdentity>;
  /** The ingest's X25519 public key (SPKI PEM), as a device pins it. */
  readonly ingestPublicKeyPem: string;
  /** The server now (a new one after `restartServer`). */
  readonly server: CoapsServer;
  readonly host: string;
  readonly port: number;
  /** Messages the default handler took (first copies only), in arrival order. */
  readonly received: CoapsReceived[];
  waitFor(n: number, ms?: number): Promise<void>;
  /** A sealed COSE_Encrypt carrying `seq` and the device id in its protected header. */
  seal(deviceId: string, seq: number, size?: number): UplinkMessage;
  /** Opens a sealed payload as the ingest does; throws on tampering. */
  open(payload: Uint8Array): { deviceId: string; seq: number };
  /** The verifier a device uses for the server's certificate. */
  serverVerifier(): X509PeerVerifier;
  /** A certificate uplink for an enrolled device (software key), to the server or `port`. */
  uplink(deviceId: string, opts?: Partial<CoapsUplinkOptions>): CoapsUplink;
  /** A PSK uplink; the key must have been added with `addPsk`. */
  pskUplink(deviceId: string, key: Uint8Array, opts?: Partial<CoapsUplinkOptions>): CoapsUplink;
  /** Makes the server know a PSK for this identity (random 32 bytes unless given). */
  addPsk(identity: string, key?: Uint8Array): Uint8Array;
  /** The server goes away (close_notify to every session) / comes back on the same port. */
  stopServer(): Promise<void>;
  startServer(): Promise<void>;
  stop(): Promise<void>;
}

export interface CoapsRigOptions {
  readonly devices: readonly string[];
  /** Replaces the default handler (which still records what it is given when the reply is 2.04). */
  readonly handler?: CoapsHandler;
  readonly server?: Partial<Omit<CoapsServerOptions, 'handler'>>;
}

const textOf = (b: Uint8Array) => new TextDecoder().decode(b);

export async function startCoapsRig(opts: CoapsRigOptions): Promise<CoapsRig> {
  const fleet = await createTestFleet('CoAPS Test Fleet');
  const serverIdentity = await fleet.service({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const devices = new Map<string, IssuedIdentity>();
  for (const id of opts.devices) devices.set(id, await fleet.device(id));
  const provider = getProvider();
  const sealer = createTestSealer();
  const open = sealer.open;
  const psks = new Map<string, Uint8Array>();
  const received: CoapsReceived[] = [];
  const seen = new Set<string>();
  let waiters: { n: number; resolve: () => void }[] = [];
  const uplinks: CoapsUplink[] = [];

  const record = (m: CoapsReceived) => {
    received.push(m);
    waiters = waiters.filter((w) => {
      if (received.length < w.n) return true;
      w.resolve();
      return false;
    });
  };

  const defaultHandler: CoapsHandler = async (req) => {
    let opened: { deviceId: string; seq: number };
    try {
      opened = open(req.payload);
    } catch {
      return { code: '4.00', diagnostic: 'does not open' };
    }
    const who = req.peer.kind === 'certificate' ? req.peer.deviceId : req.peer.kind === 'psk' ? req.peer.identity : undefined;
    if (who !== opened.deviceId) return { code: '4.03', diagnostic: 'sealed for another device' };
    const key = `${opened.deviceId}#${opened.seq}`;
    if (seen.has(key)) return { code: '2.04', duplicate: true };
    seen.add(key);
    record({ ...opened, payload: req.payload, peer: req.peer });
    return { code: '2.04' };
  };

  const handler: CoapsHandler = opts.handler === undefined ? defaultHandler : async (req) => {
    const reply = await (opts.handler as CoapsHandler)(req);
    if (reply.code === '2.04' && reply.duplicate !== true) {
      try {
        record({ ...open(req.payload), payload: req.payload, peer: req.peer });
      } catch {
        // a handler that takes what does not open: record nothing
      }
    }
    return reply;
  };

  const listen = (port: number) => createCoapsServer({
    host: '127.0.0.1',
    port,
    handler,
    ...opts.server,
    dtls: {
      certificateChain: [serverIdentity.cert.der, fleet.issuing.der],
      signer: keyObjectSigner(serverIdentity.key as NonNullable<IssuedIdentity['key']>),
      verifier: new X509PeerVerifier({ roots: [fleet.rootPem], purpose: 'client', requireDeviceId: true }),
      requireClientCertificate: true,
      pskLookup: (identity) => psks.get(textOf(identity)),
      ...opts.server?.dtls,
    },
  });

  let server = await listen(0);
  const port = server.address().port;
  let running = true;

  const serverVerifier = () => new X509PeerVerifier({ roots: [fleet.rootPem], purpose: 'server', serverName: '127.0.0.1' });

  const rig: CoapsRig = {
    fleet,
    serverIdentity,
    devices,
    get server() {
      return server;
    },
    host: '127.0.0.1',
    port,
    received,
    waitFor(n, ms = 20_000) {
      if (received.length >= n) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${received.length} of ${n} messages after ${ms} ms`)), ms);
        waiters.push({ n, resolve: () => {
          clearTimeout(timer);
          resolve();
        } });
      });
    },
    ingestPublicKeyPem: sealer.publicKeyPem,
    seal: sealer.seal,
    open,
    serverVerifier,
    uplink(deviceId, o = {}) {
      const identity = devices.get(deviceId);
      if (identity?.key === undefined) throw new Error(`no software identity for ${deviceId}`);
      const u = createCoapsUplink({
        deviceId, host: '127.0.0.1', port,
        identity: { kind: 'certificate', certificateChain: [identity.cert.der, fleet.issuing.der], signer: keyObjectSigner(identity.key) },
        verifier: serverVerifier(),
        ...o,
      });
      uplinks.push(u);
      return u;
    },
    pskUplink(deviceId, key, o = {}) {
      const u = createCoapsUplink({ deviceId, host: '127.0.0.1', port, identity: { kind: 'psk', key }, ...o });
      uplinks.push(u);
      return u;
    },
    addPsk(identity, key = provider.randomBytes(32)) {
      psks.set(identity, Uint8Array.from(key));
      return key;
    },
    async stopServer() {
      if (!running) return;
      running = false;
      await server.close();
    },
    async startServer() {
      if (running) return;
      server = await listen(port);
      running = true;
    },
    async stop() {
      for (const u of uplinks) await u.close().catch(() => undefined);
      if (running) await server.close();
      running = false;
      sealer.destroy();
    },
  };
  return rig;
}
