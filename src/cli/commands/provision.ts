/**
 * `vitalseal provision`: gives a device its identity. Creates the identity key in a key store (the
 * key never leaves it), makes a CSR signed by that key, has the certificate issued, checks the
 * result with the same validation the ingest service runs (and that it carries the store's key),
 * and stores the chain.
 *
 * Two issuers:
 *   - the ingest service's enrolment endpoint, with a one-time enrolment token (what a device in
 *     the field does: it never holds a CA):
 *       vitalseal provision --device-id bed-7 --enrol https://ingest.hospital.example:8443 \
 *         --token-file /run/vitalseal/enrol.token --ca-file fleet-root.pem --out /var/lib/vitalseal/identity --store tpm
 *   - a local development CA directory (labs, tests):
 *       VITALSEAL_PKI_PASSPHRASE=... vitalseal provision --device-id bed-7 --pki ca --out bed-7 --unencrypted-dev-keys
 *
 * The enrolment token is a secret: it is read from an owner-only file or an environment variable,
 * never taken as an argument, never printed, never quoted in an error.
 */
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KeyStoreConfig } from '../../keystore/config.ts';
import { openKeyStore } from '../../keystore/open.ts';
import { checkKeyName } from '../../keystore/names.ts';
import { readSecret } from '../../keystore/secret-source.ts';
import { keyObjectSigner, type Signer } from '../../keystore/signer.ts';
import { formatSpkiPin } from '../../pki/certificate.ts';
import { createCsr } from '../../pki/csr.ts';
import { isDeviceId } from '../../pki/device-id.ts';
import { chainPem, checkEnrolToken, checkIssuedChain, enrol, parseEstUrl, type Enrolment, type EstEndpoint } from '../../pki/est-client.ts';
import { writeKeyFile } from '../../pki/key-file.ts';
import { pemEncode } from '../../pki/pem.ts';
import { serverAuthTls } from '../../transport/mqtts/connector.ts';
import { trustFromPem, type MqttsTrust } from '../../transport/mqtts/tls.ts';
import { systemClock } from '../../util/clock.ts';
import { zeroize } from '../../util/bytes.ts';
import { VitalsealError } from '../../util/errors.ts';
import { parse } from '../args.ts';
import { UsageError, type CliIo, type CommandModule } from '../types.ts';
import { STORE_OPTIONS, STORE_OPTIONS_HELP, storeConfig, type StoreValues } from '../store-options.ts';
import { openCa, passphraseFrom } from './pki.ts';

const STORES = ['dev-pem', 'software', 'tpm', 'pkcs11'] as const;
type StoreName = (typeof STORES)[number];

const HELP = `usage:
  vitalseal provision --device-id ID --enrol https://HOST[:PORT] (--token-file FILE | --token-env VAR)
      --ca-file ROOT.pem --out DIR [--store STORE] [--key-name NAME] [store options]
  vitalseal provision --device-id ID --pki DIR --out DIR [--store STORE] [--key-name NAME] [store options]
      [--pki-passphrase-env VAR | --pki-passphrase-file FILE]
  (--store dev-pem also takes --key-passphrase-env VAR | --key-passphrase-file FILE | --unencrypted-dev-keys)

  Creates the device identity key (ECDSA P-256) in STORE, makes a CSR signed by that key, has the
  device certificate issued (CN and URI SAN urn:dev:vitalseal:ID, clientAuth), checks it with the
  ingest's own validation and that it carries the store's key, and writes to --out DIR (mode 0700):
    device.pem     the device certificate
    chain.pem      device + issuing CA (what the device presents in DTLS/TLS)
    root-ca.pem    the fleet root CA (the trust anchor the device pins)
    device.csr     the CSR (public; kept for re-issue)
    identity.json  device id, store, key name, serial, expiry, SPKI pin, issuer

  Issuers:
    --enrol URL    the ingest service's enrolment endpoint (POST /.well-known/est/simpleenroll over
                   TLS 1.3). The one-time token (vitalseal ingest enrol-token --device-id ID) comes
                   from --token-file FILE (mode 0600) or --token-env VAR: never from the command
                   line, never printed. --ca-file ROOT.pem is the fleet root the device pins: the
                   service's certificate must chain to it and name the URL's host, and so must the
                   issued chain. The service spends the token once it has checked the CSR's
                   signature: if anything fails after that (a token for another device, an answer
                   refused here), ask for a new one.
    --pki DIR      a local development CA (its passphrase from VITALSEAL_PKI_PASSPHRASE or
                   --pki-passphrase-env/--pki-passphrase-file).

  Key stores (--store, default dev-pem):
    dev-pem    development only: a P-256 key in --out DIR/NAME.key (0600), scrypt-encrypted under
               --key-passphrase-env/--key-passphrase-file, or in clear with --unencrypted-dev-keys
    software   the encrypted software key store (development grade)
    tpm        TPM 2.0 through tpm2-tss FAPI: the key never leaves the TPM
    pkcs11     PKCS#11 token (OP-TEE's TA on a board; SoftHSM2 in tests): the key never leaves it
  Their settings, as for vitalseal keys:
${STORE_OPTIONS_HELP}
  --key-name names the key in the store (default device-identity).

  A key whose certificate could not be issued is deleted again, so a retry can use the same name.
`;

