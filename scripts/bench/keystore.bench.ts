/**
 * Key store latencies: sign, seal, unseal and unwrap per backend, each against the raw node:crypto
 * operation on the same bytes measured in the same run, plus the start-up cost of opening the store
 * (for the software store: scrypt at its default cost, against bare scrypt with the same parameters).
 *
 * Backends are rows in STORE_FACTORIES. To add one (swtpm, SoftHSM2), append a factory whose
 * `open` starts what the store needs in `dir` and returns the opened store, and whose `stop` stops
 * it; `reopen` is what the agent pays at start-up. Nothing else changes: every factory gets the same
 * measurements and baselines.
 */
import { createCipheriv, createDecipheriv, generateKeyPairSync, randomBytes, scrypt, sign } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSoftwareKeyStore } from '../../src/keystore/software/index.ts';
import { DEFAULT_SCRYPT } from '../../src/keystore/software/scrypt.ts';
import type { KeyStore } from '../../src/keystore/types.ts';
import { median } from './measure.ts';
import type { BenchContext, BenchModule, BenchResult } from './types.ts';

export interface StoreBenchFactory {
  /** Row label: 'software', 'tpm (swtpm)', 'pkcs11 (SoftHSM2)'. */
  readonly name: string;
  /** The largest secret the store seals (a TPM seals at most 128 bytes). */
  readonly sealBytes: number;
  /** Starts what the store needs under `dir` and opens it, making its file/keystore on first use. */
  open(dir: string): Promise<KeyStore>;
  /** Opens the existing store again: the agent's start-up cost. */
  reopen(dir: string): Promise<KeyStore>;
  /** The same start-up work done with raw primitives (the baseline for `reopen`), and its label. */
  readonly startupBaseline: { readonly name: string; run(): Promise<void> };
  /** Stops whatever `open` started (simulator, token). */
  stop?(dir: string): Promise<void>;
}

const PASSPHRASE = 'benchmark passphrase, not a secret';

const software: StoreBenchFactory = {
  name: 'software',
  sealBytes: 32,
  open: (dir) => openSoftwareKeyStore({ path: join(dir, 'keys.vsks'), passphrase: PASSPHRASE }),
  reopen: (dir) => openSoftwareKeyStore({ path: join(dir, 'keys.vsks'), passphrase: PASSPHRASE, create: false }),
  startupBaseline: {
    name: `node scrypt N=2^${DEFAULT_SCRYPT.logN} r=${DEFAULT_SCRYPT.r} p=${DEFAULT_SCRYPT.p}`,
    run: () => new Promise<void>((resolve, reject) => {
      scrypt(PASSPHRASE, randomBytes(32), 32, { N: 2 ** DEFAULT_SCRYPT.logN, r: DEFAULT_SCRYPT.r, p: DEFAULT_SCRYPT.p, maxmem: 64 * 1024 * 1024 }, (err) => (err ? reject(err) : resolve()));
    }),
  },
};

/** Rows of the benchmark; the tpm and pkcs11 owners append theirs here. */
export const STORE_FACTORIES: StoreBenchFactory[] = [software];

interface Latency {
  readonly value: number;
  readonly baseline: number;
  readonly p95: number;
}

/**
 * Interleaved latency: each round times `perRound` candidate calls, then `perRound` baseline calls;
 * the medians over every call are reported (µs), so drift hits both sides alike.
 */
async function latency(candidate: (i: number) => Promise<unknown>, baseline: () => unknown, rounds: number, perRound: number): Promise<Latency> {
  const a: number[] = [];
  const b: number[] = [];
  let i = 0;
  for (let w = 0; w < Math.min(5, perRound); w++) {
    await candidate(i++);
    await baseline();
  }
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < perRound; k++) {
      const t = performance.now();
      await candidate(i++);
      a.push((performance.now() - t) * 1000);
    }
    for (let k = 0; k < perRound; k++) {
      const t = performance.now();
      await baseline();
      b.push((performance.now() - t) * 1000);
    }
  }
  const sorted = [...a].sort((x, y) => x - y);
  return { value: median(a), baseline: median(b), p95: sorted[Math.floor(sorted.length * 0.95)] ?? Number.NaN };
}

