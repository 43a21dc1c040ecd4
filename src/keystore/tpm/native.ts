/**
 * The tpm2-tss libraries through koffi: FAPI (`libtss2-fapi.so.1`) for everything the store does,
 * two ESYS calls (`libtss2-esys.so.0`) to read the storage root key's Name from the TPM, and
 * `libtss2-rc.so.0` (optional) for the TSS's own text of a return code.
 *
 * Every TPM-facing call runs with koffi's `.async` on a worker thread so the event loop stays free;
 * the caller (context.ts) makes sure one FAPI context never runs two calls at once. Output buffers
 * FAPI allocates are copied into memory we own and released with `Fapi_Free`; secret outputs are
 * overwritten in place first.
 *
 * FFI lives only in backend folders (STYLE.md rule 9): here and src/crypto/libcrypto/.
 */
import type { CPointer, Koffi, LibraryHandle, NativeFunction } from '../../util/koffi-types.ts';
import { configureKoffi } from '../../util/koffi-program.ts';
import { TpmKeyStoreError } from './errors.ts';

/** An opaque C pointer as koffi hands it out (FAPI_CONTEXT *, TSS2_TCTI_CONTEXT *, ...). */
export type { CPointer };

/** Library names, overridable for tests and unusual installs. */
export const DEFAULT_FAPI_LIBRARY = 'libtss2-fapi.so.1';
export const FAPI_LIBRARY_ENV = 'VITALSEAL_TSS2_FAPI_LIBRARY';
const ESYS_LIBRARY = 'libtss2-esys.so.0';
const RC_LIBRARY = 'libtss2-rc.so.0';

export interface FapiBindings {
  readonly libraryPath: string;
  initialize(): Promise<{ rc: number; ctx: CPointer | null }>;
  finalize(ctx: CPointer): void;
  provision(ctx: CPointer): Promise<number>;
  getRandom(ctx: CPointer, length: number): Promise<{ rc: number; data?: Uint8Array }>;
  createSeal(ctx: CPointer, path: string, type: string, data: Uint8Array): Promise<number>;
  /** The unsealed bytes are copied out and FAPI's buffer is wiped before it is freed. */
  unseal(ctx: CPointer, path: string): Promise<{ rc: number; data?: Uint8Array }>;
  createKey(ctx: CPointer, path: string, type: string): Promise<number>;
  sign(ctx: CPointer, path: string, digest: Uint8Array): Promise<{ rc: number; signature?: Uint8Array }>;
  list(ctx: CPointer, searchPath: string): Promise<{ rc: number; paths?: string[] }>;
  delete(ctx: CPointer, path: string): Promise<number>;
  /**
   * The object's marshalled TPM2B_PUBLIC and TPM2B_PRIVATE as FAPI keeps them. The private blob is
   * encrypted and integrity-protected under the parent (TPM 2.0 Part 1 §23.3): only this TPM can
   * load it.
   */
  getTpmBlobs(ctx: CPointer, path: string): Promise<{ rc: number; tpm2bPublic?: Uint8Array; tpm2bPrivate?: Uint8Array }>;
  setDescription(ctx: CPointer, path: string, description: string): Promise<number>;
  getDescription(ctx: CPointer, path: string): Promise<{ rc: number; description?: string }>;
  getInfo(ctx: CPointer): Promise<{ rc: number; info?: string }>;
  /**
   * Reads the Name of persistent object `handle` from the TPM through FAPI's own TCTI connection
   * (TPM2_ReadPublic: no authorization, so no dictionary-attack risk).
   */
  readPersistentName(ctx: CPointer, handle: number): Promise<{ rc: number; name?: Uint8Array }>;
  /** libtss2-rc's text for `rc`, if that library is installed. */
  decodeRc(rc: number): string | undefined;
}

interface Loaded {
  readonly koffi: Koffi;
  readonly fapi: LibraryHandle;
  readonly esys: LibraryHandle;
  readonly rc: LibraryHandle | undefined;
}

let koffiPromise: Promise<Koffi> | undefined;
let typesDefined = false;
const bindingsCache = new Map<string, Promise<FapiBindings>>();

