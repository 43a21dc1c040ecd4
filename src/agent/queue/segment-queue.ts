/**
 * Append-only segment files of sealed messages: the device's crash-safe queue.
 *
 * Layout of `dir`: `<first seq, 16 digits>.seg` segment files (records framed by segment-format.ts)
 * and `state.json` (acknowledged position, dropped count, next sequence number), replaced
 * atomically (write, fsync, rename).
 *
 * Crash safety: on open, every segment is scanned; a torn or corrupt tail is truncated away and
 * reported in `recovery`; the queue resumes after the last whole record. The newest segment is kept
 * even when fully acknowledged, so the next sequence number survives the loss of state.json and
 * sequence numbers never go backwards (the ingest service dedupes on them).
 *
 * Only sealed (COSE) messages belong here: with `requireCose` (the default) a payload that does not
 * start with a COSE_Encrypt0/COSE_Encrypt tag is refused, so plaintext vitals never reach the disk.
 */
import { mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiMisuse, StorageError } from '../../util/errors.ts';
import { encodeRecord, RECORD_HEADER_BYTES, scanRecords } from './segment-format.ts';
import { DEFAULT_QUEUE_LIMITS, type FullPolicy, type QueuedMessage, type QueueLimits, type QueueStats, type QueueStore } from './types.ts';

export type FsyncPolicy = 'every-append' | 'never';

export interface SegmentQueueOptions {
  readonly dir: string;
  readonly limits?: Partial<QueueLimits>;
  readonly fullPolicy?: FullPolicy;
  /** 'every-append' (default): each append returns only after its bytes are on stable storage. */
  readonly fsync?: FsyncPolicy;
  /** Roll to a new segment file past this size. */
  readonly segmentBytes?: number;
  /** Refuse payloads that are not tagged COSE_Encrypt0 (16) / COSE_Encrypt (96). Default true. */
  readonly requireCose?: boolean;
}

export interface RecoveryReport {
  /** Bytes cut from torn or corrupt segment tails. */
  readonly truncatedBytes: number;
  /** One entry per segment that was cut, naming why. */
  readonly problems: readonly string[];
  readonly state: 'clean' | 'recovered';
}

interface Segment {
  readonly firstSeq: number;
  readonly path: string;
  /** Offsets and lengths of each record, in seq order starting at firstSeq. */
  readonly offsets: number[];
  readonly lengths: number[];
  size: number;
}

interface PersistedState {
  v: 1;
  ackedThrough: number;
  dropped: number;
  nextSeq: number;
}

/** CBOR tag 16 (0xd0) or tag 96 (0xd8 0x60): RFC 9052 §2 COSE_Encrypt0 / COSE_Encrypt. */
function looksLikeCose(p: Uint8Array): boolean {
  return p[0] === 0xd0 || (p[0] === 0xd8 && p[1] === 0x60);
}

const SEGMENT_RE = /^(\d{16})\.seg$/;

