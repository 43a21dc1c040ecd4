/**
 * Private key files for the development CA and the development device key store: PKCS#8 (RFC 5958)
 * encrypted with PBES2 (RFC 8018 §6.2) using scrypt (RFC 7914 §7) and AES-256-CBC, the format
 * `openssl pkcs8 -topk8 -scrypt` writes, so `openssl pkey` reads these files with the passphrase.
 * Node's default passphrase export uses PBKDF2 with 2048 iterations; scrypt makes guessing a
 * stolen file's passphrase far more expensive.
 *
 * Files are written with mode 0600 and refused when group or others can read them. Without a
 * passphrase a key is written in clear under a DEVELOPMENT ONLY banner (text before the PEM block,
 * which OpenSSL ignores).
 *
 * @example
 *   writeKeyFile(path, privateKey, passphrase);
 *   const key = readKeyFile(path, passphrase);
 */
import { createCipheriv, createPrivateKey, randomBytes, scryptSync, type KeyObject } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { zeroize } from '../util/bytes.ts';
import { KeyStoreError } from '../util/errors.ts';
import { octets, oid, seq, uint } from './der.ts';
import { OID } from './oids.ts';
import { pemEncode } from './pem.ts';

/** scrypt cost: N = 2^14, r = 8, p = 1 (16 MiB; OpenSSL's PBES2 decoder allows up to 32 MiB). */
const SCRYPT = { N: 16384, r: 8, p: 1 } as const;

export const DEV_KEY_BANNER = 'DEVELOPMENT ONLY: this private key is not encrypted. Never use it for patient data.';

/** Encrypted PKCS#8 PEM ("ENCRYPTED PRIVATE KEY") of `key` under `passphrase`. */
export function encryptPrivateKey(key: KeyObject, passphrase: Uint8Array): string {
  if (passphrase.length === 0) throw new RangeError('encryptPrivateKey: empty passphrase');
  const salt = randomBytes(16);
  const iv = randomBytes(16);
  const dk = scryptSync(passphrase, salt, 32, { N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p, maxmem: 64 * 1024 * 1024 });
  const pkcs8 = key.export({ format: 'der', type: 'pkcs8' });
  try {
    const cipher = createCipheriv('aes-256-cbc', dk, iv);
    const encrypted = Buffer.concat([cipher.update(pkcs8), cipher.final()]);
    const alg = seq(
      oid(OID.pbes2),
      seq(
        // RFC 7914 §7: scrypt-params ::= SEQUENCE { salt, costParameter, blockSize, parallelizationParameter, keyLength }
        seq(oid(OID.scrypt), seq(octets(salt), uint(SCRYPT.N), uint(SCRYPT.r), uint(SCRYPT.p), uint(32))),
        seq(oid(OID.aes256Cbc), octets(iv)),
      ),
    );
    return pemEncode('ENCRYPTED PRIVATE KEY', seq(alg, octets(encrypted)));
  } finally {
    zeroize(dk, pkcs8);
  }
}

/** Decrypts (or reads, if in clear) a PEM private key. A wrong passphrase is `KeyStoreError('bad-passphrase')`. */
export function decryptPrivateKey(pem: string, passphrase: Uint8Array | undefined, what: string): KeyObject {
  const encrypted = pem.includes('-----BEGIN ENCRYPTED PRIVATE KEY-----');
  if (encrypted && passphrase === undefined) throw new KeyStoreError('passphrase-required', `${what} is encrypted: give its passphrase`);
  const pass = encrypted ? Buffer.from(passphrase as Uint8Array) : undefined;
  try {
    return pass !== undefined ? createPrivateKey({ key: pem, format: 'pem', passphrase: pass }) : createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw encrypted
      ? new KeyStoreError('bad-passphrase', `${what}: wrong passphrase or damaged file`)
      : new KeyStoreError('unreadable-key', `${what}: not a PEM private key`);
  } finally {
    zeroize(pass);
  }
}

/**
 * Writes a key file with mode 0600, refusing to replace an existing file. Encrypted if a passphrase
 * is given; otherwise in clear under the DEVELOPMENT ONLY banner.
 */
export function writeKeyFile(path: string, key: KeyObject, passphrase: Uint8Array | undefined): void {
  const pem = passphrase === undefined
    ? `${DEV_KEY_BANNER}\n${key.export({ format: 'pem', type: 'pkcs8' }).toString()}`
    : encryptPrivateKey(key, passphrase);
  // 'wx' (O_CREAT | O_EXCL): never write through a file planted between a check and the write.
  writeFileSync(path, pem, { mode: 0o600, flag: 'wx' });
}

/** Reads a key file, refusing one that group or others may read (as ssh does). */
export function readKeyFile(path: string, passphrase: Uint8Array | undefined): KeyObject {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KeyStoreError(code === 'ENOENT' ? 'not-found' : 'unreadable-key', `cannot open key file ${path}: ${code ?? 'error'}`);
  }
  try {
    const st = fstatSync(fd);
    if ((st.mode & 0o077) !== 0) {
      throw new KeyStoreError('insecure-permissions', `key file ${path} has mode ${(st.mode & 0o777).toString(8)}; it must be 0600 (chmod 600)`);
    }
    const pem = readFileSync(fd, 'utf8');
    return decryptPrivateKey(pem, passphrase, `key file ${path}`);
  } finally {
    closeSync(fd);
  }
}
