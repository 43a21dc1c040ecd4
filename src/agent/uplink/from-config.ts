/**
 * From the agent's `transport.primary` / `transport.failover` sections to a working `Uplink`: the
 * trust anchors, the device certificate, and the device identity key opened in its key store.
 *
 * The key never leaves a hardware store:
 *   - CoAPS: our DTLS 1.3 signs CertificateVerify through the store's `Signer` (TPM, PKCS#11 token or
 *     the software store); or the device uses an external PSK read from a 0600 file;
 *   - MQTTS with `tpm`: each TLS connection runs in `openssl s_client`, whose tpm2 provider signs in
 *     the TPM (opensslTpmTls); the key's loadable form is read with tpm2-tools at start, so this
 *     process never loads FAPI (about 15 MiB: docs/agent.md, "With the device key in the TPM");
 *   - MQTTS with `software`: the development store's key is handed to node:tls in this process
 *     (logged as development grade);
 *   - MQTTS with `pkcs11`: refused with `Unsupported` (Debian 12 has no OpenSSL 3 PKCS#11 provider;
 *     docs/transport-mqtts.md, "PKCS#11"), naming the transport that can (CoAPS).
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
import type { Uplink } from '../../transport/types.ts';
import { X509PeerVerifier } from '../../dtls/peer-verifier.ts';
import { readSecret } from '../../keystore/secret-source.ts';
import type { TpmKeyStoreConfig } from '../../keystore/config.ts';
import { equalBytes, fromHex, toHex } from '../../util/bytes.ts';
import type { Clock } from '../../util/clock.ts';
import { KeyStoreError, Unsupported, VitalsealError } from '../../util/errors.ts';
import { ConfigError, type TransportConfig, type TransportIdentity } from '../config.ts';
import type { Logger } from '../log.ts';
import { ChainFile, deviceTlsFactory, reloadingTls, tpmDeviceTls, type TpmDeviceTls } from './device-tls.ts';

export interface UplinkDeps {
  readonly deviceId: string;
  readonly clock: Clock;
  readonly log: Logger;
  /** Where `{ env: NAME }` secret sources are read (PINs, passphrases). */
  readonly env: NodeJS.ProcessEnv;
}

export interface BuiltUplink {
  readonly uplink: Uplink;
  /** Closes the uplink and releases what it holds (TLS processes, key store). Idempotent. */
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
    return await openKeyStore(identity.keystore, { env: deps.env, create: false, logger: { warn: (m) => deps.log.warn({ keyStore: 'identity' }, m) } });
  } catch (e) {
    throw keyStoreProblem(e, path);
  }
}

/**
 * What reaching the identity key store failed with, for the operator. A TPM that is not there
 * (yet: the `away` codes) is not a mistake in the configuration, and it may come back: the agent
 * cannot authenticate without it and exits with status 1, so a service manager
 * (Restart=on-failure) starts it again; calling it "configuration is invalid" would send the
 * operator to the wrong place.
 */
function keyStoreProblem(e: unknown, path: string, away: readonly string[] = ['no-tpm']): unknown {
  if (e instanceof KeyStoreError && away.includes(e.code)) {
    return new KeyStoreError(e.code, `${path}.identity.keystore: the key store is unavailable: ${e.message}`, { cause: e });
  }
  if (e instanceof VitalsealError) return new ConfigError([`${path}.identity.keystore: ${e.message} [${e.code}]`]);
  return e;
}

function noUsableKey(path: string, label: string, code: string): ConfigError {
  return new ConfigError([`${path}.identity.keyLabel: the key store has no usable key '${label}' (${code}); run vitalseal provision first`]);
}

function notIssuedForKey(path: string, label: string): ConfigError {
  return new ConfigError([`${path}.certFile: the certificate was not issued for key '${label}' in this key store (provisioned with another key?)`]);
}

