/**
 * A whole MQTT deployment of the ingest service on loopback, for tests and benchmarks: a dev fleet
 * CA on disk (the one `vitalseal ingest` revokes through), a private mosquitto trusting it (TLS 1.3,
 * client certificates, the CA's CRL, dynsec rules for the devices and the ingest), the ingest's
 * client and HTTPS certificates, device identities with software keys, a software key store (low
 * scrypt cost, created here), and configuration files for `vitalseal ingest run` instances.
 *
 * Secrets are generated per run; the key store passphrase travels in `env` (VS_SITE_PASS), the
 * PostgreSQL connection string in a 0600 file.
 *
 * @example
 *   const site = await startMqttIngestSite({ devices: ['bed-1'] });
 *   const cfg = site.config('ingest-a', { sqlite: join(site.dir, 'ingest.db') }, { clientId: 'ingest-a' });
 *   const staticKey = await site.prepare(cfg);            // static key + registered devices
 *   // vitalseal ingest run --config cfg (env: site.env), or startIngest(loadIngestConfig(cfg), ...)
 *   const uplink = site.uplink('bed-1');
 *   await site.stop();
 */
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadIngestConfig } from '../../src/ingest/config.ts';
import { openCoreFromConfig } from '../../src/ingest/runtime.ts';
import { cryptoSelfTest } from '../../src/ingest/selftest.ts';
import { rotateStaticKey } from '../../src/ingest/static-key.ts';
import type { DeviceRegistration } from '../../src/ingest/storage/types.ts';
import { openSoftwareKeyStore } from '../../src/keystore/software/store.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { spkiSha256, type Certificate } from '../../src/pki/certificate.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa, type DevCa } from '../../src/pki/dev-ca.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { inProcessTls, type TlsConnector } from '../../src/transport/mqtts/connector.ts';
import { trustFromPem, type MqttsTrust } from '../../src/transport/mqtts/tls.ts';
import { createMqttsUplink, type MqttsUplinkOptions } from '../../src/transport/mqtts/uplink.ts';
import type { Uplink } from '../../src/transport/types.ts';
import { toHex } from '../../src/util/bytes.ts';
import type { LoadDevice } from './load-generator.ts';
import { startMosquitto, type MosquittoBroker, type MosquittoOptions } from './mosquitto.ts';

/** The ingest's certificate CN: its broker username. */
export const SITE_INGEST_CN = 'ingest.vitalseal.test';

export interface SiteDevice {
  readonly id: string;
  readonly cert: Certificate;
  readonly certChainPem: string;
  readonly key: KeyObject;
  readonly keyPem: string;
  /** What the ingest registry holds for it (active, its key's SPKI hash, its serial). */
  readonly registration: DeviceRegistration;
}

export type SiteStorage = { readonly sqlite: string } | { readonly postgres: string };

export interface MqttIngestSite {
  readonly dir: string;
  readonly ca: DevCa;
  readonly broker: MosquittoBroker;
  /** With `baselineBroker`: a second mosquitto whose plaintext listener carries the benchmark baseline. */
  readonly plainBroker: MosquittoBroker | undefined;
  readonly trust: MqttsTrust;
  readonly rootPem: string;
  readonly devices: ReadonlyMap<string, SiteDevice>;
  /** Environment for `vitalseal ingest` processes (holds the key store passphrase source). */
  readonly env: NodeJS.ProcessEnv;
  /** The ingest's MQTT client files and its HTTPS files. */
  readonly files: { readonly caFile: string; readonly certFile: string; readonly keyFile: string; readonly httpsCert: string; readonly httpsKey: string };
  /** `mqtt.crlReload` that copies the CA's CRL over the broker's and signals the broker. */
  readonly brokerCrlReload: { readonly copyTo: string; readonly pidFile: string };
  /**
   * Writes `<dir>/<name>.yaml` for one instance and returns its path. `mqtt`: settings merged into
   * the mqtt section (which points at the site's broker), or `false` for none.
   */
  config(name: string, storage: SiteStorage, mqtt?: Record<string, unknown> | false, extra?: string): string;
  /** Makes the static key (once) and registers every device; returns the static public key. */
  prepare(configPath: string): Promise<Uint8Array>;
  tls(deviceId: string): TlsConnector;
  uplink(deviceId: string, opts?: Partial<MqttsUplinkOptions>): Uplink;
  /** The devices as the load generator takes them. */
  loadDevices(ids?: readonly string[]): LoadDevice[];
  stop(): Promise<void>;
}

