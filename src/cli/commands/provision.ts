/**
 * `vitalseal provision`: gives a device its identity. Creates the identity key in a key store (the
 * key never leaves it), makes a CSR signed by that key, has it issued by the local development CA,
 * checks the result with the same validation the ingest service runs, and stores the chain.
 *
 *   VITALSEAL_PKI_PASSPHRASE=... vitalseal provision --device-id bed-7 --pki ca --out bed-7 --unencrypted-dev-keys
 *
 * The ingest service's enrolment endpoint (the device sends its CSR, the fleet CA answers) comes
 * later; until then the CA directory must be reachable from where this runs.
 */
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KeyStoreConfig } from '../../keystore/config.ts';
import { openKeyStore } from '../../keystore/open.ts';
import { checkKeyName } from '../../keystore/names.ts';
import { keyObjectSigner, type Signer } from '../../keystore/signer.ts';
import { formatSpkiPin, spkiSha256 } from '../../pki/certificate.ts';
import { createCsr } from '../../pki/csr.ts';
import { isDeviceId } from '../../pki/device-id.ts';
import { writeKeyFile } from '../../pki/key-file.ts';
import { pemEncode } from '../../pki/pem.ts';
import { validateChain } from '../../pki/validate.ts';
import { systemClock } from '../../util/clock.ts';
import { zeroize } from '../../util/bytes.ts';
import { parse } from '../args.ts';
import { UsageError, type CliIo, type CommandModule } from '../types.ts';
import { STORE_OPTIONS, STORE_OPTIONS_HELP, storeConfig, type StoreValues } from '../store-options.ts';
import { openCa, passphraseFrom } from './pki.ts';

const STORES = ['dev-pem', 'software', 'tpm', 'pkcs11'] as const;
type StoreName = (typeof STORES)[number];

const HELP = `usage:
  vitalseal provision --device-id ID --pki DIR --out DIR [--store STORE] [--key-name NAME]
      [store options] [--key-passphrase-env VAR | --key-passphrase-file FILE | --unencrypted-dev-keys]
      [--pki-passphrase-env VAR | --pki-passphrase-file FILE]

  Creates the device identity key (ECDSA P-256) in STORE, makes a CSR signed by that key, has the
  development CA in --pki DIR issue the device certificate (CN and URI SAN urn:dev:vitalseal:ID,
  clientAuth), checks it with the ingest's own validation, and writes to --out DIR (mode 0700):
    device.pem     the device certificate
    chain.pem      device + issuing CA (what the device presents in DTLS/TLS)
    root-ca.pem    the fleet root CA (the trust anchor the device pins)
    device.csr     the CSR (public; kept for re-issue)
    identity.json  device id, store, key name, serial, expiry, SPKI pin

  Key stores (--store, default dev-pem):
    dev-pem    development only: a P-256 key in --out DIR/NAME.key (0600), scrypt-encrypted under
               --key-passphrase-env/--key-passphrase-file, or in clear with --unencrypted-dev-keys
    software   the encrypted software key store (development grade)
    tpm        TPM 2.0 through tpm2-tss FAPI: the key never leaves the TPM
    pkcs11     PKCS#11 token (OP-TEE's TA on a board; SoftHSM2 in tests): the key never leaves it
  Their settings, as for vitalseal keys:
${STORE_OPTIONS_HELP}
  --key-name names the key in the store (default device-identity).

  Enrolment: for now the CA is local (--pki DIR; its passphrase from VITALSEAL_PKI_PASSPHRASE or
  --pki-passphrase-env/--pki-passphrase-file). The ingest service's enrolment endpoint comes later.
`;

/** What provisioning needs from a key store: create a signing key (never exported), and undo that. */
interface IdentityKeyStore {
  /** For the summary line, e.g. "dev-pem (development only)". Never a secret. */
  readonly label: string;
  createSigningKey(name: string): Promise<Signer>;
  delete(name: string): Promise<void>;
  close(): Promise<void>;
}

/** The development store: a P-256 key file beside the certificate. */
function devPemStore(outDir: string, passphrase: Uint8Array | undefined): IdentityKeyStore {
  const path = (name: string) => join(outDir, `${name}.key`);
  return {
    label: `dev-pem (development only; ${passphrase === undefined ? 'UNENCRYPTED key file' : 'scrypt-encrypted key file'})`,
    async createSigningKey(name) {
      const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
      writeKeyFile(path(name), key, passphrase);
      return keyObjectSigner(key);
    },
    async delete(name) {
      rmSync(path(name), { force: true });
    },
    async close() {
      zeroize(passphrase);
    },
  };
}

/** The software, TPM and PKCS#11 stores, through `openKeyStore` like every other command. */
async function openBackend(config: KeyStoreConfig, io: CliIo): Promise<IdentityKeyStore> {
  const store = await openKeyStore(config, { env: io.env, logger: { warn: (m) => io.stderr.write(`warning: ${m}\n`) } });
  const d = store.describe();
  return {
    label: `${d.kind} (${d.assurance}; ${d.detail})`,
    createSigningKey: (name) => store.createSigningKey(name),
    delete: (name) => store.delete(name),
    close: () => store.close(),
  };
}

