/**
 * The agent's configuration file (YAML or JSON) and its schema. `parseAgentConfig` checks every
 * field and reports every problem at once, each naming the field by its path and what is wrong
 * ("queue.capacityBytes: must be an integer ≥ 1048576, got 12"). Unknown fields are errors too: a
 * misspelt option must not silently fall back to a default.
 *
 * Secrets never appear in the file or on the command line: only where they live (a PEM file, a
 * key-store reference, a PIN file or environment variable name). Environment variables may
 * override those *locations* (see `ENV_OVERRIDES`), for container and systemd set-ups; there is no
 * variable that carries a secret value itself.
 *
 * The full reference is docs/agent.md.
 *
 * @example
 *   const config = loadAgentConfig('/etc/vitalseal/agent.yaml', process.env);
 *   const agent = await createAgent({ config });
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { isValidDeviceId } from '../codec/vitals.ts';
import { COSE_CONTENT_ALGS, type CoseAlgName } from '../cose/algorithms.ts';
import type { ProviderName } from '../crypto/provider.ts';
import type { KeyStoreConfig, SecretSource } from '../keystore/config.ts';
import { parseEstUrl } from '../pki/est-url.ts';
import { VitalsealError } from '../util/errors.ts';
import type { LogLevel } from './log.ts';

/** A configuration file that does not satisfy the schema; `issues` lists every problem. */
export class ConfigError extends VitalsealError {
  readonly kind = 'config';
  readonly issues: readonly string[];
  constructor(issues: readonly string[], where = 'configuration') {
    super('config-invalid', `${where} is invalid:\n  ${issues.join('\n  ')}`);
    this.issues = issues;
  }
}

export interface SimulatedSourceConfig {
  readonly type: 'simulated';
  readonly id: string;
  readonly seed: number;
  readonly ecgHz: number;
  readonly heartRate?: number;
  readonly spo2?: number;
  readonly respirationRate?: number;
  readonly nibpIntervalSeconds?: number;
}

export interface Hl7SourceConfig {
  readonly type: 'hl7-mllp';
  readonly id: string;
  readonly listen: { readonly host: string; readonly port: number };
  readonly maxConnections: number;
  readonly maxFrameBytes: number;
  readonly idleTimeoutMs: number;
  readonly frameTimeoutMs: number;
  readonly acceptSenders?: readonly string[];
  readonly utcOffsetMinutes?: number;
}

export type SourceConfig = SimulatedSourceConfig | Hl7SourceConfig;

export interface TransportIdentity {
  readonly keystore: KeyStoreConfig;
  /** The device identity key's label in the store. */
  readonly keyLabel: string;
}

/** A DTLS external PSK (coaps only): the identity, and where the 32-byte key is (64 hex digits in a 0600 file). */
export interface TransportPsk {
  /** Default: the device id. */
  readonly identity?: string;
  readonly keyFile: string;
}

export interface TransportConfig {
  readonly kind: 'coaps' | 'mqtts';
  readonly host: string;
  readonly port: number;
  /** CA bundle (PEM) that issued the ingest or broker certificate. */
  readonly caFile?: string;
  /** The device certificate (PEM). */
  readonly certFile?: string;
  readonly identity?: TransportIdentity;
  /** coaps only: authenticate with an external PSK instead of a certificate. */
  readonly psk?: TransportPsk;
  /** MQTT topic (mqtts) or CoAP path (coaps); the transport's default when absent. */
  readonly topic?: string;
  /** The name the server certificate must carry (default `host`); hostname verification is always on. */
  readonly serverName?: string;
  /** Optional SPKI pins (SHA-256 of SubjectPublicKeyInfo, RFC 7469 §2.4) of the server key or a CA on its path. */
  readonly spkiPins?: readonly Uint8Array[];
}

export type FsyncMode = 'every-batch' | 'never';

/** `certificate.renew`: re-enrolment with the current certificate (mutual TLS) before it expires. */
export interface CertificateRenewalConfig {
  /** The enrolment endpoint, `https://HOST[:PORT]`. */
  readonly url: string;
  /** The root(s) the endpoint's certificate must chain to, and the new chain too (default: transport.primary.caFile). */
  readonly caFile: string;
  /** Renew once the certificate has at most this many days left. */
  readonly renewDays: number;
  /** Back-off after a failed attempt: from this ... */
  readonly retryInitialSeconds: number;
  /** ... doubling up to this. */
  readonly retryMaxSeconds: number;
  /** One attempt (connect, handshake, request, answer) must finish within this. */
  readonly timeoutSeconds: number;
  /** The key the certificate is for: transport.primary.identity. */
  readonly identity: TransportIdentity;
}

