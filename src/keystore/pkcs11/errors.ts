/**
 * The one place where PKCS#11 return values (CKR_*) become typed `KeyStoreError`s with a human
 * message. Callers switch on `code`; the message names the CKR value and the C function so an
 * operator can look it up, and never carries key material or the PIN.
 *
 * Values: PKCS #11 Base Specification v2.40 §5.1 (pkcs11t.h), plus CKR_AEAD_DECRYPT_FAILED from v3.0.
 */
import { KeyStoreError } from '../../util/errors.ts';

/** The error codes this backend produces beyond the contract's (exists, not-found, ...). */
export type Pkcs11ErrorCode =
  | 'pin-incorrect' | 'pin-locked' | 'pin-expired' | 'pin-invalid' | 'pin-not-initialized'
  | 'token-not-present' | 'token-not-recognized' | 'token-read-only' | 'token-full' | 'device-error'
  | 'mechanism-invalid' | 'session-lost' | 'not-found' | 'attribute-sensitive' | 'template-refused'
  | 'key-refused' | 'too-large' | 'unwrap-failed' | 'unsupported' | 'host-memory' | 'busy'
  | 'operation-active' | 'token-error';

interface CkrEntry {
  readonly name: string;
  readonly code: Pkcs11ErrorCode;
  readonly message: string;
}

const e = (name: string, code: Pkcs11ErrorCode, message: string): CkrEntry => ({ name, code, message });

