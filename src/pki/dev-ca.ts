/**
 * A development/test fleet CA kept in a directory: root and issuing CA certificates, their keys
 * (0600 files, scrypt-encrypted, or in clear under a DEVELOPMENT ONLY banner), the certificates it
 * issued, the revocation list and the current CRL. Production plugs its own CA into the library
 * (`CertificateAuthority`: a certificate and a Signer) instead.
 *
 * Layout (all written by this module; the directory is mode 0700):
 *   pki.json          format, organisation, validity policy, key protection, CRL number
 *   root-ca.pem       the trust anchor devices and services pin
 *   root-ca.key       root key; absent when `rootKeyPath` put it elsewhere (offline)
 *   issuing-ca.pem    the CA that signs device/service certificates and CRLs
 *   issuing-ca.key    issuing key
 *   ca-chain.pem      issuing CA + root (mosquitto `cafile`)
 *   issued/<serial>.pem   every certificate issued
 *   revoked.json      revoked serials (what the CRL lists)
 *   crl.pem           the latest CRL (mosquitto `crlfile`, `openssl verify -CRLfile`)
 *
 * @example
 *   await initDevCa({ dir, organization: 'Example Fleet', now: clock.now(), passphrase });
 *   const ca = openDevCa(dir, { passphrase });
 *   const cert = await ca.issueDevice(csrDer, 'bed-7', clock.now());
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { keyObjectSigner, type Signer } from '../keystore/signer.ts';
import { ApiMisuse, CertificateError } from '../util/errors.ts';
import { parseCertificate, type Certificate } from './certificate.ts';
import { createCrl, isRevocationReason, type RevocationReason, type RevokedEntry } from './crl.ts';
import type { Csr } from './csr.ts';
import { createIssuingCa, createRootCa, issueDeviceCertificate, issueServiceCertificate, type CertificateAuthority } from './issue.ts';
import { readKeyFile, writeKeyFile } from './key-file.ts';
import { pemDecode, pemEncode } from './pem.ts';
import { DAY_MS, validityPolicy, type ValidityPolicy } from './policy.ts';

export const DEV_CA_FORMAT = 'vitalseal-dev-ca/1';

export interface DevCaMetadata {
  readonly format: typeof DEV_CA_FORMAT;
  readonly organization: string;
  readonly createdAt: string;
  readonly policy: ValidityPolicy;
  /** 'scrypt-aes-256-cbc' or 'none (development only)'. */
  readonly keyProtection: string;
  /** Where the root key went: 'root-ca.key' in the directory, or 'offline'. */
  readonly rootKey: 'root-ca.key' | 'offline';
  /** Days from one CRL to its nextUpdate. */
  readonly crlDays: number;
  /** The last CRL number used (RFC 5280 §5.2.3); 0 before the first CRL. */
  readonly crlNumber: number;
}

export interface InitDevCaOptions {
  readonly dir: string;
  readonly organization: string;
  readonly now: number;
  /** Encrypts both CA keys; without it the keys are written in clear, marked development only. */
  readonly passphrase?: Uint8Array;
  readonly policy?: Partial<ValidityPolicy>;
  /** Write the root key here instead of into the directory (e.g. removable media kept offline). */
  readonly rootKeyPath?: string;
  readonly crlDays?: number;
}

const FILES = {
  meta: 'pki.json',
  rootCert: 'root-ca.pem',
  rootKey: 'root-ca.key',
  issuingCert: 'issuing-ca.pem',
  issuingKey: 'issuing-ca.key',
  chain: 'ca-chain.pem',
  issued: 'issued',
  revoked: 'revoked.json',
  crl: 'crl.pem',
  lock: '.lock',
} as const;

function newP256(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
}

function writeAtomic(path: string, data: string, mode = 0o644): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode, flag: 'w' });
  renameSync(tmp, path);
}

