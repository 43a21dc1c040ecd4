/**
 * The stateless HelloRetryRequest cookie (RFC 9147 §5.1, RFC 8446 §4.2.2). The server keeps no
 * state for a ClientHello without a valid cookie: everything it needs to continue, the hash of
 * ClientHello1 (for the transcript's message_hash) and the parameters the HelloRetryRequest named
 * (so it can be rebuilt byte for byte), rides in the cookie under an HMAC that also binds the
 * client's address. Keys rotate; a cookie made with the previous key is still accepted
 * (RFC 9147 §5.1 RECOMMENDS overlapping keys), and cookies expire.
 *
 * @example
 *   const cookies = new CookieKeys(provider, now);
 *   const cookie = cookies.make({ clientHello1Hash, suite, hrrGroup }, '192.0.2.1:5684', now);
 *   const fields = cookies.open(cookie, '192.0.2.1:5684', now); // undefined when invalid
 */
import type { CryptoProvider } from '../../crypto/provider.ts';
import { concatBytes, equalBytes, utf8, zeroize } from '../../util/bytes.ts';
import { Reader, Writer } from '../messages/codec.ts';

export interface CookieFields {
  readonly clientHello1Hash: Uint8Array;
  readonly suite: number;
  /** The group a key_share in the HelloRetryRequest asked for, 0 when it had none. */
  readonly hrrGroup: number;
}

const VERSION = 1;
const MAC_LENGTH = 16;
export const COOKIE_LENGTH = 1 + 1 + 6 + 2 + 2 + 32 + MAC_LENGTH;

interface Key {
  readonly id: number;
  readonly secret: Uint8Array;
  readonly created: number;
}

export class CookieKeys {
  #current: Key;
  #previous: Key | undefined;

  constructor(
    private readonly provider: CryptoProvider,
    now: number,
    /** How long a key mints cookies (default 5 minutes). */
    private readonly rotateMs = 300_000,
    /** How long a cookie is accepted after it was made (default 60 s). */
    private readonly maxAgeMs = 60_000,
  ) {
    this.#current = { id: 0, secret: provider.randomBytes(32), created: now };
  }

  #rotateIfDue(now: number): void {
    if (now - this.#current.created < this.rotateMs) return;
    if (this.#previous !== undefined) zeroize(this.#previous.secret);
    this.#previous = this.#current;
    this.#current = { id: (this.#current.id + 1) & 0xff, secret: this.provider.randomBytes(32), created: now };
  }

  #mac(key: Key, body: Uint8Array, address: string): Uint8Array {
    return this.provider.hmacSha256(key.secret, concatBytes(body, utf8(address))).subarray(0, MAC_LENGTH);
  }

  make(fields: CookieFields, address: string, now: number): Uint8Array {
    this.#rotateIfDue(now);
    const w = new Writer(COOKIE_LENGTH);
    w.u8(VERSION).u8(this.#current.id).u48(Math.max(0, Math.floor(now))).u16(fields.suite).u16(fields.hrrGroup).bytes(fields.clientHello1Hash);
    const body = w.finish();
    return concatBytes(body, this.#mac(this.#current, body, address));
  }

  /** The fields of a valid, unexpired cookie made for `address`, else undefined. */
  open(cookie: Uint8Array, address: string, now: number): CookieFields | undefined {
    if (cookie.length !== COOKIE_LENGTH || cookie[0] !== VERSION) return undefined;
    this.#rotateIfDue(now);
    const id = cookie[1];
    const key = id === this.#current.id ? this.#current : id === this.#previous?.id ? this.#previous : undefined;
    if (key === undefined) return undefined;
    const body = cookie.subarray(0, COOKIE_LENGTH - MAC_LENGTH);
    if (!equalBytes(this.#mac(key, body, address), cookie.subarray(COOKIE_LENGTH - MAC_LENGTH))) return undefined;
    const r = new Reader(body, 2);
    const issued = r.u48();
    if (now < issued - 1000 || now - issued > this.maxAgeMs) return undefined;
    return { suite: r.u16(), hrrGroup: r.u16(), clientHello1Hash: Uint8Array.from(r.bytes(32)) };
  }
}
