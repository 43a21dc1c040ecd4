/**
 * The OpenSSL that Node itself runs, called through koffi: the handful of EVP cipher calls the
 * keyed AEAD and record-mask contexts need, bound synchronously on first use.
 *
 * No second library is loaded. koffi opens the running program (`dlopen(NULL)`), and the EVP
 * symbols resolve to the OpenSSL node:crypto uses: the copy built into the official Node binary
 * (which exports its symbols for native addons), or the shared libcrypto a distribution's Node is
 * linked against. The binding is refused unless that library's version is the one Node reports
 * (`process.versions.openssl`), so a foreign libcrypto that happens to be loaded into the process
 * (the TPM stack brings Debian's) is never what we call.
 *
 * Byte arguments are passed as typed arrays: koffi hands C a pointer into the array's own memory
 * (no copy, byte offset honoured), so key bytes never pass through a koffi scratch buffer.
 * A zero-length array arrives as NULL.
 *
 * FFI lives only in backend folders (STYLE.md rule 9): the rest of src/crypto sees `LibcryptoBindings`.
 */
import type { CPointer, Koffi, LibraryHandle, NativeFunction } from '../../util/koffi-types.ts';
import { bindUnlessOff, loadProgramSymbols, oneLine, type Binding } from '../../util/koffi-program.ts';

/** An opaque C pointer as koffi hands it out (EVP_CIPHER_CTX *, const EVP_CIPHER *). */
export type { CPointer };

/** `off` disables the libcrypto contexts (node:crypto per record is used instead). */
export const LIBCRYPTO_ENV = 'VITALSEAL_LIBCRYPTO';
/** How the bindings name the library they call. */
export const PROCESS_LIBCRYPTO = "Node's own OpenSSL";

/** EVP_CIPHER_CTX_ctrl codes (openssl/evp.h). */
export const EVP_CTRL_AEAD_SET_IVLEN = 0x9;
export const EVP_CTRL_AEAD_GET_TAG = 0x10;
export const EVP_CTRL_AEAD_SET_TAG = 0x11;

export type LibcryptoCipher = 'aes-128-gcm' | 'aes-256-gcm' | 'aes-128-ccm' | 'chacha20-poly1305' | 'aes-128-ecb' | 'aes-256-ecb' | 'chacha20';

export interface LibcryptoBindings {
  /** Always PROCESS_LIBCRYPTO. */
  readonly library: string;
  /** OpenSSL_version(OPENSSL_VERSION), e.g. "OpenSSL 3.0.19 27 Jan 2026". */
  readonly version: string;
  /** OpenSSL_version_num(): what the record_cipher addon (addon.ts) must report too. */
  readonly versionNumber: number;
  cipher(name: LibcryptoCipher): CPointer;
  ctxNew(): CPointer | null;
  /** EVP_CIPHER_CTX_free: resets the context, which cleanses the key schedule, then frees it. */
  ctxFree(ctx: CPointer): void;
  init(ctx: CPointer, cipher: CPointer | null, key: Uint8Array | null, iv: Uint8Array | null, enc: 0 | 1): number;
  /** EVP_CipherUpdate; `outLength[0]` receives the bytes written. */
  update(ctx: CPointer, out: Uint8Array | null, outLength: Int32Array, input: Uint8Array | null, inputLength: number): number;
  final(ctx: CPointer, out: Uint8Array, outLength: Int32Array): number;
  ctrl(ctx: CPointer, type: number, arg: number, ptr: Uint8Array | null): number;
  setPadding(ctx: CPointer, pad: 0 | 1): number;
  /**
   * ERR_clear_error. The error queue is per thread and shared with node:crypto: a failed call here
   * (an AEAD tag that does not verify) leaves an entry that a later node:crypto call would report as
   * its own failure. Every failure path clears it before returning.
   */
  clearErrors(): void;
}

/**
 * Binds Node's OpenSSL once per process. Returns the bindings, or a one-line reason why they are
 * not available (koffi missing, EVP symbols not visible, a version other than Node's, disabled by
 * VITALSEAL_LIBCRYPTO=off). Never throws.
 */
export const loadLibcrypto: () => Binding<LibcryptoBindings> = bindUnlessOff(LIBCRYPTO_ENV, bind);

