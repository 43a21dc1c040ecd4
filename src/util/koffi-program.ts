/**
 * koffi and the running program's own symbols (`dlopen(NULL)`), for the FFI backends that call
 * into what the process already has loaded (src/crypto/libcrypto: Node's OpenSSL;
 * src/net/batched-udp: the C library), and the switch that turns such a backend off. Never throws:
 * a failure is a one-line reason. `configureKoffi` is shared with the TPM store as well: koffi's
 * settings are process-wide, so one place decides them.
 */
import { createRequire } from 'node:module';
import type { Koffi, LibraryHandle } from './koffi-types.ts';

export function loadProgramSymbols(): { readonly k: Koffi; readonly lib: LibraryHandle } | { readonly reason: string } {
  let k: Koffi;
  try {
    k = createRequire(import.meta.url)('koffi') as Koffi;
  } catch (e) {
    return { reason: `the koffi FFI module did not load (${oneLine(e)})` };
  }
  configureKoffi(k);
  try {
    return { k, lib: k.load(null) };
  } catch (e) {
    return { reason: `the running program's symbols cannot be opened (${oneLine(e)})` };
  }
}

/**
 * koffi's process-wide settings, applied by every backend before its first library load: they are
 * frozen by the first load, whoever makes it. The TPM store's FAPI calls run JSON parsing, OpenSSL
 * and ESYS on koffi's async worker stack (src/keystore/tpm/native.ts): they get the same 1 MiB a
 * synchronous call has (koffi's async default is 128 KiB). After a load this changes nothing.
 */
export function configureKoffi(k: Koffi): void {
  try {
    k.config({ ...k.config(), async_stack_size: 1 << 20, async_heap_size: 1 << 18 });
  } catch {
    // a library is already loaded: the settings are fixed
  }
}

/** The first line of an error's message, for a reason string. */
export function oneLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';
}

/** What a backend's binding gives: the bindings, or a one-line reason there are none. */
export interface Binding<B> {
  readonly bindings?: B;
  readonly reason?: string;
}

/**
 * `bind` once per process, unless the environment variable `envName` is `off`: then nothing is
 * bound and the reason says so. The variable is read on every call, so a test can switch a backend
 * off and on again; each state's result is kept until the switch changes.
 */
export function bindUnlessOff<B>(envName: string, bind: () => Binding<B>): () => Binding<B> {
  let loaded: (Binding<B> & { readonly off: boolean }) | undefined;
  return () => {
    const off = process.env[envName] === 'off';
    if (loaded !== undefined && loaded.off === off) return loaded;
    loaded = { off, ...(off ? { reason: `disabled by ${envName}=off` } : bind()) };
    return loaded;
  };
}
