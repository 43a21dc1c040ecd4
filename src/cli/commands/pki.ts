/**
 * `vitalseal pki init|issue|revoke|crl|inspect`: the development fleet CA kept in a directory
 * (src/pki/dev-ca.ts), and a certificate/CSR/CRL inspector.
 *
 *   VITALSEAL_PKI_PASSPHRASE=... vitalseal pki init --dir ca --org "Example Fleet"
 *   vitalseal pki issue --dir ca --csr bed-7.csr --device-id bed-7 --out bed-7.pem
 *   vitalseal pki issue --dir ca --csr broker.csr --server broker.example.org --server 10.0.0.2 --out broker.pem
 *   vitalseal pki revoke --dir ca --cert bed-7.pem --reason keyCompromise
 *   vitalseal pki inspect bed-7.pem
 */
import { closeSync, fstatSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { readSecret } from '../../keystore/secret-source.ts';
import { parseCertificate, formatSpkiPin, spkiSha256, type Certificate } from '../../pki/certificate.ts';
import { isRevocationReason, parseCrl, REVOCATION_REASONS, type Crl } from '../../pki/crl.ts';
import { parseCsr, type Csr } from '../../pki/csr.ts';
import { initDevCa, openDevCa, type DevCa } from '../../pki/dev-ca.ts';
import { deviceIdOf, isDeviceId } from '../../pki/device-id.ts';
import { oidName } from '../../pki/oids.ts';
import { derOrPem, pemDecode, pemEncode } from '../../pki/pem.ts';
import { publicKeyFromSpki } from '../../pki/algorithms.ts';
import { systemClock } from '../../util/clock.ts';
import { zeroize } from '../../util/bytes.ts';
import { CertificateError, KeyStoreError } from '../../util/errors.ts';
import { parse } from '../args.ts';
import { UsageError, withSubCommands, type CliIo, type CommandModule } from '../types.ts';

export const PASSPHRASE_ENV = 'VITALSEAL_PKI_PASSPHRASE';

const HELP = `usage:
  vitalseal pki init --dir DIR --org NAME [--root-key-out PATH] [--unencrypted-dev-keys]
      [--root-days N] [--issuing-days N] [--device-days N] [--service-days N] [--crl-days N]
      creates a development fleet CA: a root CA and an issuing CA (P-256), their keys (0600,
      scrypt-encrypted under the passphrase), ca-chain.pem (mosquitto cafile) and crl.pem (crlfile).
      --root-key-out writes the root key elsewhere (keep it offline: issuing never needs it).
  vitalseal pki issue --dir DIR --csr FILE (--device-id ID | --server NAME [--server NAME ...] [--client-auth])
      [--out FILE] [--chain]
      issues a device certificate (CN and URI SAN urn:dev:vitalseal:ID, clientAuth) or a service
      certificate (DNS/IP SANs, serverAuth; --client-auth adds clientAuth) for the CSR's key.
      Writes PEM to --out (never overwriting) or stdout; --chain appends the issuing CA.
  vitalseal pki revoke --dir DIR (--serial HEX | --cert FILE) [--reason ${Object.keys(REVOCATION_REASONS).join('|')}]
      revokes a certificate this CA issued and writes a new crl.pem.
  vitalseal pki crl --dir DIR [--out FILE]
      signs a fresh CRL (next CRL number) into DIR/crl.pem (and --out); run it before nextUpdate.
  vitalseal pki inspect FILE [--json]
      shows a certificate (or a chain), a CSR or a CRL, PEM or DER.

CA key passphrase: the ${PASSPHRASE_ENV} environment variable, or --passphrase-env VAR, or
--passphrase-file FILE (mode 0600). Without one, init needs --unencrypted-dev-keys and writes the
keys in clear, marked DEVELOPMENT ONLY. This is a development CA: production plugs its own CA
(a certificate and a key-store Signer) into the library instead.
`;

const PASSPHRASE_OPTIONS = {
  'passphrase-env': { type: 'string' },
  'passphrase-file': { type: 'string' },
} as const;

/** The passphrase from --passphrase-env/--passphrase-file, else $VITALSEAL_PKI_PASSPHRASE if set, else undefined. */
export async function passphraseFrom(values: { 'passphrase-env'?: string | undefined; 'passphrase-file'?: string | undefined }, io: CliIo, what: string, defaultEnv = PASSPHRASE_ENV): Promise<Uint8Array | undefined> {
  if (values['passphrase-env'] !== undefined && values['passphrase-file'] !== undefined) throw new UsageError('give --passphrase-env or --passphrase-file, not both');
  if (values['passphrase-file'] !== undefined) return readSecret({ file: values['passphrase-file'] }, { env: io.env, what });
  if (values['passphrase-env'] !== undefined) return readSecret({ env: values['passphrase-env'] }, { env: io.env, what });
  const v = io.env[defaultEnv];
  return v === undefined || v.length === 0 ? undefined : readSecret({ env: defaultEnv }, { env: io.env, what });
}

/** Certificates, CSRs and CRLs larger than this are refused before reading (CRLs are capped at 8 MiB). */
const MAX_INPUT_BYTES = 16 * 1024 * 1024;

export function readInput(path: string): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    if (fstatSync(fd).size > MAX_INPUT_BYTES) throw new UsageError(`${path} is larger than ${MAX_INPUT_BYTES} bytes`);
    return new Uint8Array(readFileSync(fd));
  } finally {
    closeSync(fd);
  }
}