function bind(): Binding<LibcryptoBindings> {
  const program = loadProgramSymbols();
  if ('reason' in program) return { reason: program.reason };
  try {
    return { bindings: makeBindings(program.k, program.lib) };
  } catch (e) {
    return { reason: `${PROCESS_LIBCRYPTO} is not usable through FFI: ${oneLine(e)}` };
  }
}

let typesDefined = false;

/** "3.0.19" from "3.0.19+quic" (process.versions.openssl) or "OpenSSL 3.0.19 27 Jan 2026". */
function versionNumber(text: string): string | undefined {
  return /(\d+\.\d+\.\d+)/.exec(text)?.[1];
}

function makeBindings(k: Koffi, lib: LibraryHandle): LibcryptoBindings {
  const library = PROCESS_LIBCRYPTO;
  if (!typesDefined) {
    k.opaque('EVP_CIPHER_CTX');
    k.opaque('EVP_CIPHER');
    typesDefined = true;
  }
  const f = (decl: string): NativeFunction => lib.func(decl);
  const OpenSSL_version_num = f('unsigned long OpenSSL_version_num()');
  const OpenSSL_version = f('const char *OpenSSL_version(int type)');
  const num = Number(OpenSSL_version_num());
  // OPENSSL_VERSION_NUMBER is 0xMNN00PP0L from 3.0 on.
  if (!(num >= 0x30000000)) throw new Error(`OpenSSL_version_num() = 0x${num.toString(16)}, older than 3.0`);
  const bound = String(OpenSSL_version(0));
  const expected = process.versions.openssl;
  if (expected === undefined || versionNumber(bound) === undefined || versionNumber(bound) !== versionNumber(expected)) {
    throw new Error(`the symbols found are "${bound}", Node runs OpenSSL ${expected ?? '(none)'}`);
  }
  const ciphers: Record<LibcryptoCipher, NativeFunction> = {
    'aes-128-gcm': f('const EVP_CIPHER *EVP_aes_128_gcm()'),
    'aes-256-gcm': f('const EVP_CIPHER *EVP_aes_256_gcm()'),
    'aes-128-ccm': f('const EVP_CIPHER *EVP_aes_128_ccm()'),
    'chacha20-poly1305': f('const EVP_CIPHER *EVP_chacha20_poly1305()'),
    'aes-128-ecb': f('const EVP_CIPHER *EVP_aes_128_ecb()'),
    'aes-256-ecb': f('const EVP_CIPHER *EVP_aes_256_ecb()'),
    chacha20: f('const EVP_CIPHER *EVP_chacha20()'),
  };
  const ctxNew = f('EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()');
  const ctxFree = f('void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)');
  const init = f('int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, void *impl, const void *key, const void *iv, int enc)');
  const update = f('int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, void *out, void *outl, const void *in, int inl)');
  const final = f('int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, void *out, void *outl)');
  const ctrl = f('int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)');
  const setPadding = f('int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad)');
  const clearErrors = f('void ERR_clear_error()');
  const version = bound;
  const cipherCache = new Map<LibcryptoCipher, CPointer>();
  return Object.freeze({
    library,
    version,
    versionNumber: num,
    cipher(name: LibcryptoCipher): CPointer {
      let c = cipherCache.get(name);
      if (c === undefined) {
        c = ciphers[name]() as CPointer | null ?? undefined;
        if (c === undefined) throw new Error(`${library} has no ${name}`);
        cipherCache.set(name, c);
      }
      return c;
    },
    ctxNew: () => ctxNew() as CPointer | null,
    ctxFree: (ctx: CPointer) => void ctxFree(ctx),
    init: (ctx, cipher, key, iv, enc) => init(ctx, cipher, null, key, iv, enc) as number,
    update: (ctx, out, outLength, input, inputLength) => update(ctx, out, outLength, input, inputLength) as number,
    final: (ctx, out, outLength) => final(ctx, out, outLength) as number,
    ctrl: (ctx, type, arg, ptr) => ctrl(ctx, type, arg, ptr) as number,
    setPadding: (ctx, pad) => setPadding(ctx, pad) as number,
    clearErrors: () => void clearErrors(),
  } satisfies LibcryptoBindings);
}
