/**
 * From the agent's `transport.primary` / `transport.failover` sections to a working `Uplink`: the
 * trust anchors, the device certificate, and the device identity key opened in its key store.
 *
 * The key never leaves a hardware store:
 *   - `tpm`: MQTTS runs TLS in a child process whose OpenSSL signs in the TPM (tpmTls);
 *   - `software`: the development store's key is handed to node:tls in this process (logged as
 *     development grade);
 *   - `pkcs11`: MQTTS cannot use a token key on Debian 12 (docs/transport-mqtts.md, "PKCS#11"):
 *     refused with `Unsupported`, naming the transport that can (CoAPS signs through the store).
 *
 * The certificate is checked against the store's key before anything connects, so a device
 * provisioned with one key and configured with another fails at start-up with a message that says so,
 * not with a TLS alert later. The `certFile` may be replaced while the agent runs (certificate
 * renewal writes it): the uplink's TLS connector presents the new chain from its next connection on
 * (device-tls.ts, `reloadingTls`). A transport added here should do the same with its chain.
 *
 * @example
 *   const built = await uplinkFromConfig(config.transport.primary, 'transport.primary', { deviceId, clock, log, env: process.env });
 *   await built.uplink.connect();
 *   ...
 *   await built.release();   // closes the uplink, the TLS helper and the key store
 */
import { readFileSync } from 'node:fs';
import { openKeyStore } from '../../keystore/open.ts';
import type { KeyStore } from '../../keystore/types.ts';
import { parseCertificate } from '../../pki/certificate.ts';
import { pemDecode } from '../../pki/pem.ts';
import type { TlsConnector } from '../../transport/mqtts/connector.ts';
import { trustFromPem, type MqttsTrust } from '../../transport/mqtts/tls.ts';
import { vitalsTopic } from '../../transport/mqtts/topics.ts';
import { createMqttsUplink } from '../../transport/mqtts/uplink.ts';
import type { Uplink } from '../../transport/types.ts';
import { equalBytes } from '../../util/bytes.ts';
import type { Clock } from '../../util/clock.ts';
import { Unsupported, VitalsealError } from '../../util/errors.ts';
import { ConfigError, type TransportConfig, type TransportIdentity } from '../config.ts';
import type { Logger } from '../log.ts';
import { deviceTlsFactory, reloadingTls } from './device-tls.ts';

export interface UplinkDeps {
  readonly deviceId: string;
  readonly clock: Clock;
  readonly log: Logger;
  /** Where `{ env: NAME }` secret sources are read (PINs, passphrases). */
  readonly env: NodeJS.ProcessEnv;
}

export interface BuiltUplink {
  readonly uplink: Uplink;
  /** Closes the uplink and releases what it holds (TLS child process, key store). Idempotent. */
  release(): Promise<void>;
}

function readText(path: string, field: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError([`${field}: cannot read the ${what} ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`]);
  }
}

function need<T>(v: T | undefined, field: string, why: string): T {
  if (v === undefined) throw new ConfigError([`${field}: is required ${why}`]);
  return v;
}

/** The device chain (leaf first) and the leaf's SubjectPublicKeyInfo. */
function readDeviceChain(path: string, field: string): { pem: string; leafSpki: Uint8Array } {
  const pem = readText(path, field, 'device certificate');
  const blocks = pemDecode(pem, 'CERTIFICATE');
  const leaf = blocks[0];
  if (leaf === undefined) throw new ConfigError([`${field}: ${path} holds no CERTIFICATE`]);
  try {
    return { pem, leafSpki: parseCertificate(leaf.der).spki.der };
  } catch (e) {
    throw new ConfigError([`${field}: ${path} is not a certificate this device can use (${e instanceof VitalsealError ? e.code : 'unreadable'})`]);
  }
}

function readTrust(t: TransportConfig, path: string): MqttsTrust {
  const caFile = need(t.caFile, `${path}.caFile`, 'for mqtts (the CA that issued the broker certificate)');
  try {
    return trustFromPem(readText(caFile, `${path}.caFile`, 'CA bundle'), t.spkiPins === undefined ? {} : { spkiPins: t.spkiPins });
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError([`${path}.caFile: ${caFile} holds no usable CA certificate (${e instanceof VitalsealError ? e.code : 'unreadable'})`]);
  }
}

