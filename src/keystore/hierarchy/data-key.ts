/**
 * An unwrapped data key in host memory, with its key id and version. The holder calls `destroy()`
 * when done (or uses `KeyHierarchy.use`, which does); the bytes are then zeroised and any later
 * access throws, so a stale key cannot be used by mistake.
 *
 * @example
 *   const key = await hierarchy.acquire('queue-meta');
 *   try { seal(key.bytes, ...); } finally { key.destroy(); }
 */
import { aeadSealContext, type AeadSealContext } from '../../crypto/keyed.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import type { AeadId } from '../../crypto/suites.ts';
import { ApiMisuse } from '../../util/errors.ts';

export class DataKey {
  readonly keyId: string;
  readonly version: number;
  #bytes: Uint8Array | undefined;
  #sealers: Map<string, AeadSealContext> | undefined;

  /** Takes ownership of `bytes`. */
  constructor(keyId: string, version: number, bytes: Uint8Array) {
    this.keyId = keyId;
    this.version = version;
    this.#bytes = bytes;
  }

  /** The key bytes (not a copy); throws `ApiMisuse('key-destroyed')` after `destroy()`. */
  get bytes(): Uint8Array {
    if (this.#bytes === undefined) throw new ApiMisuse('key-destroyed', `data key ${this.keyId} v${this.version} was destroyed`);
    return this.#bytes;
  }

  get destroyed(): boolean {
    return this.#bytes === undefined;
  }

  /**
   * A keyed sealing context under this key (src/crypto/keyed.ts), made on first use and freed by
   * `destroy()`: a holder that seals many messages under one key (the ingest's cached per-device
   * keys) sets the cipher up once. The caller supplies every nonce and owns its uniqueness.
   */
  sealer(provider: CryptoProvider, id: AeadId): AeadSealContext {
    const bytes = this.bytes;
    const name = `${provider.name}/${id}`;
    let ctx = this.#sealers?.get(name);
    if (ctx === undefined) {
      ctx = aeadSealContext(provider, id, bytes);
      (this.#sealers ??= new Map()).set(name, ctx);
    }
    return ctx;
  }

  /** Zeroises the bytes and frees the keyed contexts; idempotent. */
  destroy(): void {
    this.#bytes?.fill(0);
    this.#bytes = undefined;
    for (const ctx of this.#sealers?.values() ?? []) ctx.destroy();
    this.#sealers = undefined;
  }

  /** Never prints the bytes (console.log, util.inspect, JSON). */
  toJSON(): { keyId: string; version: number } {
    return { keyId: this.keyId, version: this.version };
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `DataKey(${this.keyId} v${this.version}${this.destroyed ? ', destroyed' : ''})`;
  }
}
