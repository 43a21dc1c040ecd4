/**
 * MLLP framing (HL7 v2 Minimal Lower Layer Protocol, HL7 v2.5.1 Appendix C.4.3): every message is
 * sent as
 *
 *   <VT 0x0B> message bytes <FS 0x1C><CR 0x0D>
 *
 * `MllpDecoder` is sans-I/O: `push(chunk)` returns the whole frames completed by that chunk. It is
 * strict and bounded: a frame larger than `maxFrameBytes`, bytes outside a frame, a start block
 * inside a frame or an FS not followed by CR is a `DecodeError`, after which the decoder refuses
 * further input (the stream cannot be resynchronised with confidence; the connection is closed).
 * CR and LF between frames are tolerated: several monitors end each frame with a stray newline.
 *
 * @example
 *   const d = new MllpDecoder({ maxFrameBytes: 64 * 1024 });
 *   socket.on('data', (chunk) => { for (const msg of d.push(chunk)) handle(msg); });
 *   socket.write(encodeMllp(ackBytes));
 */
import { DecodeError } from '../../../util/errors.ts';

export const MLLP_START = 0x0b;
export const MLLP_END = 0x1c;
export const MLLP_CR = 0x0d;
const LF = 0x0a;

export interface MllpLimits {
  /** Largest message (between the start and end blocks) accepted. */
  readonly maxFrameBytes: number;
}

type State =
  | { readonly kind: 'between' }
  | { readonly kind: 'in-frame'; readonly chunks: Uint8Array[]; readonly bytes: number }
  | { readonly kind: 'after-end'; readonly chunks: Uint8Array[]; readonly bytes: number }
  | { readonly kind: 'failed'; readonly error: DecodeError };

export class MllpDecoder {
  readonly #max: number;
  #state: State = { kind: 'between' };

  constructor(limits: MllpLimits) {
    if (!Number.isSafeInteger(limits.maxFrameBytes) || limits.maxFrameBytes < 1) throw new RangeError('maxFrameBytes must be a positive integer');
    this.#max = limits.maxFrameBytes;
  }

  /** True while part of a frame has arrived and its end has not. */
  get inFrame(): boolean {
    return this.#state.kind === 'in-frame' || this.#state.kind === 'after-end';
  }

  /** Bytes of the frame in progress (0 between frames). */
  get pendingBytes(): number {
    const s = this.#state;
    return s.kind === 'in-frame' || s.kind === 'after-end' ? s.bytes : 0;
  }

  /** Whole frames completed by `chunk`, in order. Throws DecodeError on a framing violation. */
  push(chunk: Uint8Array): Uint8Array[] {
    const frames: Uint8Array[] = [];
    let i = 0;
    while (i < chunk.length) {
      const s = this.#state;
      switch (s.kind) {
        case 'failed':
          throw s.error;
        case 'between': {
          const b = chunk[i] as number;
          if (b === MLLP_START) this.#state = { kind: 'in-frame', chunks: [], bytes: 0 };
          else if (b !== MLLP_CR && b !== LF) this.#fail('mllp-no-start-block', `byte 0x${hex(b)} outside a frame (expected the 0x0b start block)`);
          i++;
          break;
        }
        case 'in-frame': {
          // Copy the run of message bytes up to the next control byte in one step.
          let j = i;
          while (j < chunk.length && chunk[j] !== MLLP_END && chunk[j] !== MLLP_START) j++;
          const bytes = s.bytes + (j - i);
          if (bytes > this.#max) this.#fail('mllp-frame-too-large', `frame exceeds ${this.#max} bytes`);
          const chunks = j > i ? [...s.chunks, chunk.slice(i, j)] : s.chunks;
          if (j === chunk.length) {
            this.#state = { kind: 'in-frame', chunks, bytes };
          } else if (chunk[j] === MLLP_START) {
            this.#fail('mllp-nested-start', 'start block inside a frame');
          } else {
            this.#state = { kind: 'after-end', chunks, bytes };
            j++;
          }
          i = j;
          break;
        }
        case 'after-end': {
          if (chunk[i] !== MLLP_CR) this.#fail('mllp-bad-end-block', `0x1c not followed by 0x0d (got 0x${hex(chunk[i] as number)})`);
          frames.push(concat(s.chunks, s.bytes));
          this.#state = { kind: 'between' };
          i++;
          break;
        }
        default: {
          const never: never = s;
          throw new Error(`unreachable ${String(never)}`);
        }
      }
    }
    if (this.#state.kind === 'failed') throw this.#state.error;
    return frames;
  }

  #fail(code: string, message: string): never {
    const error = new DecodeError(code, `MLLP: ${message}`);
    this.#state = { kind: 'failed', error };
    throw error;
  }
}

function hex(b: number): string {
  return b.toString(16).padStart(2, '0');
}

function concat(chunks: Uint8Array[], bytes: number): Uint8Array {
  if (chunks.length === 1) return chunks[0] as Uint8Array;
  const out = new Uint8Array(bytes);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/** Wraps one message in the MLLP start and end blocks. */
export function encodeMllp(message: Uint8Array): Uint8Array {
  const out = new Uint8Array(message.length + 3);
  out[0] = MLLP_START;
  out.set(message, 1);
  out[message.length + 1] = MLLP_END;
  out[message.length + 2] = MLLP_CR;
  return out;
}