async function loadKoffi(): Promise<Koffi> {
  koffiPromise ??= import('koffi').then((m) => {
    const k = m.default;
    configureKoffi(k);
    return k;
  }, (e: unknown) => {
    koffiPromise = undefined;
    throw new TpmKeyStoreError('library-missing', `the koffi FFI module did not load (${e instanceof Error ? e.message : String(e)}); run npm ci`, { cause: e });
  });
  return koffiPromise;
}

function debianPackageFor(library: string): string {
  if (library.includes('fapi')) return 'libtss2-fapi1';
  if (library.includes('esys')) return 'libtss2-esys-3.0.2-0';
  return 'libtss2-fapi1';
}

function loadLibrary(k: Koffi, name: string): LibraryHandle {
  try {
    return k.load(name);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new TpmKeyStoreError('library-missing',
      `cannot load the TPM software stack library ${name} (${why}). Install the Debian package ${debianPackageFor(name)}: apt-get install ${debianPackageFor(name)}`,
      { cause: e });
  }
}

function call(fn: NativeFunction, ...args: unknown[]): Promise<number> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, rc: unknown) => {
      if (err !== null && err !== undefined) reject(err instanceof Error ? err : new Error(String(err)));
      else resolve(Number(rc) >>> 0);
    });
  });
}

function sizeOf(v: unknown): number {
  return typeof v === 'bigint' ? Number(v) : Number(v);
}

/**
 * Loads (once per library name) the FAPI bindings. Throws `TpmKeyStoreError('library-missing')`
 * naming the Debian package when a library is absent.
 */
export function loadFapi(libraryName?: string): Promise<FapiBindings> {
  const name = libraryName ?? process.env[FAPI_LIBRARY_ENV] ?? DEFAULT_FAPI_LIBRARY;
  let p = bindingsCache.get(name);
  if (p === undefined) {
    p = bind(name);
    bindingsCache.set(name, p);
    p.catch(() => bindingsCache.delete(name));
  }
  return p;
}

async function bind(name: string): Promise<FapiBindings> {
  const k = await loadKoffi();
  const fapi = loadLibrary(k, name);
  const esys = loadLibrary(k, ESYS_LIBRARY);
  let rcLib: LibraryHandle | undefined;
  try {
    rcLib = k.load(RC_LIBRARY);
  } catch {
    rcLib = undefined; // optional: messages then carry the numeric code only
  }
  return makeBindings({ koffi: k, fapi, esys, rc: rcLib }, name);
}