/** The store's key must be the one the certificate was issued for; returns the key's SPKI. */
async function checkKeyMatchesCertificate(store: KeyStore, label: string, leafSpki: Uint8Array, path: string): Promise<Uint8Array> {
  let spki: Uint8Array;
  try {
    spki = await (await store.openSigningKey(label)).publicKeySpki();
  } catch (e) {
    throw noUsableKey(path, label, e instanceof VitalsealError ? e.code : 'error');
  }
  if (!equalBytes(spki, leafSpki)) throw notIssuedForKey(path, label);
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
  const device: DeviceChain = { file: certFile, field: `${path}.certFile`, ...chain };
  const held = identity.keystore.kind === 'tpm'
    ? await tpmKeyTls(identity.keystore, identity.keyLabel, path, deps, trust, device)
    : await storeKeyTls(identity, path, deps, trust, device);
  try {
    // Loaded here, not at start-up: a device runs one transport, and mqtt.js alone is ~20 MB of heap.
    const { createMqttsUplink } = await import('../../transport/mqtts/uplink.ts');
    const uplink = createMqttsUplink({ deviceId: deps.deviceId, host: t.host, port: t.port, serverName: t.serverName ?? t.host, tls: held.tls });
    deps.log.info({ kind: 'mqtts', target: `${t.host}:${t.port}`, tls: held.tls.description }, 'uplink configured');
    return released(uplink, held.release);
  } catch (e) {
    await held.release().catch(() => undefined);
    throw e;
  }
}

/** The device chain file as read at start-up, and the configuration field naming it. */
interface DeviceChain {
  readonly file: string;
  readonly field: string;
  readonly pem: string;
  readonly leafSpki: Uint8Array;
}

/** An MQTTS uplink's TLS connector and what releases it (and the key store, if one is open). */
interface HeldTls {
  readonly tls: TlsConnector;
  release(): Promise<void>;
}