export interface AgentConfig {
  readonly device: { readonly id: string };
  readonly sealing: {
    readonly alg: CoseAlgName;
    /** The ingest service's X25519 public key (SPKI PEM), pinned on the device. */
    readonly ingestPublicKeyFile: string;
    /** Optional COSE kid naming the ingest key (its epoch), as UTF-8 text. */
    readonly ingestKeyId?: string;
    readonly epochMessages: number;
    readonly epochSeconds: number;
    readonly provider: ProviderName;
  };
  readonly sources: readonly SourceConfig[];
  readonly batch: { readonly windowMs: number };
  readonly queue: {
    readonly dir: string;
    readonly capacityBytes: number;
    readonly highWater: number;
    readonly fullPolicy: 'drop-oldest' | 'reject-new';
    readonly fsync: FsyncMode;
    readonly segmentBytes: number;
    readonly maxRejectedFiles: number;
  };
  readonly transport: { readonly primary: TransportConfig; readonly failover?: TransportConfig };
  readonly uplink: {
    readonly window: number;
    readonly liveSlots: number;
    readonly backoffInitialMs: number;
    readonly backoffMaxMs: number;
    readonly failoverAfter: number;
    readonly primaryProbeSeconds: number;
    readonly sendTimeoutMs: number;
  };
  readonly certificate?: {
    readonly file: string;
    readonly warnDays: number;
    readonly checkIntervalSeconds: number;
    /** Automatic renewal through the ingest enrolment endpoint; absent: only the expiry watch. */
    readonly renew?: CertificateRenewalConfig;
  };
  readonly metrics: { readonly listen: { readonly host: string; readonly port: number } | false };
  readonly status: { readonly socket: string };
  readonly log: { readonly level: LogLevel };
}

/** Environment variables that may override the location of a secret or pinned file (never a value). */
export const ENV_OVERRIDES: Readonly<Record<string, string>> = Object.freeze({
  VITALSEAL_INGEST_PUBLIC_KEY_FILE: 'sealing.ingestPublicKeyFile',
  VITALSEAL_DEVICE_CERT_FILE: 'certificate.file and transport.*.certFile',
  VITALSEAL_CA_FILE: 'transport.*.caFile',
  VITALSEAL_KEYSTORE_PIN_FILE: 'transport.*.identity.keystore.pin (as { file })',
  VITALSEAL_KEYSTORE_PASSPHRASE_FILE: 'transport.*.identity.keystore.passphrase (as { file })',
  VITALSEAL_QUEUE_DIR: 'queue.dir',
});

// ---- a small validator that collects every issue with its path ----

type Obj = Record<string, unknown>;

class Checker {
  readonly issues: string[] = [];
  constructor(readonly baseDir: string) {}

  fail(path: string, what: string): undefined {
    this.issues.push(`${path}: ${what}`);
    return undefined;
  }

  object(v: unknown, path: string, allowed: readonly string[]): Obj | undefined {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return this.fail(path, `must be a mapping, got ${describe(v)}`);
    for (const k of Object.keys(v)) if (!allowed.includes(k)) this.fail(`${path}.${k}`, `unknown field (allowed: ${allowed.join(', ')})`);
    return v as Obj;
  }

  string(o: Obj, key: string, path: string, opts: { default?: string; optional?: boolean; pattern?: RegExp; patternText?: string } = {}): string | undefined {
    const v = o[key];
    if (v === undefined) {
      if (opts.default !== undefined || opts.optional === true) return opts.default;
      return this.fail(`${path}.${key}`, 'is required');
    }
    if (typeof v !== 'string' || v.length === 0) return this.fail(`${path}.${key}`, `must be a non-empty string, got ${describe(v)}`);
    if (opts.pattern !== undefined && !opts.pattern.test(v)) return this.fail(`${path}.${key}`, `must be ${opts.patternText ?? `like ${String(opts.pattern)}`}`);
    return v;
  }

  path(o: Obj, key: string, path: string, opts: { optional?: boolean; default?: string } = {}): string | undefined {
    const s = this.string(o, key, path, opts);
    return s === undefined ? undefined : resolve(this.baseDir, s);
  }

