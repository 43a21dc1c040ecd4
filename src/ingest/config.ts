/**
 * The ingest service's configuration file (YAML or JSON), validated strictly: every unknown setting
 * and every wrong value is refused with the dotted path of the field (`https.port: ...`). Secrets
 * never appear in it: a PostgreSQL connection string, a key passphrase or a PIN is given by where to
 * read it (`{ env: NAME }` or `{ file: PATH }`, the file mode 0600), never inline.
 *
 * docs/ingest.md has the reference with an example. The `mqtt` and `coaps` sections are validated
 * here; starting one needs its listener in the build (`checkListeners` in runtime.ts).
 *
 * @example
 *   const cfg = loadIngestConfig('/etc/vitalseal/ingest.yaml');
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import type { KeyStoreConfig, SecretSource } from '../keystore/config.ts';
import { parseKeyStoreConfig } from '../keystore/open.ts';
import { parseSecretSource } from '../keystore/secret-source.ts';
import { KEY_NAME_PATTERN } from '../keystore/types.ts';
import { ApiMisuse, KeyStoreError } from '../util/errors.ts';
import type { ApiRole } from './storage/types.ts';
import { TOKEN_NAME_PATTERN } from './tokens.ts';

export type StorageConfig =
  | { readonly kind: 'sqlite'; readonly path: string }
  | { readonly kind: 'postgres'; readonly connection: SecretSource; readonly maxConnections: number };

export interface OperatorConfig {
  readonly name: string;
  /** Hex SHA-256 of the operator certificate's SubjectPublicKeyInfo. */
  readonly spkiSha256: string;
  readonly role: ApiRole;
}

export interface HttpsConfig {
  readonly host: string;
  readonly port: number;
  readonly redirectPort?: number;
  /** PEM: the server certificate, then its chain. */
  readonly certificate: string;
  /** PEM private key (0600); encrypted keys take `keyPassphrase`. */
  readonly key: string;
  readonly keyPassphrase?: SecretSource;
  /** PEM files of the roots client certificates chain to (default: the pki section's root). */
  readonly clientRoots: readonly string[];
  readonly hstsMaxAgeSeconds: number;
  readonly operators: readonly OperatorConfig[];
  readonly maxLiveStreams: number;
}

/**
 * How the broker learns of a new CRL (mosquitto reads its `crlfile` at start and on SIGHUP). Run
 * in this order, each when given: copy, signal, command.
 */
export interface BrokerCrlReloadConfig {
  /** Copy the CA's CRL here (atomically, mode 0644): the broker's `crlfile`, when it is not the CA's file. */
  readonly copyTo?: string;
  /** Send SIGHUP to the process whose id this file holds (mosquitto's `pid_file`). */
  readonly pidFile?: string;
  /** Run this program (argv; no shell) with VITALSEAL_CRL_PATH and VITALSEAL_CRL_NUMBER set, e.g. [/usr/bin/systemctl, reload, mosquitto]. */
  readonly command?: readonly string[];
}

export interface MqttListenerConfig {
  /** mqtts://host[:port] (default port 8883). */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** The name the broker's certificate must carry (default: the URL's host). */
  readonly serverName: string;
  /** PEM: the root(s) the broker's certificate chains to. */
  readonly caFile: string;
  /** PEM: the ingest's client certificate, then its issuing CA. Its CN is the broker username. */
  readonly certFile: string;
  /** PEM private key of the client certificate (PKCS#8 or SEC1, unencrypted, mode 0600). */
  readonly keyFile: string;
  /** MQTT v5 shared-subscription group ($share/<group>/vitals/+/v1). */
  readonly sharedGroup: string;
  readonly topic: string;
  /** Stable per instance: the broker keeps this instance's session (and its share of the stream) under it. */
  readonly clientId: string;
  /** Unacknowledged messages the broker may send at once (MQTT 5.0 §3.1.2.11.3). */
  readonly receiveMaximum: number;
  /** How long the broker keeps this instance's session while it is away. */
  readonly sessionExpirySeconds: number;
  /** On stop, how long running messages get to finish and be acknowledged. */
  readonly drainSeconds: number;
  readonly crlReload?: BrokerCrlReloadConfig;
}