/** Who issues the certificate: checked and opened before any key is created. */
interface Issuer {
  /** For identity.json and the summary. Never a secret. */
  readonly description: string;
  issue(signer: Signer, deviceId: string): Promise<Enrolment>;
  close(): void;
}

/** The ingest service's enrolment endpoint; the token is read now and dropped on `close`. */
async function enrolmentIssuer(values: { enrol: string; 'token-file'?: string | undefined; 'token-env'?: string | undefined; 'ca-file'?: string | undefined }, io: CliIo): Promise<Issuer> {
  let endpoint: EstEndpoint;
  try {
    endpoint = parseEstUrl(values.enrol);
  } catch (e) {
    throw new UsageError(`--enrol: ${(e as Error).message}`);
  }
  const caFile = values['ca-file'];
  if (caFile === undefined) throw new UsageError('--enrol needs --ca-file ROOT.pem (the fleet root the device pins)');
  let trust: MqttsTrust;
  try {
    trust = trustFromPem(readFileSync(caFile, 'utf8'));
  } catch (e) {
    throw new UsageError(`--ca-file: ${caFile} holds no usable CA certificate (${(e as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
  const fromFile = values['token-file'];
  const fromEnv = values['token-env'];
  if ((fromFile === undefined) === (fromEnv === undefined)) throw new UsageError('--enrol needs the enrolment token from exactly one of --token-file FILE (mode 0600) or --token-env VAR');
  const bytes = await readSecret(fromFile !== undefined ? { file: fromFile } : { env: fromEnv as string }, { env: io.env, what: 'enrolment token' });
  let token: string | undefined = Buffer.from(bytes).toString('latin1');
  zeroize(bytes);
  try {
    checkEnrolToken(token);
  } catch (e) {
    throw new UsageError(`${fromFile !== undefined ? `--token-file ${fromFile}` : `--token-env ${fromEnv ?? ''}`}: ${(e as Error).message}`);
  }
  return {
    description: `enrolment endpoint ${endpoint.origin}`,
    async issue(signer, deviceId) {
      if (token === undefined) throw new UsageError('the enrolment token was used already');
      const t = token;
      token = undefined; // one attempt per token
      return enrol({ endpoint, connector: serverAuthTls({ trust }), signer, deviceId, token: t, roots: trust.roots, clock: systemClock });
    },
    close() {
      token = undefined;
    },
  };
}

/** The local development CA: opened (its key decrypted) before any device key is created. */
async function localCaIssuer(dir: string, values: { 'pki-passphrase-env'?: string | undefined; 'pki-passphrase-file'?: string | undefined }, io: CliIo): Promise<Issuer> {
  const ca = await openCa(dir, { 'passphrase-env': values['pki-passphrase-env'], 'passphrase-file': values['pki-passphrase-file'] }, io,
    '--pki-passphrase-env VAR / --pki-passphrase-file FILE');
  return {
    description: `local development CA (${dir})`,
    async issue(signer, deviceId) {
      const now = systemClock.now();
      const csr = await createCsr({ signer, subject: { commonName: deviceId }, deviceId });
      const cert = await ca.issueDevice(csr, deviceId, now);
      const pem = pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', ca.issuing.der);
      // The same checks as an enrolment answer gets: the ingest's validation, the store's key.
      return { ...checkIssuedChain(pem, { roots: [ca.root], now, deviceId, keySpki: await signer.publicKeySpki() }), csr };
    },
    close() {},
  };
}

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
  // An enrolment token given where a PKCS#11 token URI belongs, or as a value: refused without echoing it.
  const tokenFlag = args.findIndex((a, i) => (a === '--token' && /^vse_/.test(args[i + 1] ?? '')) || /^--token=vse_/.test(a));
  if (tokenFlag >= 0) throw new UsageError('the enrolment token is a secret and never a command-line value: give --token-file FILE (mode 0600) or --token-env VAR (--token names a PKCS#11 token)');
  const { values, positionals } = parse(args, {
    'device-id': { type: 'string' },
    pki: { type: 'string' },
    enrol: { type: 'string' },
    'token-file': { type: 'string' },
    'token-env': { type: 'string' },
    'ca-file': { type: 'string' },
    out: { type: 'string' },
    ...STORE_OPTIONS,
    'key-name': { type: 'string', default: 'device-identity' },
    'key-passphrase-env': { type: 'string' },
    'key-passphrase-file': { type: 'string' },
    'unencrypted-dev-keys': { type: 'boolean' },
    'pki-passphrase-env': { type: 'string' },
    'pki-passphrase-file': { type: 'string' },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${/^vse_/.test(positionals[0] ?? '') ? '(an enrolment token? use --token-file or --token-env)' : positionals[0] ?? ''}`);
  const deviceId = values['device-id'];
  if (deviceId === undefined) throw new UsageError('provision needs --device-id ID');
  if (!isDeviceId(deviceId)) throw new UsageError('--device-id: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit');
  if ((values.pki === undefined) === (values.enrol === undefined)) throw new UsageError('provision needs exactly one issuer: --enrol URL (the ingest enrolment endpoint) or --pki DIR (a local development CA)');
  if (values.enrol !== undefined && (values['pki-passphrase-env'] !== undefined || values['pki-passphrase-file'] !== undefined)) throw new UsageError('--pki-passphrase-* apply to --pki only');
  if (values.pki !== undefined) {
    for (const f of ['token-file', 'token-env', 'ca-file'] as const) if (values[f] !== undefined) throw new UsageError(`--${f} applies to --enrol only`);
  }
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

  // The issuer is ready (CA key decrypted, or token, root and URL read and checked) before any key
  // is created, so a wrong passphrase or a missing token leaves nothing behind in the key store.
  const issuer = values.enrol !== undefined
    ? await enrolmentIssuer({ ...values, enrol: values.enrol }, io)
    : await localCaIssuer(values.pki as string, values, io);
  try {
    const identityStore = await openIdentityStore(store, values, outDir, io);
    try {
      return await issueAndWrite({ deviceId, store, keyName, outDir, issuer, identityStore }, io);
    } finally {
      await identityStore.close();
    }
  } finally {
    issuer.close();
  }
}

async function openIdentityStore(store: StoreName, values: StoreValues & { 'key-passphrase-env'?: string | undefined; 'key-passphrase-file'?: string | undefined; 'unencrypted-dev-keys'?: boolean | undefined }, outDir: string, io: CliIo): Promise<IdentityKeyStore> {
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
    return devPemStore(outDir, keyPass);
  }
  if (values['unencrypted-dev-keys'] === true || values['key-passphrase-env'] !== undefined || values['key-passphrase-file'] !== undefined) {
    throw new UsageError('key passphrase options apply to --store dev-pem only; the store config names its own secrets');
  }
  const opened = await openBackend(storeConfig(values, io.env), io);
  mkdirSync(outDir, { recursive: true, mode: 0o700 });
  return opened;
}

