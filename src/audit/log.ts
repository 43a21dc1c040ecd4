/**
 * The append-only audit log (format in entry.ts). Appends are serialised, each line is written with
 * O_APPEND and fsynced before `append` resolves. Checkpoints are signed through a `Signer` (the
 * device identity key) every `checkpointEvery.entries` entries or `checkpointEvery.ms` of clock time,
 * whichever comes first, and on `close()`, so a cleanly closed log ends with a checkpoint.
 *
 * Opening an existing log reads only its first line (the header) and its tail. A tail cut in the
 * middle of a line (power lost during a write) is cut back to the last whole line, and that repair
 * is itself recorded as a `recover` event: the log never silently forgets.
 *
 * @example
 *   const log = await openAuditLog({ path: '/var/lib/vitalseal/audit.log', signer: identity, clock });
 *   await log.append({ actor: 'agent', operation: 'unseal', keyId: 'queue-kek', result: 'ok' });
 *   await log.close();
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fsyncDirectory, checkPrivateHandle } from '../keystore/private-file.ts';
import type { Signer } from '../keystore/signer.ts';
import { systemClock, type Clock } from '../util/clock.ts';
import { ApiMisuse, KeyStoreError, StorageError } from '../util/errors.ts';
import {
  AUDIT_FORMAT_VERSION, checkEventInput, checkpointPayload, GENESIS_PREV, hashLine, isoTime, MAX_LINE_BYTES, NO_KEY,
  parseLine, serializeLine, type AuditEventInput, type AuditLine, type CheckpointLine,
} from './entry.ts';

export interface CheckpointPolicy {
  /** Sign a checkpoint after this many entries (default 100). */
  readonly entries?: number;
  /** ... or when this much clock time has passed since the last one, checked on append (default 1 h). */
  readonly ms?: number;
}

export interface AuditLogOptions {
  readonly path: string;
  /** Signs checkpoints; without one the log is hash-chained but unsigned. */
  readonly signer?: Signer;
  readonly clock?: Clock;
  readonly checkpointEvery?: CheckpointPolicy;
  /** The actor named on `recover` events written when opening repairs a torn tail (default 'audit'). */
  readonly actor?: string;
}

export interface AppendResult {
  readonly seq: number;
  /** SHA-256 of the line: an anchor a verifier can be given later. */
  readonly hash: string;
}

const TAIL_WINDOW = 64 * 1024;

interface AuditLogInit {
  readonly path: string;
  readonly fh: FileHandle;
  readonly signer: Signer | undefined;
  readonly clock: Clock;
  readonly policy: CheckpointPolicy;
  readonly logId: string;
  readonly seq: number;
  readonly prev: string;
  readonly sinceCheckpoint: number;
  readonly lastCheckpointAt: number;
}