/** The CoAPS listener's limits (docs/transport-coaps.md "Limits"). */
export interface CoapsLimitsConfig {
  /** DTLS sessions, established and in progress (default 100 000). */
  readonly maxSessions: number;
  /** Handshakes in progress in all (default 1000) and from one IP address (default 4). */
  readonly maxPendingHandshakes: number;
  readonly maxPendingPerAddress: number;
  /** Messages of one session being processed at once (default 64) and over all sessions (default 8192). */
  readonly maxHandlingPerSession: number;
  readonly maxHandling: number;
  /** Block-wise bodies in progress per session (default 4). */
  readonly maxBodiesPerSession: number;
}

export interface CoapsListenerConfig {
  readonly host: string;
  readonly port: number;
  /** PEM: the server certificate, then its chain. */
  readonly certificate: string;
  /** PEM private key file (0600; encrypted PKCS#8 takes `keyPassphrase`), or `keyStoreKey`: exactly one. */
  readonly key?: string;
  readonly keyPassphrase?: SecretSource;
  /** A signing key in the ingest's key store (TPM, PKCS#11 token) that matches the certificate. */
  readonly keyStoreKey?: string;
  /** PEM files of the fleet roots device certificates must chain to. */
  readonly clientRoots: readonly string[];
  /** CRL files (PEM or DER) checked in every handshake besides the registry; reloaded when the registry's CRL changes. */
  readonly crls: readonly string[];
  /** Take DTLS external-PSK handshakes from PSK-registered devices (default false). */
  readonly psk: boolean;
  /** The telemetry resource (default /v1/telemetry). */
  readonly path: string;
  /** Largest UDP payload the server sends (default 1200). */
  readonly mtu: number;
  /** How long a message may take before the server sends an empty ACK and answers separately (default 500 ms). */
  readonly piggybackMs: number;
  readonly limits: CoapsLimitsConfig;
}

export interface IngestConfig {
  /** The file it came from, for messages. */
  readonly source: string;
  readonly storage: StorageConfig;
  readonly keystore: KeyStoreConfig;
  readonly keys: {
    readonly kek: string;
    readonly auditSigningKey?: string;
    readonly backupSigningKey: string;
    readonly dataKeyCacheTtlSeconds: number;
    readonly rotateDataKeysAfterDays: number;
    readonly rekeyIntervalSeconds: number;
  };
  /**
   * `path`: the service's hash-chained audit log. `cliPath`: the operator commands' own log (an audit
   * log has one writer at a time, and the service may be running); default `<path>.cli`.
   */
  readonly audit: { readonly path: string; readonly cliPath: string };
  readonly pki?: { readonly dir: string; readonly passphrase?: SecretSource };
  readonly https?: HttpsConfig;
  readonly ingest: {
    readonly maxMessageBytes: number;
    readonly epochCacheEntries: number;
    readonly epochMaxAgeSeconds: number;
    readonly epochMaxMessages: number;
    readonly registryRefreshMs: number;
    readonly enrolTokenTtlSeconds: number;
  };
  readonly anomaly: { readonly windowSeconds: number; readonly decryptFailures: number; readonly rejections: number; readonly auditBurst: number };
  readonly mqtt?: MqttListenerConfig;
  readonly coaps?: CoapsListenerConfig;
  readonly log: { readonly level: 'debug' | 'info' | 'warn' | 'error' };
}

/** Refusal of a configuration value; the message starts with the field's dotted path. */
function invalid(path: string, message: string): ApiMisuse {
  return new ApiMisuse('invalid-config', `${path}: ${message}`);
}

type Obj = Record<string, unknown>;

function section(v: unknown, path: string, allowed: readonly string[]): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(path, 'expected a mapping');
  for (const k of Object.keys(v)) if (!allowed.includes(k)) throw invalid(`${path}.${k}`, `unknown setting (known here: ${allowed.join(', ')})`);
  return v as Obj;
}

function str(o: Obj, key: string, path: string): string;
function str(o: Obj, key: string, path: string, optional: true): string | undefined;
function str(o: Obj, key: string, path: string, optional = false): string | undefined {
  const v = o[key];
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'string' || v.length === 0 || v.length > 4096) throw invalid(`${path}.${key}`, 'expected a non-empty string');
  return v;
}

function num(o: Obj, key: string, path: string, def: number, min: number, max: number): number {
  const v = o[key];
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw invalid(`${path}.${key}`, `expected an integer from ${min} to ${max}`);
  return v;
}

function secret(o: Obj, key: string, path: string): SecretSource | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  try {
    return parseSecretSource(v, `${path}.${key}`);
  } catch (e) {
    if (e instanceof KeyStoreError) throw invalid(`${path}.${key}`, 'give where the secret is, { env: NAME } or { file: PATH }, never the secret itself');
    throw e;
  }
}