function days(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[1-9][0-9]{0,5}$/.test(value)) throw new UsageError(`${flag} must be a whole number of days`);
  return Number(value);
}

/** Writes `text` to `path` (never replacing a file) or to stdout. */
export function output(io: CliIo, path: string | undefined, text: string): void {
  if (path === undefined) {
    io.stdout.write(text);
    return;
  }
  try {
    writeFileSync(path, text, { flag: 'wx', mode: 0o644 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(code === 'EEXIST' ? `${path} exists; refusing to overwrite it` : `cannot write ${path}: ${code ?? 'error'}`);
  }
}

/** Opens the CA directory and reads its issuing key now, so a missing passphrase fails before any work. */
export async function openCa(dir: string | undefined, values: Parameters<typeof passphraseFrom>[0], io: CliIo, flag = '--passphrase-env VAR / --passphrase-file FILE'): Promise<DevCa> {
  if (dir === undefined) throw new UsageError('--dir DIR is required');
  const passphrase = await passphraseFrom(values, io, 'CA key passphrase');
  const ca = openDevCa(dir, { ...withPassphrase(passphrase) });
  zeroize(passphrase);
  if (!ca.keysEncrypted) io.stderr.write(`warning: ${dir} holds unencrypted CA keys: DEVELOPMENT ONLY\n`);
  try {
    ca.authority();
  } catch (e) {
    if (e instanceof KeyStoreError && e.code === 'passphrase-required') throw new UsageError(`the CA keys in ${dir} are encrypted: set ${PASSPHRASE_ENV} or use ${flag}`);
    throw e;
  }
  return ca;
}

function withPassphrase(p: Uint8Array | undefined): { passphrase?: Uint8Array } {
  return p === undefined ? {} : { passphrase: p };
}

async function init(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, {
    dir: { type: 'string' },
    org: { type: 'string' },
    'root-key-out': { type: 'string' },
    'unencrypted-dev-keys': { type: 'boolean' },
    'root-days': { type: 'string' },
    'issuing-days': { type: 'string' },
    'device-days': { type: 'string' },
    'service-days': { type: 'string' },
    'crl-days': { type: 'string' },
    ...PASSPHRASE_OPTIONS,
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0] ?? ''}`);
  if (values.dir === undefined) throw new UsageError('init needs --dir DIR');
  if (values.org === undefined) throw new UsageError('init needs --org NAME (the fleet operator, as it should appear in certificates)');
  const passphrase = await passphraseFrom(values, io, 'CA key passphrase');
  if (passphrase === undefined && values['unencrypted-dev-keys'] !== true) {
    throw new UsageError(`no passphrase for the CA keys: set ${PASSPHRASE_ENV}, or use --passphrase-env VAR / --passphrase-file FILE, or --unencrypted-dev-keys for a throwaway development CA`);
  }
  if (passphrase !== undefined && values['unencrypted-dev-keys'] === true) throw new UsageError('--unencrypted-dev-keys conflicts with a passphrase');
  const policy: Record<string, number> = {};
  for (const [flag, key] of [['root-days', 'rootCaDays'], ['issuing-days', 'issuingCaDays'], ['device-days', 'deviceDays'], ['service-days', 'serviceDays']] as const) {
    const d = days(values[flag], `--${flag}`);
    if (d !== undefined) policy[key] = d;
  }
  const crlDays = days(values['crl-days'], '--crl-days');
  let ca: DevCa;
  try {
    ca = await initDevCa({
      dir: values.dir,
      organization: values.org,
      now: systemClock.now(),
      policy,
      ...withPassphrase(passphrase),
      ...(values['root-key-out'] === undefined ? {} : { rootKeyPath: values['root-key-out'] }),
      ...(crlDays === undefined ? {} : { crlDays }),
    });
  } catch (e) {
    if (e instanceof RangeError) throw new UsageError(e.message);
    throw e;
  } finally {
    zeroize(passphrase);
  }
  io.stderr.write([
    `created fleet CA in ${values.dir}`,
    `  root CA      ${ca.root.subject.text}  (pin ${formatSpkiPin(spkiSha256(ca.root.spki.der))})`,
    `  issuing CA   ${ca.issuing.subject.text}`,
    `  root key     ${values['root-key-out'] ?? `${values.dir}/root-ca.key`}${values['root-key-out'] === undefined ? '' : ' (keep it offline)'}`,
    `  trust anchor ${ca.paths.root}; mosquitto: cafile ${ca.paths.chain}, crlfile ${ca.paths.crl}`,
    passphrase === undefined ? '  WARNING: CA keys are NOT encrypted (development only)' : '  CA keys encrypted (scrypt, AES-256-CBC PKCS#8)',
    '',
  ].join('\n'));
  return 0;
}

async function issue(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, {
    dir: { type: 'string' },
    csr: { type: 'string' },
    'device-id': { type: 'string' },
    server: { type: 'string', multiple: true },
    'client-auth': { type: 'boolean' },
    out: { type: 'string' },
    chain: { type: 'boolean' },
    ...PASSPHRASE_OPTIONS,
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0] ?? ''}`);
  if (values.csr === undefined) throw new UsageError('issue needs --csr FILE');
  const servers = values.server ?? [];
  if ((values['device-id'] === undefined) === (servers.length === 0)) throw new UsageError('issue needs exactly one of --device-id ID or --server NAME');
  if (values['device-id'] !== undefined && !isDeviceId(values['device-id'])) {
    throw new UsageError('--device-id: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit');
  }
  if (values['client-auth'] === true && servers.length === 0) throw new UsageError('--client-auth applies to --server certificates');
  const [csrDer] = derOrPem(readInput(values.csr), 'CERTIFICATE REQUEST');
  const csr = parseCsr(csrDer as Uint8Array);
  const ca = await openCa(values.dir, values, io);
  const now = systemClock.now();
  let cert: Certificate;
  if (values['device-id'] !== undefined) {
    cert = await ca.issueDevice(csr, values['device-id'], now);
  } else {
    const dnsNames = servers.filter((s) => isIP(s) === 0);
    const ipAddresses = servers.filter((s) => isIP(s) !== 0);
    try {
      cert = await ca.issueService(csr, { dnsNames, ipAddresses, clientAuth: values['client-auth'] === true }, now);
    } catch (e) {
      if (e instanceof RangeError) throw new UsageError(e.message);
      throw e;
    }
  }
  const pem = pemEncode('CERTIFICATE', cert.der) + (values.chain === true ? pemEncode('CERTIFICATE', ca.issuing.der) : '');
  output(io, values.out, pem);
  io.stderr.write(`issued ${cert.subject.text} serial ${cert.serialHex}, valid until ${new Date(cert.notAfter).toISOString()}\n`);
  return 0;
}

