/**
 * PSK devices on the ingest: the external pre-shared keys (RFC 8446 §4.2.11) that constrained
 * devices authenticate with in the CoAPS listener's DTLS 1.3 handshake (psk_dhe_ke).
 *
 * Key hierarchy (DESIGN.md "Keys"; docs/transport-coaps.md "PSK store"): a PSK is 32 random bytes
 * generated in host memory at registration, wrapped by the ingest KEK (`KeyStore.wrapKey`, so
 * inside the TPM / PKCS#11 token when the key store is one), and stored as a record of the key
 * hierarchy, key id `psk.<device id>`, in the ingest database's `wrapped_keys` table, written in
 * the same transaction as the device's registration. So backups carry it wrapped, a KEK rotation
 * re-wraps it with the data keys, and the clear key exists only in this process's memory and once
 * in the hands of the operator who registered the device.
 *
 * The DTLS server asks synchronously (`pskLookup`), so `PskStore` unwraps every PSK device's key at
 * start (one key-store unwrap each) and keeps them in memory; it follows the registry
 * (`onDevicesChanged`: a device registered here or, after `refresh`, by another instance or the
 * command line). `lookup` answers only for a device that is registered for PSK and active right now
 * in the registry's cache: a revoked or suspended device is refused at handshake time
 * (unknown_psk_identity), and a revoked device's key is zeroised.
 *
 * @example
 *   const { identity, key } = await registerPskDevice(core, 'pulse-ox-17', { actor: 'cli:alice' });
 *   writeKeyFileOnce(key);  key.fill(0);                    // the operator's one copy
 *   const psks = await PskStore.open({ registry: core.registry, hierarchy: core.hierarchy });
 *   createCoapsServer({ dtls: { pskLookup: (id) => psks.lookup(id), ... }, ... });
 */
import { createHash } from 'node:crypto';
import type { CryptoProvider } from '../crypto/provider.ts';
import type { KeyHierarchy } from '../keystore/hierarchy/envelope.ts';
import type { KeyStore } from '../keystore/types.ts';
import { KEY_NAME_PATTERN } from '../keystore/types.ts';
import { zeroize } from '../util/bytes.ts';
import type { Clock } from '../util/clock.ts';
import { isDeviceId } from '../util/device-id.ts';
import { ApiMisuse, KeyStoreError } from '../util/errors.ts';
import { deviceLabel, type AuditTrail } from './audit-trail.ts';
import type { DeviceRegistry } from './registry.ts';
import type { IngestLogger } from './service.ts';
import type { DeviceRecord } from './storage/types.ts';

/** Every suite here hashes with SHA-256: external PSKs are 32 bytes (src/dtls/config.ts). */
export const PSK_BYTES = 32;

/** The key hierarchy's key id for a device's PSK: `psk.<device id>`, or `psk_<hash>` when that is too long for a key name. */
export function pskKeyId(deviceId: string): string {
  const direct = `psk.${deviceId}`;
  if (KEY_NAME_PATTERN.test(direct)) return direct;
  // '_' never follows 'psk' in the direct form, so the two forms cannot collide.
  return `psk_${createHash('sha256').update(deviceId).digest('hex').slice(0, 40)}`;
}

/** What the registry records as a PSK device's credential: SHA-256 (hex) of its identity (the device id, UTF-8). */
export function pskCredentialSha256(identity: string): string {
  return createHash('sha256').update(identity).digest('hex');
}

export interface PskRegistration {
  readonly deviceId: string;
  /** The PSK identity the device sends (its device id). */
  readonly identity: string;
  /** The 32-byte key: shown to the operator once; the caller zeroises it when it has been handed over. */
  readonly key: Uint8Array;
}

export interface PskRegistrationDeps {
  readonly registry: DeviceRegistry;
  readonly keyStore: KeyStore;
  readonly kekName: string;
  readonly clock: Clock;
  readonly provider: CryptoProvider;
  readonly audit?: AuditTrail;
}

/**
 * Registers a new PSK device, active: generates its key, wraps it under the KEK, and writes the
 * registration and the wrapped key in one transaction. The clear key is returned to the caller and
 * nowhere else (never logged or audited). An id already registered is `ApiMisuse('exists')`.
 */
export async function registerPskDevice(deps: PskRegistrationDeps, deviceId: string, opts: { readonly actor: string }): Promise<PskRegistration> {
  if (!isDeviceId(deviceId)) throw new RangeError('registerPskDevice: not a device id');
  const existing = await deps.registry.lookup(deviceId);
  if (existing !== undefined) throw new ApiMisuse('exists', `device ${deviceId} is already registered (${existing.credential}, ${existing.status})`);
  const key = deps.provider.randomBytes(PSK_BYTES);
  try {
    const wrapped = await deps.keyStore.wrapKey(deps.kekName, key);
    const now = deps.clock.now();
    await deps.registry.registerWithKey(
      { deviceId, credential: 'psk', credentialSha256: pskCredentialSha256(deviceId), status: 'active', enrolledAt: now },
      { keyId: pskKeyId(deviceId), version: 1, kekName: deps.kekName, wrapped, createdAt: now },
    );
    await deps.audit?.append({ actor: opts.actor, operation: 'enrol', result: 'ok', detail: `PSK device ${deviceLabel(deviceId)} registered; key wrapped under ${deps.kekName}` });
    return { deviceId, identity: deviceId, key };
  } catch (e) {
    zeroize(key);
    await deps.audit?.append({ actor: opts.actor, operation: 'enrol', result: 'error', code: e instanceof ApiMisuse || e instanceof KeyStoreError ? e.code : 'internal', detail: `PSK device ${deviceLabel(deviceId)} not registered` }).catch(() => undefined);
    throw e;
  }
}

