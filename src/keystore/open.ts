/**
 * From configuration to an open key store: `keystore:` sections in config files and the
 * `vitalseal keys --store ...` flags both end here, so every caller opens a store the same way.
 *
 * @example
 *   const store = await openKeyStore({ kind: 'software', path: 'dev.vsks', passphrase: { env: 'VITALSEAL_PASSPHRASE' } },
 *                                    { env: process.env, events: auditSink, logger });
 */
import { KeyStoreError } from '../util/errors.ts';
import type { KeyStoreConfig, Pkcs11KeyStoreConfig, SoftwareKeyStoreConfig, TpmKeyStoreConfig } from './config.ts';
import { parseSecretSource, readSecret } from './secret-source.ts';
import { openSoftwareKeyStore } from './software/store.ts';
import type { KeyEventSink, KeyStore, KeyStoreLogger } from './types.ts';

export interface OpenKeyStoreOptions {
  /** Where `{ env: NAME }` secrets are looked up (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
  readonly events?: KeyEventSink;
  readonly logger?: KeyStoreLogger;
  /** Software store: make the key file if it does not exist (default true). */
  readonly create?: boolean;
}

/** Opens the store `config` names. */
export async function openKeyStore(config: KeyStoreConfig, opts: OpenKeyStoreOptions = {}): Promise<KeyStore> {
  const env = opts.env ?? process.env;
  switch (config.kind) {
    case 'software': {
      const passphrase = await readSecret(config.passphrase, { env, what: 'key file passphrase' });
      try {
        return await openSoftwareKeyStore({
          path: config.path,
          passphrase,
          ...(opts.create === undefined ? {} : { create: opts.create }),
          ...(opts.events === undefined ? {} : { events: opts.events }),
          ...(opts.logger === undefined ? {} : { logger: opts.logger }),
        });
      } finally {
        passphrase.fill(0);
      }
    }
    case 'tpm': {
      // Loaded on demand: only TPM users load koffi and libtss2-fapi.
      const { openTpmKeyStore } = await import('./tpm/index.ts');
      return openTpmKeyStore(config, opts.events === undefined ? {} : { events: opts.events });
    }
    case 'pkcs11': {
      // Loaded on demand: only token users load the pkcs11js addon.
      const { openPkcs11KeyStore } = await import('./pkcs11/index.ts');
      return openPkcs11KeyStore(config, opts.events === undefined ? {} : { events: opts.events });
    }
    default: {
      const never: never = config;
      throw new KeyStoreError('invalid-config', `unknown key store kind ${JSON.stringify((never as { kind?: unknown }).kind)}`);
    }
  }
}

function fields(value: unknown, where: string, allowed: readonly string[]): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new KeyStoreError('invalid-config', `${where}: expected a mapping`);
  for (const k of Object.keys(value)) {
    if (!allowed.includes(k)) throw new KeyStoreError('invalid-config', `${where}: unknown setting '${k}' (known: ${allowed.join(', ')})`);
  }
  return value as Record<string, unknown>;
}

function str(v: Record<string, unknown>, key: string, where: string, required: true): string;
function str(v: Record<string, unknown>, key: string, where: string, required: false): string | undefined;
function str(v: Record<string, unknown>, key: string, where: string, required: boolean): string | undefined {
  const x = v[key];
  if (x === undefined && !required) return undefined;
  if (typeof x !== 'string' || x.length === 0) throw new KeyStoreError('invalid-config', `${where}.${key}: expected a non-empty string`);
  return x;
}

/**
 * Validates a `keystore:` section (parsed JSON or YAML) into a `KeyStoreConfig`. Unknown settings
 * are refused, and a secret written inline (`pin: 1234`) is refused with a message saying where
 * secrets go instead.
 */
export function parseKeyStoreConfig(value: unknown, where = 'keystore'): KeyStoreConfig {
  const kind = fields(value, where, ['kind', 'path', 'passphrase', 'fapiConfig', 'tcti', 'dir', 'module', 'token', 'pin'])['kind'];
  switch (kind) {
    case 'software': {
      const v = fields(value, where, ['kind', 'path', 'passphrase']);
      const c: SoftwareKeyStoreConfig = { kind, path: str(v, 'path', where, true), passphrase: parseSecretSource(v['passphrase'], `${where}.passphrase`) };
      return c;
    }
    case 'tpm': {
      const v = fields(value, where, ['kind', 'fapiConfig', 'tcti', 'dir']);
      const fapiConfig = str(v, 'fapiConfig', where, false);
      const tcti = str(v, 'tcti', where, false);
      const dir = str(v, 'dir', where, false);
      const c: TpmKeyStoreConfig = {
        kind, ...(fapiConfig === undefined ? {} : { fapiConfig }), ...(tcti === undefined ? {} : { tcti }), ...(dir === undefined ? {} : { dir }),
      };
      return c;
    }
    case 'pkcs11': {
      const v = fields(value, where, ['kind', 'module', 'token', 'pin']);
      const token = str(v, 'token', where, true);
      if (!token.startsWith('pkcs11:')) throw new KeyStoreError('invalid-config', `${where}.token: expected an RFC 7512 URI such as pkcs11:token=vitalseal`);
      // RFC 7512 §2.3 allows a pin-value query attribute: a secret in configuration, refused here.
      if (/[?&]pin-value=/i.test(token)) throw new KeyStoreError('invalid-config', `${where}.token: the URI carries a pin-value; give the PIN through pin: { env } or { file } instead`);
      const c: Pkcs11KeyStoreConfig = { kind, module: str(v, 'module', where, true), token, pin: parseSecretSource(v['pin'], `${where}.pin`) };
      return c;
    }
    default:
      throw new KeyStoreError('invalid-config', `${where}.kind: expected tpm, pkcs11 or software`);
  }
}