/** The key in a key store opened in this process (the software store). */
async function storeKeyTls(identity: TransportIdentity, path: string, deps: UplinkDeps, trust: MqttsTrust, device: DeviceChain): Promise<HeldTls> {
  const store = await openIdentityStore(identity, path, deps);
  try {
    const keySpki = await checkKeyMatchesCertificate(store, identity.keyLabel, device.leafSpki, path);
    const build = await deviceTlsFactory(store, identity.keyLabel, trust, { clock: deps.clock, log: deps.log, purpose: 'mqtts', refusal: () => pkcs11Refusal(path) });
    const tls = reloadingTls({ file: device.file, field: device.field, pem: device.pem, keySpki, build, log: deps.log });
    return {
      tls,
      async release() {
        await tls.close().catch(() => undefined);
        await store.close();
      },
    };
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
}

/**
 * The key in the TPM, without FAPI in this process: the key's blobs come from tpm2-tools
 * (`readLoadableKeyWithTools`), checked against the certificate as the store's key would be, and
 * every connection is an `openssl s_client` signing in the TPM.
 */
async function tpmKeyTls(keystore: TpmKeyStoreConfig, label: string, path: string, deps: UplinkDeps, trust: MqttsTrust, device: DeviceChain): Promise<HeldTls> {
  let tpm: TpmDeviceTls;
  try {
    tpm = await tpmDeviceTls(keystore, label, trust, { clock: deps.clock, log: deps.log, purpose: 'mqtts', env: deps.env });
  } catch (e) {
    if (e instanceof KeyStoreError && (e.code === 'not-found' || e.code === 'wrong-type')) throw noUsableKey(path, label, e.code);
    // A tool that did not finish in time (`tpm-busy`) is a TPM away as well.
    throw keyStoreProblem(e, path, ['no-tpm', 'tpm-busy']);
  }
  if (!equalBytes(tpm.key.spki, device.leafSpki)) throw notIssuedForKey(path, label);
  const tls = reloadingTls({ file: device.file, field: device.field, pem: device.pem, keySpki: tpm.key.spki, build: tpm.build, log: deps.log });
  return { tls, release: () => tls.close() };
}

/** The 32-byte PSK from its file: 64 hex digits (what `vitalseal ingest devices add-psk` writes), mode 0600. */
async function readPskKey(file: string, field: string, env: NodeJS.ProcessEnv): Promise<Uint8Array> {
  let raw: Uint8Array;
  try {
    raw = await readSecret({ file }, { env, what: 'PSK key' });
  } catch (e) {
    throw new ConfigError([`${field}: ${e instanceof VitalsealError ? `${e.message} [${e.code}]` : 'cannot be read'}`]);
  }
  try {
    const text = new TextDecoder().decode(raw).trim();
    // Never quote the file's content: it is the key.
    if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new ConfigError([`${field}: ${file} must hold the 32-byte key as 64 hex digits`]);
    return fromHex(text);
  } finally {
    raw.fill(0);
  }
}

async function buildCoaps(t: TransportConfig, path: string, deps: UplinkDeps): Promise<BuiltUplink> {
  const { createCoapsUplink } = await import('../../transport/coaps/uplink.ts');
  const common = { deviceId: deps.deviceId, host: t.host, port: t.port, ...(t.topic === undefined ? {} : { path: t.topic.startsWith('/') ? t.topic : `/${t.topic}` }) };
  if (t.psk !== undefined) {
    const key = await readPskKey(t.psk.keyFile, `${path}.psk.keyFile`, deps.env);
    let uplink: Uplink;
    try {
      uplink = createCoapsUplink({ ...common, identity: { kind: 'psk', key, ...(t.psk.identity === undefined ? {} : { identity: t.psk.identity }) } });
    } finally {
      key.fill(0); // the uplink keeps its own copy
    }
    deps.log.info({ kind: 'coaps', target: `${t.host}:${t.port}`, auth: 'psk' }, 'uplink configured');
    return released(uplink, async () => undefined);
  }
  const identity = need(t.identity, `${path}.identity`, 'for coaps with a certificate (the key store holding the device key), or give psk');
  const caFile = need(t.caFile, `${path}.caFile`, 'for coaps with a certificate (the CA that issued the ingest certificate)');
  const caPem = readText(caFile, `${path}.caFile`, 'CA bundle');
  const certFile = need(t.certFile, `${path}.certFile`, 'for coaps with a certificate (the device certificate chain, PEM)');
  const chain = readDeviceChain(certFile, `${path}.certFile`);
  const store = await openIdentityStore(identity, path, deps);
  try {
    const keySpki = await checkKeyMatchesCertificate(store, identity.keyLabel, chain.leafSpki, path);
    const signer = await store.openSigningKey(identity.keyLabel);
    let verifier: X509PeerVerifier;
    try {
      verifier = new X509PeerVerifier({
        roots: [caPem], purpose: 'server', serverName: t.serverName ?? t.host,
        ...(t.spkiPins === undefined ? {} : { spkiPins: t.spkiPins.map((p) => toHex(p)) }),
      });
    } catch (e) {
      throw new ConfigError([`${path}.caFile: ${caFile} holds no usable CA certificate (${e instanceof VitalsealError ? e.code : 'unreadable'})`]);
    }
    // Renewal replaces certFile: every new session presents what it holds then (same key only).
    const file = new ChainFile({ file: certFile, field: `${path}.certFile`, pem: chain.pem, keySpki, log: deps.log });
    const uplink = createCoapsUplink({
      ...common, verifier,
      identity: {
        kind: 'certificate', signer,
        certificateChain: () => {
          file.refresh();
          return pemDecode(file.pem, 'CERTIFICATE').map((b) => b.der);
        },
      },
    });
    deps.log.info({ kind: 'coaps', target: `${t.host}:${t.port}`, auth: 'certificate', keyStore: store.describe().kind }, 'uplink configured');
    return released(uplink, () => store.close());
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
}

/** The built uplink with an idempotent release: the uplink first, then what it used. */
function released(uplink: Uplink, after: () => Promise<void>): BuiltUplink {
  let done: Promise<void> | undefined;
  return {
    uplink,
    release() {
      done ??= (async () => {
        await uplink.close().catch(() => undefined);
        await after().catch(() => undefined);
      })();
      return done;
    },
  };
}

/** Builds the uplink a transport section describes; `path` names the section in errors. */
export async function uplinkFromConfig(t: TransportConfig, path: string, deps: UplinkDeps): Promise<BuiltUplink> {
  switch (t.kind) {
    case 'mqtts':
      return buildMqtts(t, path, deps);
    case 'coaps':
      return buildCoaps(t, path, deps);
    default: {
      const never: never = t.kind;
      throw new ConfigError([`${path}.kind: unknown transport ${String(never)}`]);
    }
  }
}
