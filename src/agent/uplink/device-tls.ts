/**
 * The device's mutual-TLS connections, wherever its identity key lives, for every TLS client the
 * agent runs (the MQTTS uplink, certificate renewal against the enrolment endpoint):
 *
 *   - `tpm` (`tpmDeviceTls`): TLS in `openssl s_client`, whose tpm2 provider signs in the TPM
 *     (transport/mqtts/openssl-tpm-tls.ts); the key's loadable form is read with tpm2-tools
 *     (keystore/tpm/tools-key.ts), so FAPI never loads into the agent: no key store is opened;
 *   - `software` (`deviceTlsFactory`): the development store's key handed to node:tls in this
 *     process (logged);
 *   - `pkcs11` (`deviceTlsFactory`): refused with the caller's `Unsupported`: Debian 12's OpenSSL
 *     cannot sign with a token key (docs/transport-mqtts.md, "PKCS#11").
 *
 * Each prepares the key once and returns a builder from a certificate chain to a connector.
 * `reloadingTls` wraps such a builder so that a chain file replaced on disk (renewal writes it; an
 * operator may too) is presented from the next connection on, without a restart:
 * each `open()` looks at the file (a stat; a read only when it changed), and a new chain for the
 * same key gets a new connector. Connections already open finish on the old one, which is closed
 * when its last connection ends. A changed file that is not usable (unparseable, another key) is
 * logged once and the last good chain stays in use.
 *
 * @example
 *   const build = await deviceTlsFactory(store, 'device-identity', trust, { clock, log, purpose: 'mqtts', refusal });
 *   const tls = reloadingTls({ file: certFile, field: 'transport.primary.certFile', pem, keySpki, build, log });
 *   createMqttsUplink({ ..., tls });
 */
import { createPrivateKey } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { SoftwareKeyStore } from '../../keystore/software/store.ts';
import type { TpmKeyStoreConfig } from '../../keystore/config.ts';
import type { ToolsLoadableKey } from '../../keystore/tpm/tools-key.ts';
import type { KeyStore } from '../../keystore/types.ts';
import { parseCertificate, type Certificate } from '../../pki/certificate.ts';
import { pemDecode } from '../../pki/pem.ts';
import { inProcessTls, type TlsConnection, type TlsConnector } from '../../transport/mqtts/connector.ts';
import type { MqttsTrust } from '../../transport/mqtts/tls.ts';
import { equalBytes } from '../../util/bytes.ts';
import type { Clock } from '../../util/clock.ts';
import { ApiMisuse, type Unsupported, VitalsealError } from '../../util/errors.ts';
import type { Logger } from '../log.ts';

/** From a device chain (PEM, leaf first) to a connector presenting it with the store's key. */
export type DeviceTlsBuilder = (certChainPem: string) => TlsConnector;

export interface DeviceTlsDeps {
  readonly clock: Clock;
  readonly log: Logger;
  /** Who asks, for the log line about a development key ('mqtts', 'certificate renewal'). */
  readonly purpose: string;
  /** The refusal for a key TLS cannot use here (a PKCS#11 token key). */
  readonly refusal: () => Unsupported;
}

export async function deviceTlsFactory(store: KeyStore, label: string, trust: MqttsTrust, deps: DeviceTlsDeps): Promise<DeviceTlsBuilder> {
  if (store instanceof SoftwareKeyStore) {
    deps.log.warn({}, `${deps.purpose}: the TLS key comes from the software key store (development grade): it is held in this process`);
    const privateKey = createPrivateKey(await store.exportPrivateKeyPemForDevelopmentOnly(label));
    return (certChainPem) => inProcessTls({ certChainPem, privateKey, trust, clock: deps.clock });
  }
  if (store.describe().kind === 'tpm') {
    throw new ApiMisuse('tpm-key-store', `${deps.purpose}: a TPM key's TLS is built from its configuration (tpmDeviceTls), without opening the store in this process`);
  }
  throw deps.refusal();
}

/** The TPM identity key as `tpmDeviceTls` read it, and the builder of connectors signing with it. */
export interface TpmDeviceTls {
  /** The key's loadable form and SPKI (to check against the device certificate). */
  readonly key: ToolsLoadableKey;
  readonly build: DeviceTlsBuilder;
}

/**
 * A TPM identity key for the agent's TLS clients: its blobs read once with tpm2-tools, every
 * connection an `openssl s_client` signing in the TPM. Errors are the key store's (`not-found`,
 * `wrong-type`, `no-tpm`, `tpm-busy`, ...); the caller says what they mean for its configuration.
 */