async function openIdentityStore(identity: TransportIdentity, path: string, deps: UplinkDeps): Promise<KeyStore> {
  try {
    return await openKeyStore(identity.keystore, { env: deps.env, create: false, logger: { warn: (m) => deps.log.warn({ part: 'keystore' }, m) } });
  } catch (e) {
    if (e instanceof VitalsealError) throw new ConfigError([`${path}.identity.keystore: ${e.message} [${e.code}]`]);
    throw e;
  }
}

/** The store's key must be the one the certificate was issued for; returns the key's SPKI. */
async function checkKeyMatchesCertificate(store: KeyStore, label: string, leafSpki: Uint8Array, path: string): Promise<Uint8Array> {
  let spki: Uint8Array;
  try {
    spki = await (await store.openSigningKey(label)).publicKeySpki();
  } catch (e) {
    throw new ConfigError([`${path}.identity.keyLabel: the key store has no usable key '${label}' (${e instanceof VitalsealError ? e.code : 'error'}); run vitalseal provision first`]);
  }
  if (!equalBytes(spki, leafSpki)) {
    throw new ConfigError([`${path}.certFile: the certificate was not issued for key '${label}' in this key store (provisioned with another key?)`]);
  }
  return spki;
}

function pkcs11Refusal(path: string): Unsupported {
  return new Unsupported('mqtts-pkcs11-key', `${path}: MQTTS cannot use a PKCS#11 token key yet (Debian 12 has no OpenSSL 3 pkcs11 provider; docs/transport-mqtts.md, "PKCS#11"). Use the coaps transport, which signs through the token, or a tpm key store`);
}

async function buildMqtts(t: TransportConfig, path: string, deps: UplinkDeps): Promise<BuiltUplink> {
  if (t.topic !== undefined && t.topic !== vitalsTopic(deps.deviceId)) {
    throw new ConfigError([`${path}.topic: the broker lets device ${deps.deviceId} publish only to ${vitalsTopic(deps.deviceId)}; remove the setting or use that topic`]);
  }
  const identity = need(t.identity, `${path}.identity`, 'for mqtts (the key store holding the device key)');
  if (identity.keystore.kind === 'pkcs11') throw pkcs11Refusal(path);
  const trust = readTrust(t, path);
  const certFile = need(t.certFile, `${path}.certFile`, 'for mqtts (the device certificate chain, PEM)');
  const chain = readDeviceChain(certFile, `${path}.certFile`);
  const store = await openIdentityStore(identity, path, deps);
  let tls: TlsConnector | undefined;
  try {
    const keySpki = await checkKeyMatchesCertificate(store, identity.keyLabel, chain.leafSpki, path);
    const build = await deviceTlsFactory(store, identity.keyLabel, trust, { clock: deps.clock, log: deps.log, purpose: 'mqtts', refusal: () => pkcs11Refusal(path) });
    tls = reloadingTls({ file: certFile, field: `${path}.certFile`, pem: chain.pem, keySpki, build, log: deps.log });
    const uplink = createMqttsUplink({ deviceId: deps.deviceId, host: t.host, port: t.port, serverName: t.serverName ?? t.host, tls });
    deps.log.info({ part: 'transport', kind: 'mqtts', target: `${t.host}:${t.port}`, tls: tls.description }, 'uplink configured');
    const connector = tls;
    let released: Promise<void> | undefined;
    return {
      uplink,
      release() {
        released ??= (async () => {
          await uplink.close().catch(() => undefined);
          await connector.close().catch(() => undefined);
          await store.close().catch(() => undefined);
        })();
        return released;
      },
    };
  } catch (e) {
    await tls?.close().catch(() => undefined);
    await store.close().catch(() => undefined);
    throw e;
  }
}

/** Builds the uplink a transport section describes; `path` names the section in errors. */
export async function uplinkFromConfig(t: TransportConfig, path: string, deps: UplinkDeps): Promise<BuiltUplink> {
  switch (t.kind) {
    case 'mqtts':
      return buildMqtts(t, path, deps);
    case 'coaps':
      throw new Unsupported('transport-not-built', `${path}: transport 'coaps' is not built yet in this version (src/transport/coaps is missing); `
        + 'use mqtts, or embed the agent with createAgent({ uplinks }) to supply an Uplink');
    default: {
      const never: never = t.kind;
      throw new ConfigError([`${path}.kind: unknown transport ${String(never)}`]);
    }
  }
}