/** Every CKR value a v2.40 token returns, with what it means for an operator. */
export const CKR_TABLE: ReadonlyMap<number, CkrEntry> = new Map<number, CkrEntry>([
  [0x01, e('CKR_CANCEL', 'token-error', 'the operation was cancelled')],
  [0x02, e('CKR_HOST_MEMORY', 'host-memory', 'the PKCS#11 module ran out of host memory')],
  [0x03, e('CKR_SLOT_ID_INVALID', 'token-not-present', 'the slot no longer exists')],
  [0x05, e('CKR_GENERAL_ERROR', 'token-error', 'the token reported an unrecoverable error')],
  [0x06, e('CKR_FUNCTION_FAILED', 'token-error', 'the token could not perform the function')],
  [0x07, e('CKR_ARGUMENTS_BAD', 'token-error', 'the module refused the call\'s arguments')],
  [0x08, e('CKR_NO_EVENT', 'token-error', 'no slot event')],
  [0x09, e('CKR_NEED_TO_CREATE_THREADS', 'unsupported', 'the module needs to create threads, which was not allowed')],
  [0x0a, e('CKR_CANT_LOCK', 'unsupported', 'the module cannot provide the locking this process asked for')],
  [0x10, e('CKR_ATTRIBUTE_READ_ONLY', 'template-refused', 'an attribute is read-only on this token')],
  [0x11, e('CKR_ATTRIBUTE_SENSITIVE', 'attribute-sensitive', 'the token refuses to reveal a sensitive attribute (as it should for private and secret key values)')],
  [0x12, e('CKR_ATTRIBUTE_TYPE_INVALID', 'template-refused', 'the token does not know an attribute in the template')],
  [0x13, e('CKR_ATTRIBUTE_VALUE_INVALID', 'template-refused', 'the token refused an attribute value in the template')],
  [0x1b, e('CKR_ACTION_PROHIBITED', 'key-refused', 'the token\'s policy prohibits this action')],
  [0x20, e('CKR_DATA_INVALID', 'token-error', 'the token refused the input data')],
  [0x21, e('CKR_DATA_LEN_RANGE', 'too-large', 'the input is too long or too short for the mechanism')],
  [0x30, e('CKR_DEVICE_ERROR', 'device-error', 'the token device failed; check the TEE (tee-supplicant) or the device log')],
  [0x31, e('CKR_DEVICE_MEMORY', 'token-full', 'the token has no memory left for objects; delete unused keys')],
  [0x32, e('CKR_DEVICE_REMOVED', 'token-not-present', 'the token was removed during the call')],
  [0x35, e('CKR_AEAD_DECRYPT_FAILED', 'unwrap-failed', 'the authentication tag did not verify')],
  [0x40, e('CKR_ENCRYPTED_DATA_INVALID', 'unwrap-failed', 'the encrypted data does not decrypt under this key')],
  [0x41, e('CKR_ENCRYPTED_DATA_LEN_RANGE', 'unwrap-failed', 'the encrypted data has an impossible length')],
  [0x50, e('CKR_FUNCTION_CANCELED', 'token-error', 'the function was cancelled')],
  [0x51, e('CKR_FUNCTION_NOT_PARALLEL', 'busy', 'no function is executing in parallel')],
  [0x54, e('CKR_FUNCTION_NOT_SUPPORTED', 'unsupported', 'the module does not implement this function')],
  [0x60, e('CKR_KEY_HANDLE_INVALID', 'not-found', 'the key no longer exists on the token')],
  [0x62, e('CKR_KEY_SIZE_RANGE', 'mechanism-invalid', 'the token does not support this key size')],
  [0x63, e('CKR_KEY_TYPE_INCONSISTENT', 'key-refused', 'the key is of the wrong type for the mechanism')],
  [0x64, e('CKR_KEY_NOT_NEEDED', 'token-error', 'a key was given where none is needed')],
  [0x65, e('CKR_KEY_CHANGED', 'token-error', 'the key changed')],
  [0x66, e('CKR_KEY_NEEDED', 'token-error', 'a key is needed')],
  [0x67, e('CKR_KEY_INDIGESTIBLE', 'key-refused', 'the key cannot be digested')],
  [0x68, e('CKR_KEY_FUNCTION_NOT_PERMITTED', 'key-refused', 'the key\'s attributes do not permit this use')],
  [0x69, e('CKR_KEY_NOT_WRAPPABLE', 'key-refused', 'the key cannot be wrapped')],
  [0x6a, e('CKR_KEY_UNEXTRACTABLE', 'attribute-sensitive', 'the key is not extractable')],
  [0x70, e('CKR_MECHANISM_INVALID', 'mechanism-invalid', 'the token does not offer this mechanism')],
  [0x71, e('CKR_MECHANISM_PARAM_INVALID', 'mechanism-invalid', 'the token refused the mechanism parameters')],
  [0x82, e('CKR_OBJECT_HANDLE_INVALID', 'not-found', 'the object no longer exists on the token')],
  [0x90, e('CKR_OPERATION_ACTIVE', 'operation-active', 'another operation is still active on the session')],
  [0x91, e('CKR_OPERATION_NOT_INITIALIZED', 'token-error', 'no operation is active on the session')],
  [0xa0, e('CKR_PIN_INCORRECT', 'pin-incorrect', 'the token refused the PIN; check the configured PIN source (repeated failures lock the PIN)')],
  [0xa1, e('CKR_PIN_INVALID', 'pin-invalid', 'the PIN has characters the token does not accept')],
  [0xa2, e('CKR_PIN_LEN_RANGE', 'pin-invalid', 'the PIN is too long or too short for this token')],
  [0xa3, e('CKR_PIN_EXPIRED', 'pin-expired', 'the PIN has expired; set a new one with the token\'s tools')],
  [0xa4, e('CKR_PIN_LOCKED', 'pin-locked', 'the PIN is locked after too many wrong attempts; the security officer must unlock or re-initialise it')],
  [0xb0, e('CKR_SESSION_CLOSED', 'session-lost', 'the session was closed; reopen the key store')],
  [0xb1, e('CKR_SESSION_COUNT', 'busy', 'the token has too many open sessions')],
  [0xb3, e('CKR_SESSION_HANDLE_INVALID', 'session-lost', 'the session is no longer valid; reopen the key store')],
  [0xb4, e('CKR_SESSION_PARALLEL_NOT_SUPPORTED', 'unsupported', 'the token does not support parallel sessions')],
  [0xb5, e('CKR_SESSION_READ_ONLY', 'token-read-only', 'the session is read-only')],
  [0xb6, e('CKR_SESSION_EXISTS', 'busy', 'a session is already open')],
  [0xb7, e('CKR_SESSION_READ_ONLY_EXISTS', 'busy', 'a read-only session exists')],
  [0xb8, e('CKR_SESSION_READ_WRITE_SO_EXISTS', 'busy', 'the security officer is logged in')],
  [0xc0, e('CKR_SIGNATURE_INVALID', 'token-error', 'the signature is invalid')],
  [0xc1, e('CKR_SIGNATURE_LEN_RANGE', 'token-error', 'the signature has an impossible length')],
  [0xd0, e('CKR_TEMPLATE_INCOMPLETE', 'template-refused', 'the token needs attributes the template lacks')],
  [0xd1, e('CKR_TEMPLATE_INCONSISTENT', 'template-refused', 'the template\'s attributes conflict for this token')],
  [0xe0, e('CKR_TOKEN_NOT_PRESENT', 'token-not-present', 'the token is not present in its slot (is the TEE running and tee-supplicant started?)')],
  [0xe1, e('CKR_TOKEN_NOT_RECOGNIZED', 'token-not-recognized', 'the module does not recognise the token in the slot')],
  [0xe2, e('CKR_TOKEN_WRITE_PROTECTED', 'token-read-only', 'the token is write-protected')],
  [0xf0, e('CKR_UNWRAPPING_KEY_HANDLE_INVALID', 'not-found', 'the unwrapping key no longer exists')],
  [0xf1, e('CKR_UNWRAPPING_KEY_SIZE_RANGE', 'key-refused', 'the unwrapping key has an unsupported size')],
  [0xf2, e('CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT', 'key-refused', 'the unwrapping key is of the wrong type')],
  [0x100, e('CKR_USER_ALREADY_LOGGED_IN', 'token-error', 'the user is already logged in')],
  [0x101, e('CKR_USER_NOT_LOGGED_IN', 'session-lost', 'the session is no longer logged in; reopen the key store')],
  [0x102, e('CKR_USER_PIN_NOT_INITIALIZED', 'pin-not-initialized', 'the token\'s user PIN was never set; initialise it (pkcs11-tool --init-pin)')],
  [0x103, e('CKR_USER_TYPE_INVALID', 'token-error', 'invalid user type')],
  [0x104, e('CKR_USER_ANOTHER_ALREADY_LOGGED_IN', 'busy', 'another user is logged in to the token')],
  [0x105, e('CKR_USER_TOO_MANY_TYPES', 'busy', 'too many user types are logged in')],
  [0x110, e('CKR_WRAPPED_KEY_INVALID', 'unwrap-failed', 'the wrapped key is invalid')],
  [0x112, e('CKR_WRAPPED_KEY_LEN_RANGE', 'unwrap-failed', 'the wrapped key has an impossible length')],
  [0x113, e('CKR_WRAPPING_KEY_HANDLE_INVALID', 'not-found', 'the wrapping key no longer exists')],
  [0x114, e('CKR_WRAPPING_KEY_SIZE_RANGE', 'key-refused', 'the wrapping key has an unsupported size')],
  [0x115, e('CKR_WRAPPING_KEY_TYPE_INCONSISTENT', 'key-refused', 'the wrapping key is of the wrong type')],
  [0x120, e('CKR_RANDOM_SEED_NOT_SUPPORTED', 'unsupported', 'the token cannot be seeded')],
  [0x121, e('CKR_RANDOM_NO_RNG', 'unsupported', 'the token has no random number generator')],
  [0x130, e('CKR_DOMAIN_PARAMS_INVALID', 'mechanism-invalid', 'the token does not support these domain parameters')],
  [0x140, e('CKR_CURVE_NOT_SUPPORTED', 'mechanism-invalid', 'the token does not support this elliptic curve')],
  [0x150, e('CKR_BUFFER_TOO_SMALL', 'token-error', 'an output buffer was too small')],
  [0x160, e('CKR_SAVED_STATE_INVALID', 'token-error', 'the saved state is invalid')],
  [0x170, e('CKR_INFORMATION_SENSITIVE', 'attribute-sensitive', 'the information is sensitive')],
  [0x180, e('CKR_STATE_UNSAVEABLE', 'token-error', 'the state cannot be saved')],
  [0x190, e('CKR_CRYPTOKI_NOT_INITIALIZED', 'session-lost', 'the PKCS#11 module is not initialised (it was finalised elsewhere in this process)')],
  [0x191, e('CKR_CRYPTOKI_ALREADY_INITIALIZED', 'token-error', 'the PKCS#11 module is already initialised')],
  [0x1a0, e('CKR_MUTEX_BAD', 'token-error', 'bad mutex')],
  [0x1a1, e('CKR_MUTEX_NOT_LOCKED', 'token-error', 'mutex not locked')],
  [0x1b0, e('CKR_NEW_PIN_MODE', 'token-error', 'new PIN mode')],
  [0x1b1, e('CKR_NEXT_OTP', 'token-error', 'next OTP')],
  [0x1b5, e('CKR_EXCEEDED_MAX_ITERATIONS', 'token-error', 'exceeded the maximum iterations')],
  [0x1b6, e('CKR_FIPS_SELF_TEST_FAILED', 'device-error', 'the token failed its self-test')],
  [0x1b7, e('CKR_LIBRARY_LOAD_FAILED', 'device-error', 'the module could not load a library it needs')],
  [0x1b8, e('CKR_PIN_TOO_WEAK', 'pin-invalid', 'the PIN is too weak')],
  [0x1b9, e('CKR_PUBLIC_KEY_INVALID', 'key-refused', 'the public key is invalid')],
  [0x200, e('CKR_FUNCTION_REJECTED', 'key-refused', 'the token rejected the function')],
]);