  int(o: Obj, key: string, path: string, min: number, max: number, def?: number): number | undefined {
    const v = o[key];
    if (v === undefined) return def === undefined ? this.fail(`${path}.${key}`, 'is required') : def;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) return this.fail(`${path}.${key}`, `must be an integer in ${min}..${max}, got ${describe(v)}`);
    return v;
  }

  num(o: Obj, key: string, path: string, min: number, max: number, def?: number): number | undefined {
    const v = o[key];
    if (v === undefined) return def === undefined ? this.fail(`${path}.${key}`, 'is required') : def;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) return this.fail(`${path}.${key}`, `must be a number in ${min}..${max}, got ${describe(v)}`);
    return v;
  }

  oneOf<T extends string>(o: Obj, key: string, path: string, values: readonly T[], def?: T): T | undefined {
    const v = o[key];
    if (v === undefined) return def === undefined ? this.fail(`${path}.${key}`, `is required (one of ${values.join(', ')})`) : def;
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) return this.fail(`${path}.${key}`, `must be one of ${values.join(', ')}, got ${describe(v)}`);
    return v as T;
  }

  hostPort(v: unknown, path: string): { host: string; port: number } | undefined {
    if (typeof v !== 'string') return this.fail(path, `must be "host:port", got ${describe(v)}`);
    const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(v);
    const port = Number(m?.[2]);
    if (m === null || port > 65535) return this.fail(path, `must be "host:port" with a port 0..65535, got ${describe(v)}`);
    return { host: (m[1] as string).replace(/^\[|\]$/g, ''), port };
  }
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === 'object') return 'a mapping';
  return `${typeof v} ${String(v)}`;
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const LABEL = /^[A-Za-z0-9._-]{1,64}$/;

function secretSource(c: Checker, v: unknown, path: string): SecretSource | undefined {
  const o = c.object(v, path, ['env', 'file']);
  if (o === undefined) return undefined;
  if ((o['env'] === undefined) === (o['file'] === undefined)) return c.fail(path, 'must name exactly one of env (a variable name) or file (a path)');
  if (o['env'] !== undefined) {
    const env = c.string(o, 'env', path, { pattern: /^[A-Z_][A-Z0-9_]*$/, patternText: 'an environment variable name' });
    return env === undefined ? undefined : { env };
  }
  const file = c.path(o, 'file', path);
  return file === undefined ? undefined : { file };
}

function keystore(c: Checker, v: unknown, path: string, env: NodeJS.ProcessEnv): KeyStoreConfig | undefined {
  const kind = typeof v === 'object' && v !== null ? (v as Obj)['kind'] : undefined;
  switch (kind) {
    case 'software': {
      const o = c.object(v, path, ['kind', 'path', 'passphrase']);
      if (o === undefined) return undefined;
      const p = c.path(o, 'path', path);
      const override = env['VITALSEAL_KEYSTORE_PASSPHRASE_FILE'];
      const passphrase = override !== undefined ? { file: resolve(override) } : secretSource(c, o['passphrase'], `${path}.passphrase`);
      return p === undefined || passphrase === undefined ? undefined : { kind, path: p, passphrase };
    }
    case 'tpm': {
      const o = c.object(v, path, ['kind', 'fapiConfig', 'tcti', 'dir']);
      if (o === undefined) return undefined;
      const fapiConfig = c.path(o, 'fapiConfig', path, { optional: true });
      const tcti = c.string(o, 'tcti', path, { optional: true });
      const dir = c.path(o, 'dir', path, { optional: true });
      return { kind, ...(fapiConfig === undefined ? {} : { fapiConfig }), ...(tcti === undefined ? {} : { tcti }), ...(dir === undefined ? {} : { dir }) };
    }
    case 'pkcs11': {
      const o = c.object(v, path, ['kind', 'module', 'token', 'pin']);
      if (o === undefined) return undefined;
      const module = c.path(o, 'module', path);
      const token = c.string(o, 'token', path, { pattern: /^pkcs11:/, patternText: 'an RFC 7512 URI starting "pkcs11:"' });
      const override = env['VITALSEAL_KEYSTORE_PIN_FILE'];
      const pin = override !== undefined ? { file: resolve(override) } : secretSource(c, o['pin'], `${path}.pin`);
      return module === undefined || token === undefined || pin === undefined ? undefined : { kind, module, token, pin };
    }
    default:
      return c.fail(`${path}.kind`, `must be one of software, tpm, pkcs11, got ${describe(kind)}`);
  }
}

