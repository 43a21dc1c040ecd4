/**
 * The record_cipher addon (addon/record_cipher.c): the per-message EVP calls of contexts.ts in one
 * native call each (seal, open, record-number mask), on contexts that contexts.ts creates and owns.
 * Built by scripts/build-native.mjs; where it is not built (no compiler, a bundled deployment) or
 * is switched off (VITALSEAL_LIBCRYPTO_ADDON=off), contexts.ts makes the same calls through koffi.
 *
 * The module is refused unless the OpenSSL its calls bind to is the one koffi binds
 * (native.ts: Node's own): a context from one library must never reach another's functions.
 */
import { createRequire } from 'node:module';
import type { CPointer } from '../../util/koffi-types.ts';
import { bindUnlessOff, oneLine, type Binding } from '../../util/koffi-program.ts';

/** `off` keeps the koffi calls even where the addon is built. */
export const LIBCRYPTO_ADDON_ENV = 'VITALSEAL_LIBCRYPTO_ADDON';

const MODULE = './addon/build/Release/record_cipher.node';

export interface RecordCipherAddon {
  /** Writes ciphertext || tag into `out` from `offset`; false (output range zeroed) on any failure. */
  seal(ctx: CPointer, ccm: boolean, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number, tagLength: number): boolean;
  /** The plaintext length, or -1 (output range zeroed) when anything fails, authentication included. */
  open(ctx: CPointer, ccm: boolean, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array, out: Uint8Array, offset: number, tagLength: number): number;
  /** 16 mask bytes of a 16-byte sample into `out` (16 bytes, not overlapping the sample). */
  mask(ctx: CPointer, chacha: boolean, sample: Uint8Array, out: Uint8Array): boolean;
  /** OpenSSL_version_num() of the library the calls bind to. */
  opensslVersion(): number;
}

/**
 * Loads the addon once per process state of the switch. `expectedVersion` is
 * OpenSSL_version_num() as koffi's bindings read it. Never throws.
 */
export function loadRecordCipherAddon(expectedVersion: number): Binding<RecordCipherAddon> {
  const loaded = load();
  if (loaded.bindings !== undefined && loaded.bindings.opensslVersion() !== expectedVersion) {
    return { reason: `the record_cipher addon binds OpenSSL 0x${loaded.bindings.opensslVersion().toString(16)}, not the process's 0x${expectedVersion.toString(16)}` };
  }
  return loaded;
}

const load: () => Binding<RecordCipherAddon> = bindUnlessOff(LIBCRYPTO_ADDON_ENV, () => {
  let m: Partial<RecordCipherAddon>;
  try {
    m = createRequire(import.meta.url)(MODULE) as Partial<RecordCipherAddon>;
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    return { reason: code === 'MODULE_NOT_FOUND' ? 'the record_cipher addon is not built (scripts/build-native.mjs)' : `the record_cipher addon did not load (${oneLine(e)})` };
  }
  if (typeof m.seal !== 'function' || typeof m.open !== 'function' || typeof m.mask !== 'function' || typeof m.opensslVersion !== 'function') {
    return { reason: 'the record_cipher addon lacks seal/open/mask/opensslVersion' };
  }
  return { bindings: m as RecordCipherAddon };
});
