/*
 * One native call per AEAD message and per record-number mask, on EVP_CIPHER_CTX contexts that
 * src/crypto/libcrypto/contexts.ts created, keyed and owns (through koffi, native.ts).
 *
 * Why it exists: through koffi every EVP call costs a fixed ~130 ns however little it does, and a
 * message takes five of them (IV, AAD, data, final, tag). Here the same five calls run in C behind
 * one Node-API call: a 1 KiB AES-128-GCM seal goes from ~1.05 to ~0.5 µs (docs/dtls.md).
 *
 * What it does not do: it never creates, keys or frees a context, and it never sees a key. The
 * calls and their order are exactly those of contexts.ts's koffi path, which stays the reference
 * and the fallback (the two are compared byte for byte in test/crypto/keyed-contexts.test.ts).
 *
 * Trust boundary: the context argument is a pointer (a BigInt, as koffi hands pointers out) that
 * cannot be checked here; only contexts.ts passes one, and only a context it holds alive. Every
 * other argument is checked: byte arguments must be Uint8Arrays, offsets and lengths must fit the
 * arrays, a nonce must be exactly the context's IV length (OpenSSL reads that many bytes from it),
 * and a plaintext may share memory with the output only as exactly the output's own range
 * (sealing in place). A failed check or a failed OpenSSL call returns the failure value; nothing
 * is thrown from C and OpenSSL's error queue (shared with node:crypto) is left empty.
 *
 * Symbols resolve to the OpenSSL the process already runs (the node binary exports its own), the
 * same one koffi binds; addon.ts refuses the module unless both report the same version.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

/*
 * Where an empty input or output points: OpenSSL's CCM reads a NULL input with a non-NULL output
 * as "finish" rather than "process no data", so no EVP call here is given NULL for a byte range.
 * Nothing reads it, and the only writes are of zero bytes.
 */
static unsigned char g_empty[16];

typedef struct {
  unsigned char *data;
  size_t length;
} bytes_t;

/* A Uint8Array argument; an empty (or detached) array points at g_empty. */
static bool get_bytes(napi_env env, napi_value value, bytes_t *out) {
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, value, &type, &length, &data, &buffer, &offset) != napi_ok) return false;
  if (type != napi_uint8_array || length > INT_MAX) return false;
  out->data = (length == 0 || data == NULL) ? g_empty : (unsigned char *)data;
  out->length = (length == 0 || data == NULL) ? 0 : length;
  return true;
}

static bool get_context(napi_env env, napi_value value, EVP_CIPHER_CTX **out) {
  uint64_t address;
  bool lossless;
  if (napi_get_value_bigint_uint64(env, value, &address, &lossless) != napi_ok || !lossless || address == 0) return false;
  *out = (EVP_CIPHER_CTX *)(uintptr_t)address;
  return true;
}

static bool get_flag(napi_env env, napi_value value, bool *out) {
  return napi_get_value_bool(env, value, out) == napi_ok;
}

/* A non-negative int32 no larger than `max`. */
static bool get_count(napi_env env, napi_value value, int32_t max, size_t *out) {
  int32_t v;
  if (napi_get_value_int32(env, value, &v) != napi_ok || v < 0 || v > max) return false;
  *out = (size_t)v;
  return true;
}

/* [a, a+al) and [b, b+bl) share no byte. */
static bool disjoint(const unsigned char *a, size_t al, const unsigned char *b, size_t bl) {
  uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return al == 0 || bl == 0 || x + al <= y || y + bl <= x;
}

/* The arguments seal and open share: (ctx, ccm, nonce, input, aad, out, offset, tagLength). */
typedef struct {
  EVP_CIPHER_CTX *ctx;
  bool ccm;
  bytes_t nonce, input, aad, out;
  size_t offset, tag_length;
} aead_args_t;

static bool get_aead_args(napi_env env, napi_callback_info info, aead_args_t *r) {
  size_t argc = 8;
  napi_value a[8];
  return napi_get_cb_info(env, info, &argc, a, NULL, NULL) == napi_ok && argc == 8 &&
    get_context(env, a[0], &r->ctx) && get_flag(env, a[1], &r->ccm) && get_bytes(env, a[2], &r->nonce) &&
    get_bytes(env, a[3], &r->input) && get_bytes(env, a[4], &r->aad) && get_bytes(env, a[5], &r->out) &&
    get_count(env, a[6], INT_MAX, &r->offset) && get_count(env, a[7], 16, &r->tag_length) && r->tag_length >= 4 &&
    r->offset <= r->out.length &&
    /* OpenSSL reads the context's IV length from the nonce pointer: a shorter array would be over-read. */
    r->nonce.length > 0 && (int)r->nonce.length == EVP_CIPHER_CTX_get_iv_length(r->ctx);
}

static napi_value boolean(napi_env env, bool v) {
  napi_value r = NULL;
  napi_get_boolean(env, v, &r);
  return r;
}

static napi_value int32(napi_env env, int32_t v) {
  napi_value r = NULL;
  napi_create_int32(env, v, &r);
  return r;
}

/*
 * seal(ctx, ccm, nonce, plaintext, aad, out, offset, tagLength) -> boolean
 * Writes ciphertext || tag of `plaintext` into `out` from `offset`. The context holds the cipher,
 * the key, the nonce length (and for CCM the tag length). On failure the output range is zeroed.
 */
