/**
 * The FAPI config file (the JSON that TSS2_FAPICONF names; TSS 2.0 FAPI Config spec). Either the
 * operator hands us one (`fapiConfig`), or the store writes its own from `tcti` + `dir`:
 *
 *   <dir>/fapi-config.json         this file (mode 0600)
 *   <dir>/keystore/user            FAPI's user keystore (our keys and sealed objects)
 *   <dir>/keystore/system          FAPI's system keystore (SRK, EK, hierarchies)
 *   <dir>/log                      FAPI's event log directory
 *
 * Own directories keep the agent's objects apart from anything else using FAPI on the device, and
 * the same file works with tpm2-tools (`TSS2_FAPICONF=<dir>/fapi-config.json tss2_list`).
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import type { TpmKeyStoreConfig } from '../config.ts';
import { TpmKeyStoreError } from './errors.ts';

export const DEFAULT_PROFILE = 'P_ECCP256SHA256';
export const DEFAULT_PROFILE_DIR = '/etc/tpm2-tss/fapi-profiles/';
/** TPM 2.0 Part 2 §7.5 / TCG Provisioning Guidance: the conventional SRK handle, used by FAPI's profiles. */
export const DEFAULT_SRK_HANDLE = 0x81000001;

export interface ResolvedFapiConfig {
  /** The file FAPI reads. */
  readonly path: string;
  /** True when the store wrote (and may rewrite) the file. */
  readonly owned: boolean;
  readonly tcti: string;
  readonly profileName: string;
  readonly profileDir: string;
  readonly userDir: string;
  readonly systemDir: string;
  readonly ekCertLess: boolean;
  /** Persistent handle of the SRK in this profile (undefined when the profile keeps no persistent SRK). */
  readonly srkHandle: number | undefined;
}

interface FapiConfigJson {
  profile_name?: unknown;
  profile_dir?: unknown;
  user_dir?: unknown;
  system_dir?: unknown;
  log_dir?: unknown;
  tcti?: unknown;
  system_pcrs?: unknown;
  ek_cert_less?: unknown;
}

function str(v: unknown, fallback: string): string {
  return typeof v === 'string' && v.length > 0 ? v : fallback;
}

/** FAPI expands a leading `~` with $HOME (ifapi_config.c); we do the same to know the real dirs. */
function expandHome(p: string): string {
  if (p === '~' || p.startsWith('~/')) return join(process.env['HOME'] ?? '/', p.slice(1));
  return p;
}

function readJson(path: string): FapiConfigJson {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new TpmKeyStoreError('config', `cannot read the FAPI config ${path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as FapiConfigJson;
  } catch (e) {
    throw new TpmKeyStoreError('config', `the FAPI config ${path} is not a JSON object: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
}

/**
 * The SRK's persistent handle from the profile's `srk_template` ("system,restricted,decrypt,0x81000001").
 * FAPI's profile files are JSON with trailing commas (json-c accepts them), so we look for the one field.
 */
export function srkHandleFromProfile(profileText: string): number | undefined {
  const m = /"srk_template"\s*:\s*"([^"]*)"/.exec(profileText);
  if (m === null) return DEFAULT_SRK_HANDLE;
  const h = /0x81[0-9a-fA-F]{6}/.exec(m[1] as string);
  return h === null ? undefined : Number.parseInt(h[0], 16);
}

function profileSrkHandle(profileDir: string, profileName: string): number | undefined {
  try {
    return srkHandleFromProfile(readFileSync(join(profileDir, `${profileName}.json`), 'utf8'));
  } catch (e) {
    throw new TpmKeyStoreError('config', `cannot read the FAPI profile ${profileName} in ${profileDir}: ${e instanceof Error ? e.message : String(e)} (Debian package libtss2-fapi1 installs the profiles)`, { cause: e });
  }
}

function fromJson(path: string, json: FapiConfigJson, owned: boolean): ResolvedFapiConfig {
  const profileName = str(json.profile_name, DEFAULT_PROFILE);
  const profileDir = str(json.profile_dir, DEFAULT_PROFILE_DIR);
  return {
    path,
    owned,
    tcti: str(json.tcti, ''),
    profileName,
    profileDir,
    userDir: expandHome(str(json.user_dir, '~/.local/share/tpm2-tss/user/keystore')),
    systemDir: expandHome(str(json.system_dir, '/var/lib/tpm2-tss/system/keystore')),
    ekCertLess: typeof json.ek_cert_less === 'string' && json.ek_cert_less.toLowerCase() === 'yes',
    srkHandle: profileSrkHandle(profileDir, profileName),
  };
}

function ownLayout(dir: string): { path: string; user: string; system: string; log: string } {
  return {
    path: join(dir, 'fapi-config.json'),
    user: join(dir, 'keystore', 'user'),
    system: join(dir, 'keystore', 'system'),
    log: join(dir, 'log'),
  };
}

/**
 * Writes (or rewrites: the TCTI may change between runs) the store's own config under `dir`.
 * `ekCertLess` sticks once set: it records that this TPM has no EK certificate.
 */
export function writeOwnFapiConfig(dir: string, tcti: string, ekCertLess: boolean): ResolvedFapiConfig {
  const l = ownLayout(dir);
  for (const d of [dir, l.user, l.system, l.log]) {
    mkdirSync(d, { recursive: true, mode: 0o700 });
  }
  chmodSync(dir, 0o700);
  const json: Record<string, unknown> = {
    profile_name: DEFAULT_PROFILE,
    profile_dir: DEFAULT_PROFILE_DIR,
    user_dir: l.user,
    system_dir: l.system,
    log_dir: l.log,
    tcti,
    // No PCRs recorded in the event log: the store uses no PCR policies.
    system_pcrs: [],
  };
  if (ekCertLess) json['ek_cert_less'] = 'yes';
  const tmp = `${l.path}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(json, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, l.path);
  return fromJson(l.path, json, true);
}

/** The config for `config`: the operator's file, or ours (written now) under `dir`. */
export function resolveFapiConfig(config: TpmKeyStoreConfig): ResolvedFapiConfig {
  if (config.fapiConfig !== undefined) {
    const path = resolve(config.fapiConfig);
    return fromJson(path, readJson(path), false);
  }
  if (config.tcti === undefined || config.tcti.length === 0 || config.dir === undefined || config.dir.length === 0) {
    throw new TpmKeyStoreError('config', 'TPM key store config needs either fapiConfig, or both tcti and dir');
  }
  if (!isAbsolute(config.dir)) {
    throw new TpmKeyStoreError('config', `TPM key store dir must be an absolute path, got ${JSON.stringify(config.dir)}`);
  }
  const l = ownLayout(config.dir);
  // Keep an earlier "no EK certificate" finding.
  const previous = existsSync(l.path) ? readJson(l.path) : undefined;
  const ekCertLess = typeof previous?.ek_cert_less === 'string' && previous.ek_cert_less.toLowerCase() === 'yes';
  return writeOwnFapiConfig(config.dir, config.tcti, ekCertLess);
}

/**
 * The persistent parent handle OpenSSL's tpm2 provider loads a key at `path` under (the profile's
 * SRK). A profile that keeps no persistent SRK would make the provider re-create the SRK with its
 * own template, a different key: refused.
 */
export function loadableKeyParent(config: ResolvedFapiConfig, path: string): number {
  if (config.srkHandle === undefined) {
    throw new TpmKeyStoreError('config', `FAPI profile ${config.profileName} keeps no persistent SRK: OpenSSL's tpm2 provider cannot load ${path} under it`);
  }
  return config.srkHandle;
}
