/**
 * Block-wise transfer of request bodies (RFC 7959 Block1, with RFC 9175's Request-Tag): a body
 * larger than one datagram travels as numbered blocks of 2^(SZX+4) bytes, each its own confirmable
 * request; the server answers 2.31 Continue to each block but the last, and its final answer to the
 * whole body after the last one.
 *
 * `Block1Assembler` is the server's side, sans-I/O and bounded: bodies in progress per peer, bytes
 * per body, and how long a body may wait for its next block.
 *
 * @example
 *   const blocks = splitBlocks(body, 6);                  // 1024-byte blocks
 *   blockOption(CoapOption.BLOCK1, { num: 0, more: true, szx: 6 });
 *   const asm = new Block1Assembler({ maxBodyBytes: 65536, maxBodies: 4, idleMs: 60_000 });
 *   asm.add('tag', readBlock(request, CoapOption.BLOCK1), request.payload, size1, now);
 */
import { DecodeError } from '../util/errors.ts';
import { readUintOption, uintOption, type CoapMessage, type CoapOptionValue } from './message.ts';

/** Option numbers (RFC 7959 §2.1, §4; RFC 9175 §3.2). */
export const BlockOption = Object.freeze({
  BLOCK2: 23,
  BLOCK1: 27,
  SIZE2: 28,
  SIZE1: 60,
  REQUEST_TAG: 292,
});

export interface BlockValue {
  /** Block number (RFC 7959 §2.2: up to 2^20 - 1). */
  readonly num: number;
  /** More blocks follow. */
  readonly more: boolean;
  /** Size exponent: blocks are 2^(szx+4) bytes, 16 to 1024 (7 is reserved). */
  readonly szx: number;
}

export const MAX_BLOCK_NUM = 0xfffff;

export function blockSize(szx: number): number {
  return 1 << (szx + 4);
}

/** RFC 7959 §2.2: NUM << 4 | M << 3 | SZX, as a uint option. */
export function blockOption(number: number, b: BlockValue): CoapOptionValue {
  if (!Number.isInteger(b.num) || b.num < 0 || b.num > MAX_BLOCK_NUM) throw new RangeError('block number must be 0..2^20-1');
  if (!Number.isInteger(b.szx) || b.szx < 0 || b.szx > 6) throw new RangeError('SZX must be 0..6');
  return uintOption(number, b.num * 16 + (b.more ? 8 : 0) + b.szx);
}

/** The Block1/Block2 option of a message, or undefined; a value of more than 3 bytes or SZX 7 is a DecodeError. */
export function readBlock(m: CoapMessage, number: number): BlockValue | undefined {
  const all = m.options.filter((o) => o.number === number);
  if (all.length === 0) return undefined;
  if (all.length > 1) throw new DecodeError('coap-block', `block option ${number} repeated`);
  if ((all[0] as CoapOptionValue).value.length > 3) throw new DecodeError('coap-block', 'block option longer than 3 bytes');
  const v = readUintOption(m, number) as number;
  const szx = v & 7;
  // RFC 7959 §2.2: SZX 7 is reserved; a message carrying it is a bad request.
  if (szx === 7) throw new DecodeError('coap-block', 'block size exponent 7 is reserved');
  return { num: Math.floor(v / 16), more: (v & 8) !== 0, szx };
}

/** Splits a body into blocks of 2^(szx+4) bytes (views, not copies). */
export function splitBlocks(body: Uint8Array, szx: number): Uint8Array[] {
  const size = blockSize(szx);
  const out: Uint8Array[] = [];
  for (let off = 0; off < body.length; off += size) out.push(body.subarray(off, Math.min(body.length, off + size)));
  if (out.length - 1 > MAX_BLOCK_NUM) throw new RangeError('body needs more than 2^20 blocks');
  return out;
}

export interface Block1Limits {
  /** Largest body accepted (RFC 7959 §2.9.3: 4.13 beyond it). */
  readonly maxBodyBytes: number;
  /** Bodies in progress at once for this peer. */
  readonly maxBodies: number;
  /** A body whose next block does not come within this is dropped. */
  readonly idleMs: number;
}

