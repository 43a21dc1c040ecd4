/**
 * scrypt (RFC 7914) key derivation for the software store's passphrase protection, through
 * node:crypto (OpenSSL's EVP_PBE_scrypt).
 *
 * Cost: the default N = 2^15, r = 8, p = 1 needs 32 MiB (128 * N * r bytes, RFC 7914 §2) and takes
 * about 0.1 s on an x86 server core and roughly half a second on a Raspberry Pi 4: paid once when the
 * store opens, never per operation. The parameters are stored in the file header so a file made with
 * other costs still opens; the bounds below stop a doctored header from asking for gigabytes.
 */
import { scrypt as nodeScrypt } from 'node:crypto';
import { KeyStoreError } from '../../util/errors.ts';

export interface ScryptParams {
  /** log2 of N, the CPU/memory cost (RFC 7914 §2: N a power of two). */
  readonly logN: number;
  /** Block size r. */
  readonly r: number;
  /** Parallelisation p. */
  readonly p: number;
}

export const DEFAULT_SCRYPT: ScryptParams = Object.freeze({ logN: 15, r: 8, p: 1 });

/**
 * Accepted when reading a header: 2^10 (tests) up to 2^20; memory 128 * N * r at most 256 MiB.
 * Below the default the store still opens, but `isBelowDefaultCost` lets the caller warn.
 */
export const SCRYPT_LIMITS = Object.freeze({ minLogN: 10, maxLogN: 20, maxR: 32, maxP: 16, maxMemoryBytes: 256 * 1024 * 1024 });

export const SCRYPT_KEY_LENGTH = 32;

/** Memory scrypt needs for these parameters (RFC 7914 §2 and §5: V is N blocks of 128 * r bytes). */
export function scryptMemoryBytes(params: ScryptParams): number {
  return 128 * 2 ** params.logN * params.r + 128 * params.r * params.p;
}

/** Throws `KeyStoreError(code)` unless the parameters are within SCRYPT_LIMITS. */
export function checkScryptParams(params: ScryptParams, code: string): ScryptParams {
  const { logN, r, p } = params;
  const ok = [logN, r, p].every((v) => Number.isSafeInteger(v))
    && logN >= SCRYPT_LIMITS.minLogN && logN <= SCRYPT_LIMITS.maxLogN
    && r >= 1 && r <= SCRYPT_LIMITS.maxR && p >= 1 && p <= SCRYPT_LIMITS.maxP
    && scryptMemoryBytes(params) <= SCRYPT_LIMITS.maxMemoryBytes;
  if (!ok) {
    throw new KeyStoreError(code, `scrypt parameters logN=${logN} r=${r} p=${p} are outside the accepted range (logN ${SCRYPT_LIMITS.minLogN}-${SCRYPT_LIMITS.maxLogN}, r 1-${SCRYPT_LIMITS.maxR}, p 1-${SCRYPT_LIMITS.maxP}, at most ${SCRYPT_LIMITS.maxMemoryBytes >> 20} MiB)`);
  }
  return params;
}

/** True when the parameters cost less memory than the default (memory is what makes scrypt hard). */
export function isBelowDefaultCost(params: ScryptParams): boolean {
  return scryptMemoryBytes(params) < scryptMemoryBytes(DEFAULT_SCRYPT);
}

/**
 * Derives `length` bytes from `passphrase` and `salt` (RFC 7914 §6). Runs on libuv's thread pool,
 * so the event loop stays free. The caller owns and zeroises the result.
 */
export function deriveScrypt(passphrase: Uint8Array, salt: Uint8Array, params: ScryptParams, length = SCRYPT_KEY_LENGTH): Promise<Uint8Array> {
  const N = 2 ** params.logN;
  // OpenSSL refuses when its estimate exceeds maxmem; give it the need plus slack, never unbounded.
  const maxmem = scryptMemoryBytes(params) + 2 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    nodeScrypt(passphrase, salt, length, { N, r: params.r, p: params.p, maxmem }, (err, key) => {
      if (err) reject(new KeyStoreError('kdf-failed', `scrypt failed: ${err.message}`, { cause: err }));
      else resolve(new Uint8Array(key.buffer, key.byteOffset, key.byteLength));
    });
  });
}
