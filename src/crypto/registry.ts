/**
 * Provider selection. `node` is the default; where the preferred provider lacks a suite (noble has
 * no AES-CCM), the registry falls back to the next provider that has it.
 */
import { Unsupported } from '../util/errors.ts';
import { nobleProvider } from './noble.ts';
import { nodeProvider } from './node.ts';
import type { CryptoProvider, ProviderName } from './provider.ts';
import type { AeadId } from './suites.ts';

const PROVIDERS: Readonly<Record<ProviderName, CryptoProvider>> = Object.freeze({
  node: nodeProvider,
  noble: nobleProvider,
});

/** Order tried when the preferred provider lacks a suite. */
const FALLBACK_ORDER: readonly ProviderName[] = ['node', 'noble'];

export const PROVIDER_NAMES: readonly ProviderName[] = FALLBACK_ORDER;

export function getProvider(name: ProviderName = 'node'): CryptoProvider {
  const p = PROVIDERS[name];
  if (p === undefined) throw new RangeError(`unknown crypto provider: ${String(name)}`);
  return p;
}

/** The preferred provider if it has `id`, else the first provider in fallback order that does. */
export function providerForAead(id: AeadId, preferred: ProviderName = 'node'): CryptoProvider {
  const first = getProvider(preferred);
  if (first.supportsAead(id)) return first;
  for (const name of FALLBACK_ORDER) {
    const p = PROVIDERS[name];
    if (p.supportsAead(id)) return p;
  }
  throw new Unsupported('suite-unsupported', `no crypto provider offers ${id}`);
}