function storageError(path: string, e: unknown): StorageError {
  return new StorageError('audit-io', `audit log ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
}

export class AuditLog {
  readonly #path: string;
  readonly #fh: FileHandle;
  readonly #signer: Signer | undefined;
  readonly #clock: Clock;
  readonly #everyEntries: number;
  readonly #everyMs: number;
  readonly #logId: string;
  #seq: number;
  #prev: string;
  #sinceCheckpoint: number;
  #lastCheckpointAt: number;
  #signerFingerprint: string | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;
  #closing: Promise<void> | undefined;

  private constructor(init: AuditLogInit) {
    this.#path = init.path;
    this.#fh = init.fh;
    this.#signer = init.signer;
    this.#clock = init.clock;
    this.#everyEntries = init.policy.entries ?? 100;
    this.#everyMs = init.policy.ms ?? 3_600_000;
    this.#logId = init.logId;
    this.#seq = init.seq;
    this.#prev = init.prev;
    this.#sinceCheckpoint = init.sinceCheckpoint;
    this.#lastCheckpointAt = init.lastCheckpointAt;
  }

  /** @internal Use openAuditLog. */
  static _create(init: AuditLogInit): AuditLog {
    return new AuditLog(init);
  }

  get logId(): string {
    return this.#logId;
  }

  /** Sequence number and hash of the last line written. */
  get head(): AppendResult {
    return { seq: this.#seq, hash: this.#prev };
  }

  /** Appends one event (validated first: nothing secret-looking is written); may add a due checkpoint. */
  async append(event: AuditEventInput): Promise<AppendResult> {
    checkEventInput(event);
    return this.#exclusive(async () => {
      const result = await this.#write({
        type: 'event', seq: this.#seq + 1, time: isoTime(this.#clock.now()), actor: event.actor, op: event.operation, key: event.keyId,
        result: event.result, ...(event.code === undefined ? {} : { code: event.code }), ...(event.detail === undefined ? {} : { detail: event.detail }),
        prev: this.#prev,
      });
      this.#sinceCheckpoint++;
      if (this.#signer !== undefined && (this.#sinceCheckpoint >= this.#everyEntries || this.#clock.now() - this.#lastCheckpointAt >= this.#everyMs)) {
        await this.#checkpoint();
      }
      return result;
    });
  }

  /** Writes a signed checkpoint now (`ApiMisuse('no-signer')` without a signer). */
  async checkpoint(): Promise<AppendResult> {
    if (this.#signer === undefined) throw new ApiMisuse('no-signer', 'this audit log has no signer for checkpoints');
    return this.#exclusive(() => this.#checkpoint());
  }

  /** Seals the log with a final checkpoint (when there is a signer and anything to cover) and closes it. */
  close(): Promise<void> {
    this.#closing ??= this.#exclusive(async () => {
      try {
        if (this.#signer !== undefined && this.#sinceCheckpoint > 0) await this.#checkpoint();
      } finally {
        this.#closed = true;
        await this.#fh.close();
      }
    });
    return this.#closing;
  }

  async #checkpoint(): Promise<AppendResult> {
    const signer = this.#signer as Signer;
    this.#signerFingerprint ??= hashLine(await signer.publicKeySpki());
    const base = { seq: this.#seq + 1, time: isoTime(this.#clock.now()), signer: this.#signerFingerprint, prev: this.#prev };
    const sig = await signer.sign(checkpointPayload(this.#logId, base));
    const line: CheckpointLine = { type: 'checkpoint', ...base, alg: signer.scheme, sig: Buffer.from(sig).toString('base64') };
    const result = await this.#write(line);
    this.#sinceCheckpoint = 0;
    this.#lastCheckpointAt = this.#clock.now();
    return result;
  }

  async #write(line: AuditLine): Promise<AppendResult> {
    const text = serializeLine(line);
    if (Buffer.byteLength(text) > MAX_LINE_BYTES) throw new ApiMisuse('audit-field', `audit line longer than ${MAX_LINE_BYTES} bytes`);
    try {
      await this.#fh.appendFile(`${text}\n`);
      await this.#fh.datasync();
    } catch (e) {
      throw storageError(this.#path, e);
    }
    this.#seq = line.seq;
    this.#prev = hashLine(text);
    return { seq: this.#seq, hash: this.#prev };
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const task = this.#queue.then(() => {
      if (this.#closed) throw new ApiMisuse('closed', `audit log ${this.#path} is closed`);
      return fn();
    });
    this.#queue = task.catch(() => undefined);
    return task;
  }
}

async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let off = 0;
  while (off < length) {
    const { bytesRead } = await fh.read(buf, off, length - off, position + off);
    if (bytesRead === 0) break;
    off += bytesRead;
  }
  return buf.subarray(0, off);
}

function corrupt(path: string, message: string): StorageError {
  return new StorageError('audit-corrupt', `audit log ${path}: ${message}; run vitalseal audit verify ${path}`);
}