/**
 * Return values that, from C_Decrypt with AES-GCM, mean "this blob does not authenticate under this
 * key". SoftHSM 2.6 reports a bad GCM tag as CKR_GENERAL_ERROR; v3.0 tokens use CKR_AEAD_DECRYPT_FAILED;
 * others CKR_ENCRYPTED_DATA_INVALID. Device, session and PIN failures are not in this set: they keep
 * their own codes so a dead TEE is not reported as tampering.
 */
const DECRYPT_FAILURES: ReadonlySet<number> = new Set([0x05, 0x06, 0x20, 0x21, 0x35, 0x40, 0x41]);

/** The shape of pkcs11js's Pkcs11Error without importing the native module. */
interface Pkcs11ErrorLike {
  readonly name: string;
  readonly code: number;
  readonly method?: string;
}

function isPkcs11Error(err: unknown): err is Pkcs11ErrorLike & Error {
  return err instanceof Error && err.name === 'Pkcs11Error' && typeof (err as { code?: unknown }).code === 'number';
}

export interface ErrorContext {
  /** What vitalseal was doing: "sign with device-identity", "open token vitalseal". */
  readonly action: string;
  /** C_Decrypt of a blob: authentication failures become 'unwrap-failed'. */
  readonly decrypt?: boolean;
}