function transport(c: Checker, v: unknown, path: string, env: NodeJS.ProcessEnv): TransportConfig | undefined {
  const o = c.object(v, path, ['kind', 'host', 'port', 'serverName', 'spkiPins', 'caFile', 'certFile', 'identity', 'psk', 'topic']);
  if (o === undefined) return undefined;
  const kind = c.oneOf(o, 'kind', path, ['coaps', 'mqtts'] as const);
  const host = c.string(o, 'host', path, { pattern: /^[A-Za-z0-9.:-]+$/, patternText: 'a host name or IP address' });
  const port = c.int(o, 'port', path, 1, 65535, kind === 'coaps' ? 5684 : 8883);
  const caEnv = env['VITALSEAL_CA_FILE'];
  const certEnv = env['VITALSEAL_DEVICE_CERT_FILE'];
  const caFile = caEnv !== undefined ? resolve(caEnv) : c.path(o, 'caFile', path, { optional: true });
  const certFile = certEnv !== undefined ? resolve(certEnv) : c.path(o, 'certFile', path, { optional: true });
  const topic = c.string(o, 'topic', path, { optional: true, pattern: /^[A-Za-z0-9/_.{}+-]{1,200}$/, patternText: 'a topic or path of letters, digits and / _ . - { } +' });
  const serverName = c.string(o, 'serverName', path, { optional: true, pattern: /^[A-Za-z0-9.:-]{1,253}$/, patternText: 'a DNS name or IP address' });
  let spkiPins: Uint8Array[] | undefined;
  if (o['spkiPins'] !== undefined) {
    const a = o['spkiPins'];
    if (!Array.isArray(a) || a.length === 0 || !a.every((x) => typeof x === 'string' && /^[0-9a-fA-F]{64}$/.test(x))) c.fail(`${path}.spkiPins`, 'must be a non-empty list of SHA-256 hashes in hex (64 hex digits each)');
    else spkiPins = (a as string[]).map((x) => new Uint8Array(Buffer.from(x, 'hex')));
  }
  let identity: TransportIdentity | undefined;
  if (o['identity'] !== undefined) {
    const io = c.object(o['identity'], `${path}.identity`, ['keystore', 'keyLabel']);
    if (io !== undefined) {
      const ks = keystore(c, io['keystore'], `${path}.identity.keystore`, env);
      const keyLabel = c.string(io, 'keyLabel', `${path}.identity`, { pattern: LABEL, patternText: '1-64 letters, digits, . _ -' });
      if (ks !== undefined && keyLabel !== undefined) identity = { keystore: ks, keyLabel };
    }
  }
  let psk: TransportPsk | undefined;
  if (o['psk'] !== undefined) {
    const po = c.object(o['psk'], `${path}.psk`, ['identity', 'keyFile']);
    if (po !== undefined) {
      const pskIdentity = c.string(po, 'identity', `${path}.psk`, { optional: true, pattern: /^[\x21-\x7e]{1,255}$/, patternText: '1-255 printable ASCII characters' });
      const keyFile = c.path(po, 'keyFile', `${path}.psk`);
      if (keyFile !== undefined) psk = { keyFile, ...(pskIdentity === undefined ? {} : { identity: pskIdentity }) };
    }
    if (kind === 'mqtts') c.fail(`${path}.psk`, 'applies to coaps only (MQTTS authenticates with the device certificate)');
    if (o['identity'] !== undefined || o['certFile'] !== undefined) c.fail(`${path}.psk`, 'a PSK replaces the certificate: give psk, or identity and certFile, not both');
  }
  if (kind === undefined || host === undefined || port === undefined) return undefined;
  return {
    kind, host, port, ...(psk === undefined ? {} : { psk }),
    ...(caFile === undefined ? {} : { caFile }), ...(certFile === undefined ? {} : { certFile }),
    ...(identity === undefined ? {} : { identity }), ...(topic === undefined ? {} : { topic }),
    ...(serverName === undefined ? {} : { serverName }), ...(spkiPins === undefined ? {} : { spkiPins }),
  };
}

/**
 * `certificate.renew`. The certificate is for the key `transport.primary.identity` names; a failover
 * transport presenting a certificate must use the same key (renewal writes one chain for one key).
 */