async function revoke(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, {
    dir: { type: 'string' },
    serial: { type: 'string' },
    cert: { type: 'string' },
    reason: { type: 'string' },
    ...PASSPHRASE_OPTIONS,
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0] ?? ''}`);
  if ((values.serial === undefined) === (values.cert === undefined)) throw new UsageError('revoke needs exactly one of --serial HEX or --cert FILE');
  if (values.reason !== undefined && !isRevocationReason(values.reason)) throw new UsageError(`unknown --reason; one of ${Object.keys(REVOCATION_REASONS).join(', ')}`);
  let serialHex: string;
  if (values.cert !== undefined) {
    const [der] = derOrPem(readInput(values.cert), 'CERTIFICATE');
    serialHex = parseCertificate(der as Uint8Array).serialHex;
  } else {
    serialHex = (values.serial as string).toLowerCase().replace(/:/g, '');
    if (!/^[0-9a-f]{2,42}$/.test(serialHex) || serialHex.length % 2 !== 0) throw new UsageError('--serial must be the hex serial number (as pki inspect or openssl x509 -serial print it)');
  }
  const ca = await openCa(values.dir, values, io);
  const reason = values.reason !== undefined && isRevocationReason(values.reason) ? values.reason : undefined;
  const { crlNumber } = await ca.revoke(serialHex, reason, systemClock.now());
  io.stderr.write(`revoked serial ${serialHex}; wrote ${ca.paths.crl} (CRL number ${crlNumber}). Reload the broker/ingest so they read it.\n`);
  return 0;
}

async function crl(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, { dir: { type: 'string' }, out: { type: 'string' }, ...PASSPHRASE_OPTIONS });
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0] ?? ''}`);
  const ca = await openCa(values.dir, values, io);
  const { crlNumber } = await ca.writeCrl(systemClock.now());
  if (values.out !== undefined) output(io, values.out, readFileSync(ca.paths.crl, 'utf8'));
  io.stderr.write(`wrote ${ca.paths.crl} (CRL number ${crlNumber}, ${ca.revokedList().length} revoked)\n`);
  return 0;
}