async function provision(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, {
    'device-id': { type: 'string' },
    pki: { type: 'string' },
    out: { type: 'string' },
    ...STORE_OPTIONS,
    'key-name': { type: 'string', default: 'device-identity' },
    'key-passphrase-env': { type: 'string' },
    'key-passphrase-file': { type: 'string' },
    'unencrypted-dev-keys': { type: 'boolean' },
    'pki-passphrase-env': { type: 'string' },
    'pki-passphrase-file': { type: 'string' },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0] ?? ''}`);
  const deviceId = values['device-id'];
  if (deviceId === undefined) throw new UsageError('provision needs --device-id ID');
  if (!isDeviceId(deviceId)) throw new UsageError('--device-id: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit');
  if (values.pki === undefined) throw new UsageError('provision needs --pki DIR (the development CA; the enrolment endpoint comes later)');
  if (values.out === undefined) throw new UsageError('provision needs --out DIR');
  const storeName = values.store ?? (values.config === undefined ? 'dev-pem' : undefined);
  if (storeName === undefined) throw new UsageError('name the key store: --store dev-pem|software|tpm|pkcs11 (a --config file names its own kind: give --store too)');
  if (!(STORES as readonly string[]).includes(storeName)) throw new UsageError(`unknown --store ${storeName}; one of ${STORES.join(', ')}`);
  const store = storeName as StoreName;
  let keyName: string;
  try {
    keyName = checkKeyName(values['key-name']);
  } catch (e) {
    throw new UsageError(`--key-name: ${(e as Error).message}`);
  }
  const outDir = values.out;
  if (existsSync(outDir) && readdirSync(outDir).length > 0) throw new UsageError(`${outDir} is not empty; refusing to overwrite a device identity`);

  // The CA is opened (and its key decrypted) before any key is created, so a wrong CA passphrase
  // leaves nothing behind in the key store.
  const ca = await openCa(values.pki, { 'passphrase-env': values['pki-passphrase-env'], 'passphrase-file': values['pki-passphrase-file'] }, io,
    '--pki-passphrase-env VAR / --pki-passphrase-file FILE');

  let identityStore: IdentityKeyStore;
  if (store === 'dev-pem') {
    for (const flag of Object.keys(STORE_OPTIONS)) {
      if (flag !== 'store' && values[flag as keyof typeof STORE_OPTIONS] !== undefined) throw new UsageError(`--${flag} does not apply to --store dev-pem`);
    }
    const keyPass = await passphraseFrom({ 'passphrase-env': values['key-passphrase-env'], 'passphrase-file': values['key-passphrase-file'] }, io, 'device key passphrase', 'VITALSEAL_DEVICE_KEY_PASSPHRASE');
    if (keyPass === undefined && values['unencrypted-dev-keys'] !== true) {
      throw new UsageError('--store dev-pem needs --key-passphrase-env VAR / --key-passphrase-file FILE (or VITALSEAL_DEVICE_KEY_PASSPHRASE), or --unencrypted-dev-keys');
    }
    if (keyPass !== undefined && values['unencrypted-dev-keys'] === true) throw new UsageError('--unencrypted-dev-keys conflicts with a key passphrase');
    mkdirSync(outDir, { recursive: true, mode: 0o700 });
    identityStore = devPemStore(outDir, keyPass);
  } else {
    if (values['unencrypted-dev-keys'] === true || values['key-passphrase-env'] !== undefined || values['key-passphrase-file'] !== undefined) {
      throw new UsageError('key passphrase options apply to --store dev-pem only; the store config names its own secrets');
    }
    identityStore = await openBackend(storeConfig(values as StoreValues, io.env), io);
    mkdirSync(outDir, { recursive: true, mode: 0o700 });
  }

  try {
    const now = systemClock.now();
    const signer = await identityStore.createSigningKey(keyName);
    let written = false;
    try {
      const csr = await createCsr({ signer, subject: { commonName: deviceId }, deviceId });
      const cert = await ca.issueDevice(csr, deviceId, now);
      // The same check the ingest service runs on this device's connections.
      const peer = validateChain([cert.der, ca.issuing.der], { roots: [ca.root], now, purpose: 'client', expectedDeviceId: deviceId });
      const files: [string, string][] = [
        ['device.csr', pemEncode('CERTIFICATE REQUEST', csr)],
        ['device.pem', pemEncode('CERTIFICATE', cert.der)],
        ['chain.pem', pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', ca.issuing.der)],
        ['root-ca.pem', readFileSync(ca.paths.root, 'utf8')],
        ['identity.json', `${JSON.stringify({
          deviceId,
          store,
          keyName,
          ...(store === 'dev-pem' ? { keyFile: `${keyName}.key` } : { keyStore: identityStore.label }),
          certificate: 'device.pem',
          chain: 'chain.pem',
          trustAnchor: 'root-ca.pem',
          serial: cert.serialHex,
          notAfter: new Date(cert.notAfter).toISOString(),
          spkiPin: formatSpkiPin(spkiSha256(cert.spki.der)),
          issuedBy: `local development CA (${values.pki})`,
        }, null, 2)}\n`],
      ];
      for (const [name, text] of files) writeFileSync(join(outDir, name), text, { flag: 'wx', mode: 0o644 });
      written = true;
      io.stderr.write([
        `provisioned device ${peer.deviceId ?? deviceId}`,
        `  key          ${keyName} in ${identityStore.label}`,
        `  certificate  ${join(outDir, 'device.pem')} serial ${cert.serialHex}, valid until ${new Date(cert.notAfter).toISOString()}`,
        `  chain        ${join(outDir, 'chain.pem')}; trust anchor ${join(outDir, 'root-ca.pem')}`,
        `  SPKI pin     ${formatSpkiPin(peer.spkiSha256)}`,
        '',
      ].join('\n'));
      return 0;
    } finally {
      // A key without a certificate is useless and would block a retry with the same name.
      if (!written) await identityStore.delete(keyName).catch(() => undefined);
    }
  } finally {
    await identityStore.close();
  }
}

export const command: CommandModule = {
  summary: 'create a device identity key and certificate',
  async run(args, io) {
    if (args.length === 0 || args.includes('--help') || args.includes('-h')) {
      io.stdout.write(HELP);
      return args.length === 0 ? 2 : 0;
    }
    return provision(args, io);
  },
};
