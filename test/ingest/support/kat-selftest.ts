/**
 * A start-up self-test for the ingest tests on a build without src/crypto/selftest.ts: known
 * answers from test/vectors (RFC 8439 §2.8.2, RFC 3610 §8 #1, RFC 7748 §5.2, RFC 5869 A.1) through
 * the provider the service uses, each with a negative check (a flipped tag bit must be refused).
 */
import { hkdf } from '../../../src/crypto/hkdf.ts';
import { getProvider } from '../../../src/crypto/registry.ts';
import type { AeadId } from '../../../src/crypto/suites.ts';
import type { SelfTestSummary, StartupSelfTest } from '../../../src/ingest/selftest.ts';
import { equalBytes, fromHex } from '../../../src/util/bytes.ts';
import { loadVectors } from '../../support/vectors.ts';

interface AeadVector { id: string; key: string; nonce: string; aad: string; plaintext: string; ciphertext: string; tag: string }

function aeadKat(aead: AeadId, v: AeadVector): void {
  const p = getProvider();
  const sealed = p.aeadSeal(aead, fromHex(v.key), fromHex(v.nonce), fromHex(v.plaintext), fromHex(v.aad));
  if (!equalBytes(sealed, fromHex(v.ciphertext + v.tag))) throw new Error(`self-test: ${aead} ${v.id} mismatch`);
  const bad = Uint8Array.from(sealed);
  bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
  let refused = false;
  try {
    p.aeadOpen(aead, fromHex(v.key), fromHex(v.nonce), bad, fromHex(v.aad));
  } catch {
    refused = true;
  }
  if (!refused) throw new Error(`self-test: ${aead} accepted a flipped tag`);
}

export const katSelfTest: StartupSelfTest = (): SelfTestSummary => {
  const t0 = performance.now();
  const p = getProvider();
  const chacha = loadVectors<AeadVector>('chacha20poly1305.json').vectors.find((v) => v.id === 'rfc8439-2.8.2') as AeadVector;
  aeadKat('chacha20-poly1305', chacha);
  const ccm = loadVectors<AeadVector>('aes-ccm.json').vectors.find((v) => v.id === 'rfc3610-packet-vector-1') as AeadVector;
  aeadKat('aes-128-ccm-8', ccm);
  const x = loadVectors<{ id: string; scalar: string; u: string; output: string }>('x25519.json').vectors.find((v) => v.id === 'rfc7748-5.2-1');
  if (x === undefined || !equalBytes(p.x25519(fromHex(x.scalar), fromHex(x.u)), fromHex(x.output))) throw new Error('self-test: x25519 mismatch');
  const h = loadVectors<{ id: string; ikm: string; salt: string; info: string; length: number; okm: string }>('hkdf-sha256.json').vectors.find((v) => v.id === 'rfc5869-A.1');
  if (h === undefined || !equalBytes(hkdf(p, fromHex(h.salt), fromHex(h.ikm), fromHex(h.info), h.length), fromHex(h.okm))) throw new Error('self-test: hkdf mismatch');
  return {
    results: ['aead:chacha20-poly1305', 'aead:aes-128-ccm-8', 'x25519', 'hkdf-sha256'].map((primitive) => ({ primitive, provider: p.name })),
    durationMs: performance.now() - t0,
  };
};