// ---- inspect ----------------------------------------------------------------------------------------

function keyText(spki: Uint8Array): string {
  try {
    const k = publicKeyFromSpki(spki, 'key');
    const d = k.asymmetricKeyDetails;
    return k.asymmetricKeyType === 'ec' ? `EC ${d?.namedCurve ?? ''}` : k.asymmetricKeyType === 'rsa' ? `RSA ${d?.modulusLength ?? ''}` : String(k.asymmetricKeyType);
  } catch (e) {
    return `unsupported (${(e as Error).message})`;
  }
}

function certificateJson(c: Certificate): Record<string, unknown> {
  const e = c.extensions;
  let deviceId: string | null;
  try {
    deviceId = deviceIdOf(c) ?? null;
  } catch (err) {
    deviceId = `INVALID: ${(err as Error).message}`;
  }
  return {
    type: 'certificate',
    subject: c.subject.text,
    issuer: c.issuer.text,
    serial: c.serialHex,
    notBefore: new Date(c.notBefore).toISOString(),
    notAfter: new Date(c.notAfter).toISOString(),
    key: keyText(c.spki.der),
    spkiPin: formatSpkiPin(spkiSha256(c.spki.der)),
    signatureAlgorithm: oidName(c.signatureAlgorithm.oid),
    basicConstraints: e.basicConstraints ?? null,
    keyUsage: e.keyUsage === undefined ? null : [...e.keyUsage],
    extKeyUsage: e.extKeyUsage?.map(oidName) ?? null,
    subjectAltName: e.subjectAltName ?? null,
    subjectKeyId: e.subjectKeyId === undefined ? null : Buffer.from(e.subjectKeyId).toString('hex'),
    authorityKeyId: e.authorityKeyId === undefined ? null : Buffer.from(e.authorityKeyId).toString('hex'),
    unhandledCriticalExtensions: e.unhandledCritical.map(oidName),
    deviceId,
  };
}

