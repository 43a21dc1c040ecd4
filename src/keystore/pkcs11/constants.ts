/**
 * The PKCS#11 numbers this backend uses, from "PKCS #11 Cryptographic Token Interface Base
 * Specification Version 2.40" (pkcs11t.h). Written out here rather than read from pkcs11js so that
 * the module can be imported without loading the native addon; a test checks every value against
 * the constants pkcs11js exports.
 */

// Object classes (CKO_*), §4.1.
export const CKO_DATA = 0x0;
export const CKO_CERTIFICATE = 0x1;
export const CKO_PUBLIC_KEY = 0x2;
export const CKO_PRIVATE_KEY = 0x3;
export const CKO_SECRET_KEY = 0x4;

// Key types (CKK_*).
export const CKK_EC = 0x3;
export const CKK_AES = 0x1f;

// Attributes (CKA_*).
export const CKA_CLASS = 0x0;
export const CKA_TOKEN = 0x1;
export const CKA_PRIVATE = 0x2;
export const CKA_LABEL = 0x3;
export const CKA_APPLICATION = 0x10;
export const CKA_VALUE = 0x11;
export const CKA_KEY_TYPE = 0x100;
export const CKA_ID = 0x102;
export const CKA_SENSITIVE = 0x103;
export const CKA_ENCRYPT = 0x104;
export const CKA_DECRYPT = 0x105;
export const CKA_WRAP = 0x106;
export const CKA_UNWRAP = 0x107;
export const CKA_SIGN = 0x108;
export const CKA_SIGN_RECOVER = 0x109;
export const CKA_VERIFY = 0x10a;
export const CKA_DERIVE = 0x10c;
export const CKA_VALUE_LEN = 0x161;
export const CKA_EXTRACTABLE = 0x162;
export const CKA_LOCAL = 0x163;
export const CKA_NEVER_EXTRACTABLE = 0x164;
export const CKA_ALWAYS_SENSITIVE = 0x165;
export const CKA_MODIFIABLE = 0x170;
export const CKA_COPYABLE = 0x171;
export const CKA_EC_PARAMS = 0x180;
export const CKA_EC_POINT = 0x181;

// Mechanisms (CKM_*).
export const CKM_EC_KEY_PAIR_GEN = 0x1040;
export const CKM_ECDSA = 0x1041;
export const CKM_AES_KEY_GEN = 0x1080;
export const CKM_AES_GCM = 0x1087;

// Session flags, user types, C_Initialize flags.
export const CKF_RW_SESSION = 0x2;
export const CKF_SERIAL_SESSION = 0x4;
export const CKU_USER = 0x1;
export const CKF_OS_LOCKING_OK = 0x2;

// CK_SLOT_INFO.flags.
export const CKF_TOKEN_PRESENT = 0x1;
export const CKF_HW_SLOT = 0x4;

// CK_TOKEN_INFO.flags.
export const CKF_RNG = 0x1;
export const CKF_WRITE_PROTECTED = 0x2;
export const CKF_LOGIN_REQUIRED = 0x4;
export const CKF_USER_PIN_INITIALIZED = 0x8;
export const CKF_TOKEN_INITIALIZED = 0x400;
export const CKF_USER_PIN_COUNT_LOW = 0x10000;
export const CKF_USER_PIN_FINAL_TRY = 0x20000;
export const CKF_USER_PIN_LOCKED = 0x40000;
export const CKF_USER_PIN_TO_BE_CHANGED = 0x80000;

/** Mechanism names for messages ("the token does not offer CKM_AES_GCM"). */
export const MECHANISM_NAMES: ReadonlyMap<number, string> = new Map([
  [CKM_EC_KEY_PAIR_GEN, 'CKM_EC_KEY_PAIR_GEN'],
  [CKM_ECDSA, 'CKM_ECDSA'],
  [CKM_AES_KEY_GEN, 'CKM_AES_KEY_GEN'],
  [CKM_AES_GCM, 'CKM_AES_GCM'],
]);

/** Class names for messages. */
export const CLASS_NAMES: ReadonlyMap<number, string> = new Map([
  [CKO_DATA, 'CKO_DATA'],
  [CKO_CERTIFICATE, 'CKO_CERTIFICATE'],
  [CKO_PUBLIC_KEY, 'CKO_PUBLIC_KEY'],
  [CKO_PRIVATE_KEY, 'CKO_PRIVATE_KEY'],
  [CKO_SECRET_KEY, 'CKO_SECRET_KEY'],
]);

/**
 * DER of the P-256 curve OID 1.2.840.10045.3.1.7 (RFC 5480 §2.1.1.1 secp256r1), as CKA_EC_PARAMS
 * carries it (PKCS #11 v2.40 Current Mechanisms §2.3.3: DER of an ECParameters namedCurve).
 */
export const P256_EC_PARAMS = Uint8Array.of(0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07);