/** The CKR name for a value ("CKR_PIN_INCORRECT"), or its hex for vendor-defined values. */
export function ckrName(rv: number): string {
  return CKR_TABLE.get(rv)?.name ?? `CKR 0x${rv.toString(16).padStart(8, '0')}${rv >= 0x80000000 ? ' (vendor-defined)' : ''}`;
}

/**
 * Maps anything a pkcs11js call threw to a `KeyStoreError`. A `KeyStoreError` passes through
 * unchanged; a TypeError (a bug here, not a token failure) is rethrown as is.
 */
export function toKeyStoreError(err: unknown, ctx: ErrorContext): Error {
  if (err instanceof KeyStoreError) return err;
  if (isPkcs11Error(err)) {
    const rv = err.code;
    const where = err.method ? ` from ${err.method}` : '';
    if (ctx.decrypt === true && DECRYPT_FAILURES.has(rv)) {
      return new KeyStoreError('unwrap-failed',
        `${ctx.action}: the blob does not authenticate under this key: tampered, truncated, or sealed by another key or token (${ckrName(rv)}${where})`,
        { cause: err });
    }
    const entry = CKR_TABLE.get(rv);
    if (entry === undefined) {
      return new KeyStoreError('token-error', `${ctx.action}: the token failed with ${ckrName(rv)}${where}`, { cause: err });
    }
    return new KeyStoreError(entry.code, `${ctx.action}: ${entry.message} (${entry.name}${where})`, { cause: err });
  }
  if (err instanceof TypeError) return err;
  if (err instanceof Error && err.name === 'NativeError') {
    return new KeyStoreError('token-error', `${ctx.action}: the PKCS#11 module failed: ${err.message.slice(0, 200)}`, { cause: err });
  }
  return new KeyStoreError('token-error', `${ctx.action}: unexpected failure: ${String(err).slice(0, 200)}`, { cause: err });
}
