/**
 * Minimal bounded byte reader/writer for the software store's file and blob formats. Every read
 * checks the bytes that remain first; a short input throws `Truncated`, which the format modules turn
 * into their own typed error.
 */
export class Truncated extends Error {
  override name = 'Truncated';
}

export class ByteReader {
  #pos = 0;
  constructor(readonly bytes: Uint8Array) {}

  get offset(): number {
    return this.#pos;
  }

  get remaining(): number {
    return this.bytes.length - this.#pos;
  }

  #need(n: number, what: string): void {
    if (n > this.remaining) throw new Truncated(`${what} needs ${n} bytes, ${this.remaining} remain`);
  }

  u8(what: string): number {
    this.#need(1, what);
    return this.bytes[this.#pos++] as number;
  }

  u16(what: string): number {
    this.#need(2, what);
    const v = ((this.bytes[this.#pos] as number) << 8) | (this.bytes[this.#pos + 1] as number);
    this.#pos += 2;
    return v;
  }

  u32(what: string): number {
    this.#need(4, what);
    const b = this.bytes;
    const p = this.#pos;
    const v = ((b[p] as number) * 0x1000000) + (((b[p + 1] as number) << 16) | ((b[p + 2] as number) << 8) | (b[p + 3] as number));
    this.#pos += 4;
    return v;
  }

  /** A view (not a copy) of the next `n` bytes. */
  take(n: number, what: string): Uint8Array {
    this.#need(n, what);
    const out = this.bytes.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return out;
  }
}

export class ByteWriter {
  #chunks: Uint8Array[] = [];
  #length = 0;

  get length(): number {
    return this.#length;
  }

  u8(v: number): this {
    return this.bytes(Uint8Array.of(v & 0xff));
  }

  u16(v: number): this {
    return this.bytes(Uint8Array.of((v >>> 8) & 0xff, v & 0xff));
  }

  u32(v: number): this {
    return this.bytes(Uint8Array.of((v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff));
  }

  bytes(b: Uint8Array): this {
    this.#chunks.push(b);
    this.#length += b.length;
    return this;
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.#length);
    let off = 0;
    for (const c of this.#chunks) {
      out.set(c, off);
      off += c.length;
    }
    this.#chunks = [];
    return out;
  }
}