/** Creates a new root and issuing CA in `dir` (which must not exist or be empty). */
export async function initDevCa(opts: InitDevCaOptions): Promise<DevCa> {
  const policy = validityPolicy(opts.policy);
  const crlDays = opts.crlDays ?? 7;
  if (!Number.isSafeInteger(crlDays) || crlDays < 1 || crlDays > 366) throw new RangeError('initDevCa: crlDays must be in [1, 366]');
  if (opts.organization.length === 0 || opts.organization.length > 48) throw new RangeError('initDevCa: organization must be 1-48 characters');
  if (existsSync(opts.dir) && readdirSync(opts.dir).length > 0) throw new ApiMisuse('exists', `${opts.dir} is not empty; refusing to overwrite a CA`);
  if (opts.rootKeyPath !== undefined && existsSync(opts.rootKeyPath)) throw new ApiMisuse('exists', `${opts.rootKeyPath} exists; refusing to overwrite a key`);
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  chmodSync(opts.dir, 0o700);
  mkdirSync(join(opts.dir, FILES.issued), { mode: 0o700 });

  const rootKey = newP256();
  const issuingKey = newP256();
  const rootSigner = keyObjectSigner(rootKey);
  const issuingSigner = keyObjectSigner(issuingKey);
  const root = await createRootCa({
    signer: rootSigner, now: opts.now, policy,
    subject: { organization: opts.organization, commonName: `${opts.organization} Root CA` },
  });
  const issuing = await createIssuingCa({
    root: { certificate: root, signer: rootSigner }, signer: issuingSigner, now: opts.now, policy,
    subject: { organization: opts.organization, commonName: `${opts.organization} Issuing CA 1` },
  });

  writeKeyFile(opts.rootKeyPath ?? join(opts.dir, FILES.rootKey), rootKey, opts.passphrase);
  writeKeyFile(join(opts.dir, FILES.issuingKey), issuingKey, opts.passphrase);
  writeFileSync(join(opts.dir, FILES.rootCert), pemEncode('CERTIFICATE', root.der), { flag: 'wx' });
  writeFileSync(join(opts.dir, FILES.issuingCert), pemEncode('CERTIFICATE', issuing.der), { flag: 'wx' });
  writeFileSync(join(opts.dir, FILES.chain), pemEncode('CERTIFICATE', issuing.der) + pemEncode('CERTIFICATE', root.der), { flag: 'wx' });
  writeFileSync(join(opts.dir, FILES.revoked), '[]\n', { flag: 'wx' });
  const meta: DevCaMetadata = {
    format: DEV_CA_FORMAT,
    organization: opts.organization,
    createdAt: new Date(opts.now).toISOString(),
    policy,
    keyProtection: opts.passphrase === undefined ? 'none (development only)' : 'scrypt-aes-256-cbc',
    rootKey: opts.rootKeyPath === undefined ? 'root-ca.key' : 'offline',
    crlDays,
    crlNumber: 0,
  };
  writeFileSync(join(opts.dir, FILES.meta), `${JSON.stringify(meta, null, 2)}\n`, { flag: 'wx' });
  const ca = openDevCa(opts.dir, opts.passphrase === undefined ? {} : { passphrase: opts.passphrase });
  await ca.writeCrl(opts.now);
  return ca;
}

