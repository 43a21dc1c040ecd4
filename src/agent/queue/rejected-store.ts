/**
 * Where messages the receiver refused for good (UplinkRejected) are moved: out of the delivery
 * queue so they cannot block it, but never silently lost. Each is kept as it was queued, still
 * sealed (COSE; no plaintext), as `<seq>.cose` with `<seq>.json` naming the reason, for an operator
 * to inspect or resend. At most `maxFiles` are kept; beyond that the oldest are deleted, counted
 * and logged by the caller.
 *
 * @example
 *   const r = await RejectedStore.open({ dir: '/var/lib/vitalseal/queue/rejected' });
 *   await r.put(42, sealedBytes, 'too-large');
 */
import { mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

export interface RejectedStoreOptions {
  readonly dir: string;
  readonly maxFiles?: number;
}

const NAME_RE = /^(\d{16})\.cose$/;

export class RejectedStore {
  readonly #dir: string;
  readonly #max: number;
  readonly #seqs: number[];
  #discarded = 0;

  private constructor(dir: string, max: number, seqs: number[]) {
    this.#dir = dir;
    this.#max = max;
    this.#seqs = seqs;
  }

  static async open(o: RejectedStoreOptions): Promise<RejectedStore> {
    await mkdir(o.dir, { recursive: true, mode: 0o700 });
    const seqs = (await readdir(o.dir)).map((n) => NAME_RE.exec(n)?.[1]).filter((x): x is string => x !== undefined).map(Number).sort((a, b) => a - b);
    return new RejectedStore(o.dir, o.maxFiles ?? 1000, seqs);
  }

  /** Messages held now. */
  get count(): number {
    return this.#seqs.length;
  }

  /** Oldest messages deleted to stay within `maxFiles` since open. */
  get discarded(): number {
    return this.#discarded;
  }

  /** Stores `payload` durably (write, fsync, rename); returns how many old ones were discarded. */
  async put(seq: number, payload: Uint8Array, reason: string): Promise<number> {
    const base = String(seq).padStart(16, '0');
    await writeDurably(join(this.#dir, `${base}.json`), JSON.stringify({ seq, reason, at: new Date().toISOString() }));
    await writeDurably(join(this.#dir, `${base}.cose`), payload);
    if (!this.#seqs.includes(seq)) this.#seqs.push(seq);
    this.#seqs.sort((a, b) => a - b);
    let dropped = 0;
    while (this.#seqs.length > this.#max) {
      const old = String(this.#seqs.shift()).padStart(16, '0');
      await rm(join(this.#dir, `${old}.cose`), { force: true });
      await rm(join(this.#dir, `${old}.json`), { force: true });
      dropped++;
    }
    this.#discarded += dropped;
    return dropped;
  }
}

async function writeDurably(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}
