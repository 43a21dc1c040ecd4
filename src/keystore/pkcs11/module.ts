/**
 * Loading a PKCS#11 module (the .so) through pkcs11js, once per process and path.
 *
 * C_Initialize and C_Finalize are per process, not per caller (PKCS #11 v2.40 §5.4), so modules are
 * reference-counted: the first store on a module loads and initialises it, the last one to close
 * finalises and unloads it. Login state is per token and per process (§5.6: all sessions of an
 * application share it, and C_Logout ends it for all of them), so one token is opened by at most one
 * store at a time in a process; a second open is refused with 'already-open' rather than silently
 * sharing (or ending) the first store's login.
 *
 * pkcs11js is loaded lazily, so importing vitalseal never needs the native addon unless a PKCS#11
 * store is opened.
 */
import { existsSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename } from 'node:path';
import type * as Pkcs11Js from 'pkcs11js';
import { KeyStoreError } from '../../util/errors.ts';
import { CKF_OS_LOCKING_OK } from './constants.ts';
import { toKeyStoreError } from './errors.ts';

export type Pkcs11Api = Pkcs11Js.PKCS11;
export type Pkcs11Handle = Pkcs11Js.Handle;
export type Pkcs11Template = Pkcs11Js.Template;

export interface LoadedModule {
  readonly path: string;
  readonly api: Pkcs11Api;
  /** The pkcs11js binding's own constants (CK_PARAMS_GCM has no PKCS#11 number). */
  readonly paramsGcm: number;
  readonly info: Pkcs11Js.ModuleInfo;
  refs: number;
  /** False when someone else in this process had already initialised the module. */
  readonly ownsInitialize: boolean;
  /** Slots (as hex of the slot handle) with an open store. */
  readonly openSlots: Set<string>;
}

const modules = new Map<string, LoadedModule>();

let binding: typeof Pkcs11Js | undefined;

function loadBinding(): typeof Pkcs11Js {
  if (binding !== undefined) return binding;
  const require = createRequire(import.meta.url);
  try {
    binding = require('pkcs11js') as typeof Pkcs11Js;
  } catch (err) {
    throw new KeyStoreError('module-load-failed',
      'the pkcs11js native addon is not available: run `npm ci` (pkcs11js must be allowed to build: "allowScripts" in ' +
      'package.json; building needs g++, make and python3)', { cause: err });
  }
  return binding;
}

/**
 * What to install when a module file is missing. The Debian package names: softhsm2 (tests,
 * development); libckteec0 from optee-client (arm64/armhf, Debian 12+), which also needs
 * tee-supplicant running and an OP-TEE firmware built with the PKCS#11 TA (CFG_PKCS11_TA=y).
 */
export function missingModuleHint(path: string): string {
  const name = basename(path);
  if (name.startsWith('libsofthsm2')) {
    return 'install the Debian package "softhsm2" (it provides /usr/lib/softhsm/libsofthsm2.so)';
  }
  if (name.startsWith('libckteec')) {
    return 'install OP-TEE\'s PKCS#11 client library, the Debian package "libckteec0" (with "tee-supplicant" running; ' +
      'it provides /usr/lib/aarch64-linux-gnu/libckteec.so.0 on arm64), and use firmware built with the OP-TEE PKCS#11 TA';
  }
  if (name.startsWith('opensc-pkcs11')) return 'install the Debian package "opensc-pkcs11"';
  return `install the package that provides ${name} (on Debian, \`dpkg -S ${name}\` on a machine that has it names it)`;
}

/** Loads and initialises the module at `path`, or takes another reference to it. */
export function acquireModule(path: string): LoadedModule {
  if (typeof path !== 'string' || path.length === 0 || path.includes('\u0000')) {
    throw new KeyStoreError('module-missing', 'no PKCS#11 module path configured');
  }
  if (!existsSync(path)) {
    throw new KeyStoreError('module-missing', `PKCS#11 module ${path} not found: ${missingModuleHint(path)}`);
  }
  const key = realpathSync(path);
  const existing = modules.get(key);
  if (existing !== undefined) {
    existing.refs++;
    return existing;
  }
  const lib = loadBinding();
  const api = new lib.PKCS11();
  try {
    api.load(path);
  } catch (err) {
    throw new KeyStoreError('module-load-failed',
      `cannot load PKCS#11 module ${path} (wrong architecture, or a library it needs is missing): ${err instanceof Error ? err.message.slice(0, 300) : String(err)}`,
      { cause: err });
  }
  let ownsInitialize = true;
  try {
    // CKF_OS_LOCKING_OK: pkcs11js runs the slow calls on libuv worker threads, so the module must
    // expect calls from more than one thread (PKCS #11 v2.40 §5.4 C_Initialize).
    api.C_Initialize({ flags: CKF_OS_LOCKING_OK });
  } catch (err) {
    if (err instanceof Error && (err as { code?: unknown }).code === 0x191) {
      ownsInitialize = false; // CKR_CRYPTOKI_ALREADY_INITIALIZED: another user in this process
    } else {
      try { api.close(); } catch { /* unloading after a failed initialise is best effort */ }
      throw toKeyStoreError(err, { action: `initialise PKCS#11 module ${path}` });
    }
  }
  let info: Pkcs11Js.ModuleInfo;
  try {
    info = api.C_GetInfo();
  } catch (err) {
    if (ownsInitialize) try { api.C_Finalize(); } catch { /* best effort */ }
    try { api.close(); } catch { /* best effort */ }
    throw toKeyStoreError(err, { action: `read PKCS#11 module info from ${path}` });
  }
  const loaded: LoadedModule = { path, api, paramsGcm: lib.CK_PARAMS_GCM, info, refs: 1, ownsInitialize, openSlots: new Set() };
  modules.set(key, loaded);
  return loaded;
}

/** Drops a reference; the last one finalises and unloads the module. */
export function releaseModule(m: LoadedModule): void {
  m.refs--;
  if (m.refs > 0) return;
  for (const [k, v] of modules) if (v === m) modules.delete(k);
  if (m.ownsInitialize) {
    try { m.api.C_Finalize(); } catch { /* the process keeps going; nothing else to release */ }
  }
  try { m.api.close(); } catch { /* best effort */ }
}