export interface MqttIngestSiteOptions {
  readonly devices: readonly string[];
  readonly broker?: Partial<Pick<MosquittoOptions, 'plaintext' | 'captureLog' | 'maxQueuedMessages' | 'autosaveSeconds'>>;
  /**
   * Also start a second broker with a plaintext listener (benchmarks only). A broker of its own,
   * because share groups span listeners: plaintext messages on the first broker would reach the
   * ingest's share too.
   */
  readonly baselineBroker?: boolean;
}

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };

function newKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
}

function pkcs8(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

export async function startMqttIngestSite(o: MqttIngestSiteOptions): Promise<MqttIngestSite> {
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-site-'));
  let broker: MosquittoBroker | undefined;
  let plainBroker: MosquittoBroker | undefined;
  try {
    const now = Date.now();
    const ca = await initDevCa({ dir: join(dir, 'ca'), organization: 'Site Test Fleet', now: now - 3_600_000 });
    await ca.writeCrl(now);
    const chain = (c: Certificate) => pemEncode('CERTIFICATE', c.der) + pemEncode('CERTIFICATE', ca.issuing.der);
    const service = async (cn: string, names: { dnsNames?: string[]; ipAddresses?: string[]; clientAuth?: boolean }) => {
      const key = newKey();
      const cert = await ca.issueService(await createCsr({ signer: keyObjectSigner(key), subject: { commonName: cn } }), names, now);
      return { certChainPem: chain(cert), keyPem: pkcs8(key) };
    };
    const brokerId = await service('127.0.0.1', { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
    const ingestId = await service(SITE_INGEST_CN, { dnsNames: [SITE_INGEST_CN], clientAuth: true });
    const httpsId = await service('127.0.0.1', { ipAddresses: ['127.0.0.1'] });

    const devices = new Map<string, SiteDevice>();
    for (const id of o.devices) {
      const key = newKey();
      const csr = await createCsr({ signer: keyObjectSigner(key), subject: { commonName: id }, deviceId: id });
      const cert = await ca.issueDevice(csr, id, now);
      devices.set(id, {
        id, cert, certChainPem: chain(cert), key, keyPem: pkcs8(key),
        registration: { deviceId: id, credential: 'certificate', credentialSha256: toHex(spkiSha256(cert.spki.der)), status: 'active', enrolledAt: now, certSerial: cert.serialHex, certNotAfter: cert.notAfter },
      });
    }

    const file = (name: string, data: string, mode = 0o644) => {
      const path = join(dir, name);
      writeFileSync(path, data, { mode });
      return path;
    };
    const files = {
      caFile: file('mqtt-ca.pem', pemEncode('CERTIFICATE', ca.root.der)),
      certFile: file('mqtt-client.pem', ingestId.certChainPem),
      keyFile: file('mqtt-client.key', ingestId.keyPem, 0o600),
      httpsCert: file('https.pem', httpsId.certChainPem),
      httpsKey: file('https.key', httpsId.keyPem, 0o600),
    };
    const keystorePath = join(dir, 'ingest-keys.vsks');
    const passphrase = randomBytes(24).toString('base64url');
    // Created here with a low scrypt cost (tests only); every instance opens it with its own parameters.
    await (await openSoftwareKeyStore({ path: keystorePath, passphrase, scrypt: { logN: 10 } })).close();
    const env: NodeJS.ProcessEnv = { ...process.env, VS_SITE_PASS: passphrase };

    broker = await startMosquitto({
      caChainPem: pemEncode('CERTIFICATE', ca.issuing.der) + pemEncode('CERTIFICATE', ca.root.der),
      certChainPem: brokerId.certChainPem,
      keyPem: brokerId.keyPem,
      crlPem: readFileSync(ca.paths.crl, 'utf8'),
      devices: o.devices,
      ingest: [SITE_INGEST_CN],
      ...o.broker,
    });
    const b = broker;
    if (o.baselineBroker === true) {
      plainBroker = await startMosquitto({
        caChainPem: pemEncode('CERTIFICATE', ca.issuing.der) + pemEncode('CERTIFICATE', ca.root.der),
        certChainPem: brokerId.certChainPem, keyPem: brokerId.keyPem, crlPem: readFileSync(ca.paths.crl, 'utf8'),
        devices: [], ingest: [], plaintext: true, ...o.broker,
      });
    }
    const pb = plainBroker;
    const trust = trustFromPem(pemEncode('CERTIFICATE', ca.root.der));
    const connectors = new Map<string, TlsConnector>();
    const uplinks: Uplink[] = [];
    const brokerCrlReload = { copyTo: join(b.dir, 'crl.pem'), pidFile: b.pidFile };

    const site: MqttIngestSite = {
      dir, ca, broker: b, plainBroker: pb, trust, rootPem: pemEncode('CERTIFICATE', ca.root.der), devices, env, files, brokerCrlReload,
      config(name, storage, mqtt = {}, extra = '') {
        const storageYaml = 'sqlite' in storage
          ? `{ sqlite: { path: ${JSON.stringify(storage.sqlite)} } }`
          : `{ postgres: { connection: { file: ${JSON.stringify(file(`${name}.pg`, storage.postgres, 0o600))} }, maxConnections: 10 } }`;
        const mqttSection = mqtt === false ? '' : `mqtt: ${JSON.stringify({
          url: `mqtts://${b.host}:${b.port}`, caFile: files.caFile, certFile: files.certFile, keyFile: files.keyFile, clientId: name, ...mqtt,
        })}\n`;
        return file(`${name}.yaml`, `# ${name}: generated by scripts/lib/mqtt-ingest-site.ts
storage: ${storageYaml}
keystore: { kind: software, path: ${JSON.stringify(keystorePath)}, passphrase: { env: VS_SITE_PASS } }
audit: { path: ${JSON.stringify(join(dir, `${name}.audit.log`))} }
pki: { dir: ${JSON.stringify(join(dir, 'ca'))} }
https: { host: 127.0.0.1, port: 0, certificate: ${JSON.stringify(files.httpsCert)}, key: ${JSON.stringify(files.httpsKey)} }
ingest: { registryRefreshMs: 200 }
log: { level: info }
${mqttSection}${extra}`);
      },
      async prepare(configPath) {
        const core = await openCoreFromConfig(loadIngestConfig(configPath), { env, selfTest: cryptoSelfTest(), log: quiet }, { allowNoStaticKey: true, cli: true });
        try {
          const key = core.staticKeys?.current.publicKey ?? (await rotateStaticKey(core.hierarchy, core.provider)).publicKey;
          for (const d of devices.values()) if (core.registry.get(d.id) === undefined) await core.registry.register(d.registration);
          return key;
        } finally {
          await core.close();
        }
      },
      tls(deviceId) {
        let c = connectors.get(deviceId);
        if (c === undefined) {
          const d = devices.get(deviceId);
          if (d === undefined) throw new Error(`no device ${deviceId} on this site`);
          const connector = inProcessTls({ certChainPem: d.certChainPem, privateKey: d.key, trust });
          // Shared by every uplink of the device; close() of one uplink must not close it for the others.
          c = { description: connector.description, open: (t) => connector.open(t), close: async () => undefined };
          connectors.set(deviceId, c);
        }
        return c;
      },
      uplink(deviceId, opts = {}) {
        const u = createMqttsUplink({ deviceId, host: b.host, port: b.port, serverName: '127.0.0.1', tls: site.tls(deviceId), ...opts });
        uplinks.push(u);
        return u;
      },
      loadDevices(ids) {
        return (ids ?? [...devices.keys()]).map((id) => {
          const d = devices.get(id);
          if (d === undefined) throw new Error(`no device ${id} on this site`);
          return { id, certChainPem: d.certChainPem, keyPem: d.keyPem };
        });
      },
      async stop() {
        for (const u of uplinks) await u.close().catch(() => undefined);
        await b.stop();
        await pb?.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
    return site;
  } catch (e) {
    await broker?.stop();
    await plainBroker?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