function csrJson(c: Csr): Record<string, unknown> {
  return {
    type: 'csr',
    subject: c.subject.text,
    key: keyText(c.spki.der),
    spkiPin: formatSpkiPin(spkiSha256(c.spki.der)),
    signatureAlgorithm: oidName(c.signatureAlgorithm.oid),
    signature: 'valid (proof of possession)',
    requestedSubjectAltName: c.requestedExtensions.subjectAltName ?? null,
  };
}

function crlJson(c: Crl): Record<string, unknown> {
  return {
    type: 'crl',
    issuer: c.issuer.text,
    thisUpdate: new Date(c.thisUpdate).toISOString(),
    nextUpdate: c.nextUpdate === undefined ? null : new Date(c.nextUpdate).toISOString(),
    crlNumber: c.crlNumber === undefined ? null : c.crlNumber.toString(),
    signatureAlgorithm: oidName(c.signatureAlgorithm.oid),
    revoked: [...c.revoked.values()].map((r) => ({ serial: r.serialHex, revokedAt: new Date(r.revokedAt).toISOString(), reason: r.reason ?? null })),
    unhandledCriticalExtensions: c.unhandledCritical.map(oidName),
  };
}

function inspectBytes(bytes: Uint8Array): Record<string, unknown>[] {
  const head = Buffer.from(bytes).toString('latin1');
  if (head.includes('-----BEGIN ')) {
    const blocks = pemDecode(head);
    if (blocks.length === 0) throw new CertificateError('malformed', 'no PEM block');
    return blocks.map((b) => {
      switch (b.label) {
        case 'CERTIFICATE':
          return certificateJson(parseCertificate(b.der));
        case 'CERTIFICATE REQUEST':
        case 'NEW CERTIFICATE REQUEST':
          return csrJson(parseCsr(b.der));
        case 'X509 CRL':
          return crlJson(parseCrl(b.der));
        default:
          b.der.fill(0); // possibly a private key: not kept, never printed
          return { type: 'other', label: b.label, note: 'not inspected (private keys are never printed)' };
      }
    });
  }
  // DER: try each kind; report the certificate parser's error if none fits.
  try {
    return [certificateJson(parseCertificate(bytes))];
  } catch (certError) {
    for (const attempt of [() => csrJson(parseCsr(bytes)), () => crlJson(parseCrl(bytes))]) {
      try {
        return [attempt()];
      } catch {
        // next kind
      }
    }
    throw certError;
  }
}

function textOf(item: Record<string, unknown>): string {
  const lines = [`${String(item['type'])}:`];
  for (const [k, v] of Object.entries(item)) {
    if (k === 'type' || v === null) continue;
    lines.push(`  ${k.padEnd(28)} ${typeof v === 'string' ? v : JSON.stringify(v)}`);
  }
  return `${lines.join('\n')}\n`;
}

async function inspect(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } });
  const [file, extra] = positionals;
  if (file === undefined || extra !== undefined) throw new UsageError('inspect needs exactly one FILE');
  const items = inspectBytes(readInput(file));
  io.stdout.write(values.json === true ? `${JSON.stringify(items.length === 1 ? items[0] : items, null, 2)}\n` : items.map(textOf).join('\n'));
  return 0;
}

export const command: CommandModule = withSubCommands('fleet CA: init, issue, revoke, crl, inspect', HELP, { init, issue, revoke, crl, inspect });