static napi_value seal(napi_env env, napi_callback_info info) {
  aead_args_t a;
  if (!get_aead_args(env, info, &a)) return boolean(env, false);
  EVP_CIPHER_CTX *ctx = a.ctx;
  bytes_t plain = a.input, aad = a.aad, out = a.out;
  size_t offset = a.offset, tag_length = a.tag_length;
  if (out.length - offset < plain.length + tag_length) return boolean(env, false);
  unsigned char *body = plain.length > 0 ? out.data + offset : g_empty;
  /* In place means exactly the output's range: any other overlap would read bytes already written. */
  if (body != plain.data && !disjoint(plain.data, plain.length, out.data + offset, plain.length + tag_length)) return boolean(env, false);
  int n = 0;
  int length = (int)plain.length;
  bool ok = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, a.nonce.data, 1) == 1 &&
    /* RFC 3610 §2.2: CCM takes the message length before the AAD (OpenSSL: an update with no data). */
    (!a.ccm || EVP_CipherUpdate(ctx, NULL, &n, NULL, length) == 1) &&
    (aad.length == 0 || EVP_CipherUpdate(ctx, NULL, &n, aad.data, (int)aad.length) == 1) &&
    EVP_CipherUpdate(ctx, body, &n, plain.data, length) == 1 && n == length &&
    EVP_CipherFinal_ex(ctx, g_empty, &n) == 1 && n == 0 &&
    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, (int)tag_length, out.data + offset + plain.length) == 1;
  if (!ok) {
    memset(out.data + offset, 0, plain.length + tag_length);
    ERR_clear_error();
  }
  return boolean(env, ok);
}

/*
 * open(ctx, ccm, nonce, sealed, aad, out, offset, tagLength) -> plaintext length, or -1
 * Decrypts ciphertext || tag into `out` from `offset`; in place when `out` at `offset` is exactly
 * the ciphertext. Unauthenticated plaintext never stays: on any failure the range is zeroed.
 */
static napi_value open_sealed(napi_env env, napi_callback_info info) {
  aead_args_t a;
  if (!get_aead_args(env, info, &a)) return int32(env, -1);
  EVP_CIPHER_CTX *ctx = a.ctx;
  bool ccm = a.ccm;
  bytes_t sealed = a.input, aad = a.aad, out = a.out;
  size_t offset = a.offset, tag_length = a.tag_length;
  if (sealed.length < tag_length) return int32(env, -1);
  size_t n = sealed.length - tag_length;
  if (out.length - offset < n) return int32(env, -1);
  unsigned char *body = n > 0 ? out.data + offset : g_empty;
  if (body != sealed.data && !disjoint(sealed.data, sealed.length, out.data + offset, n)) return int32(env, -1);
  /* Decrypting in place writes only the ciphertext's n bytes: the tag after them stays as sent. */
  const unsigned char *tag = sealed.data + n;
  int written = 0;
  int length = (int)n;
  bool ok = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, a.nonce.data, 0) == 1;
  if (ccm) {
    /* CCM verifies inside its one update: the expected tag and the length come first. */
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, (int)tag_length, (void *)tag) == 1 &&
      EVP_CipherUpdate(ctx, NULL, &written, NULL, length) == 1;
  }
  ok = ok && (aad.length == 0 || EVP_CipherUpdate(ctx, NULL, &written, aad.data, (int)aad.length) == 1) &&
    EVP_CipherUpdate(ctx, body, &written, sealed.data, length) == 1 && written == length;
  if (!ccm) {
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, (int)tag_length, (void *)tag) == 1 &&
      EVP_CipherFinal_ex(ctx, g_empty, &written) == 1;
  }
  if (!ok) {
    if (n > 0) memset(body, 0, n);
    ERR_clear_error();
    return int32(env, -1);
  }
  return int32(env, length);
}

/*
 * mask(ctx, chacha, sample, out) -> boolean
 * RFC 9147 §4.2.3: 16 mask bytes from a 16-byte ciphertext sample: AES-ECB of the sample, or the
 * ChaCha20 keystream with the sample as counter (4 bytes, little-endian) and nonce, which is
 * exactly OpenSSL's 16-byte chacha20 IV (RFC 9001 §5.4.4).
 */
static napi_value mask(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value a[4];
  EVP_CIPHER_CTX *ctx;
  bool chacha;
  bytes_t sample, out;
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != napi_ok || argc != 4) return boolean(env, false);
  if (!get_context(env, a[0], &ctx) || !get_flag(env, a[1], &chacha) || !get_bytes(env, a[2], &sample) ||
      !get_bytes(env, a[3], &out) || sample.length != 16 || out.length != 16 ||
      !disjoint(sample.data, 16, out.data, 16)) {
    return boolean(env, false);
  }
  static const unsigned char zeros[16];
  int n = 0;
  bool ok = chacha
    ? EVP_CipherInit_ex(ctx, NULL, NULL, NULL, sample.data, 1) == 1 && EVP_CipherUpdate(ctx, out.data, &n, zeros, 16) == 1
    : EVP_CipherUpdate(ctx, out.data, &n, sample.data, 16) == 1;
  ok = ok && n == 16;
  if (!ok) {
    memset(out.data, 0, 16);
    ERR_clear_error();
  }
  return boolean(env, ok);
}

/* opensslVersion() -> OpenSSL_version_num() of the library these calls bind to. */
static napi_value openssl_version(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value r = NULL;
  napi_create_double(env, (double)OpenSSL_version_num(), &r);
  return r;
}

NAPI_MODULE_INIT() {
  static const struct {
    const char *name;
    napi_callback fn;
  } exported[] = {
    {"seal", seal},
    {"open", open_sealed},
    {"mask", mask},
    {"opensslVersion", openssl_version},
  };
  for (size_t i = 0; i < sizeof exported / sizeof exported[0]; i++) {
    napi_value fn;
    if (napi_create_function(env, exported[i].name, NAPI_AUTO_LENGTH, exported[i].fn, NULL, &fn) != napi_ok ||
        napi_set_named_property(env, exports, exported[i].name, fn) != napi_ok) {
      return NULL;
    }
  }
  return exports;
}
