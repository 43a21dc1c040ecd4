/**
 * One FAPI context, used by one job at a time.
 *
 * - Serialised: FAPI contexts are not thread-safe and koffi's async calls run on worker threads, so
 *   every job on a context waits for the previous one (a promise chain).
 * - Re-created after a failed TPM-facing call: in tpm2-tss 3.2.1 a failed Fapi_Unseal or Fapi_Sign
 *   (for instance on a missing key) leaves the context in a state where a later call frees an
 *   invalid pointer and aborts the process (tpm2-software/tpm2-tss#2752). Finalizing and
 *   initializing again costs a few milliseconds and avoids it. Keystore-only reads
 *   (Fapi_GetTpmBlobs, Fapi_GetDescription, Fapi_List) were checked not to do this.
 * - TSS2_FAPICONF is process-wide, and FAPI reads it inside Fapi_Initialize: initializations are
 *   serialised process-wide too, with the variable set for the duration of the call only.
 * - FAPI's own logging goes to stderr; unless TSS2_LOG is already set, it is silenced
 *   (`all+NONE`): errors reach callers as typed KeyStoreErrors instead.
 */
import { TpmKeyStoreError, errorFromRc, type RcContext } from './errors.ts';
import type { CPointer, FapiBindings } from './native.ts';
import type { ResolvedFapiConfig } from './fapi-config.ts';

let initChain: Promise<unknown> = Promise.resolve();

/** Runs `fn` while no other FAPI initialization in this process runs, with TSS2_FAPICONF = `configPath`. */
function withFapiConf<T>(configPath: string, fn: () => Promise<T>): Promise<T> {
  const run = async (): Promise<T> => {
    if (process.env['TSS2_LOG'] === undefined) process.env['TSS2_LOG'] = 'all+NONE';
    const previous = process.env['TSS2_FAPICONF'];
    process.env['TSS2_FAPICONF'] = configPath;
    try {
      return await fn();
    } finally {
      if (previous === undefined) delete process.env['TSS2_FAPICONF'];
      else process.env['TSS2_FAPICONF'] = previous;
    }
  };
  const p = initChain.then(run, run);
  initChain = p.catch(() => undefined);
  return p;
}

/** The calls available inside a job. Each returns the TSS2_RC (0 = success) and any outputs. */
export interface FapiCalls {
  provision(): Promise<number>;
  getRandom(length: number): Promise<{ rc: number; data?: Uint8Array }>;
  createSeal(path: string, type: string, data: Uint8Array): Promise<number>;
  unseal(path: string): Promise<{ rc: number; data?: Uint8Array }>;
  createKey(path: string, type: string): Promise<number>;
  sign(path: string, digest: Uint8Array): Promise<{ rc: number; signature?: Uint8Array }>;
  list(searchPath: string): Promise<{ rc: number; paths?: string[] }>;
  delete(path: string): Promise<number>;
  getTpmBlobs(path: string): Promise<{ rc: number; tpm2bPublic?: Uint8Array; tpm2bPrivate?: Uint8Array }>;
  setDescription(path: string, description: string): Promise<number>;
  getDescription(path: string): Promise<{ rc: number; description?: string }>;
  getInfo(): Promise<{ rc: number; info?: string }>;
  readPersistentName(handle: number): Promise<{ rc: number; name?: Uint8Array }>;
  /** A typed error for `rc`, with libtss2-rc's text when available. */
  error(rc: number, ctx: RcContext): TpmKeyStoreError;
}

export class FapiContext {
  readonly #lib: FapiBindings;
  readonly #config: ResolvedFapiConfig;
  #ctx: CPointer | null = null;
  #chain: Promise<unknown> = Promise.resolve();
  /** Set after a failed TPM-facing call: the context is re-created before the next job. */
  #suspect = false;
  #closed = false;
  readonly #calls: FapiCalls;

  private constructor(lib: FapiBindings, config: ResolvedFapiConfig) {
    this.#lib = lib;
    this.#config = config;
    this.#calls = this.#makeCalls();
  }

