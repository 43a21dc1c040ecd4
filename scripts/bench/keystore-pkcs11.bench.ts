/**
 * The pkcs11 key store against SoftHSM2: latency of sign, seal, unseal, wrap and unwrap, and the
 * start-up cost of opening the store (module initialise + login + finding the device keys), each
 * with the same work done in software by node:crypto as the baseline, measured in the same run.
 *
 * Latencies are medians over rounds of the mean per-operation time; each round runs the candidate and
 * then the baseline on the same bytes, so drift hits both. The ratio says what going through PKCS#11
 * costs; on a board, OP-TEE's TA adds a world switch per call and is slower than SoftHSM2.
 */
import { createCipheriv, createDecipheriv, createPrivateKey, generateKeyPairSync, randomBytes, sign as nodeSign } from 'node:crypto';
import { openPkcs11KeyStore, type Pkcs11KeyStore } from '../../src/keystore/pkcs11/index.ts';
import type { Pkcs11KeyStoreConfig } from '../../src/keystore/config.ts';
import { startSoftHsm } from '../lib/softhsm.ts';
import { median } from './measure.ts';
import type { BenchContext, BenchResult } from './types.ts';

interface LatencyPair {
  readonly value: number;
  readonly baseline: number;
}

async function meanMs(fn: (i: number) => Promise<unknown> | unknown, iterations: number, offset: number): Promise<number> {
  const start = performance.now();
  for (let i = 0; i < iterations; i++) await fn(offset + i);
  return (performance.now() - start) / iterations;
}

/** Median over `rounds` of the mean latency per call, candidate and baseline interleaved round by round. */
async function compareLatency(candidate: (i: number) => Promise<unknown>, baseline: (i: number) => unknown,
  opts: { iterations: number; rounds: number; afterRound?: () => Promise<void> }): Promise<LatencyPair> {
  await meanMs(candidate, Math.min(5, opts.iterations), 1_000_000); // warm-up, own index range
  await meanMs(baseline, Math.min(5, opts.iterations), 1_000_000);
  await opts.afterRound?.();
  const a: number[] = [];
  const b: number[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    a.push(await meanMs(candidate, opts.iterations, r * opts.iterations));
    b.push(await meanMs(baseline, opts.iterations, r * opts.iterations));
    await opts.afterRound?.(); // not timed
  }
  return { value: median(a), baseline: median(b) };
}

function gcmSeal(key: Buffer, plain: Uint8Array): Buffer {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  return Buffer.concat([iv, c.update(plain), c.final(), c.getAuthTag()]);
}

function gcmOpen(key: Buffer, blob: Buffer): Buffer {
  const d = createDecipheriv('aes-256-gcm', key, blob.subarray(0, 12));
  d.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([d.update(blob.subarray(12, blob.length - 16)), d.final()]);
}