export interface PskStoreOptions {
  readonly registry: DeviceRegistry;
  /** The hierarchy over the ingest database's key records (IngestCore.hierarchy). */
  readonly hierarchy: KeyHierarchy;
  readonly log?: IngestLogger;
}

/** The PSKs of the registry's PSK devices, in memory, for the DTLS server's synchronous lookup. */
export class PskStore {
  readonly #registry: DeviceRegistry;
  readonly #hierarchy: KeyHierarchy;
  readonly #log: IngestLogger | undefined;
  readonly #keys = new Map<string, Uint8Array>();
  #unsubscribe: (() => void) | undefined;
  #syncing: Promise<void> = Promise.resolve();
  #destroyed = false;

  private constructor(o: PskStoreOptions) {
    this.#registry = o.registry;
    this.#hierarchy = o.hierarchy;
    this.#log = o.log;
  }

  /** Loads every PSK device's key and follows the registry from then on. */
  static async open(o: PskStoreOptions): Promise<PskStore> {
    const store = new PskStore(o);
    await store.sync();
    store.#unsubscribe = o.registry.onDevicesChanged((ids) => void store.sync(ids));
    return store;
  }

  /** Keys held in memory. */
  get size(): number {
    return this.#keys.size;
  }

  /**
   * For `ServerConfig.pskLookup`: the key of an active PSK device whose identity this is, or
   * undefined (unknown, not a PSK device, suspended, revoked, or its key not loaded yet). The
   * returned bytes are the store's own: the DTLS layer reads them and keeps no copy.
   */
  lookup(identity: Uint8Array): Uint8Array | undefined {
    if (this.#destroyed || identity.length === 0 || identity.length > 64) return undefined;
    let id: string;
    try {
      id = new TextDecoder('utf-8', { fatal: true }).decode(identity);
    } catch {
      return undefined;
    }
    const d = this.#registry.get(id);
    if (d === undefined || !usable(d)) return undefined;
    return this.#keys.get(id);
  }

  /**
   * Brings memory in line with the registry: loads the keys of PSK devices not held yet (all of them
   * when `ids` is not given), zeroises those of revoked devices or devices no longer on PSK. Runs one
   * at a time; a key that cannot be unwrapped is logged (never the key) and retried next time.
   */
  sync(ids?: readonly string[]): Promise<void> {
    const next = this.#syncing.then(() => this.#sync(ids));
    this.#syncing = next.catch(() => undefined);
    return next;
  }

  async #sync(ids: readonly string[] | undefined): Promise<void> {
    if (this.#destroyed) return;
    const devices = ids === undefined ? this.#registry.list() : ids.map((id) => this.#registry.get(id)).filter((d): d is DeviceRecord => d !== undefined);
    for (const d of devices) {
      const held = this.#keys.get(d.deviceId);
      const wanted = d.credential === 'psk' && d.status !== 'revoked' && d.credentialSha256 === pskCredentialSha256(d.deviceId);
      if (!wanted) {
        if (held !== undefined) {
          zeroize(held);
          this.#keys.delete(d.deviceId);
        }
        continue;
      }
      if (held !== undefined) continue;
      try {
        const key = await this.#hierarchy.use(pskKeyId(d.deviceId), 'current', (k) => Uint8Array.from(k.bytes));
        if (this.#destroyed || key.length !== PSK_BYTES) {
          zeroize(key);
          if (key.length !== PSK_BYTES) this.#log?.error({ device: deviceLabel(d.deviceId) }, 'PSK of the wrong length ignored');
          continue;
        }
        this.#keys.set(d.deviceId, key);
      } catch (e) {
        this.#log?.error({ device: deviceLabel(d.deviceId), code: e instanceof KeyStoreError ? e.code : 'internal' }, 'PSK not loaded; the device cannot connect until it is');
      }
    }
  }

  /** Stops following the registry and zeroises every key. */
  destroy(): void {
    this.#destroyed = true;
    this.#unsubscribe?.();
    for (const k of this.#keys.values()) zeroize(k);
    this.#keys.clear();
  }
}

/** Registered for PSK with the identity rule above, and active now. */
function usable(d: DeviceRecord): boolean {
  return d.credential === 'psk' && d.status === 'active' && d.credentialSha256 === pskCredentialSha256(d.deviceId);
}
