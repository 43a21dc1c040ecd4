/**
 * A TPM signing key's loadable form (TSS2 PRIVATE KEY PEM) and public key, read through tpm2-tools'
 * FAPI command `tss2_gettpmblobs` in a short-lived process instead of FAPI in this one.
 *
 * Why: FAPI and what it links (ESYS, the TCTI, json-c, libcurl, GnuTLS, GLib for tpm2-abrmd) add
 * about 15 MiB to a process that loads it, and they stay mapped after the context is finalised. An
 * agent whose only use of the TPM is MQTTS (TLS signed by OpenSSL's tpm2 provider in another
 * process) needs just these blobs once, so it reads them here and never loads FAPI itself
 * (docs/agent.md, "With the device key in the TPM").
 *
 * `toolsSigner` signs the same way (`tss2_sign`, one short-lived process a signature) for the rare
 * signature such an agent makes itself: the CSR of a certificate renewal.
 *
 * Same checks as `TpmKeyStore.loadableKey`: the object must be a P-256 signing key under the
 * profile's persistent SRK. The blobs are public (the private part is wrapped by the SRK and
 * loads only in this TPM); they pass through a private temporary directory that is removed.
 *
 * @example
 *   const key = await readLoadableKeyWithTools({ kind: 'tpm', tcti: 'tabrmd:bus_type=system', dir: '/var/lib/vitalseal/tpm' }, 'device');
 *   key.pem   // -----BEGIN TSS2 PRIVATE KEY----- ...
 *   key.spki  // the SubjectPublicKeyInfo the device certificate must carry
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TpmKeyStoreConfig } from '../config.ts';
import type { Signer } from '../signer.ts';
import { DecodeError } from '../../util/errors.ts';
import { errorFromRc, TpmKeyStoreError } from './errors.ts';
import { loadableKeyParent, resolveFapiConfig, type ResolvedFapiConfig } from './fapi-config.ts';
import { encodeLoadableKey, loadableKeyPem } from './loadable-key.ts';
import { pathForName } from './paths.ts';
import { isP256SigningKey, p256Spki, parseTpm2bPublic } from './tpm-public.ts';
import type { TpmLoadableKey } from './store.ts';

export interface ToolsLoadableKey extends TpmLoadableKey {
  /** The key's SubjectPublicKeyInfo (DER), from its public area. */
  readonly spki: Uint8Array;
}

export interface ToolsKeyOptions {
  /** Environment for the tool (tpm2-abrmd's D-Bus address in tests); default process.env. */
  readonly env?: NodeJS.ProcessEnv;
  /** The tool (default: the tpm2-tools command for the operation, `tss2_gettpmblobs` or `tss2_sign`, on PATH). */
  readonly tool?: string;
  /** Give up after this long (default 60 s: FAPI starts slowly on an emulated board). */
  readonly timeoutMs?: number;
}

/** The largest blob a P-256 key's TPM2B_PUBLIC or TPM2B_PRIVATE can be, with room to spare. */
const MAX_BLOB = 4096;

export async function readLoadableKeyWithTools(config: TpmKeyStoreConfig, name: string, o: ToolsKeyOptions = {}): Promise<ToolsLoadableKey> {
  const fapi = resolveFapiConfig(config);
  const path = pathForName(name);
  const parent = loadableKeyParent(fapi, path);
  return inToolDir('vitalseal-tpm-blobs-', async (dir) => {
    const pubFile = join(dir, 'public');
    const privFile = join(dir, 'private');
    await runFapiTool(o.tool ?? 'tss2_gettpmblobs', ['--path', path, '--tpm2bPublic', pubFile, '--tpm2bPrivate', privFile, '--force'], fapi, path, o);
    const tpm2bPublic = readBlob(pubFile, 'public');
    const tpm2bPrivate = readBlob(privFile, 'private');
    let pub;
    try {
      pub = parseTpm2bPublic(tpm2bPublic);
    } catch (e) {
      if (e instanceof DecodeError) throw new TpmKeyStoreError('wrong-type', `${path} is not a P-256 signing key (${e.message})`);
      throw e;
    }
    if (!isP256SigningKey(pub)) throw new TpmKeyStoreError('wrong-type', `${path} is not a P-256 signing key`);
    // Keys made by createSigningKey have an empty authValue (store.ts).
    const der = encodeLoadableKey({ parent, emptyAuth: true, tpm2bPublic, tpm2bPrivate });
    return { pem: loadableKeyPem(der), tcti: fapi.tcti, parent, spki: p256Spki(pub) };
  });
}

