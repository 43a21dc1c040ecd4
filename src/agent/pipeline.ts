/**
 * sampler → batcher → SenML-CBOR → COSE seal → durable queue.
 *
 * - Polled sources (`SensorSource`: the simulated patient, drivers for real sensors) are read on
 *   every `tick(now)`; push sources (the HL7 gateway) call `submit(readings)`.
 * - Readings gather in a batch for `windowMs` (default 1 s); then the batch becomes one SenML pack
 *   (src/codec/vitals.ts), is sealed under the current sealing epoch (COSE_Encrypt, ECDH-ES +
 *   HKDF-256 to the pinned ingest key) with the device id and the message's sequence number in the
 *   protected header, and is appended to the queue. The sequence number is reserved by the queue
 *   before sealing (`appendWith`), so header and queue always agree.
 * - The plaintext pack exists only in memory and is zeroised once sealed: plaintext vitals never
 *   reach the disk.
 * - `submit` resolves only once the batch holding those readings is in the queue (durable per the
 *   queue's fsync policy): what the HL7 ACK waits for. It rejects if sealing or storing failed.
 * - A reading outside the vitals profile's plausible range is dropped and counted, never allowed to
 *   spoil its batch.
 *
 * @example
 *   const p = new Pipeline({ deviceId: 'bed-7', session, queue, clock, log });
 *   p.addSource(new SimulatedPatient({ id: 'sim', seed: 1 }));
 *   p.start(clock.now());
 *   setInterval(() => void p.tick(clock.now()), 250);
 */
import { VITALS, encodeVitalsPack, type EcgStrip, type VitalReading } from '../codec/vitals.ts';
import { Header } from '../cose/headers.ts';
import type { SealingSession } from '../cose/sealing-session.ts';
import type { Clock } from '../util/clock.ts';
import { VitalsealError } from '../util/errors.ts';
import type { Logger } from './log.ts';
import type { QueueStore } from './queue/types.ts';
import type { SensorReadout, SensorSource } from './sensors/types.ts';

export interface PipelineOptions {
  readonly deviceId: string;
  readonly session: SealingSession;
  readonly queue: QueueStore;
  readonly clock: Clock;
  readonly log: Logger;
  /** Batch window (default 1000 ms). */
  readonly windowMs?: number;
  /** ECG strips longer than this are split (default 2048 samples; the codec allows 8192). */
  readonly maxEcgSamplesPerStrip?: number;
  /** Called after each append with the new message's sequence number. */
  readonly onAppended?: (seq: number) => void;
}

export interface PipelineCounters {
  messages: number;
  readings: number;
  ecgSamples: number;
  invalidReadings: number;
  /** Readings lost because sealing or storing their batch failed. */
  lostReadings: number;
  sealErrors: number;
  storeErrors: number;
}

interface Waiter {
  resolve(): void;
  reject(e: unknown): void;
}

interface Batch {
  readings: VitalReading[];
  ecg: EcgStrip[];
  waiters: Waiter[];
  openedAt: number | undefined;
}

const emptyBatch = (): Batch => ({ readings: [], ecg: [], waiters: [], openedAt: undefined });

export class Pipeline {
  readonly #o: PipelineOptions;
  readonly #windowMs: number;
  readonly #maxStrip: number;
  readonly #sources: SensorSource[] = [];
  readonly #counters: PipelineCounters = { messages: 0, readings: 0, ecgSamples: 0, invalidReadings: 0, lostReadings: 0, sealErrors: 0, storeErrors: 0 };
  #batch: Batch = emptyBatch();
  #chain: Promise<void> = Promise.resolve();
  #lastSeq: number | undefined;
  #lastAppendAt: number | undefined;

