/**
 * The DTLS 1.3 record layer's CPU cost, in process: one 1 KiB application-data record protected
 * (DTLSInnerPlaintext, AES-128-GCM, record-number encryption), parsed and unprotected (mask
 * removal, decryption, replay window) per operation. Measured three times: with the keyed contexts
 * the process uses (libcrypto when it loads: one EVP context per epoch and direction, a message's
 * EVP calls in one native call when the record_cipher addon is built), with the same contexts
 * making one koffi call per EVP call (VITALSEAL_LIBCRYPTO_ADDON=off when the epochs are made), and
 * with the node:crypto per-record contexts (VITALSEAL_LIBCRYPTO=off).
 *
 * Baseline, same run: node:crypto AES-128-GCM seal and open of the same 1 KiB with a fresh cipher
 * context each (the least any record layer written on node:crypto pays per record: a context holds
 * one nonce). The ratio says how much of dtls.bench.ts's application-data gap to Node's TLS (whose
 * records are sealed inside OpenSSL and written as one TCP stream) is the record layer's own work;
 * the rest is one UDP datagram per record through node:dgram.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { keyedContextStatus } from '../../src/crypto/keyed.ts';
import { LIBCRYPTO_ADDON_ENV } from '../../src/crypto/libcrypto/addon.ts';
import { LIBCRYPTO_ENV } from '../../src/crypto/libcrypto/native.ts';
import { getProvider } from '../../src/crypto/registry.ts';
import { ReadEpoch, WriteEpoch } from '../../src/dtls/record/protection.ts';
import { parseDatagram, type CiphertextRecord } from '../../src/dtls/messages/record.ts';
import { CIPHER_SUITES } from '../../src/dtls/suites.ts';
import { withEnv } from '../../test/support/env.ts';
import { compareRates, windows } from './measure.ts';
import type { BenchContext, BenchModule, BenchResult } from './types.ts';

const APPLICATION_DATA = 23;

export const bench: BenchModule = {
  async run(ctx: BenchContext): Promise<BenchResult[]> {
    const suite = CIPHER_SUITES.TLS_AES_128_GCM_SHA256;
    const provider = getProvider('node');
    const keys = { key: randomBytes(16), iv: randomBytes(12), snKey: randomBytes(16) };
    // Fresh epochs per measurement window would cost a key set-up; the limits are far away (2^24 records).
    const tx = new WriteEpoch(provider, suite, 3, keys);
    const rx = new ReadEpoch(provider, suite, 3, keys);
    const [txNode, rxNode] = withEnv(LIBCRYPTO_ENV, 'off', () => [new WriteEpoch(provider, suite, 3, keys), new ReadEpoch(provider, suite, 3, keys)] as const);
    const [txKoffi, rxKoffi] = withEnv(LIBCRYPTO_ADDON_ENV, 'off', () => [new WriteEpoch(provider, suite, 3, keys), new ReadEpoch(provider, suite, 3, keys)] as const);
    const content = new Uint8Array(1024).fill(0x42);
    let opened = 0;
    const recordWith = (w: WriteEpoch, r: ReadEpoch) => () => {
      const wire = w.protect(APPLICATION_DATA, content, undefined);
      const rec = parseDatagram(wire, 0).records[0] as CiphertextRecord;
      const res = r.unprotect(rec);
      if (!res.ok) throw new Error(`record did not open: ${res.reason}`);
      opened++;
    };
    const record = recordWith(tx, rx);
    const key = randomBytes(16);
    const aad = randomBytes(5);
    let nonceCounter = 0;
    const nonce = Buffer.alloc(12);
    const raw = () => {
      nonce.writeUInt32BE(nonceCounter++, 8);
      const c = createCipheriv('aes-128-gcm', key, nonce);
      c.setAAD(aad);
      const ct = Buffer.concat([c.update(content), c.final()]);
      const tag = c.getAuthTag();
      const d = createDecipheriv('aes-128-gcm', key, nonce);
      d.setAAD(aad);
      d.setAuthTag(tag);
      d.update(ct);
      d.final();
    };
    const r = compareRates(record, raw, windows(ctx.quick));
    const n = compareRates(recordWith(txNode, rxNode), raw, windows(ctx.quick));
    const status = keyedContextStatus();
    const k = tx.backend === 'libcrypto' && status.calls === 'addon' ? compareRates(recordWith(txKoffi, rxKoffi), raw, windows(ctx.quick)) : undefined;
    const calls = tx.backend !== 'libcrypto' ? '' : status.calls === 'addon' ? ', one native call per message' : ', koffi calls';
    ctx.log(`dtls record protect+unprotect 1 KiB (${tx.backend}${calls}): ${r.value.toFixed(0)} records/s of CPU vs raw AES-128-GCM seal+open ${r.baseline.toFixed(0)} (${(r.value / r.baseline).toFixed(2)}×)${k === undefined ? '' : `; koffi calls ${k.value.toFixed(0)} vs ${k.baseline.toFixed(0)}`}; node:crypto per record ${n.value.toFixed(0)} vs ${n.baseline.toFixed(0)}; ${opened} records opened`);
    for (const e of [tx, rx, txNode, rxNode, txKoffi, rxKoffi]) e.destroy();
    const BASELINE = 'node:crypto AES-128-GCM seal + open of the same bytes, a cipher context per record';
    const row = (what: string, m: { value: number; baseline: number }, meta: Record<string, unknown> = {}): BenchResult => ({
      name: `dtls record layer CPU, 1 KiB application data protect + unprotect (AES-128-GCM, in process, ${what})`,
      unit: 'records/s',
      value: m.value,
      baseline: { name: BASELINE, value: m.baseline },
      ratio: m.value / m.baseline,
      meta: { microsecondsPerRecord: 1e6 / m.value, baselineMicroseconds: 1e6 / m.baseline, ...meta },
    });
    return [
      row(`keyed contexts on ${tx.backend}${calls}`, r, { keyedContexts: status }),
      row('node:crypto contexts per record', n),
      ...(k === undefined ? [] : [row('libcrypto contexts through koffi calls, record_cipher addon off', k)]),
    ];
  },
};

export const run = bench.run;