async function issueAndWrite(o: { deviceId: string; store: StoreName; keyName: string; outDir: string; issuer: Issuer; identityStore: IdentityKeyStore }, io: CliIo): Promise<number> {
  const { deviceId, store, keyName, outDir, issuer, identityStore } = o;
  const signer = await identityStore.createSigningKey(keyName);
  let written = false;
  try {
    let issued: Enrolment;
    try {
      issued = await issuer.issue(signer, deviceId);
    } catch (e) {
      if (e instanceof VitalsealError) throw new ProvisionFailed(`certificate not issued (the new key '${keyName}' was deleted again): ${e.message}`, e);
      throw e;
    }
    const { leaf, peer } = issued;
    const files: [string, string][] = [
      ['device.csr', pemEncode('CERTIFICATE REQUEST', issued.csr)],
      ['device.pem', pemEncode('CERTIFICATE', leaf.der)],
      ['chain.pem', chainPem(issued)],
      ['root-ca.pem', pemEncode('CERTIFICATE', issued.root.der)],
      ['identity.json', `${JSON.stringify({
        deviceId,
        store,
        keyName,
        ...(store === 'dev-pem' ? { keyFile: `${keyName}.key` } : { keyStore: identityStore.label }),
        certificate: 'device.pem',
        chain: 'chain.pem',
        trustAnchor: 'root-ca.pem',
        serial: leaf.serialHex,
        notAfter: new Date(leaf.notAfter).toISOString(),
        spkiPin: formatSpkiPin(peer.spkiSha256),
        issuedBy: issuer.description,
      }, null, 2)}\n`],
    ];
    for (const [name, text] of files) writeFileSync(join(outDir, name), text, { flag: 'wx', mode: 0o644 });
    written = true;
    io.stderr.write([
      `provisioned device ${peer.deviceId ?? deviceId}`,
      `  key          ${keyName} in ${identityStore.label}`,
      `  certificate  ${join(outDir, 'device.pem')} serial ${leaf.serialHex}, valid until ${new Date(leaf.notAfter).toISOString()}`,
      `  issued by    ${issuer.description}`,
      `  chain        ${join(outDir, 'chain.pem')}; trust anchor ${join(outDir, 'root-ca.pem')}`,
      `  SPKI pin     ${formatSpkiPin(peer.spkiSha256)}`,
      '',
    ].join('\n'));
    return 0;
  } finally {
    // A key without a certificate is useless and would block a retry with the same name.
    if (!written) await identityStore.delete(keyName).catch(() => undefined);
  }
}

/** Issuing failed after the key was made: the message says the key is gone again. */
class ProvisionFailed extends VitalsealError {
  readonly kind = 'provision';
  constructor(message: string, cause: VitalsealError) {
    super(cause.code, message, { cause });
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
