/**
 * TSS2 return codes → typed `KeyStoreError`s with a message a firmware engineer can act on.
 *
 * A TSS2_RC is 32 bits: bits 16-23 name the layer that produced it (TSS 2.0 Overview and Common
 * Structures spec §6.1.2, tss2_common.h), the low 16 bits are the layer's code. Codes from the TPM
 * itself (layer 0) follow TPM 2.0 Part 2 §6.6 (TPM_RC): format zero (bit 7 clear; bit 11 marks a
 * warning) or format one (bit 7 set; bits 6 and 8-11 say which handle, session or parameter).
 *
 * Everything here is pure: the mapping is unit-tested without a TPM.
 */
import { KeyStoreError } from '../../util/errors.ts';

/** Every `code` a TPM key store error carries. */
export type TpmErrorCode =
  | 'exists'
  | 'not-found'
  | 'invalid-name'
  | 'invalid-path'
  | 'too-large'
  | 'too-small'
  | 'wrong-type'
  | 'unwrap-failed'
  | 'closed'
  | 'library-missing'
  | 'no-tpm'
  | 'config'
  | 'tpm-cleared'
  | 'tpm-mismatch'
  | 'lockout'
  | 'tpm-busy'
  | 'auth-failed'
  | 'auth-required'
  | 'not-provisioned'
  | 'no-ek-certificate'
  | 'io-error'
  | 'refused'
  | 'tpm-error';