export type Block1Result =
  /** More blocks expected: answer 2.31 Continue echoing the block (§2.3). */
  | { readonly kind: 'continue'; readonly block: BlockValue }
  /** The body is complete: hand it on; the final answer echoes `block`. */
  | { readonly kind: 'complete'; readonly body: Uint8Array; readonly block: BlockValue }
  /** 4.08 Request Entity Incomplete (§2.9.2): a block out of order, or of a body we do not hold. */
  | { readonly kind: 'incomplete'; readonly detail: string }
  /** 4.13 Request Entity Too Large (§2.9.3), with Size1 = the limit. */
  | { readonly kind: 'too-large'; readonly limit: number }
  /** 5.03: this peer already has as many bodies in progress as it may. */
  | { readonly kind: 'busy' };

interface Body {
  readonly parts: Uint8Array[];
  bytes: number;
  next: number;
  readonly szx: number;
  deadline: number;
}

/**
 * Reassembles Block1 bodies for one peer. Blocks must come in order (the uplink sends them one at a
 * time, each after the previous one's 2.31); a retransmitted block is answered by the message layer's
 * duplicate detection before it gets here.
 */
export class Block1Assembler {
  readonly #limits: Block1Limits;
  readonly #bodies = new Map<string, Body>();

  constructor(limits: Block1Limits) {
    this.#limits = limits;
  }

  /** Bodies in progress. */
  get size(): number {
    return this.#bodies.size;
  }

  /** Bytes held for bodies in progress. */
  get bytes(): number {
    let n = 0;
    for (const b of this.#bodies.values()) n += b.bytes;
    return n;
  }

  /**
   * One block of the body named `tag` (the Request-Tag, RFC 9175 §3). `size1` is the Size1 option
   * (§4: the client's announced total), if any.
   */
  add(tag: string, block: BlockValue, payload: Uint8Array, size1: number | undefined, now: number): Block1Result {
    this.expire(now);
    const max = this.#limits.maxBodyBytes;
    if (size1 !== undefined && size1 > max) {
      this.#bodies.delete(tag);
      return { kind: 'too-large', limit: max };
    }
    const size = blockSize(block.szx);
    // §2.2: every block but the last carries exactly the block size; the last at most that.
    if (block.more ? payload.length !== size : payload.length === 0 || payload.length > size) {
      this.#bodies.delete(tag);
      return { kind: 'incomplete', detail: `block ${block.num} carries ${payload.length} bytes for a block size of ${size}` };
    }
    let body = this.#bodies.get(tag);
    if (block.num === 0) {
      // A new body with this tag replaces one left unfinished (the client started over).
      if (body === undefined && this.#bodies.size >= this.#limits.maxBodies) return { kind: 'busy' };
      body = { parts: [], bytes: 0, next: 0, szx: block.szx, deadline: 0 };
      this.#bodies.set(tag, body);
    } else if (body === undefined || block.num !== body.next || block.szx !== body.szx) {
      this.#bodies.delete(tag);
      return { kind: 'incomplete', detail: body === undefined ? `block ${block.num} of a body not in progress` : `block ${block.num} where ${body.next} was expected` };
    }
    if (body.bytes + payload.length > max) {
      this.#bodies.delete(tag);
      return { kind: 'too-large', limit: max };
    }
    body.parts.push(Uint8Array.from(payload));
    body.bytes += payload.length;
    body.next = block.num + 1;
    body.deadline = now + this.#limits.idleMs;
    if (block.more) return { kind: 'continue', block: { num: block.num, more: true, szx: block.szx } };
    this.#bodies.delete(tag);
    const out = new Uint8Array(body.bytes);
    let off = 0;
    for (const p of body.parts) {
      out.set(p, off);
      off += p.length;
    }
    return { kind: 'complete', body: out, block: { num: block.num, more: false, szx: block.szx } };
  }

  /** Drops bodies whose next block is overdue. */
  expire(now: number): void {
    for (const [tag, b] of this.#bodies) if (b.deadline <= now) this.#bodies.delete(tag);
  }

  clear(): void {
    this.#bodies.clear();
  }
}