  /** Initializes a context over `config`. Throws a typed error (no TPM, bad config, ...). */
  static async open(lib: FapiBindings, config: ResolvedFapiConfig): Promise<FapiContext> {
    const c = new FapiContext(lib, config);
    await c.#initialize();
    return c;
  }

  get config(): ResolvedFapiConfig {
    return this.#config;
  }

  get closed(): boolean {
    return this.#closed;
  }

  async #initialize(): Promise<void> {
    const { rc, ctx } = await withFapiConf(this.#config.path, () => this.#lib.initialize());
    if (rc !== 0 || ctx === null) {
      throw errorFromRc(rc === 0 ? 1 : rc, { operation: 'initialize', tcti: this.#config.tcti, ...this.#decoded(rc) });
    }
    this.#ctx = ctx;
    this.#suspect = false;
  }

  #finalize(): void {
    if (this.#ctx !== null) {
      this.#lib.finalize(this.#ctx);
      this.#ctx = null;
    }
  }

  #decoded(rc: number): { decoded?: string } {
    const text = this.#lib.decodeRc(rc);
    return text === undefined ? {} : { decoded: text };
  }

  #ptr(): CPointer {
    if (this.#ctx === null) throw new TpmKeyStoreError('closed', 'the FAPI context is not open');
    return this.#ctx;
  }

  #makeCalls(): FapiCalls {
    const lib = this.#lib;
    // Calls that send TPM commands: a failure marks the context for re-creation.
    const tpm = async <R extends { rc: number } | number>(p: Promise<R>): Promise<R> => {
      const r = await p;
      const rc = typeof r === 'number' ? r : r.rc;
      if (rc !== 0) this.#suspect = true;
      return r;
    };
    return {
      provision: () => tpm(lib.provision(this.#ptr())),
      getRandom: (n) => tpm(lib.getRandom(this.#ptr(), n)),
      createSeal: (path, type, data) => tpm(lib.createSeal(this.#ptr(), path, type, data)),
      unseal: (path) => tpm(lib.unseal(this.#ptr(), path)),
      createKey: (path, type) => tpm(lib.createKey(this.#ptr(), path, type)),
      sign: (path, digest) => tpm(lib.sign(this.#ptr(), path, digest)),
      delete: (path) => tpm(lib.delete(this.#ptr(), path)),
      getInfo: () => tpm(lib.getInfo(this.#ptr())),
      readPersistentName: (handle) => tpm(lib.readPersistentName(this.#ptr(), handle)),
      // Keystore-only: no TPM command, no context damage on failure.
      list: (searchPath) => lib.list(this.#ptr(), searchPath),
      getTpmBlobs: (path) => lib.getTpmBlobs(this.#ptr(), path),
      setDescription: (path, description) => lib.setDescription(this.#ptr(), path, description),
      getDescription: (path) => lib.getDescription(this.#ptr(), path),
      error: (rc, ctx) => errorFromRc(rc, { tcti: this.#config.tcti, ...ctx, ...this.#decoded(rc) }),
    };
  }

  /**
   * Runs `job` when every earlier job on this context has finished. Fails with
   * `KeyStoreError('closed')` once `close()` has been called; jobs queued before that still run.
   */
  run<T>(job: (fapi: FapiCalls) => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new TpmKeyStoreError('closed', 'the TPM key store is closed'));
    const step = async (): Promise<T> => {
      if (this.#suspect || this.#ctx === null) {
        this.#finalize();
        await this.#initialize();
      }
      return job(this.#calls);
    };
    const p = this.#chain.then(step, step);
    this.#chain = p.catch(() => undefined);
    return p;
  }

  /** Lets queued jobs finish, then finalizes the context (closing the TCTI connection). Idempotent. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#chain = this.#chain.then(() => this.#finalize());
    }
    return this.#chain.then(() => undefined);
  }
}
