/**
 * The key-store options every command that opens a store takes (`vitalseal keys`, `vitalseal
 * provision`, ...), and how they become a `KeyStoreConfig`: a `keystore:` section of a JSON/YAML
 * config file, with flags filling in or overriding its values. Secrets are never options: only where
 * to read them (an environment variable or an owner-only file).
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import type { KeyStoreConfig, SecretSource } from '../keystore/config.ts';
import { parseKeyStoreConfig } from '../keystore/open.ts';
import { UsageError } from './types.ts';

/** The help text for these options. */
export const STORE_OPTIONS_HELP = `  --config FILE                  JSON or YAML with a 'keystore:' section ({ kind, ... } as below)
  --store software|tpm|pkcs11    the backend (overrides the config's kind only if it matches)
  software: --file KEYFILE (--passphrase-env VAR | --passphrase-file FILE)
  tpm:      --fapi-config FILE (default: $TSS2_FAPICONF) [--tcti TCTI] [--dir DIR]
  pkcs11:   --module LIB.so --token 'pkcs11:token=LABEL' (--pin-env VAR | --pin-file FILE)`;

export const STORE_OPTIONS = {
  config: { type: 'string' },
  store: { type: 'string' },
  file: { type: 'string' },
  'passphrase-env': { type: 'string' },
  'passphrase-file': { type: 'string' },
  'fapi-config': { type: 'string' },
  tcti: { type: 'string' },
  dir: { type: 'string' },
  module: { type: 'string' },
  token: { type: 'string' },
  'pin-env': { type: 'string' },
  'pin-file': { type: 'string' },
} as const;

export type StoreValues = { [K in keyof typeof STORE_OPTIONS]?: string };

const MAX_CONFIG_BYTES = 1024 * 1024;

export function secretSource(env: string | undefined, file: string | undefined, what: string): SecretSource | undefined {
  if (env !== undefined && file !== undefined) throw new UsageError(`give either --${what}-env or --${what}-file, not both`);
  if (env !== undefined) return { env };
  if (file !== undefined) return { file };
  return undefined;
}

function readConfigSection(path: string): unknown {
  let text: string;
  try {
    const bytes = readFileSync(path);
    if (bytes.length > MAX_CONFIG_BYTES) throw new UsageError(`${path} is larger than ${MAX_CONFIG_BYTES} bytes`);
    text = bytes.toString('utf8');
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text); // YAML 1.2 is a superset of JSON: one parser for both
  } catch (e) {
    throw new UsageError(`${path}: not valid JSON or YAML (${(e as Error).message.split('\n')[0]})`);
  }
  if (typeof doc !== 'object' || doc === null || !('keystore' in doc)) throw new UsageError(`${path} has no 'keystore:' section`);
  return (doc as { keystore: unknown }).keystore;
}

/** The store configuration from --config and flags; flags fill in or override the config's values. */
export function storeConfig(v: StoreValues, env: NodeJS.ProcessEnv): KeyStoreConfig {
  const fromFile = v.config === undefined ? undefined : (readConfigSection(v.config) as Record<string, unknown>);
  const kind = v.store ?? (typeof fromFile?.['kind'] === 'string' ? fromFile['kind'] : undefined);
  if (kind === undefined) throw new UsageError('name the store: --store software|tpm|pkcs11, or --config FILE');
  if (fromFile !== undefined && v.store !== undefined && fromFile['kind'] !== v.store) {
    throw new UsageError(`--store ${v.store} does not match the config's keystore kind ${String(fromFile['kind'])}`);
  }
  const merged: Record<string, unknown> = { ...(fromFile ?? {}), kind };
  const set = (key: string, value: unknown) => {
    if (value !== undefined) merged[key] = value;
  };
  const foreign = (flags: (keyof StoreValues)[]) => {
    for (const f of flags) if (v[f] !== undefined) throw new UsageError(`--${f} does not apply to the ${kind} store`);
  };
  switch (kind) {
    case 'software':
      foreign(['fapi-config', 'tcti', 'dir', 'module', 'token', 'pin-env', 'pin-file']);
      set('path', v.file);
      set('passphrase', secretSource(v['passphrase-env'], v['passphrase-file'], 'passphrase'));
      break;
    case 'tpm':
      foreign(['file', 'passphrase-env', 'passphrase-file', 'module', 'token', 'pin-env', 'pin-file']);
      set('fapiConfig', v['fapi-config'] ?? (merged['fapiConfig'] === undefined && merged['tcti'] === undefined && v.tcti === undefined ? env['TSS2_FAPICONF'] : undefined));
      set('tcti', v.tcti);
      set('dir', v.dir);
      break;
    case 'pkcs11':
      foreign(['file', 'passphrase-env', 'passphrase-file', 'fapi-config', 'tcti', 'dir']);
      set('module', v.module);
      set('token', v.token);
      set('pin', secretSource(v['pin-env'], v['pin-file'], 'pin'));
      break;
    default:
      throw new UsageError(`unknown store '${kind}': software, tpm or pkcs11`);
  }
  return parseKeyStoreConfig(merged, v.config === undefined ? 'store options' : `${v.config}: keystore`);
}