/** A key store error raised by the TPM backend; `rc` is the TSS2 return code when one caused it. */
export class TpmKeyStoreError extends KeyStoreError {
  override readonly code: TpmErrorCode;
  readonly rc: number | undefined;
  constructor(code: TpmErrorCode, message: string, options?: { cause?: unknown; rc?: number }) {
    super(code, message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.rc = options?.rc;
  }
}

// tss2_common.h: TSS2_RC_LAYER(n) = n << 16.
export const LAYER_TPM = 0;
export const LAYER_FAPI = 6;
export const LAYER_ESYS = 7;
export const LAYER_SYS = 8;
export const LAYER_MU = 9;
export const LAYER_TCTI = 10;
export const LAYER_RESMGR = 11;
export const LAYER_RESMGR_TPM = 12;

// tss2_common.h TSS2_BASE_RC_* (shared by the FAPI, ESYS, SYS, MU and TCTI layers).
export const BASE = {
  GENERAL_FAILURE: 1,
  NOT_IMPLEMENTED: 2,
  BAD_CONTEXT: 3,
  BAD_REFERENCE: 5,
  BAD_SEQUENCE: 7,
  NO_CONNECTION: 8,
  TRY_AGAIN: 9,
  IO_ERROR: 10,
  BAD_VALUE: 11,
  NOT_PERMITTED: 12,
  BAD_SIZE: 16,
  NOT_SUPPORTED: 21,
  MEMORY: 23,
  RSP_AUTH_FAILED: 27,
  NO_CONFIG: 28,
  BAD_PATH: 29,
  NOT_DELETABLE: 30,
  PATH_ALREADY_EXISTS: 31,
  KEY_NOT_FOUND: 32,
  SIGNATURE_VERIFICATION_FAILED: 33,
  PATH_NOT_FOUND: 36,
  NO_CERT: 37,
  AUTHORIZATION_FAILED: 41,
  AUTHORIZATION_UNKNOWN: 42,
  NAME_ALREADY_EXISTS: 48,
  NO_TPM: 49,
  BAD_KEY: 50,
  NO_HANDLE: 51,
  NOT_PROVISIONED: 52,
  ALREADY_PROVISIONED: 53,
} as const;

/** The FAPI-layer code for `base`, e.g. fapiRc(BASE.ALREADY_PROVISIONED) = 0x60035. */
export function fapiRc(base: number): number {
  return ((LAYER_FAPI << 16) | base) >>> 0;
}

// TPM 2.0 Part 2 §6.6.3 (TPM_RC values), normalised: format-one codes with the
// handle/session/parameter number stripped, format-zero codes as they are.
export const TPM_RC = {
  INITIALIZE: 0x100,
  FAILURE: 0x101,
  DISABLED: 0x120,
  AUTH_MISSING: 0x125,
  POLICY: 0x126,
  PCR_CHANGED: 0x128,
  REBOOT: 0x130,
  NV_DEFINED: 0x14c,
  VALUE: 0x084,
  AUTH_FAIL: 0x08e,
  HANDLE: 0x08b,
  BAD_AUTH: 0x0a2,
  INTEGRITY: 0x09f,
  // Warnings (format zero, severity bit 0x800 set).
  CONTEXT_GAP: 0x901,
  OBJECT_MEMORY: 0x902,
  SESSION_MEMORY: 0x903,
  MEMORY: 0x904,
  SESSION_HANDLES: 0x905,
  OBJECT_HANDLES: 0x906,
  LOCALITY: 0x907,
  YIELDED: 0x908,
  CANCELED: 0x909,
  TESTING: 0x90a,
  NV_RATE: 0x920,
  LOCKOUT: 0x921,
  RETRY: 0x922,
  NV_UNAVAILABLE: 0x923,
} as const;

export interface DecodedRc {
  readonly layer: number;
  /** For TPM codes: the normalised TPM_RC; for other layers: the TSS2_BASE_RC_* value. */
  readonly code: number;
  /** Format-one TPM codes: what the code refers to ("handle 1", "session 1", "parameter 2"). */
  readonly subject?: string;
}

/** Splits a TSS2_RC into layer and normalised code (TPM 2.0 Part 2 §6.6.2, figures 26 and 27). */
export function decodeRc(rc: number): DecodedRc {
  const value = rc >>> 0;
  const layer = (value >>> 16) & 0xff;
  const low = value & 0xffff;
  if (layer !== LAYER_TPM && layer !== LAYER_RESMGR_TPM) return { layer, code: low };
  if ((low & 0x080) !== 0) {
    // Format one: bits 0-5 error number, bit 6 P (parameter), bits 8-11 N.
    const n = (low >>> 8) & 0xf;
    const code = 0x080 | (low & 0x03f);
    if ((low & 0x040) !== 0) return { layer, code, subject: `parameter ${n}` };
    if (n === 0) return { layer, code };
    // N 1-7: handle N; N 8-15: session N-8 (Part 2 §6.6.2).
    return { layer, code, subject: n < 8 ? `handle ${n}` : `session ${n - 8}` };
  }
  // Format zero: bits 0-6 error number, bit 8 version 2.0, bit 10 vendor, bit 11 severity.
  return { layer, code: low & 0xdff };
}

export function rcHex(rc: number): string {
  return `0x${(rc >>> 0).toString(16).padStart(5, '0')}`;
}

export interface RcContext {
  /** What we were doing: "unseal", "provision", ... */
  readonly operation: string;
  /** The FAPI path involved, if any. */
  readonly path?: string;
  /** The TCTI in use (for "no TPM" messages). */
  readonly tcti?: string;
  /** libtss2-rc's own text for the code, when that library is present. */
  readonly decoded?: string;
}

interface Mapped {
  readonly code: TpmErrorCode;
  readonly text: string;
}

const RM_HINT = 'use a resource manager (/dev/tpmrm0 on a device, tpm2-abrmd with swtpm) so objects left loaded by another client are flushed';

function mapTpm(code: number): Mapped | undefined {
  switch (code) {
    case TPM_RC.LOCKOUT:
      return {
        code: 'lockout',
        text: 'the TPM is in dictionary-attack lockout (too many failed authorizations): it refuses every key protected against dictionary attacks, the storage root key included, until the lockout interval has passed or the owner runs `tpm2_dictionarylockout --clear-lockout`',
      };
    case TPM_RC.AUTH_FAIL:
    case TPM_RC.BAD_AUTH:
      return {
        code: 'auth-failed',
        text: 'the TPM refused the authorization (HMAC check failed; the TPM counted a dictionary-attack failure). If no password is involved, the keystore was made by a different TPM or for this TPM before it was cleared and re-provisioned',
      };
    case TPM_RC.INTEGRITY:
      return {
        code: 'tpm-mismatch',
        text: "the TPM rejected the object's protected blob (integrity check failed): the object was made under another TPM's storage root key, or its keystore file is damaged",
      };
    case TPM_RC.HANDLE:
      return { code: 'tpm-cleared', text: 'a handle the keystore relies on does not exist in the TPM (was the TPM cleared?)' };
    case TPM_RC.OBJECT_MEMORY:
    case TPM_RC.SESSION_MEMORY:
    case TPM_RC.MEMORY:
    case TPM_RC.OBJECT_HANDLES:
    case TPM_RC.SESSION_HANDLES:
    case TPM_RC.CONTEXT_GAP:
      return { code: 'tpm-busy', text: `the TPM is out of object or session memory; ${RM_HINT}` };
    case TPM_RC.YIELDED:
    case TPM_RC.CANCELED:
    case TPM_RC.TESTING:
    case TPM_RC.RETRY:
    case TPM_RC.NV_RATE:
    case TPM_RC.NV_UNAVAILABLE:
      return { code: 'tpm-busy', text: 'the TPM is busy (self-test, NV rate limit or retry requested); try again shortly' };
    case TPM_RC.INITIALIZE:
    case TPM_RC.REBOOT:
      return { code: 'no-tpm', text: 'the TPM has not been started (TPM2_Startup was not sent); the firmware or the simulator must start it' };
    case TPM_RC.FAILURE:
      return { code: 'no-tpm', text: 'the TPM is in failure mode and accepts no commands; it needs a reset (power cycle)' };
    case TPM_RC.DISABLED:
      return { code: 'no-tpm', text: 'the TPM command or hierarchy is disabled (check the platform firmware TPM settings)' };
    default:
      return undefined;
  }
}

function mapLayer(layer: number, code: number, ctx: RcContext): Mapped | undefined {
  const where = ctx.path === undefined ? '' : ` at ${ctx.path}`;
  const tcti = ctx.tcti === undefined ? 'the configured TCTI' : `TCTI "${ctx.tcti}"`;
  if (layer === LAYER_TCTI || layer === LAYER_RESMGR) {
    switch (code) {
      case BASE.IO_ERROR:
      case BASE.NO_CONNECTION:
      case BASE.TRY_AGAIN:
        return { code: 'no-tpm', text: `no TPM reachable through ${tcti} (is the TPM device present and accessible, or the simulator / resource manager running?)` };
      case BASE.NOT_SUPPORTED:
      case BASE.BAD_VALUE:
      case BASE.NOT_IMPLEMENTED:
        return { code: 'config', text: `${tcti} is not a usable TCTI (unknown module or bad options; examples: device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321)` };
      default:
        return undefined;
    }
  }
  if (layer === LAYER_FAPI || layer === LAYER_ESYS) {
    switch (code) {
      case BASE.PATH_ALREADY_EXISTS:
      case BASE.NAME_ALREADY_EXISTS:
        return { code: 'exists', text: `an object already exists${where}` };
      case BASE.KEY_NOT_FOUND:
      case BASE.PATH_NOT_FOUND:
        return { code: 'not-found', text: `no object${where}` };
      case BASE.BAD_PATH:
        return { code: 'invalid-path', text: `not a valid FAPI path${where}` };
      case BASE.NO_CERT:
        return {
          code: 'no-ek-certificate',
          text: 'the TPM holds no endorsement-key certificate for this profile; set "ek_cert_less": "yes" in the FAPI config (the store does this itself when it writes the config)',
        };
      case BASE.NOT_PROVISIONED:
        return { code: 'not-provisioned', text: 'the FAPI keystore is not provisioned for this TPM' };
      case BASE.AUTHORIZATION_UNKNOWN:
        return { code: 'auth-required', text: `the object${where} needs a password or policy, which this store does not supply` };
      case BASE.AUTHORIZATION_FAILED:
        return { code: 'auth-failed', text: `authorization failed${where}` };
      case BASE.NO_CONFIG:
        return { code: 'config', text: 'the FAPI config file could not be read (TSS2_FAPICONF)' };
      case BASE.IO_ERROR:
        return { code: 'io-error', text: 'reading or writing the FAPI keystore failed (check the keystore directories exist and are writable)' };
      case BASE.NO_TPM:
        return { code: 'no-tpm', text: `no TPM present (${tcti})` };
      case BASE.MEMORY:
        return { code: 'tpm-error', text: 'out of memory in the TSS' };
      case BASE.RSP_AUTH_FAILED:
        return { code: 'auth-failed', text: 'the TPM response HMAC did not verify (keystore and TPM disagree about the storage root key, or the channel was tampered with)' };
      default:
        return undefined;
    }
  }
  return undefined;
}

const LAYER_NAMES: Record<number, string> = {
  [LAYER_TPM]: 'tpm',
  [LAYER_FAPI]: 'fapi',
  [LAYER_ESYS]: 'esys',
  [LAYER_SYS]: 'sys',
  [LAYER_MU]: 'mu',
  [LAYER_TCTI]: 'tcti',
  [LAYER_RESMGR]: 'resmgr',
  [LAYER_RESMGR_TPM]: 'resmgr-tpm',
};

/**
 * The typed error for a non-zero TSS2_RC. Never includes secret material: only the operation, the
 * path and the code.
 */
export function errorFromRc(rc: number, ctx: RcContext): TpmKeyStoreError {
  const d = decodeRc(rc);
  const mapped = d.layer === LAYER_TPM || d.layer === LAYER_RESMGR_TPM ? mapTpm(d.code) : mapLayer(d.layer, d.code, ctx);
  const layerName = LAYER_NAMES[d.layer] ?? `layer ${d.layer}`;
  const detail = ctx.decoded ?? `${layerName} code 0x${d.code.toString(16)}${d.subject === undefined ? '' : ` (${d.subject})`}`;
  const what = `${ctx.operation}${ctx.path === undefined ? '' : ` ${ctx.path}`}`;
  if (mapped !== undefined) {
    return new TpmKeyStoreError(mapped.code, `TPM ${what}: ${mapped.text} [TSS2 rc ${rcHex(rc)}: ${detail}]`, { rc });
  }
  return new TpmKeyStoreError('tpm-error', `TPM ${what} failed [TSS2 rc ${rcHex(rc)}: ${detail}]`, { rc });
}