function renewal(c: Checker, v: unknown, primary: TransportConfig | undefined, failover: TransportConfig | undefined): CertificateRenewalConfig | undefined {
  const path = 'certificate.renew';
  const o = c.object(v, path, ['url', 'caFile', 'renewDays', 'retryInitialSeconds', 'retryMaxSeconds', 'timeoutSeconds']);
  if (o === undefined) return undefined;
  const url = c.string(o, 'url', path);
  if (url !== undefined) {
    try {
      parseEstUrl(url);
    } catch (e) {
      c.fail(`${path}.url`, `must be https://HOST[:PORT] (${e instanceof Error ? e.message : 'not a URL'})`);
    }
  }
  const caFile = c.path(o, 'caFile', path, { optional: true }) ?? primary?.caFile;
  if (caFile === undefined) c.fail(`${path}.caFile`, 'is required (transport.primary.caFile is not set either): the root the enrolment endpoint\'s certificate chains to');
  const renewDays = c.int(o, 'renewDays', path, 1, 3650, 30);
  const retryInitialSeconds = c.int(o, 'retryInitialSeconds', path, 1, 86_400, 60);
  const retryMaxSeconds = c.int(o, 'retryMaxSeconds', path, 1, 7 * 86_400, 6 * 3600);
  if (retryInitialSeconds !== undefined && retryMaxSeconds !== undefined && retryMaxSeconds < retryInitialSeconds) c.fail(`${path}.retryMaxSeconds`, `must be at least ${path}.retryInitialSeconds`);
  const timeoutSeconds = c.int(o, 'timeoutSeconds', path, 1, 600, 30);
  const identity = primary?.identity;
  if (primary !== undefined && identity === undefined) c.fail(path, 'needs transport.primary.identity: the key store and key the certificate is for');
  if (identity !== undefined && failover?.certFile !== undefined && JSON.stringify(failover.identity) !== JSON.stringify(identity)) {
    c.fail('transport.failover.identity', 'must name the same key as transport.primary.identity when certificate.renew is set: renewal keeps one certificate for one device key');
  }
  if (url === undefined || caFile === undefined || renewDays === undefined || retryInitialSeconds === undefined || retryMaxSeconds === undefined || timeoutSeconds === undefined || identity === undefined) return undefined;
  return { url, caFile, renewDays, retryInitialSeconds, retryMaxSeconds, timeoutSeconds, identity };
}

function source(c: Checker, v: unknown, path: string, index: number): SourceConfig | undefined {
  const type = typeof v === 'object' && v !== null ? (v as Obj)['type'] : undefined;
  if (type === 'simulated') {
    const o = c.object(v, path, ['type', 'id', 'seed', 'ecgHz', 'heartRate', 'spo2', 'respirationRate', 'nibpIntervalSeconds']);
    if (o === undefined) return undefined;
    const id = c.string(o, 'id', path, { default: `simulated-${index}`, pattern: LABEL, patternText: '1-64 letters, digits, . _ -' });
    const seed = c.int(o, 'seed', path, 0, 2 ** 32 - 1, 1);
    const ecgHz = c.int(o, 'ecgHz', path, 0, 1000, 250);
    const heartRate = o['heartRate'] === undefined ? undefined : c.num(o, 'heartRate', path, 20, 250);
    const spo2 = o['spo2'] === undefined ? undefined : c.num(o, 'spo2', path, 70, 100);
    const respirationRate = o['respirationRate'] === undefined ? undefined : c.num(o, 'respirationRate', path, 4, 60);
    const nibp = o['nibpIntervalSeconds'] === undefined ? undefined : c.int(o, 'nibpIntervalSeconds', path, 1, 86_400);
    if (id === undefined || seed === undefined || ecgHz === undefined) return undefined;
    return {
      type, id, seed, ecgHz,
      ...(heartRate === undefined ? {} : { heartRate }), ...(spo2 === undefined ? {} : { spo2 }),
      ...(respirationRate === undefined ? {} : { respirationRate }), ...(nibp === undefined ? {} : { nibpIntervalSeconds: nibp }),
    };
  }
  if (type === 'hl7-mllp') {
    const o = c.object(v, path, ['type', 'id', 'listen', 'maxConnections', 'maxFrameBytes', 'idleTimeoutMs', 'frameTimeoutMs', 'acceptSenders', 'utcOffsetMinutes']);
    if (o === undefined) return undefined;
    const id = c.string(o, 'id', path, { default: `hl7-${index}`, pattern: LABEL, patternText: '1-64 letters, digits, . _ -' });
    const listen = c.hostPort(o['listen'] ?? '127.0.0.1:2575', `${path}.listen`);
    const maxConnections = c.int(o, 'maxConnections', path, 1, 1024, 8);
    const maxFrameBytes = c.int(o, 'maxFrameBytes', path, 256, 16 * 1024 * 1024, 64 * 1024);
    const idleTimeoutMs = c.int(o, 'idleTimeoutMs', path, 100, 86_400_000, 120_000);
    const frameTimeoutMs = c.int(o, 'frameTimeoutMs', path, 100, 600_000, 10_000);
    const utcOffsetMinutes = o['utcOffsetMinutes'] === undefined ? undefined : c.int(o, 'utcOffsetMinutes', path, -840, 840);
    let acceptSenders: string[] | undefined;
    if (o['acceptSenders'] !== undefined) {
      const a = o['acceptSenders'];
      if (!Array.isArray(a) || a.length === 0 || !a.every((x) => typeof x === 'string' && x.length > 0 && x.length <= 180)) c.fail(`${path}.acceptSenders`, 'must be a non-empty list of MSH-3 sending application names');
      else acceptSenders = a as string[];
    }
    if (id === undefined || listen === undefined || maxConnections === undefined || maxFrameBytes === undefined || idleTimeoutMs === undefined || frameTimeoutMs === undefined) return undefined;
    return {
      type, id, listen, maxConnections, maxFrameBytes, idleTimeoutMs, frameTimeoutMs,
      ...(acceptSenders === undefined ? {} : { acceptSenders }), ...(utcOffsetMinutes === undefined ? {} : { utcOffsetMinutes }),
    };
  }
  return c.fail(`${path}.type`, `must be one of simulated, hl7-mllp, got ${describe(type)}`);
}

