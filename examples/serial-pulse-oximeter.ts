/**
 * A driver for a serial pulse oximeter, joined to the agent's pipeline: bytes from the serial
 * line → decoded heart rate and SpO2 → SenML batch → sealed COSE message → queue.
 *
 * Run it from a checkout against a simulated device (a FIFO standing in for the serial port, fed
 * by a simulator in this program):
 *
 *   npx tsx examples/serial-pulse-oximeter.ts --simulate [--seconds 3]
 *
 * or against a real device speaking this protocol (set the line up first, e.g.
 * `stty -F /dev/ttyUSB0 19200 raw -echo`):
 *
 *   npx tsx examples/serial-pulse-oximeter.ts --device /dev/ttyUSB0 --seconds 10
 *
 * The protocol is the 5-byte frame many low-cost finger oximeters stream, about 60 frames a second
 * (bit 7 is set only in the first byte of a frame, so a reader can always find the next frame):
 *
 *   byte 0  1 . . . s s s s   bit 7 sync; bits 0-3 signal strength; bit 4 searching; bit 5 probe off; bit 6 beep
 *   byte 1  0 p p p p p p p   plethysmogram sample, 0-127
 *   byte 2  0 h . e b b b b   bits 0-3 bar graph; bit 4 probe error; bit 6 = bit 7 of the pulse rate
 *   byte 3  0 r r r r r r r   pulse rate bits 0-6 (255 in all = no reading)
 *   byte 4  0 o o o o o o o   SpO2 % (127 = no reading)
 *
 * A device maker copies `OximeterProtocol` (the sans-I/O parser, the part that needs tests) and
 * hands `new StreamSensorSource({ driver, open })` to `createAgent({ sources: [...] })`.
 */
import { execFileSync } from 'node:child_process';
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MemoryQueue, Pipeline, silentLogger } from 'vitalseal/agent';
import { StreamSensorSource, VITAL_UNITS, type DriverOutput, type DriverStats, type SensorDriver, type VitalSample } from 'vitalseal/agent/sensors';
import { SealingSession } from 'vitalseal/cose';
import { getProvider } from 'vitalseal/crypto';

/** The protocol parser: strict, bounded (one 5-byte frame at most), resynchronising on garbage. */
export class OximeterProtocol implements SensorDriver {
  readonly name = 'serial pulse oximeter';
  readonly #frame = new Uint8Array(5);
  #have = 0;
  #frames = 0;
  #errors = 0;
  #condition: string | undefined;
  #pulse: number | undefined;
  #spo2: number | undefined;
  #nextReportAt: number | undefined;

  /** Reports one heart rate and one SpO2 per `reportMs` (monitors update their numbers once a second). */
  constructor(readonly reportMs = 1000) {}