function keyName(o: Obj, key: string, path: string, def?: string): string {
  const v = o[key] ?? def;
  if (typeof v !== 'string' || !KEY_NAME_PATTERN.test(v)) throw invalid(`${path}.${key}`, 'expected a key name (A-Z a-z 0-9 _ . -, at most 63)');
  return v;
}

function host(o: Obj, key: string, path: string, def: string): string {
  const v = o[key] ?? def;
  if (typeof v !== 'string' || !(isIP(v) !== 0 || /^([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$/.test(v))) throw invalid(`${path}.${key}`, 'expected an IP address or a host name');
  return v;
}

function parseStorage(v: unknown): StorageConfig {
  const s = section(v, 'storage', ['sqlite', 'postgres']);
  const kinds = Object.keys(s);
  if (kinds.length !== 1) throw invalid('storage', 'give exactly one of sqlite or postgres');
  if (s['sqlite'] !== undefined) {
    const q = section(s['sqlite'], 'storage.sqlite', ['path']);
    return { kind: 'sqlite', path: str(q, 'path', 'storage.sqlite') };
  }
  const p = section(s['postgres'], 'storage.postgres', ['connection', 'maxConnections']);
  if (typeof p['connection'] === 'string') throw invalid('storage.postgres.connection', 'a connection string holds a password: give { env: NAME } or { file: PATH } instead');
  const connection = secret(p, 'connection', 'storage.postgres');
  if (connection === undefined) throw invalid('storage.postgres.connection', 'required: { env: NAME } or { file: PATH } holding the connection string');
  return { kind: 'postgres', connection, maxConnections: num(p, 'maxConnections', 'storage.postgres', 10, 1, 500) };
}

function parseHttps(v: unknown): HttpsConfig {
  const P = 'https';
  const o = section(v, P, ['host', 'port', 'redirectPort', 'certificate', 'key', 'keyPassphrase', 'clientRoots', 'hstsMaxAgeSeconds', 'operators', 'maxLiveStreams']);
  const roots = o['clientRoots'] ?? [];
  if (!Array.isArray(roots) || roots.some((r) => typeof r !== 'string' || r.length === 0)) throw invalid(`${P}.clientRoots`, 'expected a list of PEM file paths');
  const ops = o['operators'] ?? [];
  if (!Array.isArray(ops)) throw invalid(`${P}.operators`, 'expected a list');
  const operators = ops.map((x: unknown, i: number) => {
    const path = `${P}.operators[${i}]`;
    const op = section(x, path, ['name', 'spkiSha256', 'role']);
    const name = str(op, 'name', path);
    if (!TOKEN_NAME_PATTERN.test(name)) throw invalid(`${path}.name`, 'A-Z a-z 0-9 _ . -, at most 40');
    const pin = str(op, 'spkiSha256', path).toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(pin)) throw invalid(`${path}.spkiSha256`, 'the hex SHA-256 of the operator certificate\'s public key (vitalseal pki inspect shows it)');
    const role = op['role'] ?? 'reader';
    if (role !== 'reader' && role !== 'admin') throw invalid(`${path}.role`, 'reader or admin');
    return { name, spkiSha256: pin, role } as OperatorConfig;
  });
  const redirect = o['redirectPort'] === undefined ? undefined : num(o, 'redirectPort', P, 0, 0, 65535);
  const keyPassphrase = secret(o, 'keyPassphrase', P);
  return {
    host: host(o, 'host', P, '127.0.0.1'), port: num(o, 'port', P, 8443, 0, 65535),
    ...(redirect === undefined ? {} : { redirectPort: redirect }),
    certificate: str(o, 'certificate', P), key: str(o, 'key', P), ...(keyPassphrase === undefined ? {} : { keyPassphrase }),
    clientRoots: roots as string[], hstsMaxAgeSeconds: num(o, 'hstsMaxAgeSeconds', P, 31_536_000, 300, 63_072_000),
    operators, maxLiveStreams: num(o, 'maxLiveStreams', P, 32, 1, 1024),
  };
}

function files(o: Obj, key: string, path: string, required: boolean): string[] {
  const v = o[key] ?? [];
  if (!Array.isArray(v) || v.some((r) => typeof r !== 'string' || r.length === 0 || r.length > 4096)) throw invalid(`${path}.${key}`, 'expected a list of file paths');
  if (required && v.length === 0) throw invalid(`${path}.${key}`, 'at least one file');
  return v as string[];
}

function parseCoaps(v: unknown): CoapsListenerConfig {
  const P = 'coaps';
  const c = section(v, P, ['host', 'port', 'certificate', 'key', 'keyPassphrase', 'keyStoreKey', 'clientRoots', 'crls', 'psk', 'path', 'mtu', 'piggybackMs', 'limits']);
  const key = str(c, 'key', P, true);
  const keyStoreKey = c['keyStoreKey'] === undefined ? undefined : keyName(c, 'keyStoreKey', P);
  if ((key === undefined) === (keyStoreKey === undefined)) throw invalid(`${P}.key`, 'give exactly one of key (a PEM file) or keyStoreKey (a signing key in the key store)');
  const keyPassphrase = secret(c, 'keyPassphrase', P);
  if (keyPassphrase !== undefined && key === undefined) throw invalid(`${P}.keyPassphrase`, 'only with key');
  const psk = c['psk'] ?? false;
  if (typeof psk !== 'boolean') throw invalid(`${P}.psk`, 'true or false');
  const path = c['path'] ?? '/v1/telemetry';
  if (typeof path !== 'string' || !/^(\/[A-Za-z0-9._~-]{1,63}){1,8}$/.test(path)) throw invalid(`${P}.path`, 'a path such as /v1/telemetry');
  const L = `${P}.limits`;
  const l = section(c['limits'] ?? {}, L, ['maxSessions', 'maxPendingHandshakes', 'maxPendingPerAddress', 'maxHandlingPerSession', 'maxHandling', 'maxBodiesPerSession']);
  return {
    host: host(c, 'host', P, '0.0.0.0'), port: num(c, 'port', P, 5684, 0, 65535), certificate: str(c, 'certificate', P),
    ...(key === undefined ? {} : { key }), ...(keyPassphrase === undefined ? {} : { keyPassphrase }), ...(keyStoreKey === undefined ? {} : { keyStoreKey }),
    clientRoots: files(c, 'clientRoots', P, true), crls: files(c, 'crls', P, false), psk, path,
    mtu: num(c, 'mtu', P, 1200, 256, 16_384), piggybackMs: num(c, 'piggybackMs', P, 500, 0, 60_000),
    limits: {
      maxSessions: num(l, 'maxSessions', L, 100_000, 1, 10_000_000),
      maxPendingHandshakes: num(l, 'maxPendingHandshakes', L, 1000, 1, 1_000_000),
      maxPendingPerAddress: num(l, 'maxPendingPerAddress', L, 4, 1, 10_000),
      maxHandlingPerSession: num(l, 'maxHandlingPerSession', L, 64, 1, 100_000),
      maxHandling: num(l, 'maxHandling', L, 8192, 1, 1_000_000),
      maxBodiesPerSession: num(l, 'maxBodiesPerSession', L, 4, 1, 1024),
    },
  };
}

/** The topic every device publishes under (vitals/<id>/v1): the listener reads the device id from it. */
const MQTT_TOPIC = 'vitals/+/v1';

function parseMqtt(v: unknown): MqttListenerConfig {
  const P = 'mqtt';
  const m = section(v, P, ['url', 'serverName', 'caFile', 'certFile', 'keyFile', 'sharedGroup', 'topic', 'clientId', 'receiveMaximum', 'sessionExpirySeconds', 'drainSeconds', 'crlReload']);
  const url = str(m, 'url', P);
  // RFC 3986 authority: a host name, an IPv4 address or a bracketed IPv6 address, and an optional port.
  const u = /^mqtts:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?\/?$/.exec(url);
  if (u === null) throw invalid(`${P}.url`, 'expected mqtts://host:port (TLS 1.3 with a client certificate)');
  const rawHost = u[1] as string;
  const urlHost = rawHost.startsWith('[') ? rawHost.slice(1, -1) : rawHost;
  if (rawHost.startsWith('[') ? isIP(urlHost) !== 6 : !(isIP(urlHost) === 4 || /^([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$/.test(urlHost))) throw invalid(`${P}.url`, 'expected mqtts://host:port with a host name or an IP address');
  const port = u[2] === undefined ? 8883 : Number(u[2]);
  if (port < 1 || port > 65535) throw invalid(`${P}.url`, 'the port must be from 1 to 65535');
  const group = m['sharedGroup'] ?? 'vitalseal';
  if (typeof group !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(group)) throw invalid(`${P}.sharedGroup`, 'A-Z a-z 0-9 _ -, at most 64');
  const topic = m['topic'] ?? MQTT_TOPIC;
  // Devices publish under vitals/<their id>/v1, the broker's access rules are written for it, and the
  // listener takes the device id from the second level: another layout would refuse every message.
  if (topic !== MQTT_TOPIC) throw invalid(`${P}.topic`, `only ${MQTT_TOPIC} (the topic devices publish under; the device id is its second level)`);
  const clientId = m['clientId'] ?? defaultClientId();
  if (typeof clientId !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(clientId)) throw invalid(`${P}.clientId`, 'A-Z a-z 0-9 . _ -, at most 64 (one per instance, stable across restarts)');
  const serverName = m['serverName'] ?? urlHost;
  if (typeof serverName !== 'string' || !(isIP(serverName) !== 0 || /^([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$/.test(serverName))) throw invalid(`${P}.serverName`, 'expected a host name or an IP address');
  const crlReload = m['crlReload'] === undefined ? undefined : parseCrlReload(m['crlReload'], `${P}.crlReload`);
  return {
    url, host: urlHost, port, serverName,
    caFile: str(m, 'caFile', P), certFile: str(m, 'certFile', P), keyFile: str(m, 'keyFile', P),
    sharedGroup: group, topic, clientId,
    receiveMaximum: num(m, 'receiveMaximum', P, 128, 1, 65_535),
    sessionExpirySeconds: num(m, 'sessionExpirySeconds', P, 7 * 86_400, 60, 0xffff_ffff),
    drainSeconds: num(m, 'drainSeconds', P, 10, 0, 600),
    ...(crlReload === undefined ? {} : { crlReload }),
  };
}

function parseCrlReload(v: unknown, path: string): BrokerCrlReloadConfig {
  const c = section(v, path, ['copyTo', 'pidFile', 'command']);
  if (Object.keys(c).length === 0) throw invalid(path, 'give at least one of copyTo, pidFile, command');
  const copyTo = str(c, 'copyTo', path, true);
  const pidFile = str(c, 'pidFile', path, true);
  for (const [k, p] of [['copyTo', copyTo], ['pidFile', pidFile]] as const) {
    if (p !== undefined && !p.startsWith('/')) throw invalid(`${path}.${k}`, 'an absolute path');
  }
  const cmd = c['command'];
  if (cmd !== undefined) {
    if (!Array.isArray(cmd) || cmd.length === 0 || cmd.length > 32 || cmd.some((a) => typeof a !== 'string' || a.length === 0 || a.length > 4096)) {
      throw invalid(`${path}.command`, 'a list of 1 to 32 non-empty strings: the program and its arguments (no shell)');
    }
    if (!(cmd[0] as string).startsWith('/')) throw invalid(`${path}.command`, 'the program must be an absolute path (no PATH lookup)');
  }
  return { ...(copyTo === undefined ? {} : { copyTo }), ...(pidFile === undefined ? {} : { pidFile }), ...(cmd === undefined ? {} : { command: cmd as string[] }) };
}

/** vitalseal-ingest-<host name>: stable across restarts of one machine's single instance. */
function defaultClientId(): string {
  return `vitalseal-ingest-${hostname().replace(/[^A-Za-z0-9._-]/g, '-')}`.slice(0, 64);
}

/** Validates a parsed document into an `IngestConfig`. */
export function parseIngestConfig(doc: unknown, source = 'config'): IngestConfig {
  const top = section(doc, '(top level)', ['storage', 'keystore', 'keys', 'audit', 'pki', 'https', 'ingest', 'anomaly', 'mqtt', 'coaps', 'log']);
  for (const required of ['storage', 'keystore', 'audit']) if (top[required] === undefined) throw invalid(required, 'this section is required');
  let keystore: KeyStoreConfig;
  try {
    keystore = parseKeyStoreConfig(top['keystore'], 'keystore');
  } catch (e) {
    if (e instanceof KeyStoreError) throw new ApiMisuse('invalid-config', e.message);
    throw e;
  }
  const k = section(top['keys'] ?? {}, 'keys', ['kek', 'auditSigningKey', 'backupSigningKey', 'dataKeyCacheTtlSeconds', 'rotateDataKeysAfterDays', 'rekeyIntervalSeconds']);
  const auditKey = k['auditSigningKey'] === undefined ? undefined : keyName(k, 'auditSigningKey', 'keys');
  const a = section(top['audit'], 'audit', ['path', 'cliPath']);
  const auditPath = str(a, 'path', 'audit');
  const pkiSec = top['pki'] === undefined ? undefined : section(top['pki'], 'pki', ['dir', 'passphrase']);
  const pkiPass = pkiSec === undefined ? undefined : secret(pkiSec, 'passphrase', 'pki');
  const i = section(top['ingest'] ?? {}, 'ingest', ['maxMessageBytes', 'epochCacheEntries', 'epochMaxAgeSeconds', 'epochMaxMessages', 'registryRefreshMs', 'enrolTokenTtlSeconds']);
  const an = section(top['anomaly'] ?? {}, 'anomaly', ['windowSeconds', 'decryptFailures', 'rejections', 'auditBurst']);
  const lg = section(top['log'] ?? {}, 'log', ['level']);
  const level = lg['level'] ?? 'info';
  if (level !== 'debug' && level !== 'info' && level !== 'warn' && level !== 'error') throw invalid('log.level', 'debug, info, warn or error');

  const mqtt = top['mqtt'] === undefined ? undefined : parseMqtt(top['mqtt']);
  const coaps = top['coaps'] === undefined ? undefined : parseCoaps(top['coaps']);

  return {
    source,
    storage: parseStorage(top['storage']),
    keystore,
    keys: {
      kek: keyName(k, 'kek', 'keys', 'ingest-kek'),
      ...(auditKey === undefined ? {} : { auditSigningKey: auditKey }),
      backupSigningKey: keyName(k, 'backupSigningKey', 'keys', 'ingest-backup'),
      dataKeyCacheTtlSeconds: num(k, 'dataKeyCacheTtlSeconds', 'keys', 600, 1, 86_400),
      rotateDataKeysAfterDays: num(k, 'rotateDataKeysAfterDays', 'keys', 90, 1, 3650),
      rekeyIntervalSeconds: num(k, 'rekeyIntervalSeconds', 'keys', 3600, 10, 604_800),
    },
    audit: { path: auditPath, cliPath: str(a, 'cliPath', 'audit', true) ?? `${auditPath}.cli` },
    ...(pkiSec === undefined ? {} : { pki: { dir: str(pkiSec, 'dir', 'pki'), ...(pkiPass === undefined ? {} : { passphrase: pkiPass }) } }),
    ...(top['https'] === undefined ? {} : { https: parseHttps(top['https']) }),
    ingest: {
      maxMessageBytes: num(i, 'maxMessageBytes', 'ingest', 65_536, 1024, 16 * 1024 * 1024),
      epochCacheEntries: num(i, 'epochCacheEntries', 'ingest', 10_000, 16, 10_000_000),
      epochMaxAgeSeconds: num(i, 'epochMaxAgeSeconds', 'ingest', 86_400, 60, 31_536_000),
      epochMaxMessages: num(i, 'epochMaxMessages', 'ingest', 100_000, 1, 100_000_000),
      registryRefreshMs: num(i, 'registryRefreshMs', 'ingest', 1000, 50, 600_000),
      enrolTokenTtlSeconds: num(i, 'enrolTokenTtlSeconds', 'ingest', 86_400, 60, 30 * 86_400),
    },
    anomaly: {
      windowSeconds: num(an, 'windowSeconds', 'anomaly', 60, 1, 86_400),
      decryptFailures: num(an, 'decryptFailures', 'anomaly', 5, 1, 1_000_000),
      rejections: num(an, 'rejections', 'anomaly', 20, 1, 1_000_000),
      auditBurst: num(an, 'auditBurst', 'anomaly', 10, 1, 1_000_000),
    },
    ...(mqtt === undefined ? {} : { mqtt }),
    ...(coaps === undefined ? {} : { coaps }),
    log: { level },
  };
}

const MAX_CONFIG_BYTES = 1024 * 1024;

/** Reads and validates a YAML or JSON file. */
export function loadIngestConfig(path: string): IngestConfig {
  let text: string;
  try {
    const b = readFileSync(path);
    if (b.length > MAX_CONFIG_BYTES) throw invalid(path, `larger than ${MAX_CONFIG_BYTES} bytes`);
    text = b.toString('utf8');
  } catch (e) {
    if (e instanceof ApiMisuse) throw e;
    throw new ApiMisuse('invalid-config', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { maxAliasCount: 100 }); // YAML 1.2 is a superset of JSON
  } catch (e) {
    throw new ApiMisuse('invalid-config', `${path}: not valid YAML or JSON (${(e as Error).message.split('\n')[0] ?? ''})`);
  }
  return parseIngestConfig(doc, path);
}