/**
 * Validates a parsed configuration document. Relative paths resolve against `baseDir` (the config
 * file's directory). Throws ConfigError listing every issue.
 */
export function parseAgentConfig(doc: unknown, opts: { baseDir: string; env?: NodeJS.ProcessEnv; where?: string; sourcesOptional?: boolean }): AgentConfig {
  const env = opts.env ?? {};
  const c = new Checker(opts.baseDir);
  const root = c.object(doc, '(top level)', ['device', 'sealing', 'sources', 'batch', 'queue', 'transport', 'uplink', 'certificate', 'metrics', 'status', 'log']);
  if (root === undefined) throw new ConfigError(c.issues, opts.where);
  const sub = (key: string, allowed: readonly string[], required: boolean): Obj | undefined => {
    if (root[key] === undefined) {
      if (required) c.fail(key, 'is required');
      return required ? undefined : {};
    }
    return c.object(root[key], key, allowed);
  };

  const device = sub('device', ['id'], true);
  const deviceId = device === undefined ? undefined : c.string(device, 'id', 'device');
  if (deviceId !== undefined && !isValidDeviceId(deviceId)) c.fail('device.id', 'must be 1-64 characters [A-Za-z0-9._-], starting with a letter or digit');

  const sealing = sub('sealing', ['alg', 'ingestPublicKeyFile', 'ingestKeyId', 'epochMessages', 'epochSeconds', 'provider'], true);
  const algNames = COSE_CONTENT_ALGS.map((a) => a.name);
  const alg = sealing === undefined ? undefined : c.oneOf(sealing, 'alg', 'sealing', algNames, 'chacha20-poly1305');
  const keyEnv = env['VITALSEAL_INGEST_PUBLIC_KEY_FILE'];
  const ingestPublicKeyFile = keyEnv !== undefined ? resolve(keyEnv) : sealing === undefined ? undefined : c.path(sealing, 'ingestPublicKeyFile', 'sealing');
  const ingestKeyId = sealing === undefined ? undefined : c.string(sealing, 'ingestKeyId', 'sealing', { optional: true, pattern: /^[\x20-\x7e]{1,64}$/, patternText: '1-64 printable ASCII characters' });
  const epochMessages = sealing === undefined ? undefined : c.int(sealing, 'epochMessages', 'sealing', 1, 1_000_000, 1000);
  const epochSeconds = sealing === undefined ? undefined : c.int(sealing, 'epochSeconds', 'sealing', 1, 7 * 86_400, 3600);
  const provider = sealing === undefined ? undefined : c.oneOf(sealing, 'provider', 'sealing', ['node', 'noble'] as const, 'node');

  const sources: SourceConfig[] = [];
  const rawSources = root['sources'];
  // With `sourcesOptional` (a program embedding the agent that passes its own to
  // createAgent({ sources })) the list may be absent or empty; createAgent still refuses an agent
  // with no source at all.
  if (rawSources !== undefined && !Array.isArray(rawSources)) c.fail('sources', 'must be a list of sources (simulated, hl7-mllp)');
  else if (opts.sourcesOptional !== true && (rawSources === undefined || rawSources.length === 0)) c.fail('sources', 'must be a non-empty list of sources (simulated, hl7-mllp)');
  else rawSources?.forEach((s, i) => { const r = source(c, s, `sources[${i}]`, i); if (r !== undefined) sources.push(r); });
  const ids = sources.map((s) => s.id);
  if (new Set(ids).size !== ids.length) c.fail('sources', 'source ids must be unique');

  const batch = sub('batch', ['windowMs'], false);
  const windowMs = batch === undefined ? undefined : c.int(batch, 'windowMs', 'batch', 10, 600_000, 1000);

  const queue = sub('queue', ['dir', 'capacityBytes', 'highWater', 'fullPolicy', 'fsync', 'segmentBytes', 'maxRejectedFiles'], true);
  const qEnv = env['VITALSEAL_QUEUE_DIR'];
  const qdir = qEnv !== undefined ? resolve(qEnv) : queue === undefined ? undefined : c.path(queue, 'dir', 'queue');
  const capacityBytes = queue === undefined ? undefined : c.int(queue, 'capacityBytes', 'queue', 1024 * 1024, 2 ** 45, 256 * 1024 * 1024);
  const highWater = queue === undefined ? undefined : c.num(queue, 'highWater', 'queue', 0.1, 1, 0.8);
  const fullPolicy = queue === undefined ? undefined : c.oneOf(queue, 'fullPolicy', 'queue', ['drop-oldest', 'reject-new'] as const, 'drop-oldest');
  const fsync = queue === undefined ? undefined : c.oneOf(queue, 'fsync', 'queue', ['every-batch', 'never'] as const, 'every-batch');
  const segmentBytes = queue === undefined ? undefined : c.int(queue, 'segmentBytes', 'queue', 4096, 1024 * 1024 * 1024, 4 * 1024 * 1024);
  const maxRejectedFiles = queue === undefined ? undefined : c.int(queue, 'maxRejectedFiles', 'queue', 1, 1_000_000, 1000);

  const tr = sub('transport', ['primary', 'failover'], true);
  const primary = tr === undefined ? undefined : tr['primary'] === undefined ? c.fail('transport.primary', 'is required') : transport(c, tr['primary'], 'transport.primary', env);
  const failover = tr?.['failover'] === undefined ? undefined : transport(c, tr['failover'], 'transport.failover', env);

  const up = sub('uplink', ['window', 'liveSlots', 'backoffInitialMs', 'backoffMaxMs', 'failoverAfter', 'primaryProbeSeconds', 'sendTimeoutMs'], false);
  const uwindow = up === undefined ? undefined : c.int(up, 'window', 'uplink', 1, 1024, 16);
  const liveSlots = up === undefined ? undefined : c.int(up, 'liveSlots', 'uplink', 0, 1023, 1);
  if (uwindow !== undefined && liveSlots !== undefined && liveSlots >= uwindow) c.fail('uplink.liveSlots', 'must be smaller than uplink.window');
  const backoffInitialMs = up === undefined ? undefined : c.int(up, 'backoffInitialMs', 'uplink', 10, 600_000, 500);
  const backoffMaxMs = up === undefined ? undefined : c.int(up, 'backoffMaxMs', 'uplink', 10, 3_600_000, 60_000);
  if (backoffInitialMs !== undefined && backoffMaxMs !== undefined && backoffMaxMs < backoffInitialMs) c.fail('uplink.backoffMaxMs', 'must be at least uplink.backoffInitialMs');
  const failoverAfter = up === undefined ? undefined : c.int(up, 'failoverAfter', 'uplink', 1, 100, 3);
  const primaryProbeSeconds = up === undefined ? undefined : c.int(up, 'primaryProbeSeconds', 'uplink', 1, 86_400, 300);
  const sendTimeoutMs = up === undefined ? undefined : c.int(up, 'sendTimeoutMs', 'uplink', 100, 600_000, 30_000);

  let certificate: AgentConfig['certificate'];
  const certEnv = env['VITALSEAL_DEVICE_CERT_FILE'];
  if (root['certificate'] !== undefined || certEnv !== undefined) {
    const co = root['certificate'] === undefined ? {} : c.object(root['certificate'], 'certificate', ['file', 'warnDays', 'checkIntervalSeconds', 'renew']);
    if (co !== undefined) {
      const file = certEnv !== undefined ? resolve(certEnv) : c.path(co, 'file', 'certificate');
      const warnDays = c.int(co, 'warnDays', 'certificate', 1, 3650, 30);
      const checkIntervalSeconds = c.int(co, 'checkIntervalSeconds', 'certificate', 1, 86_400, 3600);
      const renew = co['renew'] === undefined ? undefined : renewal(c, co['renew'], primary, failover);
      if (file !== undefined && warnDays !== undefined && checkIntervalSeconds !== undefined) {
        certificate = { file, warnDays, checkIntervalSeconds, ...(renew === undefined ? {} : { renew }) };
      }
    }
  }

  const metricsO = sub('metrics', ['listen'], false);
  let metricsListen: AgentConfig['metrics']['listen'] | undefined = { host: '127.0.0.1', port: 9464 };
  if (metricsO !== undefined && metricsO['listen'] !== undefined) {
    metricsListen = metricsO['listen'] === false ? false : c.hostPort(metricsO['listen'], 'metrics.listen');
  }

  const statusO = sub('status', ['socket'], false);
  const socket = statusO === undefined ? undefined : c.path(statusO, 'socket', 'status', { default: qdir === undefined ? 'agent.sock' : `${dirname(qdir)}/agent.sock` });

  const logO = sub('log', ['level'], false);
  const level = logO === undefined ? undefined : c.oneOf(logO, 'level', 'log', LOG_LEVELS, 'info');

  if (c.issues.length > 0) throw new ConfigError(c.issues, opts.where);
  const need = <T>(v: T | undefined): T => v as T; // every undefined above added an issue
  return {
    device: { id: need(deviceId) },
    sealing: {
      alg: need(alg), ingestPublicKeyFile: need(ingestPublicKeyFile), epochMessages: need(epochMessages), epochSeconds: need(epochSeconds), provider: need(provider),
      ...(ingestKeyId === undefined ? {} : { ingestKeyId }),
    },
    sources,
    batch: { windowMs: need(windowMs) },
    queue: {
      dir: need(qdir), capacityBytes: need(capacityBytes), highWater: need(highWater), fullPolicy: need(fullPolicy), fsync: need(fsync),
      segmentBytes: need(segmentBytes), maxRejectedFiles: need(maxRejectedFiles),
    },
    transport: { primary: need(primary), ...(failover === undefined ? {} : { failover }) },
    uplink: {
      window: need(uwindow), liveSlots: need(liveSlots), backoffInitialMs: need(backoffInitialMs), backoffMaxMs: need(backoffMaxMs),
      failoverAfter: need(failoverAfter), primaryProbeSeconds: need(primaryProbeSeconds), sendTimeoutMs: need(sendTimeoutMs),
    },
    ...(certificate === undefined ? {} : { certificate }),
    metrics: { listen: need(metricsListen) },
    status: { socket: need(socket) },
    log: { level: need(level) },
  };
}

/**
 * Reads and validates a YAML (.yaml/.yml) or JSON (.json) configuration file. `sourcesOptional`:
 * the calling program passes its own sources to `createAgent`, so the file need not list any.
 */
export function loadAgentConfig(file: string, env: NodeJS.ProcessEnv = {}, opts: { sourcesOptional?: boolean } = {}): AgentConfig {
  const path = isAbsolute(file) ? file : resolve(file);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError([`cannot read the file (${(e as NodeJS.ErrnoException).code ?? 'error'})`], path);
  }
  let doc: unknown;
  try {
    doc = /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text, { maxAliasCount: 100 });
  } catch (e) {
    // YAML and JSON parser messages name the line and column, never secret material (there is none in the file).
    throw new ConfigError([`not valid ${/\.json$/i.test(path) ? 'JSON' : 'YAML'}: ${e instanceof Error ? e.message.split('\n')[0] : 'parse error'}`], path);
  }
  return parseAgentConfig(doc, { baseDir: dirname(path), env, where: path, ...(opts.sourcesOptional === undefined ? {} : { sourcesOptional: opts.sourcesOptional }) });
}
