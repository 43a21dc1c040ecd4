/**
 * The ingest service's static X25519 key, which opens every COSE message (ECDH-ES + HKDF-256,
 * RFC 9053 §6.3.1).
 *
 * Neither a TPM nor a PKCS#11 token does X25519, so the private key cannot live inside one. It is
 * kept the way data keys are: 32 random bytes generated in host memory, wrapped by the key store's
 * KEK, stored as a record of the key hierarchy (key id `ingest-static`) in the ingest database, and
 * unwrapped into memory once at start-up. Every instance sharing the database (and the KEK) opens the
 * same key; a backup carries it wrapped; a KEK rotation re-wraps it with the rest.
 *
 * Rotation (DESIGN.md: yearly, overlapping): `rotateStaticKey` makes version n+1, whose public key
 * devices are given next; older versions keep opening epochs sealed to them until
 * `retireStaticKeys` destroys them. A message's recipient `kid`, when present, picks the version
 * (`staticKeyKid`); without one each held version is tried, newest first.
 *
 * @example
 *   const { version, publicKey } = await rotateStaticKey(hierarchy);   // `vitalseal ingest keygen`
 *   const keys = await loadStaticKeys(hierarchy, provider);             // at start-up
 *   openCose(bytes, { recipient: keys.candidates(kid)[0], cache });
 */
import { createHash } from 'node:crypto';
import type { CryptoProvider } from '../crypto/provider.ts';
import { x25519Recipient, type X25519Recipient } from '../cose/keys.ts';
import type { KeyHierarchy } from '../keystore/hierarchy/envelope.ts';
import { equalBytes } from '../util/bytes.ts';
import { KeyStoreError } from '../util/errors.ts';

export const STATIC_KEY_ID = 'ingest-static';

/** The recipient kid devices put in their COSE recipient header: the first 8 bytes of SHA-256(public key). */
export function staticKeyKid(publicKey: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(publicKey).digest().subarray(0, 8));
}

export interface StaticKeyInfo {
  readonly version: number;
  readonly publicKey: Uint8Array;
  readonly kid: Uint8Array;
}

/** Makes the first static key, or the next version of it. */
export async function rotateStaticKey(h: KeyHierarchy, provider: CryptoProvider): Promise<StaticKeyInfo> {
  let version: number;
  try {
    await h.currentVersion(STATIC_KEY_ID);
    version = await h.rotate(STATIC_KEY_ID);
  } catch (e) {
    if (!(e instanceof KeyStoreError && e.code === 'not-found')) throw e;
    version = await h.createKey(STATIC_KEY_ID);
  }
  const publicKey = await h.use(STATIC_KEY_ID, version, (k) => provider.x25519PublicKey(k.bytes));
  return { version, publicKey, kid: staticKeyKid(publicKey) };
}

/** Destroys every version but the current one (after devices have moved to it). */
export async function retireStaticKeys(h: KeyHierarchy): Promise<readonly number[]> {
  const report = await h.rekey(STATIC_KEY_ID, { stale: async () => [], rewrite: async () => undefined });
  return report.destroyedVersions;
}

interface Held extends StaticKeyInfo {
  readonly recipient: X25519Recipient;
}

/** The static key versions in memory, ready to open messages. */
export class StaticKeys {
  readonly #held: readonly Held[];

  constructor(held: readonly Held[]) {
    if (held.length === 0) throw new KeyStoreError('not-found', 'no ingest static key: run `vitalseal ingest keygen` first');
    this.#held = [...held].sort((a, b) => b.version - a.version);
  }

  /** The version devices should seal to. */
  get current(): StaticKeyInfo {
    const h = this.#held[0] as Held;
    return { version: h.version, publicKey: h.publicKey, kid: h.kid };
  }

  get versions(): readonly StaticKeyInfo[] {
    return this.#held.map((h) => ({ version: h.version, publicKey: h.publicKey, kid: h.kid }));
  }

  /** The versions to try: the one `kid` names, or every version newest first. */
  candidates(kid: Uint8Array | undefined): readonly { readonly version: number; readonly recipient: X25519Recipient }[] {
    if (kid !== undefined) {
      const match = this.#held.find((h) => equalBytes(h.kid, kid));
      if (match !== undefined) return [match];
    }
    return this.#held;
  }

  destroy(): void {
    for (const h of this.#held) h.recipient.destroy();
  }
}

/** Unwraps every held version into memory (the DataKeys are zeroised; the recipients keep their own copy). */
export async function loadStaticKeys(h: KeyHierarchy, provider: CryptoProvider): Promise<StaticKeys> {
  let versions: number[];
  try {
    versions = await h.versions(STATIC_KEY_ID);
  } catch (e) {
    if (e instanceof KeyStoreError && e.code === 'not-found') versions = [];
    else throw e;
  }
  const held: Held[] = [];
  try {
    for (const v of versions) {
      const recipient = await h.use(STATIC_KEY_ID, v, (k) => x25519Recipient(provider, k.bytes));
      held.push({ version: v, publicKey: recipient.publicKey, kid: staticKeyKid(recipient.publicKey), recipient });
    }
    return new StaticKeys(held);
  } catch (e) {
    for (const x of held) x.recipient.destroy();
    throw e;
  }
}
