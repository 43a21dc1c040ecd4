/**
 * The koffi types the FFI backends share (src/keystore/tpm/native.ts, src/crypto/libcrypto/native.ts).
 * Types only: koffi itself is loaded by each backend, lazily, where it is needed (the two that call
 * into the running program share src/util/koffi-program.ts).
 */
export type Koffi = typeof import('koffi').default;
export type LibraryHandle = ReturnType<Koffi['load']>;
export type NativeFunction = ReturnType<LibraryHandle['func']>;
/** An opaque C pointer as koffi hands it out. */
export type CPointer = object;