export async function run(ctx: BenchContext): Promise<BenchResult[]> {
  const hsm = await startSoftHsm();
  const results: BenchResult[] = [];
  let store: Pkcs11KeyStore | undefined;
  try {
    const token = await hsm.addToken('bench');
    const config: Pkcs11KeyStoreConfig = { kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } };
    const opts = ctx.quick ? { iterations: 10, rounds: 1 } : { iterations: 50, rounds: 5 };
    const meta = { token: 'SoftHSM2', module: hsm.module, iterations: opts.iterations, rounds: opts.rounds, objectsOnToken: 'up to about 30' };
    const push = (name: string, p: LatencyPair, baselineName: string): void => {
      results.push({ name, unit: 'ms', value: p.value, baseline: { name: baselineName, value: p.baseline }, ratio: p.value / p.baseline, meta });
      ctx.log(`${name}: ${p.value.toFixed(3)} ms vs ${p.baseline.toFixed(4)} ms (${baselineName})`);
    };

    // Start-up: the first open in this process (module load, C_Initialize, login, find) is one sample.
    const coldStart = performance.now();
    store = await openPkcs11KeyStore(config);
    const coldOpenMs = performance.now() - coldStart;
    const signer = await store.createSigningKey('device-identity');
    const dek = randomBytes(32);
    const wrappedDek = await store.wrapKey('queue-kek', dek);

    // Software baselines over the same bytes: a P-256 key and an AES-256 key in host memory.
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const swKey = randomBytes(32);
    const message = randomBytes(256); // about the size of a TLS 1.3 CertificateVerify input
    const secret = randomBytes(32);
    const swSealed = gcmSeal(swKey, secret);

    const s = store;
    push('keystore pkcs11 sign ecdsa-p256 256B', await compareLatency(() => signer.sign(message),
      () => nodeSign('sha256', message, { key: privateKey, dsaEncoding: 'der' }), opts), 'node:crypto ecdsa-p256 sign');

    // Sealing creates a token object each time; the objects are deleted after every round (untimed) so
    // the token holds a device's handful of objects, not thousands (SoftHSM2's search is linear).
    const sealOpts = { iterations: ctx.quick ? 5 : 20, rounds: opts.rounds };
    const dropSealed = async (): Promise<void> => {
      for (const k of await s.list()) if (k.type === 'sealed' && k.name.startsWith('sealed-')) await s.delete(k.name);
    };
    push('keystore pkcs11 seal 32B', await compareLatency((i) => s.seal(`sealed-${i}`, secret), () => gcmSeal(swKey, secret),
      { ...sealOpts, afterRound: dropSealed }), 'node:crypto aes-256-gcm encrypt');
    for (let i = 0; i < 8; i++) await s.seal(`kept-${i}`, secret);
    push('keystore pkcs11 unseal 32B', await compareLatency((i) => s.unseal(`kept-${i % 8}`), () => gcmOpen(swKey, swSealed), opts),
      'node:crypto aes-256-gcm decrypt');

    push('keystore pkcs11 wrap 32B data key', await compareLatency(() => s.wrapKey('queue-kek', dek), () => gcmSeal(swKey, dek), opts),
      'node:crypto aes-256-gcm encrypt');
    push('keystore pkcs11 unwrap 32B data key', await compareLatency(() => s.unwrapKey('queue-kek', wrappedDek), () => gcmOpen(swKey, swSealed), opts),
      'node:crypto aes-256-gcm decrypt');
    await s.close();
    store = undefined;

    // Start-up, repeated: open (the module is initialised again, since the last store closed it),
    // log in, open the identity key, unwrap the queue DEK: what the agent does before its first send.
    const pem = privateKey.export({ format: 'pem', type: 'pkcs8' });
    const swWrappedDek = gcmSeal(swKey, dek);
    const startOpts = ctx.quick ? { iterations: 3, rounds: 1 } : { iterations: 10, rounds: 5 };
    const startup = await compareLatency(async () => {
      const st = await openPkcs11KeyStore(config);
      try {
        await st.openSigningKey('device-identity');
        await st.unwrapKey('queue-kek', wrappedDek);
      } finally {
        await st.close();
      }
    }, () => {
      createPrivateKey(pem);
      gcmOpen(swKey, swWrappedDek);
    }, startOpts);
    results.push({
      name: 'keystore pkcs11 start-up (initialise + login + open key + unwrap DEK)', unit: 'ms', value: startup.value,
      baseline: { name: 'node:crypto PEM key import + aes-256-gcm decrypt', value: startup.baseline }, ratio: startup.value / startup.baseline,
      meta: { ...meta, iterations: startOpts.iterations, rounds: startOpts.rounds, firstOpenInProcessMs: coldOpenMs },
    });
    ctx.log(`start-up: ${startup.value.toFixed(2)} ms (first open in process ${coldOpenMs.toFixed(2)} ms) vs ${startup.baseline.toFixed(4)} ms`);
  } finally {
    await store?.close();
    await hsm.stop();
  }
  return results;
}