function readCertFile(path: string): Certificate {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ApiMisuse('not-found', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const [block] = pemDecode(text, 'CERTIFICATE');
  if (block === undefined) throw new CertificateError('malformed', `${path} holds no certificate`);
  return parseCertificate(block.der);
}

function readMeta(dir: string): DevCaMetadata {
  let meta: DevCaMetadata;
  try {
    meta = JSON.parse(readFileSync(join(dir, FILES.meta), 'utf8')) as DevCaMetadata;
  } catch (e) {
    throw new ApiMisuse('not-a-ca-directory', `${dir} is not a vitalseal dev CA directory (${FILES.meta}: ${(e as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
  if (meta.format !== DEV_CA_FORMAT) throw new ApiMisuse('not-a-ca-directory', `${dir}/${FILES.meta}: unknown format ${JSON.stringify(meta.format)}`);
  return { ...meta, policy: validityPolicy(meta.policy) };
}

export function openDevCa(dir: string, opts: { passphrase?: Uint8Array } = {}): DevCa {
  return new DevCa(dir, readMeta(dir), opts.passphrase);
}

interface RevokedRecord extends RevokedEntry {
  readonly subject: string;
}

/** An opened development CA directory. Keys are read only when an operation needs them. */
export class DevCa {
  readonly dir: string;
  readonly root: Certificate;
  readonly issuing: Certificate;
  #meta: DevCaMetadata;
  readonly #passphrase: Uint8Array | undefined;
  #signer: Signer | undefined;

  constructor(dir: string, meta: DevCaMetadata, passphrase: Uint8Array | undefined) {
    this.dir = dir;
    this.#meta = meta;
    this.#passphrase = passphrase === undefined ? undefined : Uint8Array.from(passphrase);
    this.root = readCertFile(join(dir, FILES.rootCert));
    this.issuing = readCertFile(join(dir, FILES.issuingCert));
  }

  get metadata(): DevCaMetadata {
    return this.#meta;
  }

  get policy(): ValidityPolicy {
    return this.#meta.policy;
  }

  get keysEncrypted(): boolean {
    return this.#meta.keyProtection !== 'none (development only)';
  }

  /** Paths operators hand to other tools. */
  get paths(): { root: string; issuing: string; chain: string; crl: string } {
    return {
      root: join(this.dir, FILES.rootCert),
      issuing: join(this.dir, FILES.issuingCert),
      chain: join(this.dir, FILES.chain),
      crl: join(this.dir, FILES.crl),
    };
  }

  /** The issuing CA as a `CertificateAuthority` (reads and decrypts its key on first use). */
  authority(): CertificateAuthority {
    if (this.#signer === undefined) {
      const key = readKeyFile(join(this.dir, FILES.issuingKey), this.keysEncrypted ? this.#passphrase : undefined);
      this.#signer = keyObjectSigner(key);
    }
    return { certificate: this.issuing, signer: this.#signer };
  }

  async issueDevice(csr: Csr | Uint8Array, deviceId: string, now: number): Promise<Certificate> {
    const cert = await issueDeviceCertificate({ ca: this.authority(), csr, deviceId, now, policy: this.policy });
    this.#record(cert);
    return cert;
  }

  async issueService(csr: Csr | Uint8Array, names: { dnsNames?: readonly string[]; ipAddresses?: readonly string[]; clientAuth?: boolean }, now: number): Promise<Certificate> {
    const cert = await issueServiceCertificate({ ca: this.authority(), csr, ...names, now, policy: this.policy });
    this.#record(cert);
    return cert;
  }

  #record(cert: Certificate): void {
    writeFileSync(join(this.dir, FILES.issued, `${cert.serialHex}.pem`), pemEncode('CERTIFICATE', cert.der), { flag: 'wx' });
  }

  /** A certificate this CA issued, by serial (hex). */
  issued(serialHex: string): Certificate | undefined {
    if (!/^[0-9a-f]{2,42}$/.test(serialHex)) throw new RangeError('serial must be lower-case hex');
    const path = join(this.dir, FILES.issued, `${serialHex}.pem`);
    return existsSync(path) ? readCertFile(path) : undefined;
  }

  revokedList(): readonly RevokedRecord[] {
    const raw = JSON.parse(readFileSync(join(this.dir, FILES.revoked), 'utf8')) as unknown;
    if (!Array.isArray(raw)) throw new ApiMisuse('corrupt', `${FILES.revoked} is not a list`);
    return raw.map((r: { serialHex?: unknown; revokedAt?: unknown; reason?: unknown; subject?: unknown }) => {
      if (typeof r.serialHex !== 'string' || typeof r.revokedAt !== 'string' || typeof r.subject !== 'string') throw new ApiMisuse('corrupt', `${FILES.revoked}: bad entry`);
      const reason = typeof r.reason === 'string' && isRevocationReason(r.reason) ? r.reason : undefined;
      return { serialHex: r.serialHex, revokedAt: Date.parse(r.revokedAt), subject: r.subject, ...(reason === undefined ? {} : { reason }) };
    });
  }

  /**
   * Revokes a certificate this CA issued and writes a new CRL. Revoking twice is refused, so an
   * operator sees that the certificate was already revoked.
   */
  async revoke(serialHex: string, reason: RevocationReason | undefined, now: number): Promise<{ crlNumber: number }> {
    const cert = this.issued(serialHex);
    if (cert === undefined) throw new ApiMisuse('not-found', `no certificate with serial ${serialHex} was issued by this CA`);
    return this.#locked(async () => {
      const list = this.revokedList();
      if (list.some((r) => r.serialHex === serialHex)) throw new ApiMisuse('exists', `serial ${serialHex} is already revoked`);
      const next = [...list, { serialHex, revokedAt: now, subject: cert.subject.text, ...(reason === undefined ? {} : { reason }) }];
      writeAtomic(join(this.dir, FILES.revoked), `${JSON.stringify(next.map((r) => ({ ...r, revokedAt: new Date(r.revokedAt).toISOString() })), null, 2)}\n`);
      return this.#writeCrlUnlocked(now);
    });
  }

  /** Signs a new CRL (next CRL number) listing every revoked certificate; writes crl.pem. */
  async writeCrl(now: number): Promise<{ crlNumber: number }> {
    return this.#locked(() => this.#writeCrlUnlocked(now));
  }

  async #writeCrlUnlocked(now: number): Promise<{ crlNumber: number }> {
    const crlNumber = this.#meta.crlNumber + 1;
    const der = await createCrl({
      ca: this.authority(),
      revoked: this.revokedList(),
      crlNumber,
      now,
      nextUpdate: Math.min(now + this.#meta.crlDays * DAY_MS, this.issuing.notAfter),
    });
    writeAtomic(join(this.dir, FILES.crl), pemEncode('X509 CRL', der));
    this.#meta = { ...this.#meta, crlNumber };
    writeAtomic(join(this.dir, FILES.meta), `${JSON.stringify(this.#meta, null, 2)}\n`);
    return { crlNumber };
  }

  /** One writer at a time: an O_EXCL lock file around read-modify-write of revoked.json and pki.json. */
  async #locked<T>(fn: () => Promise<T>): Promise<T> {
    const lock = join(this.dir, FILES.lock);
    let fd: number;
    try {
      fd = openSync(lock, 'wx', 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new ApiMisuse('locked', `${lock} exists: another vitalseal pki command is running (remove the file if none is)`);
      }
      throw e;
    }
    try {
      this.#meta = readMeta(this.dir);
      return await fn();
    } finally {
      closeSync(fd);
      unlinkSync(lock);
    }
  }
}