/**
 * A `Signer` for the P-256 key `name` whose every signature is one `tss2_sign` process (ECDSA over
 * SHA-256 of the message, hashed here as the key store does; the signature as FAPI returns it).
 * `spki` is the key's public key, from `readLoadableKeyWithTools`.
 */
export function toolsSigner(config: TpmKeyStoreConfig, name: string, spki: Uint8Array, o: ToolsKeyOptions = {}): Signer {
  const fapi = resolveFapiConfig(config);
  const path = pathForName(name);
  return {
    scheme: 'ecdsa-p256-sha256',
    publicKeySpki: async () => spki.slice(),
    sign: (message: Uint8Array) => inToolDir('vitalseal-tpm-sign-', async (dir) => {
      const digestFile = join(dir, 'digest');
      const sigFile = join(dir, 'signature');
      writeFileSync(digestFile, createHash('sha256').update(message).digest(), { mode: 0o600 });
      await runFapiTool(o.tool ?? 'tss2_sign', ['--keyPath', path, '--digest', digestFile, '--signature', sigFile, '--force'], fapi, path, o);
      return readBlob(sigFile, 'signature');
    }),
  };
}

/** Runs `work` with a private temporary directory for the tool's files, removed afterwards. */
async function inToolDir<T>(prefix: string, work: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    return await work(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function readBlob(file: string, what: string): Uint8Array {
  const b = new Uint8Array(readFileSync(file));
  if (b.length === 0 || b.length > MAX_BLOB) throw new TpmKeyStoreError('tpm-error', `tpm2-tools wrote a ${what} of ${b.length} bytes`);
  return b;
}

/**
 * FAPI's return code in the tool's stderr, when it printed one: tpm2-tools reports
 * "Fapi_GetTpmBlobs(0x60020) - fapi:The key was not found", the TSS log "ErrorCode (0x00060020)".
 */
export function rcFromToolOutput(stderr: string): number | undefined {
  const m = /(?:Fapi_\w+|ErrorCode) ?\(0x([0-9a-fA-F]{1,8})\)/.exec(stderr);
  return m === null ? undefined : Number.parseInt(m[1] as string, 16);
}

/** One tpm2-tools FAPI command on `path` under the store's FAPI config; failures as typed errors. */
function runFapiTool(tool: string, args: string[], fapi: ResolvedFapiConfig, path: string, o: ToolsKeyOptions): Promise<void> {
  const env = { ...(o.env ?? process.env), TSS2_FAPICONF: fapi.path, TSS2_LOG: 'all+NONE' };
  const timeoutMs = o.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    execFile(tool, args, { env, timeout: timeoutMs, maxBuffer: 256 * 1024, encoding: 'utf8' }, (err, _stdout, stderr) => {
      if (err === null) {
        resolve();
        return;
      }
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        reject(new TpmKeyStoreError('library-missing', `${tool} not found: install the Debian package "tpm2-tools"`));
        return;
      }
      if ((err as { killed?: boolean }).killed === true) {
        reject(new TpmKeyStoreError('tpm-busy', `${tool} did not finish within ${timeoutMs} ms on ${path} (TCTI ${fapi.tcti || 'default'})`));
        return;
      }
      const rc = rcFromToolOutput(stderr);
      if (rc !== undefined) {
        reject(errorFromRc(rc, { operation: `${tool} on`, path, tcti: fapi.tcti }));
        return;
      }
      const tail = stderr.trim().split('\n').slice(-2).join(' | ').slice(0, 300);
      reject(new TpmKeyStoreError('tpm-error', `${tool} failed on ${path}${tail === '' ? '' : `: ${tail}`}`));
    });
  });
}
