/**
 * TPM key store latencies against swtpm (started here), each beside its software baseline measured
 * in the same run on the same bytes:
 *
 *   seal 32 B      Fapi_CreateSeal (new object)      vs AES-256-GCM encrypt in node:crypto
 *   unseal 32 B    Fapi_Unseal                       vs AES-256-GCM decrypt
 *   sign 64 B      SHA-256 on the host + Fapi_Sign   vs ECDSA P-256 sign in node:crypto
 *   wrap / unwrap  KEK unseal + HKDF + AES-256-GCM   vs HKDF + AES-256-GCM with the KEK in memory
 *   open           initialize FAPI, provisioning check, SRK check  vs importing a PEM identity key
 *   start-up       open the store, open the identity key, unwrap the queue DEK
 *                                                    vs the same with node:crypto keys in memory
 *
 * Candidate and baseline alternate in rounds so drift hits both alike; values are medians of
 * per-operation latencies (p95 in meta). swtpm is a simulator: a TPM chip on an SPI bus is
 * several times slower (see docs/keystore-tpm.md).
 */
import { createCipheriv, createDecipheriv, createPrivateKey, createPublicKey, generateKeyPairSync, hkdfSync, randomBytes, sign as nodeSign } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSwtpm } from '../lib/swtpm.ts';
import { openTpmKeyStore } from '../../src/keystore/tpm/index.ts';
import type { BenchContext, BenchResult } from './types.ts';
import { median } from './measure.ts';

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] as number;
}

/** Per-operation latencies (ms) of candidate and baseline, interleaved in rounds. */
async function latencies(candidate: (i: number) => Promise<unknown>, baseline: (i: number) => unknown, rounds: number, perRound: number): Promise<{ c: number[]; b: number[] }> {
  const c: number[] = [];
  const b: number[] = [];
  let i = 0;
  // Warm-up (not counted).
  await candidate(i++);
  baseline(i);
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < perRound; k++) {
      const t = performance.now();
      await candidate(i++);
      c.push(performance.now() - t);
    }
    for (let k = 0; k < perRound; k++) {
      const t = performance.now();
      baseline(i++);
      b.push(performance.now() - t);
    }
  }
  return { c, b };
}

function result(name: string, baselineName: string, l: { c: number[]; b: number[] }): BenchResult {
  const value = median(l.c);
  const base = median(l.b);
  return {
    name,
    unit: 'ms/op',
    value,
    baseline: { name: baselineName, value: base },
    ratio: value / base,
    meta: { p95: percentile(l.c, 0.95), baselineP95: percentile(l.b, 0.95), samples: l.c.length, tpm: 'swtpm (simulator)' },
  };
}

function gcmSeal(key: Buffer, nonce: Buffer, plain: Uint8Array): Buffer {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  return Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
}

function gcmOpen(key: Buffer, nonce: Buffer, blob: Buffer): Buffer {
  const d = createDecipheriv('aes-256-gcm', key, nonce);
  d.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([d.update(blob.subarray(0, blob.length - 16)), d.final()]);
}

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const rounds = ctx.quick ? 1 : 5;
  const perRound = ctx.quick ? 5 : 20;
  const tpm = await startSwtpm();
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-bench-tpm-'));
  const results: BenchResult[] = [];
  try {
    const cfg = { kind: 'tpm' as const, tcti: tpm.tcti, dir };
    const store = await openTpmKeyStore(cfg);
    const secret = randomBytes(32);
    const message = randomBytes(64);
    const aesKey = randomBytes(32);
    const nonce = randomBytes(12);
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const signer = await store.createSigningKey('bench-identity');

    ctx.log('seal');
    results.push(result('keystore tpm seal 32B (swtpm)', 'node:crypto AES-256-GCM encrypt 32B',
      await latencies((i) => store.seal(`bench-seal-${i}`, secret), () => gcmSeal(aesKey, nonce, secret), rounds, perRound)));

    ctx.log('unseal');
    await store.seal('bench-unseal', secret);
    const sealedSoft = gcmSeal(aesKey, nonce, secret);
    results.push(result('keystore tpm unseal 32B (swtpm)', 'node:crypto AES-256-GCM decrypt 32B',
      await latencies(() => store.unseal('bench-unseal'), () => gcmOpen(aesKey, nonce, sealedSoft), rounds, perRound)));

    ctx.log('sign');
    results.push(result('keystore tpm sign ECDSA P-256 64B (swtpm)', 'node:crypto ECDSA P-256 sign 64B',
      await latencies(() => signer.sign(message), () => nodeSign('sha256', message, { key: privateKey, dsaEncoding: 'der' }), rounds, perRound)));

    ctx.log('wrap / unwrap');
    const dek = randomBytes(32);
    const wrapped = await store.wrapKey('bench-kek', dek);
    const softWrap = () => {
      const salt = randomBytes(32);
      const k = Buffer.from(hkdfSync('sha256', aesKey, salt, 'wrap', 32));
      return gcmSeal(k, Buffer.alloc(12), dek);
    };
    const softSalt = randomBytes(32);
    const softKey = Buffer.from(hkdfSync('sha256', aesKey, softSalt, 'wrap', 32));
    const softBlob = gcmSeal(softKey, Buffer.alloc(12), dek);
    results.push(result('keystore tpm wrapKey 32B DEK (swtpm)', 'HKDF + AES-256-GCM, KEK in memory',
      await latencies(() => store.wrapKey('bench-kek', dek), softWrap, rounds, perRound)));
    results.push(result('keystore tpm unwrapKey 32B DEK (swtpm)', 'HKDF + AES-256-GCM open, KEK in memory',
      await latencies(() => store.unwrapKey('bench-kek', wrapped), () => gcmOpen(Buffer.from(hkdfSync('sha256', aesKey, softSalt, 'wrap', 32)), Buffer.alloc(12), softBlob), rounds, perRound)));

    ctx.log('random');
    results.push(result('keystore tpm randomBytes 32 (swtpm)', 'node:crypto randomBytes 32',
      await latencies(() => store.randomBytes(32), () => randomBytes(32), rounds, perRound)));

    await store.close();

    ctx.log('start-up');
    const identityPem = privateKey.export({ format: 'pem', type: 'pkcs8' });
    const startupRounds = ctx.quick ? 1 : 3;
    const startupPer = ctx.quick ? 2 : 5;
    results.push(result('keystore tpm open store: initialize, provisioning check, SRK check (swtpm)', 'node:crypto: import identity key',
      await latencies(async () => {
        const s = await openTpmKeyStore(cfg);
        await s.close();
      }, () => createPublicKey(createPrivateKey(identityPem)), startupRounds, startupPer)));
    results.push(result('keystore tpm agent start-up: open store + identity key + unwrap DEK (swtpm)', 'node:crypto: import identity key + unwrap DEK',
      await latencies(async () => {
        const s = await openTpmKeyStore(cfg);
        const id = await s.openSigningKey('bench-identity');
        await id.publicKeySpki();
        const d = await s.unwrapKey('bench-kek', wrapped);
        d.fill(0);
        await s.close();
      }, () => {
        const k = createPrivateKey(identityPem);
        createPublicKey(k);
        gcmOpen(softKey, Buffer.alloc(12), softBlob).fill(0);
      }, startupRounds, startupPer)));
  } finally {
    await tpm.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return results;
}