  push(bytes: Uint8Array, now: number): DriverOutput {
    const vitals: VitalSample[] = [];
    for (const b of bytes) {
      if ((b & 0x80) !== 0) {
        if (this.#have !== 0) this.#errors++; // a new frame began before the last was whole
        this.#frame[0] = b;
        this.#have = 1;
        continue;
      }
      if (this.#have === 0) {
        this.#errors++; // between frames: skip until a sync byte
        continue;
      }
      this.#frame[this.#have++] = b;
      if (this.#have === 5) {
        this.#have = 0;
        this.#frames++;
        this.#decode();
      }
    }
    this.#nextReportAt ??= now + this.reportMs;
    if (now >= this.#nextReportAt) {
      this.#nextReportAt = now + this.reportMs;
      if (this.#pulse !== undefined) vitals.push({ name: 'heart-rate', time: now, value: this.#pulse, unit: VITAL_UNITS['heart-rate'] });
      if (this.#spo2 !== undefined) vitals.push({ name: 'spo2', time: now, value: this.#spo2, unit: VITAL_UNITS.spo2 });
    }
    return { vitals };
  }

  #decode(): void {
    const [b0, , b2, b3, b4] = this.#frame as unknown as [number, number, number, number, number];
    const probeOff = (b0 & 0x20) !== 0 || (b2 & 0x10) !== 0;
    const searching = (b0 & 0x10) !== 0;
    this.#condition = probeOff ? 'probe off the finger' : searching ? 'searching for a pulse' : undefined;
    const pulse = ((b2 & 0x40) << 1) | b3;
    // No reading while the probe is off or the device says the value is not available.
    this.#pulse = probeOff || pulse === 0xff || pulse === 0 ? undefined : pulse;
    this.#spo2 = probeOff || b4 === 0x7f || b4 === 0 ? undefined : b4;
  }

  condition(): string | undefined {
    return this.#condition;
  }

  stats(): DriverStats {
    return { frames: this.#frames, errors: this.#errors };
  }
}

/** One frame as the device would send it. */
export function encodeFrame(f: { pulse?: number; spo2?: number; pleth: number; probeOff?: boolean }): Uint8Array {
  const pulse = f.pulse ?? 0xff;
  return Uint8Array.of(
    0x80 | 0x08 | (f.probeOff === true ? 0x20 : 0),
    f.pleth & 0x7f,
    0x05 | ((pulse & 0x80) >> 1),
    pulse & 0x7f,
    (f.spo2 ?? 0x7f) & 0x7f,
  );
}

/** The simulated device: ~60 frames a second for `seconds`, with a little garbage and a probe-off spell. */
export function simulate(path: string, seconds: number): Promise<void> {
  const out = createWriteStream(path);
  let n = 0;
  let noisy = false;
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    // The reader went away (EPIPE): the device is unplugged, so to speak; stop feeding.
    out.on('error', () => {
      clearInterval(timer);
      resolve();
    });
    // The device streams from the moment the line is opened (opening a FIFO waits for the reader).
    out.once('open', () => {
      const start = Date.now();
      timer = setInterval(() => {
        const t = (Date.now() - start) / 1000;
        if (t >= seconds) {
          clearInterval(timer);
          out.end(() => resolve());
          return;
        }
        const frames: Uint8Array[] = [];
        for (let k = 0; k < 4; k++, n++) {
          const probeOff = t > 1.2 && t < 1.5;
          frames.push(encodeFrame({ pulse: 72 + Math.round(2 * Math.sin(t)), spo2: 97, pleth: Math.round(64 + 50 * Math.sin(n / 5)), probeOff }));
        }
        // A burst of line noise once, a second in: the parser must skip it and find the next frame.
        if (!noisy && t >= 1) {
          noisy = true;
          frames.push(Uint8Array.of(0x13, 0x37, 0x42));
        }
        out.write(Buffer.concat(frames));
      }, 1000 / 15);
    });
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { simulate: { type: 'boolean' }, device: { type: 'string' }, seconds: { type: 'string', default: '3' } } });
  const seconds = Number(values.seconds);
  let path = values.device;
  let tmp: string | undefined;
  let fed: Promise<void> = Promise.resolve();
  if (values.simulate === true) {
    tmp = mkdtempSync(join(tmpdir(), 'oximeter-'));
    path = join(tmp, 'ttyV0');
    execFileSync('mkfifo', [path]); // a FIFO stands in for the serial device
    fed = simulate(path, seconds);
  }
  if (path === undefined) throw new Error('give --simulate or --device PATH');

  const clock = { now: () => Date.now() };
  const driver = new OximeterProtocol();
  const source = new StreamSensorSource({ id: 'oximeter', driver, open: () => createReadStream(path as string), clock });

  // The agent's pipeline, sealing for an ingest key made on the spot (in production: pinned in the config).
  const ingest = getProvider().x25519Generate();
  const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: ingest.publicKey, clock });
  ingest.privateKey.fill(0);
  const queue = new MemoryQueue();
  const pipeline = new Pipeline({ deviceId: 'finger-1', session, queue, clock, log: silentLogger(), windowMs: 1000 });
  pipeline.addSource(source);
  pipeline.start(clock.now());

  const started = Date.now();
  let lastReport = 0;
  const tick = setInterval(() => {
    void pipeline.tick(clock.now());
    const s = Math.floor((Date.now() - started) / 1000);
    if (s > lastReport) {
      lastReport = s;
      console.log(`t=${s}s ${source.health().detail}`);
    }
  }, 100);
  await fed;
  if (values.simulate !== true) await new Promise((r) => setTimeout(r, seconds * 1000));
  await new Promise((r) => setTimeout(r, 300));
  clearInterval(tick);
  await pipeline.stop(clock.now());
  const st = driver.stats();
  const c = pipeline.counters();
  console.log(`frames ${st.frames}, errors ${st.errors}; ${c.readings} readings sealed into ${c.messages} COSE messages, ${queue.stats().depth} in the queue`);
  session.destroy();
  if (tmp !== undefined) rmSync(tmp, { recursive: true, force: true });
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
