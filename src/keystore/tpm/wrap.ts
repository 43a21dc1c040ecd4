/**
 * How the TPM store wraps data keys under a KEK.
 *
 * The KEK is a 32-byte secret sealed in the TPM (a keyed-hash data object under the SRK). FAPI has no
 * symmetric encrypt/decrypt for our use (Fapi_Encrypt is RSA-only in tpm2-tss 3.2), and TPMs do no
 * AES-GCM, so `wrapKey` unseals the KEK into host memory, uses it once and wipes it straight after.
 * The KEK is therefore protected at rest by the TPM (it only unseals on this TPM, under this SRK)
 * but is briefly in process memory during a wrap or unwrap.
 *
 * Blob (version 1):
 *
 *   0      1 byte   version = 1
 *   1     32 bytes  salt (random, fresh per blob)
 *   33     n bytes  AES-256-GCM ciphertext of the data key
 *   33+n  16 bytes  GCM tag
 *
 * The AES key for one blob is HKDF-SHA256(KEK, salt, "vitalseal tpm kek wrap v1") (RFC 5869), used
 * for that blob only, with an all-zero 96-bit nonce. A nonce can thus never repeat under a key
 * (each derived key encrypts exactly one message), however many data keys one KEK wraps over the
 * device's life; a random 96-bit nonce under the KEK itself would be bounded by NIST SP 800-38D
 * §8.3 (2^32 wraps). The header (version and salt) is the GCM additional data, so every byte of the
 * blob is authenticated.
 */
import { createCipheriv, createDecipheriv, hkdfSync } from 'node:crypto';
import { zeroize } from '../../util/bytes.ts';
import { TpmKeyStoreError } from './errors.ts';

export const KEK_LENGTH = 32;
export const WRAP_VERSION = 1;
const SALT_LENGTH = 32;
const TAG_LENGTH = 16;
const HEADER_LENGTH = 1 + SALT_LENGTH;
const INFO = Buffer.from('vitalseal tpm kek wrap v1', 'ascii');
const ZERO_NONCE = Buffer.alloc(12);
/** Data keys are keys: 1..1024 bytes. */
export const MAX_DATA_KEY = 1024;

function blobKey(kek: Uint8Array, salt: Uint8Array): Buffer {
  // RFC 5869 §2: HKDF-Extract(salt, IKM=KEK) then Expand(PRK, info, 32).
  return Buffer.from(hkdfSync('sha256', kek, salt, INFO, 32));
}

/** Wraps `dataKey` under `kek` with a fresh `salt` (32 random bytes). */
export function wrapWithKek(kek: Uint8Array, salt: Uint8Array, dataKey: Uint8Array): Uint8Array {
  if (kek.length !== KEK_LENGTH || salt.length !== SALT_LENGTH) throw new RangeError('wrapWithKek: bad KEK or salt length');
  const header = new Uint8Array(HEADER_LENGTH);
  header[0] = WRAP_VERSION;
  header.set(salt, 1);
  const key = blobKey(kek, salt);
  try {
    const cipher = createCipheriv('aes-256-gcm', key, ZERO_NONCE, { authTagLength: TAG_LENGTH });
    cipher.setAAD(header);
    const body = Buffer.concat([cipher.update(dataKey), cipher.final()]);
    const out = new Uint8Array(HEADER_LENGTH + body.length + TAG_LENGTH);
    out.set(header, 0);
    out.set(body, HEADER_LENGTH);
    out.set(cipher.getAuthTag(), HEADER_LENGTH + body.length);
    return out;
  } finally {
    zeroize(key);
  }
}

/** Unwraps a version-1 blob; any malformation or authentication failure is `unwrap-failed`. */
export function unwrapWithKek(kek: Uint8Array, blob: Uint8Array): Uint8Array {
  const fail = (why: string, cause?: unknown): never => {
    throw new TpmKeyStoreError('unwrap-failed', `unwrap failed: ${why}`, cause === undefined ? undefined : { cause });
  };
  if (blob.length < HEADER_LENGTH + 1 + TAG_LENGTH) fail('blob too short');
  if (blob.length > HEADER_LENGTH + MAX_DATA_KEY + TAG_LENGTH) fail('blob too long');
  if (blob[0] !== WRAP_VERSION) fail(`unknown blob version ${String(blob[0])}`);
  const header = blob.subarray(0, HEADER_LENGTH);
  const salt = blob.subarray(1, HEADER_LENGTH);
  const body = blob.subarray(HEADER_LENGTH, blob.length - TAG_LENGTH);
  const tag = blob.subarray(blob.length - TAG_LENGTH);
  const key = blobKey(kek, salt);
  let plain: Buffer | undefined;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, ZERO_NONCE, { authTagLength: TAG_LENGTH });
    decipher.setAAD(header);
    decipher.setAuthTag(tag);
    plain = decipher.update(body);
    decipher.final();
    const out = new Uint8Array(plain);
    return out;
  } catch (e) {
    return fail('authentication failed (tampered blob, or not wrapped by this KEK)', e);
  } finally {
    zeroize(key, plain);
  }
}
