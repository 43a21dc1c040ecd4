# Built by scripts/build-native.mjs (run from scripts/setup) against the running Node's headers,
# which include the OpenSSL headers of the OpenSSL the node binary carries.
{
  "targets": [
    {
      "target_name": "record_cipher",
      "sources": ["record_cipher.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
    }
  ]
}