export class SegmentQueue implements QueueStore {
  readonly recovery: RecoveryReport;
  readonly #dir: string;
  readonly #limits: QueueLimits;
  readonly #policy: FullPolicy;
  readonly #fsync: FsyncPolicy;
  readonly #segmentBytes: number;
  readonly #requireCose: boolean;
  readonly #segments: Segment[];
  #state: PersistedState;
  #head: FileHandle | undefined;
  #chain: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(opts: SegmentQueueOptions, segments: Segment[], state: PersistedState, recovery: RecoveryReport) {
    this.#dir = opts.dir;
    this.#limits = { ...DEFAULT_QUEUE_LIMITS, ...opts.limits };
    this.#policy = opts.fullPolicy ?? 'drop-oldest';
    this.#fsync = opts.fsync ?? 'every-append';
    this.#segmentBytes = opts.segmentBytes ?? 4 * 1024 * 1024;
    this.#requireCose = opts.requireCose ?? true;
    this.#segments = segments;
    this.#state = state;
    this.recovery = recovery;
  }

  /** Opens (creating if needed) the queue in `opts.dir`, recovering from any torn tail. */
  static async open(opts: SegmentQueueOptions): Promise<SegmentQueue> {
    const limits = { ...DEFAULT_QUEUE_LIMITS, ...opts.limits };
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    const names = (await readdir(opts.dir)).filter((n) => SEGMENT_RE.test(n)).sort();
    const segments: Segment[] = [];
    const problems: string[] = [];
    let truncatedBytes = 0;
    let expected: number | undefined;
    for (const name of names) {
      const path = join(opts.dir, name);
      const firstSeq = Number(SEGMENT_RE.exec(name)?.[1]);
      const data = await readFile(path);
      const scan = scanRecords(data, limits.maxMessageBytes, firstSeq);
      if (scan.stop !== undefined) {
        problems.push(`${name}: ${scan.stop.message}; ${data.length - scan.validBytes} bytes cut`);
        truncatedBytes += data.length - scan.validBytes;
        const fh = await open(path, 'r+');
        try {
          await fh.truncate(scan.validBytes);
          await fh.sync();
        } finally {
          await fh.close();
        }
      }
      if (expected !== undefined && firstSeq !== expected && scan.records.length > 0) {
        // A gap between segments: a segment was lost or cut mid-file. Later segments still hold
        // valid sealed messages; deliver them and report the gap.
        problems.push(`${name}: starts at ${firstSeq}, expected ${expected}`);
      }
      segments.push({
        firstSeq, path, size: scan.validBytes,
        offsets: scan.records.map((r) => r.offset), lengths: scan.records.map((r) => r.length),
      });
      if (scan.records.length > 0) expected = firstSeq + scan.records.length;
      else expected ??= firstSeq;
    }
    const persisted = await readState(opts.dir);
    const lastOnDisk = segments.reduce((m, s) => Math.max(m, s.firstSeq + s.offsets.length), 1);
    const state: PersistedState = {
      v: 1,
      ackedThrough: persisted?.ackedThrough ?? 0,
      dropped: persisted?.dropped ?? 0,
      // Never reuse a number: the larger of what state.json said and what the segments prove.
      nextSeq: Math.max(persisted?.nextSeq ?? 1, lastOnDisk),
    };
    const q = new SegmentQueue(opts, segments, state, {
      truncatedBytes, problems, state: problems.length === 0 ? 'clean' : 'recovered',
    });
    return q;
  }

  stats(): QueueStats {
    let depth = 0;
    let bytes = 0;
    for (const s of this.#segments) {
      for (let i = 0; i < s.offsets.length; i++) {
        if (s.firstSeq + i > this.#state.ackedThrough) {
          depth++;
          bytes += RECORD_HEADER_BYTES + (s.lengths[i] as number);
        }
      }
    }
    return {
      depth, bytes,
      capacityBytes: this.#limits.capacityBytes,
      ackedThrough: this.#state.ackedThrough,
      nextSeq: this.#state.nextSeq,
      dropped: this.#state.dropped,
      nearlyFull: bytes >= this.#limits.capacityBytes * this.#limits.highWater,
    };
  }

  append(payloads: readonly Uint8Array[]): Promise<number[]> {
    return this.#serial(() => this.#appendLocked(payloads));
  }

  appendWith(count: number, build: (firstSeq: number) => readonly Uint8Array[] | Promise<readonly Uint8Array[]>): Promise<number[]> {
    return this.#serial(async () => {
      if (!Number.isSafeInteger(count) || count < 1) throw new RangeError('queue appendWith: count must be a positive integer');
      // Inside the serial chain nextSeq cannot move until this append is written or has failed.
      const payloads = await build(this.#state.nextSeq);
      if (payloads.length !== count) throw new ApiMisuse('queue-build-count', `queue appendWith: build returned ${payloads.length} payloads for ${count} numbers`);
      return this.#appendLocked(payloads);
    });
  }

  /** Runs inside the serial chain. */
  async #appendLocked(payloads: readonly Uint8Array[]): Promise<number[]> {
    for (const p of payloads) {
      if (!(p instanceof Uint8Array) || p.length === 0) throw new TypeError('queue append: payloads must be non-empty Uint8Arrays');
      if (p.length > this.#limits.maxMessageBytes) {
        throw new ApiMisuse('queue-message-too-large', `queue append: ${p.length} bytes exceeds the ${this.#limits.maxMessageBytes}-byte limit`);
      }
      if (this.#requireCose && !looksLikeCose(p)) {
        throw new ApiMisuse('queue-not-sealed', 'queue append: payload is not a tagged COSE message; only sealed data may be queued');
      }
    }
    const incoming = payloads.reduce((n, p) => n + RECORD_HEADER_BYTES + p.length, 0);
    if (incoming > this.#limits.capacityBytes) {
      throw new ApiMisuse('queue-full', 'queue append: batch larger than the whole queue capacity');
    }
    const over = this.stats().bytes + incoming - this.#limits.capacityBytes;
    if (over > 0) {
      if (this.#policy === 'reject-new') throw new ApiMisuse('queue-full', 'queue is full; append refused (policy reject-new)');
      await this.#dropOldest(over);
    }
    const seqs: number[] = [];
    let seg = this.#segments.at(-1);
    // Continue the newest segment only if its numbering runs straight into nextSeq.
    if (seg === undefined || seg.firstSeq + seg.offsets.length !== this.#state.nextSeq) seg = await this.#roll();
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    for (const p of payloads) {
      const seq = this.#state.nextSeq + seqs.length;
      if (seg.size + pendingBytes >= this.#segmentBytes && seg.offsets.length > 0) {
        await this.#writeFrames(seg, pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
        seg = await this.#roll(seq);
      }
      const frame = encodeRecord(seq, p);
      seg.offsets.push(seg.size + pendingBytes);
      seg.lengths.push(p.length);
      pending.push(frame);
      pendingBytes += frame.length;
      seqs.push(seq);
    }
    await this.#writeFrames(seg, pending, pendingBytes);
    this.#state.nextSeq += seqs.length;
    return seqs;
  }

  peek(max: number, afterSeq?: number): Promise<QueuedMessage[]> {
    return this.#serial(async () => {
      const from = Math.max(afterSeq ?? 0, this.#state.ackedThrough) + 1;
      const out: QueuedMessage[] = [];
      for (const s of this.#segments) {
        const last = s.firstSeq + s.offsets.length - 1;
        if (last < from || out.length >= max) continue;
        // Read only the byte range holding the wanted records, not the whole segment.
        const i0 = Math.max(0, from - s.firstSeq);
        const i1 = Math.min(s.offsets.length, i0 + (max - out.length));
        if (i0 >= i1) continue;
        const start = s.offsets[i0] as number;
        const end = (s.offsets[i1 - 1] as number) + RECORD_HEADER_BYTES + (s.lengths[i1 - 1] as number);
        const data = await readRange(s.path, start, end - start);
        for (let i = i0; i < i1; i++) {
          const off = (s.offsets[i] as number) - start + RECORD_HEADER_BYTES;
          out.push({ seq: s.firstSeq + i, payload: new Uint8Array(data.subarray(off, off + (s.lengths[i] as number))) });
        }
      }
      return out;
    });
  }

  ack(throughSeq: number): Promise<void> {
    return this.#serial(async () => {
      if (!Number.isSafeInteger(throughSeq) || throughSeq < 0) throw new RangeError('queue ack: sequence must be a non-negative integer');
      if (throughSeq >= this.#state.nextSeq) {
        throw new ApiMisuse('queue-ack-ahead', `queue ack: ${throughSeq} was never appended (next is ${this.#state.nextSeq})`);
      }
      if (throughSeq <= this.#state.ackedThrough) return;
      this.#state.ackedThrough = throughSeq;
      await this.#deleteAckedSegments();
      await writeState(this.#dir, this.#state);
    });
  }

  close(): Promise<void> {
    return this.#serial(async () => {
      this.#closed = true;
      await writeState(this.#dir, this.#state);
      await this.#head?.close();
      this.#head = undefined;
    }, true);
  }

  async #dropOldest(bytesNeeded: number): Promise<void> {
    let freed = 0;
    let through = this.#state.ackedThrough;
    outer: for (const s of this.#segments) {
      for (let i = 0; i < s.offsets.length; i++) {
        const seq = s.firstSeq + i;
        if (seq <= through) continue;
        if (freed >= bytesNeeded) break outer;
        freed += RECORD_HEADER_BYTES + (s.lengths[i] as number);
        through = seq;
      }
    }
    this.#state.dropped += through - this.#state.ackedThrough;
    this.#state.ackedThrough = through;
    await this.#deleteAckedSegments();
    await writeState(this.#dir, this.#state);
  }

  async #deleteAckedSegments(): Promise<void> {
    // Keep the newest segment: it proves the highest sequence number used.
    while (this.#segments.length > 1) {
      const s = this.#segments[0] as Segment;
      if (s.firstSeq + s.offsets.length - 1 > this.#state.ackedThrough) break;
      await rm(s.path, { force: true });
      this.#segments.shift();
    }
  }

  async #roll(firstSeq = this.#state.nextSeq): Promise<Segment> {
    await this.#head?.close();
    this.#head = undefined;
    const seg: Segment = { firstSeq, path: join(this.#dir, `${String(firstSeq).padStart(16, '0')}.seg`), offsets: [], lengths: [], size: 0 };
    this.#segments.push(seg);
    return seg;
  }

  /**
   * Writes frames whose offsets are already recorded in `seg`. On failure (disk full, I/O error)
   * the file is cut back and the offsets forgotten, so the queue stays exactly as it was before the
   * append and nothing half-written is ever read back.
   */
  async #writeFrames(seg: Segment, frames: Buffer[], bytes: number): Promise<void> {
    if (frames.length === 0) return;
    const recordsBefore = seg.offsets.length - frames.length;
    try {
      if (this.#head === undefined) {
        this.#head = await open(seg.path, 'a', 0o600);
        if (seg.size === 0 && this.#fsync === 'every-append') await fsyncDir(this.#dir);
      }
      const data = Buffer.concat(frames, bytes);
      // write(2) may write less than asked (a file system filling up writes what fits, and only the
      // next call fails with ENOSPC): carry on until every byte is down or a call fails. Left alone,
      // a short write would leave a torn record behind a whole index entry, read back as garbage
      // and sent, and cut at the next start together with everything after it.
      for (let done = 0; done < data.length;) {
        const { bytesWritten } = await this.#head.write(data, done, data.length - done);
        if (bytesWritten <= 0) throw new Error(`write made no progress at byte ${done} of ${data.length}`);
        done += bytesWritten;
      }
      if (this.#fsync === 'every-append') await this.#head.datasync();
    } catch (cause) {
      seg.offsets.length = recordsBefore;
      seg.lengths.length = recordsBefore;
      await this.#head?.truncate(seg.size).catch(() => undefined);
      throw new StorageError('queue-write-failed', `queue append failed and was rolled back: ${(cause as Error).message}`, { cause });
    }
    seg.size += bytes;
  }

  #serial<T>(fn: () => Promise<T>, closing = false): Promise<T> {
    if (this.#closed && !closing) return Promise.reject(new ApiMisuse('queue-closed', 'queue is closed'));
    const run = this.#chain.then(fn, fn);
    this.#chain = run.catch(() => undefined);
    return run;
  }
}

export function openSegmentQueue(opts: SegmentQueueOptions): Promise<SegmentQueue> {
  return SegmentQueue.open(opts);
}

async function readRange(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, position + got);
      if (bytesRead === 0) throw new StorageError('queue-read-short', `queue segment ${path} is shorter than its index says`);
      got += bytesRead;
    }
    return buf;
  } finally {
    await fh.close();
  }
}

async function readState(dir: string): Promise<PersistedState | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, 'state.json'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const s = JSON.parse(text) as Partial<PersistedState>;
    if (s.v === 1 && [s.ackedThrough, s.dropped, s.nextSeq].every((n) => Number.isSafeInteger(n) && (n as number) >= 0)) {
      return s as PersistedState;
    }
  } catch {
    // fall through: a torn state file means "unknown", and recovery re-derives from the segments
  }
  return undefined;
}

async function writeState(dir: string, state: PersistedState): Promise<void> {
  const tmp = join(dir, 'state.json.tmp');
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(JSON.stringify(state));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, 'state.json'));
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** For tests and tooling: the size of each segment file on disk. */
export async function segmentSizes(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const n of (await readdir(dir)).filter((x) => SEGMENT_RE.test(x))) out[n] = (await stat(join(dir, n))).size;
  return out;
}

