/**
 * A complete MQTTS setup on loopback for tests, benchmarks and the demo: an in-memory fleet PKI,
 * a private mosquitto (scripts/lib/mosquitto.ts), device identities with software keys, the
 * ingest's X25519 key for sealing, and helpers that seal real COSE messages and open them again.
 *
 * @example
 *   const rig = await startMqttRig({ devices: ['bed-7'] });
 *   const ingest = await rig.startIngest('ingest-1');
 *   const uplink = rig.uplink('bed-7');
 *   await uplink.connect();
 *   await uplink.send(rig.seal('bed-7', 1));
 *   await ingest.waitFor(1);
 *   await rig.stop();
 */
import { inProcessTls, type TlsConnector } from '../../src/transport/mqtts/connector.ts';
import { createMqttsSubscriber, type IngestHandler, type IngestMessage, type MqttsSubscriber, type MqttsSubscriberOptions } from '../../src/transport/mqtts/subscriber.ts';
import { trustFromPem, type MqttsTrust } from '../../src/transport/mqtts/tls.ts';
import { createMqttsUplink, type MqttsUplinkOptions } from '../../src/transport/mqtts/uplink.ts';
import type { Uplink, UplinkMessage } from '../../src/transport/types.ts';
import { startMosquitto, type MosquittoBroker, type MosquittoOptions } from './mosquitto.ts';
import { createTestFleet, type IssuedIdentity, type TestFleet } from './test-fleet.ts';
import { createTestSealer } from './test-sealer.ts';

export const INGEST_IDENTITY = 'ingest.vitalseal.test';

export interface ReceivedMessage {
  readonly clientId: string;
  readonly deviceId: string;
  /** From the sealed payload's protected header (what the ingest trusts). */
  readonly seq: number;
  readonly payload: Uint8Array;
  readonly redelivered: boolean;
}

export interface IngestInstance {
  readonly clientId: string;
  readonly subscriber: MqttsSubscriber;
  readonly received: ReceivedMessage[];
  /** Resolves once `received.length >= n` (rejects after `ms`). */
  waitFor(n: number, ms?: number): Promise<void>;
}

export interface MqttRig {
  readonly fleet: TestFleet;
  readonly broker: MosquittoBroker;
  readonly trust: MqttsTrust;
  readonly brokerIdentity: IssuedIdentity;
  readonly ingestIdentity: IssuedIdentity;
  readonly devices: ReadonlyMap<string, IssuedIdentity>;
  /** The ingest's X25519 public key (SPKI PEM), as a device pins it. */
  readonly ingestPublicKeyPem: string;
  /** A sealed COSE_Encrypt carrying `seq` and the device id in its protected header. */
  seal(deviceId: string, seq: number, size?: number): UplinkMessage;
  /** Opens a sealed payload as the ingest does; throws on tampering. */
  open(payload: Uint8Array): { deviceId: string; seq: number };
  tlsFor(identity: IssuedIdentity): TlsConnector;
  uplink(deviceId: string, opts?: Partial<MqttsUplinkOptions>): Uplink;
  /**
   * An ingest instance: opens each message (a tampered or foreign one is refused) and records it.
   * `handler` replaces the default (for failure tests).
   */
  startIngest(clientId: string, opts?: { handler?: IngestHandler; options?: Partial<MqttsSubscriberOptions> }): Promise<IngestInstance>;
  stop(): Promise<void>;
}

export interface MqttRigOptions {
  readonly devices: readonly string[];
  /** Devices that get certificates but are not known to the broker. */
  readonly unregisteredDevices?: readonly string[];
  readonly broker?: Partial<Pick<MosquittoOptions, 'plaintext' | 'maxQueuedMessages' | 'autosaveSeconds' | 'captureLog'>>;
}

export async function startMqttRig(opts: MqttRigOptions): Promise<MqttRig> {
  const fleet = await createTestFleet('MQTT Test Fleet');
  const brokerIdentity = await fleet.service({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const ingestIdentity = await fleet.service({ dnsNames: [INGEST_IDENTITY], clientAuth: true });
  const devices = new Map<string, IssuedIdentity>();
  for (const id of [...opts.devices, ...(opts.unregisteredDevices ?? [])]) devices.set(id, await fleet.device(id));
  const broker = await startMosquitto({
    caChainPem: fleet.caChainPem,
    certChainPem: brokerIdentity.certChainPem,
    keyPem: brokerIdentity.keyPem as string,
    crlPem: await fleet.crlPem(),
    devices: opts.devices,
    ingest: [INGEST_IDENTITY],
    ...opts.broker,
  });
  const trust = trustFromPem(fleet.rootPem);
  const sealer = createTestSealer();
  const open = sealer.open;
  const ingests: IngestInstance[] = [];
  const uplinks: Uplink[] = [];

  const tlsFor = (identity: IssuedIdentity): TlsConnector => {
    if (identity.key === undefined) throw new Error('tlsFor: this identity has no in-memory key');
    return inProcessTls({ certChainPem: identity.certChainPem, privateKey: identity.key, trust });
  };

  return {
    fleet,
    broker,
    trust,
    brokerIdentity,
    ingestIdentity,
    devices,
    ingestPublicKeyPem: sealer.publicKeyPem,
    seal: sealer.seal,
    open,
    tlsFor,
    uplink(deviceId, o = {}) {
      const identity = devices.get(deviceId);
      if (identity === undefined) throw new Error(`no identity for ${deviceId}`);
      const u = createMqttsUplink({ deviceId, host: broker.host, port: broker.port, tls: tlsFor(identity), ...o });
      uplinks.push(u);
      return u;
    },
    async startIngest(clientId, o = {}) {
      const received: ReceivedMessage[] = [];
      let waiters: { n: number; resolve: () => void }[] = [];
      const record = (m: IngestMessage, seq: number) => {
        received.push({ clientId, deviceId: m.deviceId, seq, payload: m.payload, redelivered: m.redelivered });
        waiters = waiters.filter((w) => {
          if (received.length < w.n) return true;
          w.resolve();
          return false;
        });
      };
      const defaultHandler: IngestHandler = async (m) => {
        const opened = open(m.payload);
        // The ingest's identity check (DESIGN.md): the sealed device id must be the topic's.
        if (opened.deviceId !== m.deviceId) throw new Error(`device ${m.deviceId} sent a message sealed for ${opened.deviceId}`);
        record(m, opened.seq);
      };
      const subscriber = createMqttsSubscriber({
        host: broker.host,
        port: broker.port,
        serverName: '127.0.0.1',
        tls: tlsFor(ingestIdentity),
        clientId,
        handler: o.handler === undefined ? defaultHandler : async (m) => {
          await (o.handler as IngestHandler)(m);
          record(m, open(m.payload).seq);
        },
        backoff: { minMs: 50, maxMs: 1000 },
        ...o.options,
      });
      await subscriber.start();
      const instance: IngestInstance = {
        clientId,
        subscriber,
        received,
        waitFor(n, ms = 20_000) {
          if (received.length >= n) return Promise.resolve();
          return new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`${clientId}: ${received.length} of ${n} messages after ${ms} ms`)), ms);
            waiters.push({ n, resolve: () => {
              clearTimeout(timer);
              resolve();
            } });
          });
        },
      };
      ingests.push(instance);
      return instance;
    },
    async stop() {
      for (const u of uplinks) await u.close().catch(() => undefined);
      for (const i of ingests) await i.subscriber.close({ drainMs: 100 }).catch(() => undefined);
      await broker.stop();
    },
  };
}