export async function tpmDeviceTls(keystore: TpmKeyStoreConfig, label: string, trust: MqttsTrust, deps: Omit<DeviceTlsDeps, 'refusal'> & { readonly env: NodeJS.ProcessEnv }): Promise<TpmDeviceTls> {
  // Loaded on demand: only TPM users load tpm2-tools' runner and the s_client relay.
  const [{ readLoadableKeyWithTools }, { opensslTpmTls }, { tpmRmHint }] = await Promise.all([
    import('../../keystore/tpm/tools-key.ts'), import('../../transport/mqtts/openssl-tpm-tls.ts'), import('../../transport/mqtts/tpm2-provider.ts'),
  ]);
  const key = await readLoadableKeyWithTools(keystore, label, { env: deps.env });
  // Said at start, not only after the first failed handshake (hardware/raspberry-pi/README.md).
  const hint = tpmRmHint(key.tcti);
  if (hint !== '') deps.log.warn({ tcti: key.tcti }, `${deps.purpose}: TLS signed in the TPM will likely fail${hint}`);
  return { key, build: (certChainPem) => opensslTpmTls({ certChainPem, key, trust, clock: deps.clock }) };
}

/** The leaf of a PEM chain, or a reason it is not usable. */
export function leafOf(pem: string): Certificate {
  const [leaf] = pemDecode(pem, 'CERTIFICATE');
  if (leaf === undefined) throw new RangeError('holds no CERTIFICATE');
  return parseCertificate(leaf.der);
}

export interface ReloadingTlsOptions {
  /** The chain file to watch. */
  readonly file: string;
  /** The configuration field naming it, for log lines. */
  readonly field: string;
  /** The chain already read and checked at start-up. */
  readonly pem: string;
  /** The identity key's SubjectPublicKeyInfo: a new chain must be for this key. */
  readonly keySpki: Uint8Array;
  readonly build: DeviceTlsBuilder;
  readonly log: Logger;
}

/**
 * The device chain file, re-read when it changes (a stat per call, a read only after a change): a
 * chain for another key, or one that cannot be read or parsed, is logged and the last good chain
 * stays in use. Renewal replaces the file atomically (src/util/atomic-file.ts).
 */
export class ChainFile {
  readonly #o: Omit<ReloadingTlsOptions, 'build'>;
  #pem: string;
  #serial: string;
  #stamp: Stamp | undefined;

  constructor(o: Omit<ReloadingTlsOptions, 'build'>) {
    this.#o = o;
    this.#pem = o.pem;
    this.#serial = leafOf(o.pem).serialHex;
    this.#stamp = stampOf(o.file);
  }

  get pem(): string {
    return this.#pem;
  }

  get serial(): string {
    return this.#serial;
  }

  /** Picks up a replaced file; true when the chain in use changed. */
  refresh(): boolean {
    const o = this.#o;
    const now = stampOf(o.file);
    if (now === undefined || now === this.#stamp) return false;
    this.#stamp = now;
    let text: string;
    let leaf: Certificate;
    try {
      text = readFileSync(o.file, 'utf8');
      if (text === this.#pem) return false;
      leaf = leafOf(text);
    } catch (e) {
      o.log.error({ file: o.file, err: e instanceof VitalsealError ? e.code : (e as NodeJS.ErrnoException).code ?? 'unreadable' },
        `${o.field}: the device certificate file changed but cannot be used; still presenting serial ${this.#serial}`);
      return false;
    }
    if (!equalBytes(leaf.spki.der, o.keySpki)) {
      o.log.error({ file: o.file, serial: leaf.serialHex },
        `${o.field}: the new device certificate is for another key than the configured identity key; still presenting serial ${this.#serial}`);
      return false;
    }
    o.log.info({ file: o.file, from: this.#serial, to: leaf.serialHex }, `${o.field}: presenting the new device certificate from the next connection on`);
    this.#pem = text;
    this.#serial = leaf.serialHex;
    return true;
  }
}

interface Generation {
  readonly connector: TlsConnector;
  open: number;
  retired: boolean;
}

type Stamp = string;

function stampOf(file: string): Stamp | undefined {
  try {
    const st = statSync(file);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return undefined;
  }
}

export function reloadingTls(o: ReloadingTlsOptions): TlsConnector {
  const chain = new ChainFile(o);
  let current: Generation = { connector: o.build(chain.pem), open: 0, retired: false };
  const retired = new Set<Generation>();
  let closed = false;

  const release = (g: Generation) => {
    if (!g.retired || g.open > 0) return;
    retired.delete(g);
    g.connector.close().catch((e: unknown) => o.log.warn({ err: e instanceof VitalsealError ? e.code : String(e) }, 'closing a replaced TLS connector failed'));
  };

  const refresh = () => {
    if (!chain.refresh()) return;
    const old = current;
    current = { connector: o.build(chain.pem), open: 0, retired: false };
    old.retired = true;
    retired.add(old);
    release(old);
  };

  return {
    get description() {
      return current.connector.description;
    },
    open(target): TlsConnection {
      if (!closed) refresh();
      const g = current;
      const conn = g.connector.open(target);
      g.open++;
      conn.stream.once('close', () => {
        g.open--;
        release(g);
      });
      return conn;
    },
    async close() {
      closed = true;
      await Promise.all([current, ...retired].map((g) => g.connector.close().catch(() => undefined)));
      retired.clear();
    },
  };
}