function makeBindings(lib: Loaded, libraryPath: string): FapiBindings {
  const k = lib.koffi;
  if (!typesDefined) {
    k.opaque('FAPI_CONTEXT');
    k.opaque('ESYS_CONTEXT');
    k.opaque('TSS2_TCTI_CONTEXT');
    typesDefined = true;
  }
  const f = (decl: string): NativeFunction => lib.fapi.func(decl);
  const Fapi_Initialize = f('uint32_t Fapi_Initialize(_Out_ FAPI_CONTEXT **context, const char *uri)');
  const Fapi_Finalize = f('void Fapi_Finalize(_Inout_ FAPI_CONTEXT **context)');
  const Fapi_Free = f('void Fapi_Free(void *ptr)');
  const Fapi_Provision = f('uint32_t Fapi_Provision(FAPI_CONTEXT *context, const char *authValueEh, const char *authValueSh, const char *authValueLockout)');
  const Fapi_GetRandom = f('uint32_t Fapi_GetRandom(FAPI_CONTEXT *context, size_t numBytes, _Out_ void **data)');
  const Fapi_CreateSeal = f('uint32_t Fapi_CreateSeal(FAPI_CONTEXT *context, const char *path, const char *type, size_t size, const char *policyPath, const char *authValue, const uint8_t *data)');
  const Fapi_Unseal = f('uint32_t Fapi_Unseal(FAPI_CONTEXT *context, const char *path, _Out_ void **data, _Out_ size_t *size)');
  const Fapi_CreateKey = f('uint32_t Fapi_CreateKey(FAPI_CONTEXT *context, const char *path, const char *type, const char *policyPath, const char *authValue)');
  const Fapi_Sign = f('uint32_t Fapi_Sign(FAPI_CONTEXT *context, const char *keyPath, const char *padding, const uint8_t *digest, size_t digestSize, _Out_ void **signature, _Out_ size_t *signatureSize, void **publicKey, void **certificate)');
  const Fapi_List = f('uint32_t Fapi_List(FAPI_CONTEXT *context, const char *searchPath, _Out_ void **pathList)');
  const Fapi_Delete = f('uint32_t Fapi_Delete(FAPI_CONTEXT *context, const char *path)');
  const Fapi_GetTpmBlobs = f('uint32_t Fapi_GetTpmBlobs(FAPI_CONTEXT *context, const char *path, _Out_ void **tpm2bPublic, _Out_ size_t *tpm2bPublicSize, _Out_ void **tpm2bPrivate, _Out_ size_t *tpm2bPrivateSize, _Out_ void **policy)');
  const Fapi_SetDescription = f('uint32_t Fapi_SetDescription(FAPI_CONTEXT *context, const char *path, const char *description)');
  const Fapi_GetDescription = f('uint32_t Fapi_GetDescription(FAPI_CONTEXT *context, const char *path, _Out_ void **description)');
  const Fapi_GetInfo = f('uint32_t Fapi_GetInfo(FAPI_CONTEXT *context, _Out_ void **info)');
  const Fapi_GetTcti = f('uint32_t Fapi_GetTcti(FAPI_CONTEXT *context, _Out_ TSS2_TCTI_CONTEXT **tcti)');
  const e = (decl: string): NativeFunction => lib.esys.func(decl);
  const Esys_Initialize = e('uint32_t Esys_Initialize(_Out_ ESYS_CONTEXT **esysContext, TSS2_TCTI_CONTEXT *tcti, void *abiVersion)');
  const Esys_Finalize = e('void Esys_Finalize(_Inout_ ESYS_CONTEXT **esysContext)');
  const Esys_TR_FromTPMPublic = e('uint32_t Esys_TR_FromTPMPublic(ESYS_CONTEXT *esysContext, uint32_t tpmHandle, uint32_t session1, uint32_t session2, uint32_t session3, _Out_ uint32_t *object)');
  const Esys_TR_GetName = e('uint32_t Esys_TR_GetName(ESYS_CONTEXT *esysContext, uint32_t handle, _Out_ void **name)');
  const Esys_TR_Close = e('uint32_t Esys_TR_Close(ESYS_CONTEXT *esysContext, _Inout_ uint32_t *handle)');
  const Esys_Free = e('void Esys_Free(void *ptr)');
  const Tss2_RC_Decode = lib.rc?.func('const char *Tss2_RC_Decode(uint32_t rc)');
  const ESYS_TR_NONE = 0xfff;

  /** Copies `len` bytes at `ptr` into a fresh array, optionally wipes the C buffer, frees it. */
  const take = (ptr: unknown, len: number, wipe: boolean): Uint8Array => {
    if (ptr === null || ptr === undefined) return new Uint8Array(0);
    const out = new Uint8Array(len);
    if (len > 0) {
      const view = new Uint8Array(k.view(ptr, len));
      out.set(view);
      if (wipe) view.fill(0);
    }
    Fapi_Free(ptr);
    return out;
  };
  const takeString = (ptr: unknown): string => {
    if (ptr === null || ptr === undefined) return '';
    const s = k.decode.string(ptr);
    Fapi_Free(ptr);
    return s;
  };
  const freeIfSet = (...ptrs: unknown[]): void => {
    for (const p of ptrs) if (p !== null && p !== undefined) Fapi_Free(p);
  };

  return {
    libraryPath,
    async initialize() {
      const out: [CPointer | null] = [null];
      const rc = await call(Fapi_Initialize, out, null);
      return { rc, ctx: out[0] };
    },
    finalize(ctx) {
      Fapi_Finalize([ctx]);
    },
    provision: (ctx) => call(Fapi_Provision, ctx, null, null, null),
    async getRandom(ctx, length) {
      const out: [unknown] = [null];
      const rc = await call(Fapi_GetRandom, ctx, length, out);
      return rc === 0 ? { rc, data: take(out[0], length, true) } : { rc };
    },
    async createSeal(ctx, path, type, data) {
      // FAPI copies the data into its own buffers; ours is wiped by the caller.
      const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      return call(Fapi_CreateSeal, ctx, path, type, data.length, null, '', buf);
    },
    async unseal(ctx, path) {
      const data: [unknown] = [null];
      const size: [unknown] = [0];
      const rc = await call(Fapi_Unseal, ctx, path, data, size);
      if (rc !== 0) {
        freeIfSet(data[0]);
        return { rc };
      }
      return { rc, data: take(data[0], sizeOf(size[0]), true) };
    },
    createKey: (ctx, path, type) => call(Fapi_CreateKey, ctx, path, type, null, ''),
    async sign(ctx, path, digest) {
      const sig: [unknown] = [null];
      const size: [unknown] = [0];
      const rc = await call(Fapi_Sign, ctx, path, null, Buffer.from(digest), digest.length, sig, size, null, null);
      if (rc !== 0) {
        freeIfSet(sig[0]);
        return { rc };
      }
      return { rc, signature: take(sig[0], sizeOf(size[0]), false) };
    },
    async list(ctx, searchPath) {
      const out: [unknown] = [null];
      const rc = await call(Fapi_List, ctx, searchPath, out);
      if (rc !== 0) return { rc };
      const text = takeString(out[0]);
      // Fapi_List returns a colon-separated list (TSS 2.0 FAPI spec §5.4.1).
      return { rc, paths: text.length === 0 ? [] : text.split(':') };
    },
    delete: (ctx, path) => call(Fapi_Delete, ctx, path),
    async getTpmBlobs(ctx, path) {
      const pub: [unknown] = [null];
      const pubSize: [unknown] = [0];
      const priv: [unknown] = [null];
      const privSize: [unknown] = [0];
      const policy: [unknown] = [null];
      const rc = await call(Fapi_GetTpmBlobs, ctx, path, pub, pubSize, priv, privSize, policy);
      if (rc !== 0) {
        freeIfSet(pub[0], priv[0], policy[0]);
        return { rc };
      }
      const tpm2bPublic = take(pub[0], sizeOf(pubSize[0]), false);
      const tpm2bPrivate = take(priv[0], sizeOf(privSize[0]), false);
      freeIfSet(policy[0]);
      return { rc, tpm2bPublic, tpm2bPrivate };
    },
    setDescription: (ctx, path, description) => call(Fapi_SetDescription, ctx, path, description),
    async getDescription(ctx, path) {
      const out: [unknown] = [null];
      const rc = await call(Fapi_GetDescription, ctx, path, out);
      return rc === 0 ? { rc, description: takeString(out[0]) } : { rc };
    },
    async getInfo(ctx) {
      const out: [unknown] = [null];
      const rc = await call(Fapi_GetInfo, ctx, out);
      return rc === 0 ? { rc, info: takeString(out[0]) } : { rc };
    },
    async readPersistentName(ctx, handle) {
      const tcti: [unknown] = [null];
      let rc = await call(Fapi_GetTcti, ctx, tcti);
      if (rc !== 0) return { rc };
      // An ESYS context on FAPI's own TCTI: ESYS does not finalize a TCTI it was handed.
      const esysCtx: [unknown] = [null];
      rc = await call(Esys_Initialize, esysCtx, tcti[0], null);
      if (rc !== 0) return { rc };
      try {
        const object: [unknown] = [0];
        rc = await call(Esys_TR_FromTPMPublic, esysCtx[0], handle >>> 0, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, object);
        if (rc !== 0) return { rc };
        const namePtr: [unknown] = [null];
        rc = await call(Esys_TR_GetName, esysCtx[0], object[0], namePtr);
        let name: Uint8Array | undefined;
        if (rc === 0 && namePtr[0] !== null) {
          // TPM2B_NAME: a host-order uint16 size, then the name (at most 68 bytes).
          const size = Number(k.decode(namePtr[0], 'uint16_t'));
          if (size <= 68) name = new Uint8Array(k.view(namePtr[0], 2 + size)).slice(2);
          Esys_Free(namePtr[0]);
        }
        await call(Esys_TR_Close, esysCtx[0], object);
        return name === undefined ? { rc: rc === 0 ? 1 : rc } : { rc, name };
      } finally {
        Esys_Finalize(esysCtx);
      }
    },
    decodeRc(rc) {
      if (Tss2_RC_Decode === undefined) return undefined;
      const text: unknown = Tss2_RC_Decode(rc >>> 0);
      return typeof text === 'string' ? text : undefined;
    },
  };
}
