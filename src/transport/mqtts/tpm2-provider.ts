/**
 * Where OpenSSL's `tpm2` provider (Debian's tpm2-openssl) is, and what to tell an operator whose
 * TCTI cannot carry a TLS handshake signed in the TPM. Shared by both TLS connectors that sign in
 * the TPM (openssl-tpm-tls.ts, tpm-tunnel.ts).
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { KeyStoreError } from '../../util/errors.ts';

/** Where Debian's tpm2-openssl package puts the provider. */
export function findTpm2Provider(): string {
  const candidates: string[] = [];
  for (const lib of ['/usr/lib', '/usr/lib64', '/usr/local/lib']) {
    if (!existsSync(lib)) continue;
    candidates.push(join(lib, 'ossl-modules', 'tpm2.so'));
    for (const sub of readdirSync(lib)) candidates.push(join(lib, sub, 'ossl-modules', 'tpm2.so'));
  }
  const found = candidates.find((p) => existsSync(p));
  if (found === undefined) throw new KeyStoreError('library-missing', 'OpenSSL tpm2 provider (tpm2.so) not found: install the Debian package "tpm2-openssl"');
  return found;
}

/**
 * What to tell the operator when a handshake could not be signed in the TPM through `tcti`: the
 * kernel's resource manager (/dev/tpmrm0) lets each client hold three TPM objects, and during one
 * handshake tpm2-openssl holds more (the key, hash sequences, public keys it imports to verify),
 * so the TPM answers TPM_RC_OBJECT_MEMORY. A user-space resource manager has no such limit.
 *
 * @example
 *   tpmRmHint('device:/dev/tpmrm0') // '; TCTI device:/dev/tpmrm0: the kernel's resource manager ...'
 *   tpmRmHint('tabrmd:bus_type=system') // ''
 */
export function tpmRmHint(tcti: string): string {
  if (!tcti.startsWith('device:')) return '';
  return `; TCTI ${tcti}: the kernel's resource manager gives a client three TPM objects, fewer than tpm2-openssl holds during a TLS handshake: run tpm2-abrmd and use TCTI tabrmd:bus_type=system (hardware/raspberry-pi/README.md)`;
}