/** Opens the log at `path`, creating it (mode 0600, with its header line) when absent. */
export async function openAuditLog(opts: AuditLogOptions): Promise<AuditLog> {
  const { path } = opts;
  const clock = opts.clock ?? systemClock;
  const policy = opts.checkpointEvery ?? {};
  let fh: FileHandle;
  let created = false;
  // O_APPEND: every write lands at the end, whatever else has the file open.
  const flags = constants.O_RDWR | constants.O_APPEND | constants.O_NOFOLLOW;
  try {
    fh = await open(path, flags);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw storageError(path, e);
    try {
      fh = await open(path, flags | constants.O_CREAT | constants.O_EXCL, 0o600);
      created = true;
    } catch (e2) {
      throw storageError(path, e2);
    }
  }
  try {
    await checkPrivateHandle(fh, path, 'audit log').catch((e: unknown) => {
      throw e instanceof KeyStoreError ? new StorageError(e.code, e.message) : e;
    });
    const now = clock.now();
    if (created) {
      const header: AuditLine = { type: 'header', seq: 0, v: AUDIT_FORMAT_VERSION, log: randomBytes(16).toString('hex'), time: isoTime(now), prev: GENESIS_PREV };
      const text = serializeLine(header);
      await fh.appendFile(`${text}\n`);
      await fh.sync();
      await fsyncDirectory(dirname(path));
      return AuditLog._create({ path, fh, signer: opts.signer, clock, policy, logId: header.log, seq: 0, prev: hashLine(text), sinceCheckpoint: 0, lastCheckpointAt: now });
    }

    const size = (await fh.stat()).size;
    const first = await readAt(fh, 0, Math.min(size, MAX_LINE_BYTES + 1));
    const nl = first.indexOf(0x0a);
    if (nl < 0) throw corrupt(path, 'no complete header line');
    const parsedHeader = parseLine(first.subarray(0, nl).toString('utf8'));
    if (!('line' in parsedHeader) || parsedHeader.line.type !== 'header') throw corrupt(path, 'the first line is not a valid header');
    const logId = parsedHeader.line.log;

    // The tail: the last whole line gives seq and hash; the last checkpoint in the window gives the
    // checkpoint bookkeeping (none in the window: one is due now).
    const start = Math.max(0, size - TAIL_WINDOW);
    const tail = await readAt(fh, start, size - start);
    let end = tail.length;
    let torn = 0;
    if (end > 0 && tail[end - 1] !== 0x0a) {
      const lastNl = tail.lastIndexOf(0x0a);
      if (lastNl < 0) throw corrupt(path, 'the last line is longer than the tail window');
      torn = end - (lastNl + 1);
      end = lastNl + 1;
      await fh.truncate(start + end);
      await fh.sync();
    }
    const lines = tail.subarray(0, end).toString('utf8').split('\n').slice(0, -1);
    if (start > 0) lines.shift(); // the first piece may be a partial line
    const lastText = lines[lines.length - 1];
    if (lastText === undefined) throw corrupt(path, 'no complete line in the tail');
    const last = parseLine(lastText);
    if (!('line' in last)) throw corrupt(path, `the last line is malformed (${last.problem})`);
    let sinceCheckpoint = 0;
    let lastCheckpointAt: number | undefined;
    for (let i = lines.length - 1; i >= 0; i--) {
      const p = parseLine(lines[i] as string);
      if ('line' in p && (p.line.type === 'checkpoint' || p.line.type === 'header')) {
        lastCheckpointAt = Date.parse(p.line.time);
        break;
      }
      sinceCheckpoint++;
    }
    const log = AuditLog._create({
      path, fh, signer: opts.signer, clock, policy, logId, seq: last.line.seq, prev: hashLine(lastText),
      sinceCheckpoint, lastCheckpointAt: lastCheckpointAt ?? Number.NEGATIVE_INFINITY,
    });
    if (torn > 0) {
      await log.append({ actor: opts.actor ?? 'audit', operation: 'recover', keyId: NO_KEY, result: 'error', code: 'torn-tail', detail: `cut ${torn} bytes of an incomplete last line when opening` });
    }
    return log;
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw e;
  }
}
