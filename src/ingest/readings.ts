/**
 * Reading stored messages back: decrypt each row with its data-key version, decode the SenML pack
 * strictly (as on the way in), and serve the readings as SenML JSON (RFC 8428 §5) in resolved form
 * (§4.6: full names `<device id>/<vital>`, absolute times in seconds, the wire units of
 * docs/senml-vitals.md; ECG data as base64url `vd`).
 *
 * @example
 *   const pack = await readingsAsSenml(core, 'bed-7', from, to, 500);
 *   res.setHeader('content-type', 'application/senml+json'); res.end(JSON.stringify(pack.records));
 */
import { decodeVitalsPack, ECG_LSB_VOLTS, VITALS, type VitalsBatch } from '../codec/vitals.ts';
import type { CryptoProvider } from '../crypto/provider.ts';
import { zeroize } from '../util/bytes.ts';
import { openAtRest } from './at-rest.ts';
import type { DeviceDataKeys } from './data-keys.ts';
import type { IngestStorage } from './storage/types.ts';

export interface SenmlJsonRecord {
  readonly n: string;
  readonly u: string;
  readonly t: number;
  readonly v?: number;
  readonly vd?: string;
}

export interface ReadingsPage {
  readonly records: SenmlJsonRecord[];
  /** Messages read (each holds one batch). */
  readonly messages: number;
  /** True when `limit` messages were read and more may exist after the last one. */
  readonly truncated: boolean;
}

export interface ReadingsSource {
  readonly storage: IngestStorage;
  readonly dataKeys: DeviceDataKeys;
  readonly provider: CryptoProvider;
}

/** Decrypted batches of the messages overlapping [from, to], in sequence order. */
export async function readBatches(src: ReadingsSource, deviceId: string, from: number, to: number, limit: number): Promise<{ batches: { seq: number; batch: VitalsBatch }[]; truncated: boolean }> {
  const rows = await src.storage.readMessages(deviceId, from, to, limit);
  const batches: { seq: number; batch: VitalsBatch }[] = [];
  for (const row of rows) {
    const dek = await src.dataKeys.version(deviceId, row.keyVersion);
    const pack = openAtRest(src.provider, dek, row);
    try {
      batches.push({ seq: row.seq, batch: decodeVitalsPack(pack, { maxBytes: pack.length, maxStringBytes: pack.length }) });
    } finally {
      zeroize(pack);
    }
  }
  return { batches, truncated: rows.length === limit };
}

/** SenML JSON records of one batch, keeping only readings (and strips starting) within [from, to]. */
export function batchToSenml(b: VitalsBatch, from = Number.NEGATIVE_INFINITY, to = Number.POSITIVE_INFINITY): SenmlJsonRecord[] {
  const out: SenmlJsonRecord[] = [];
  const name = (n: string) => `${b.deviceId}/${n}`;
  for (const r of b.readings) {
    if (r.time < from || r.time > to) continue;
    const spec = VITALS[r.kind];
    out.push({ n: name(r.kind), u: spec.unit, v: spec.toWire(r.value), t: r.time / 1000 });
  }
  for (const e of b.ecg) {
    if (e.start < from || e.start > to) continue;
    const data = Buffer.alloc(e.samplesMv.length * 2);
    for (let i = 0; i < e.samplesMv.length; i++) {
      data.writeInt16LE(Math.max(-32768, Math.min(32767, Math.round(((e.samplesMv[i] as number) / 1000) / ECG_LSB_VOLTS))), i * 2);
    }
    const t = e.start / 1000;
    out.push({ n: name('ecg/interval'), u: 's', v: e.intervalMs / 1000, t });
    out.push({ n: name('ecg/lsb'), u: 'V', v: ECG_LSB_VOLTS, t });
    out.push({ n: name('ecg'), u: 'V', vd: data.toString('base64url'), t });
  }
  return out;
}

export async function readingsAsSenml(src: ReadingsSource, deviceId: string, from: number, to: number, limit: number): Promise<ReadingsPage> {
  const { batches, truncated } = await readBatches(src, deviceId, from, to, limit);
  const records = batches.flatMap(({ batch }) => batchToSenml(batch, from, to));
  return { records, messages: batches.length, truncated };
}

/** The live feed's form of a batch: clinical units, ECG in millivolts (3 decimals). */
export function batchToLive(b: VitalsBatch): { readings: { kind: string; time: number; value: number }[]; ecg: { start: number; intervalMs: number; samplesMv: number[] }[] } {
  return {
    readings: b.readings.map((r) => ({ kind: r.kind, time: r.time, value: r.value })),
    ecg: b.ecg.map((e) => ({ start: e.start, intervalMs: e.intervalMs, samplesMv: Array.from(e.samplesMv, (x) => Math.round(x * 1000) / 1000) })),
  };
}
