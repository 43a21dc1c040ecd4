/**
 * OpenSSL's `tpm2` provider (Debian's tpm2-openssl) as the TPM TLS connector (openssl-tpm-tls.ts)
 * and the tests' OpenSSL commands use it: where the module is, which algorithm fetches prefer it,
 * an OpenSSL configuration that loads it, and what to tell an operator whose TCTI cannot carry a
 * TLS handshake signed in the TPM.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { KeyStoreError } from '../../util/errors.ts';

/**
 * Every algorithm fetch prefers the TPM's implementation except digests, the RNG and ciphers:
 * record protection and transcript hashing through the TPM would be slow for nothing, and the TPM's
 * RNG has hung OpenSSL clients at start-up (../shared/notes/keystores.md).
 */
export const TPM2_PROPERTY_QUERY = '?provider=tpm2,tpm2.digest!=yes,tpm2.rand!=yes,tpm2.cipher!=yes';

/**
 * An OpenSSL configuration file (for `OPENSSL_CONF`) that loads the default and tpm2 providers and
 * prefers the TPM as `TPM2_PROPERTY_QUERY` says.
 *
 * @example
 *   writeFileSync('openssl.cnf', tpm2OpensslConfig(findTpm2Provider()));
 */
export function tpm2OpensslConfig(providerPath: string): string {
  return [
    'openssl_conf = vitalseal_init',
    '',
    '[vitalseal_init]',
    'providers = vitalseal_providers',
    'alg_section = vitalseal_properties',
    '',
    '[vitalseal_providers]',
    'default = vitalseal_default',
    'tpm2 = vitalseal_tpm2',
    '',
    '[vitalseal_default]',
    'activate = 1',
    '',
    '[vitalseal_tpm2]',
    `module = ${providerPath}`,
    'activate = 1',
    '',
    '[vitalseal_properties]',
    `default_properties = ${TPM2_PROPERTY_QUERY}`,
    '',
  ].join('\n');
}

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
