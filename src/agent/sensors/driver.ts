/**
 * The driver interface for real sensors. A driver has two halves:
 *
 * 1. `SensorDriver`: the protocol, sans-I/O. Bytes in (from a serial line, an I2C register read,
 *    a USB CDC device), decoded readings out, with the time they were taken. Strict and bounded:
 *    it never buffers more than one frame, resynchronises on garbage and counts what it skipped,
 *    never throws on bad bytes (a flaky cable must not stop the agent).
 * 2. The byte source: any Node `Readable` (a serial port opened as a file, `/dev/ttyUSB0` after
 *    `stty raw`, a FIFO, a socket, the `serialport` package's stream). `StreamSensorSource` joins
 *    the two into the agent's `SensorSource`, which the pipeline polls like the simulated patient.
 *
 * I2C sensors are polled rather than streamed: implement `SensorSource` directly and read the
 * registers in `read(now)` (or wrap a polling loop in a Readable and reuse `StreamSensorSource`).
 * Either way, only readings in clinical units reach the pipeline; see docs/agent.md.
 *
 * @example
 *   const source = new StreamSensorSource({
 *     id: 'spo2-probe', driver: new MyOximeterProtocol(),
 *     open: () => createReadStream('/dev/ttyUSB0'), clock: systemClock,
 *   });
 *   const agent = await createAgent({ config, sources: [source] });
 */
import type { Readable } from 'node:stream';
import type { Clock } from '../../util/clock.ts';
import type { SensorHealth, SensorReadout, SensorSource, VitalSample, WaveformChunk } from './types.ts';

export interface DriverStats {
  /** Whole frames decoded. */
  readonly frames: number;
  /** Bytes skipped while looking for the start of a frame, or frames refused as malformed. */
  readonly errors: number;
}

export interface DriverOutput {
  readonly vitals: readonly VitalSample[];
  readonly waveforms?: readonly WaveformChunk[];
}

export interface SensorDriver {
  readonly name: string;
  /** Feeds bytes received at `now`; returns what they completed. Never throws on bad input. */
  push(bytes: Uint8Array, now: number): DriverOutput;
  /** A condition the sensor reports about itself (probe off, searching), or undefined when fine. */
  condition(): string | undefined;
  stats(): DriverStats;
}

export interface StreamSensorSourceOptions {
  readonly id: string;
  readonly driver: SensorDriver;
  /** Opens the byte stream (called on start). */
  readonly open: () => Readable;
  readonly clock: Clock;
  /** Health turns bad when no frame has arrived for this long (default 5 s). */
  readonly staleAfterMs?: number;
  /** At most this many readings are held between reads; older ones are dropped and counted (default 10 000). */
  readonly maxBuffered?: number;
}

export class StreamSensorSource implements SensorSource {
  readonly id: string;
  readonly #o: StreamSensorSourceOptions;
  #stream: Readable | undefined;
  #vitals: VitalSample[] = [];
  #waveforms: WaveformChunk[] = [];
  #lastFrameAt: number | undefined;
  #startedAt: number | undefined;
  #error: string | undefined;
  #overflow = 0;

  constructor(o: StreamSensorSourceOptions) {
    this.id = o.id;
    this.#o = o;
  }

  start(now: number): void {
    this.#startedAt = now;
    const s = this.#o.open();
    this.#stream = s;
    s.on('data', (chunk: Buffer | string) => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk;
      const before = this.#o.driver.stats().frames;
      const out = this.#o.driver.push(bytes, this.#o.clock.now());
      if (this.#o.driver.stats().frames > before) this.#lastFrameAt = this.#o.clock.now();
      this.#vitals.push(...out.vitals);
      if (out.waveforms !== undefined) this.#waveforms.push(...out.waveforms);
      const max = this.#o.maxBuffered ?? 10_000;
      if (this.#vitals.length > max) {
        this.#overflow += this.#vitals.length - max;
        this.#vitals.splice(0, this.#vitals.length - max);
      }
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      this.#error = e.code ?? e.message;
    });
    s.on('close', () => {
      if (this.#stream === s) this.#error ??= 'stream closed';
    });
  }

  read(_now: number): SensorReadout {
    const out = { vitals: this.#vitals, waveforms: this.#waveforms };
    this.#vitals = [];
    this.#waveforms = [];
    return out;
  }

  stop(): void {
    const s = this.#stream;
    this.#stream = undefined;
    s?.destroy();
  }

  health(): SensorHealth {
    const st = this.#o.driver.stats();
    const counts = `${st.frames} frames, ${st.errors} errors${this.#overflow > 0 ? `, ${this.#overflow} readings dropped (not read in time)` : ''}`;
    if (this.#error !== undefined) return { ok: false, detail: `${this.#o.driver.name}: ${this.#error} (${counts})` };
    const now = this.#o.clock.now();
    const since = this.#lastFrameAt ?? this.#startedAt;
    if (since !== undefined && now - since > (this.#o.staleAfterMs ?? 5000)) return { ok: false, detail: `${this.#o.driver.name}: no data for ${Math.round((now - since) / 1000)} s (${counts})` };
    const cond = this.#o.driver.condition();
    if (cond !== undefined) return { ok: false, detail: `${this.#o.driver.name}: ${cond} (${counts})` };
    return { ok: true, detail: `${this.#o.driver.name}: ${counts}` };
  }
}
