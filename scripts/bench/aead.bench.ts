/**
 * AEAD seal/open per suite and provider, against raw node:crypto on the same bytes (the baseline,
 * measured interleaved in the same run). Sizes: 64 B, 1 KiB, 16 KiB.
 */
import { randomBytes } from 'node:crypto';
import { AEAD_IDS, aeadSuite, getProvider, PROVIDER_NAMES, type AeadId } from '../../src/crypto/index.ts';
import { compareRates, SIZES, windows } from './measure.ts';
import { OPENSSL_NAME, rawOpen, rawSeal } from './raw-aead.ts';
import type { BenchContext, BenchResult } from './types.ts';

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const out: BenchResult[] = [];
  const w = windows(ctx.quick);
  const aad = new Uint8Array(0);
  for (const id of AEAD_IDS) {
    const suite = aeadSuite(id);
    for (const name of PROVIDER_NAMES) {
      const p = getProvider(name);
      if (!p.supportsAead(id)) {
        ctx.log(`${id} ${name}: provider has no such suite (skipped; the registry falls back to node)`);
        continue;
      }
      for (const [label, size] of SIZES) {
        const key = randomBytes(suite.keyLength);
        const nonce = randomBytes(12);
        const plaintext = randomBytes(size);
        const sealed = Buffer.from(p.aeadSeal(id, key, nonce, plaintext, aad));
        // The same bytes both ways: a provider that disagreed with OpenSSL would be a bug, not a result.
        if (!rawOpen(id, suite.tagLength, key, nonce, sealed).equals(plaintext)) throw new Error(`${id} ${name}: output differs from node:crypto`);
        const seal = compareRates(
          () => p.aeadSeal(id, key, nonce, plaintext, aad),
          () => rawSeal(id, suite.tagLength, key, nonce, plaintext),
          w,
        );
        const open = compareRates(
          () => p.aeadOpen(id, key, nonce, sealed, aad),
          () => rawOpen(id, suite.tagLength, key, nonce, sealed),
          w,
        );
        for (const [op, r] of [['seal', seal], ['open', open]] as const) {
          out.push({
            name: `aead ${op} ${id} ${name} ${label}`,
            unit: 'msg/s',
            value: r.value,
            baseline: { name: `node:crypto ${OPENSSL_NAME[id]} ${label}`, value: r.baseline },
            ratio: r.value / r.baseline,
            meta: { suite: id, provider: name, bytes: size, mbPerSecond: (r.value * size) / 1e6 },
          });
        }
        ctx.log(`${id} ${name} ${label}: seal ${Math.round(seal.value)}/s (${(seal.value / seal.baseline).toFixed(2)}x), open ${Math.round(open.value)}/s`);
      }
    }
  }
  return out;
}