  constructor(o: PipelineOptions) {
    this.#o = o;
    this.#windowMs = o.windowMs ?? 1000;
    this.#maxStrip = o.maxEcgSamplesPerStrip ?? 2048;
    if (!(this.#windowMs > 0)) throw new RangeError('pipeline windowMs must be positive');
    if (!Number.isInteger(this.#maxStrip) || this.#maxStrip < 1 || this.#maxStrip > 8192) throw new RangeError('maxEcgSamplesPerStrip must be 1..8192');
  }

  addSource(source: SensorSource): void {
    this.#sources.push(source);
  }

  start(now: number): void {
    for (const s of this.#sources) s.start(now);
  }

  counters(): Readonly<PipelineCounters> {
    return { ...this.#counters };
  }

  get lastSeq(): number | undefined {
    return this.#lastSeq;
  }

  get lastAppendAt(): number | undefined {
    return this.#lastAppendAt;
  }

  health(): { ok: boolean; detail: string }[] {
    return this.#sources.map((s) => ({ ...s.health(), detail: `${s.id}: ${s.health().detail}` }));
  }

  /** Reads every polled source; seals and queues the batch once its window has passed. */
  tick(now: number): Promise<void> {
    for (const s of this.#sources) {
      let r: SensorReadout;
      try {
        r = s.read(now);
      } catch (e) {
        this.#o.log.error({ source: s.id, code: e instanceof VitalsealError ? e.code : undefined }, 'sensor read failed');
        continue;
      }
      this.#add(r, now);
    }
    const opened = this.#batch.openedAt;
    if (opened !== undefined && now - opened >= this.#windowMs) return this.flush();
    return this.#chain;
  }

  /** Push source entry point: resolves once these readings are sealed and durable in the queue. */
  submit(readings: readonly VitalReading[]): Promise<void> {
    const now = this.#o.clock.now();
    const valid = readings.filter((r) => this.#plausible(r.kind, r.value));
    if (valid.length === 0) return Promise.resolve();
    this.#open(now);
    this.#batch.readings.push(...valid);
    return new Promise<void>((resolve, reject) => this.#batch.waiters.push({ resolve, reject }));
  }

  /** Seals and queues whatever the batch holds now. Batches are stored strictly in order. */
  flush(): Promise<void> {
    const batch = this.#batch;
    this.#batch = emptyBatch();
    this.#chain = this.#chain.then(() => this.#store(batch));
    return this.#chain;
  }

  /** Stops polled sources after a last read, and stores what is left. */
  async stop(now: number): Promise<void> {
    for (const s of this.#sources) {
      try {
        this.#add(s.read(now), now);
      } catch {
        // a failing sensor at shutdown: its last readings are lost, nothing else
      }
      s.stop();
    }
    await this.flush();
  }

  #open(now: number): void {
    this.#batch.openedAt ??= now;
  }

  #plausible(kind: VitalReading['kind'], value: number): boolean {
    const spec = VITALS[kind];
    if (spec !== undefined && Number.isFinite(value) && value >= spec.min && value <= spec.max) return true;
    this.#counters.invalidReadings++;
    return false;
  }

  #add(r: SensorReadout, now: number): void {
    if (r.vitals.length === 0 && r.waveforms.length === 0) return;
    this.#open(now);
    for (const v of r.vitals) {
      if (this.#plausible(v.name, v.value)) this.#batch.readings.push({ kind: v.name, time: v.time, value: v.value });
    }
    for (const w of r.waveforms) {
      for (let i = 0; i < w.samples.length; i += this.#maxStrip) {
        const samples = w.samples.subarray(i, Math.min(w.samples.length, i + this.#maxStrip));
        this.#batch.ecg.push({ start: w.start + i * w.intervalMs, intervalMs: w.intervalMs, samplesMv: samples });
      }
    }
  }

  async #store(batch: Batch): Promise<void> {
    if (batch.readings.length === 0 && batch.ecg.length === 0) {
      for (const w of batch.waiters) w.resolve();
      return;
    }
    const samples = batch.ecg.reduce((n, e) => n + e.samplesMv.length, 0);
    let pack: Uint8Array | undefined;
    let sealFailed = false;
    try {
      const [seq] = await this.#o.queue.appendWith(1, (seq) => {
        try {
          pack = encodeVitalsPack({ deviceId: this.#o.deviceId, readings: batch.readings, ecg: batch.ecg });
          const protectedExtras = new Map<number, unknown>([[Header.DEVICE_ID, this.#o.deviceId], [Header.SEQUENCE, seq]]);
          return [this.#o.session.seal(pack, { protectedExtras })];
        } catch (e) {
          sealFailed = true;
          throw e;
        } finally {
          pack?.fill(0);
        }
      });
      this.#counters.messages++;
      this.#counters.readings += batch.readings.length;
      this.#counters.ecgSamples += samples;
      this.#lastSeq = seq;
      this.#lastAppendAt = this.#o.clock.now();
      for (const w of batch.waiters) w.resolve();
      if (seq !== undefined) this.#o.onAppended?.(seq);
    } catch (e) {
      if (sealFailed) this.#counters.sealErrors++;
      else this.#counters.storeErrors++;
      this.#counters.lostReadings += batch.readings.length;
      const code = e instanceof VitalsealError ? e.code : e instanceof Error ? e.name : 'error';
      // The system's reason for a failed write (ENOSPC, EIO, EROFS, ...) is what the operator needs.
      const errno = e instanceof Error ? (e.cause as NodeJS.ErrnoException | undefined)?.code : undefined;
      this.#o.log.error({ code, ...(typeof errno === 'string' ? { cause: errno } : {}), readingCount: batch.readings.length, ecgSampleCount: samples }, 'batch could not be sealed and queued; its readings are lost');
      for (const w of batch.waiters) w.reject(e);
    }
  }
}