function row(name: string, l: Latency, baselineName: string, meta: Record<string, unknown> = {}): BenchResult {
  return { name, unit: 'µs', value: l.value, baseline: { name: baselineName, value: l.baseline }, ratio: l.value / l.baseline, meta: { p95: l.p95, ...meta } };
}

function gcmSeal(key: Buffer, data: Uint8Array): Buffer {
  const c = createCipheriv('aes-256-gcm', key, randomBytes(12));
  return Buffer.concat([c.update(data), c.final(), c.getAuthTag()]);
}

async function benchStore(f: StoreBenchFactory, ctx: BenchContext): Promise<BenchResult[]> {
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-bench-ks-'));
  const results: BenchResult[] = [];
  const rounds = ctx.quick ? 1 : 5;
  const perRound = ctx.quick ? 5 : 40;
  let store = await f.open(dir);
  try {
    // sign: a TLS 1.3 CertificateVerify-sized message, against node:crypto with an in-memory key.
    const message = randomBytes(130);
    const signer = await store.createSigningKey('bench-identity');
    const raw = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    results.push(row(`keystore ${f.name} sign P-256`, await latency(() => signer.sign(message), () => sign('sha256', message, { key: raw, dsaEncoding: 'der' }), rounds, perRound), 'node:crypto sign'));

    // seal / unseal: a 32-byte key (or the store's maximum), against AES-256-GCM of the same bytes.
    const secret = randomBytes(Math.min(32, f.sealBytes));
    const aesKey = randomBytes(32);
    const sealRounds = ctx.quick ? 1 : 3;
    const sealPer = ctx.quick ? 3 : 15;
    results.push(row(`keystore ${f.name} seal ${secret.length}B`, await latency((i) => store.seal(`bench-seal-${i}`, secret), () => gcmSeal(aesKey, secret), sealRounds, sealPer), 'node AES-256-GCM encrypt', { includes: 'durable write' }));
    await store.seal('bench-unseal', secret);
    // One AES-256-GCM open (tag check included) of the same bytes.
    const iv = randomBytes(12);
    const rawOpen = (() => {
      const c = createCipheriv('aes-256-gcm', aesKey, iv);
      const ct = Buffer.concat([c.update(secret), c.final()]);
      const tag = c.getAuthTag();
      return () => {
        const d = createDecipheriv('aes-256-gcm', aesKey, iv);
        d.setAuthTag(tag);
        return Buffer.concat([d.update(ct), d.final()]);
      };
    })();
    results.push(row(`keystore ${f.name} unseal ${secret.length}B`, await latency(() => store.unseal('bench-unseal'), rawOpen, rounds, perRound), 'node AES-256-GCM decrypt'));

    // unwrap: how the agent gets its queue DEK at start-up and on rotation.
    const dek = randomBytes(32);
    const wrapped = await store.wrapKey('bench-kek', dek);
    results.push(row(`keystore ${f.name} unwrap 32B DEK`, await latency(() => store.unwrapKey('bench-kek', wrapped), rawOpen, rounds, perRound), 'node AES-256-GCM decrypt'));

    // start-up: opening the existing store, against the same work done raw.
    await store.close();
    const opens = ctx.quick ? 2 : 7;
    const a: number[] = [];
    const b: number[] = [];
    for (let k = 0; k < opens; k++) {
      let t = performance.now();
      store = await f.reopen(dir);
      a.push(performance.now() - t);
      await store.close();
      t = performance.now();
      await f.startupBaseline.run();
      b.push(performance.now() - t);
    }
    store = await f.reopen(dir);
    const value = median(a);
    const baseline = median(b);
    results.push({ name: `keystore ${f.name} open (start-up)`, unit: 'ms', value, baseline: { name: f.startupBaseline.name, value: baseline }, ratio: value / baseline });
    for (const r of results) ctx.log(`${r.name}: ${r.value.toFixed(1)} ${r.unit} (baseline ${r.baseline?.value.toFixed(1)}, ratio ${r.ratio?.toFixed(2)})`);
    return results;
  } finally {
    await store.close().catch(() => undefined);
    await f.stop?.(dir);
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const all: BenchResult[] = [];
  for (const f of STORE_FACTORIES) all.push(...(await benchStore(f, ctx)));
  return all;
}

export const bench: BenchModule = { run };
