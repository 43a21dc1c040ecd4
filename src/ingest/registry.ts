/**
 * The device registry: who may send, with which credential, and in what state. The table lives in
 * the ingest database (shared by instances); each instance keeps it in memory, because the
 * transports' handshakes ask synchronously (`revocationStatus`, for `validateChain`'s registry
 * option) and the message path asks for every message.
 *
 * Changes take effect at once:
 * - in this instance, a change made through it updates the cache before the call returns, and the
 *   status-change listeners run (the listeners close the device's open DTLS sessions);
 * - in other instances (or after `vitalseal ingest devices revoke` from the command line), `refresh`
 *   sees the registry version move, reloads, and runs the same listeners. The runtime calls it every
 *   `registryRefreshMs` (default 1 s).
 * - A revocation also revokes the device's certificate with the CA (`CrlPublisher`): a new CRL is
 *   written (the one the MQTT broker loads), and the CRL listeners run (the broker wiring reloads it).
 *
 * Transitions: active ⇄ suspended (temporary: no CRL change); active/suspended → revoked (final).
 *
 * @example
 *   const registry = new DeviceRegistry({ storage, clock, audit, crl: devCaPublisher(ca) });
 *   await registry.load();
 *   registry.onStatusChange((id, status) => { if (status !== 'active') coapsServer.closeSessions(id); });
 *   await registry.setStatus('bed-7', 'revoked', 'cli:alice');
 */
import { toHex } from '../util/bytes.ts';
import type { Clock } from '../util/clock.ts';
import { ApiMisuse } from '../util/errors.ts';
import type { RevocationQuery, RevocationStatus } from '../pki/validate.ts';
import { deviceLabel, type AuditTrail } from './audit-trail.ts';
import type { WrappedKeyRecord } from '../keystore/hierarchy/types.ts';
import type { DeviceRecord, DeviceRegistration, DeviceStatus, IngestStorage } from './storage/types.ts';

/** Revokes a certificate with the issuing CA and writes a new CRL (e.g. the dev CA: `DevCa.revoke`). */
export interface CrlPublisher {
  revoke(serialHex: string, now: number): Promise<{ readonly crlNumber: number }>;
  /** Where the current CRL is (what mosquitto's `crlfile` names). */
  readonly crlPath?: string;
}

export type StatusListener = (deviceId: string, status: DeviceStatus, previous: DeviceStatus | undefined) => void;
/** Devices registered, re-registered or changed in status (here, or elsewhere as `refresh` found). */
export type DevicesListener = (deviceIds: readonly string[]) => void;
export type CrlListener = (info: { readonly crlNumber?: number; readonly crlPath?: string }) => void;

export interface DeviceRegistryOptions {
  readonly storage: IngestStorage;
  readonly clock: Clock;
  readonly audit?: AuditTrail;
  readonly crl?: CrlPublisher;
}

export class DeviceRegistry {
  readonly #storage: IngestStorage;
  readonly #clock: Clock;
  readonly #audit: AuditTrail | undefined;
  readonly #crl: CrlPublisher | undefined;
  #devices = new Map<string, DeviceRecord>();
  #version = -1;
  readonly #statusListeners = new Set<StatusListener>();
  readonly #crlListeners = new Set<CrlListener>();
  readonly #deviceListeners = new Set<DevicesListener>();

  constructor(o: DeviceRegistryOptions) {
    this.#storage = o.storage;
    this.#clock = o.clock;
    this.#audit = o.audit;
    this.#crl = o.crl;
  }

  /** Where the CA writes the current CRL (what the broker loads), when a CRL publisher is configured. */
  get crlPath(): string | undefined {
    return this.#crl?.crlPath;
  }

  /** Loads every device (at start-up). */
  async load(): Promise<void> {
    const version = await this.#storage.registryVersion();
    const list = await this.#storage.listDevices();
    this.#devices = new Map(list.map((d) => [d.deviceId, d]));
    this.#version = version;
  }

  /**
   * Reloads when another instance or the command line changed the registry; runs the listeners
   * for every status that changed. Returns true when it reloaded.
   */
  async refresh(): Promise<boolean> {
    const version = await this.#storage.registryVersion();
    if (version === this.#version) return false;
    const before = this.#devices;
    await this.load();
    let revoked = false;
    const changed: string[] = [];
    for (const d of this.#devices.values()) {
      const was = before.get(d.deviceId);
      const prev = was?.status;
      if (prev !== d.status) {
        if (prev !== undefined) this.#emitStatus(d.deviceId, d.status, prev);
        if (d.status === 'revoked') revoked = true;
      }
      if (was === undefined || prev !== d.status || was.credential !== d.credential || was.credentialSha256 !== d.credentialSha256) changed.push(d.deviceId);
    }
    if (revoked) this.#emitCrl(this.#crl?.crlPath === undefined ? {} : { crlPath: this.#crl.crlPath });
    if (changed.length > 0) this.#emitDevices(changed);
    return true;
  }

  /** The cached record (every device after `load`; ones enrolled elsewhere after `refresh`). */
  get(deviceId: string): DeviceRecord | undefined {
    return this.#devices.get(deviceId);
  }

  /** The cached record, or the database's for a device another instance enrolled since the last refresh. */
  async lookup(deviceId: string): Promise<DeviceRecord | undefined> {
    const cached = this.#devices.get(deviceId);
    if (cached !== undefined) return cached;
    const d = await this.#storage.getDevice(deviceId);
    if (d !== undefined) this.#devices.set(deviceId, d);
    return d;
  }

  list(): DeviceRecord[] {
    return [...this.#devices.values()].sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
  }

  /** Updates the cached record after a write elsewhere in this process (activity, rejections). */
  async reload(deviceId: string): Promise<DeviceRecord | undefined> {
    const d = await this.#storage.getDevice(deviceId);
    if (d === undefined) this.#devices.delete(deviceId);
    else this.#devices.set(deviceId, d);
    return d;
  }

  /**
   * For `validateChain(..., { revocation: { registry: (q) => registry.revocationStatus(q) } })`:
   * good only for an active device whose registered key is the one presented.
   */
  revocationStatus(q: RevocationQuery): RevocationStatus {
    if (q.deviceId === undefined) return 'unknown';
    const d = this.#devices.get(q.deviceId);
    if (d === undefined) return 'unknown';
    if (d.status !== 'active') return 'revoked';
    if (d.credential !== 'certificate' || d.credentialSha256 !== toHex(q.spkiSha256)) return 'revoked';
    return 'good';
  }

  /** Registers (enrolment) or re-registers (renewal) a device. */
  async register(reg: DeviceRegistration): Promise<DeviceRecord> {
    const existing = await this.lookup(reg.deviceId);
    if (existing?.status === 'revoked') throw new ApiMisuse('device-revoked', `device ${reg.deviceId} is revoked; a revoked device id is not enrolled again`);
    await this.#storage.upsertDevice(reg);
    const d = await this.reload(reg.deviceId);
    this.#version = -1; // our own bump: the next refresh reloads once, harmlessly
    if (d === undefined) throw new ApiMisuse('not-found', `device ${reg.deviceId} vanished while registering`);
    this.#emitDevices([reg.deviceId]);
    return d;
  }

  /**
   * Registers a new device together with the wrapped key of its credential (a PSK device's key,
   * psk-store.ts), both or neither (`IngestStorage.registerDeviceWithKey`). An id already registered,
   * revoked ones included, is `ApiMisuse('exists')`.
   */
  async registerWithKey(reg: DeviceRegistration, key: WrappedKeyRecord): Promise<DeviceRecord> {
    await this.#storage.registerDeviceWithKey(reg, key);
    const d = await this.reload(reg.deviceId);
    this.#version = -1;
    if (d === undefined) throw new ApiMisuse('not-found', `device ${reg.deviceId} vanished while registering`);
    this.#emitDevices([reg.deviceId]);
    return d;
  }

  /**
   * Changes a device's status. Revoking also revokes its certificate with the CA (new CRL). A revoked
   * device stays revoked (`ApiMisuse('device-revoked')`); an unknown one is `ApiMisuse('not-found')`.
   */
  async setStatus(deviceId: string, status: DeviceStatus, actor: string, reason?: string): Promise<{ readonly device: DeviceRecord; readonly crlNumber?: number }> {
    const current = await this.reload(deviceId);
    if (current === undefined) throw new ApiMisuse('not-found', `no device ${deviceId}`);
    if (current.status === 'revoked' && status !== 'revoked') throw new ApiMisuse('device-revoked', `device ${deviceId} is revoked; revocation is final`);
    if (current.status === status) return { device: current };
    const now = this.#clock.now();
    const op = status === 'revoked' ? 'revoke' : status === 'suspended' ? 'suspend' : 'resume';
    // The CRL is written before the registry changes: another instance (or the service, when the
    // command line revokes) reacts to the registry change by handing the CRL file to the broker,
    // and must find the serial in it then; the other order let it copy the old CRL, after which
    // nothing would signal the broker again.
    const crl = status === 'revoked' && current.certSerial !== undefined ? this.#crl : undefined;
    let crlNumber: number | undefined;
    let crlError: unknown;
    if (crl !== undefined && current.certSerial !== undefined) {
      try {
        crlNumber = (await crl.revoke(current.certSerial, now)).crlNumber;
      } catch (e) {
        // Already listed (revoked at the CA earlier) is fine; anything else is reported after the
        // registry change, which takes effect regardless.
        if (!(e instanceof ApiMisuse && e.code === 'exists')) crlError = e;
      }
    }
    await this.#storage.setDeviceStatus(deviceId, status, now);
    const device = (await this.reload(deviceId)) as DeviceRecord;
    this.#version = -1;
    await this.#audit?.append({ actor, operation: op, result: 'ok', detail: `device ${deviceLabel(deviceId)}${reason === undefined ? '' : ` (${reason})`}` });
    this.#emitStatus(deviceId, status, current.status);
    this.#emitDevices([deviceId]);
    if (crlError !== undefined) {
      await this.#audit?.append({ actor, operation: 'revoke', result: 'error', code: 'crl-not-written', detail: `device ${deviceLabel(deviceId)}: CRL not regenerated` });
      throw crlError;
    }
    if (crl !== undefined) this.#emitCrl({ ...(crlNumber === undefined ? {} : { crlNumber }), ...(crl.crlPath === undefined ? {} : { crlPath: crl.crlPath }) });
    return { device, ...(crlNumber === undefined ? {} : { crlNumber }) };
  }

  /** Runs `listener` whenever a device's status changes (here or, after `refresh`, elsewhere). */
  onStatusChange(listener: StatusListener): () => void {
    this.#statusListeners.add(listener);
    return () => this.#statusListeners.delete(listener);
  }

  /** Runs `listener` after a revocation, when the CRL has changed. */
  onCrlChange(listener: CrlListener): () => void {
    this.#crlListeners.add(listener);
    return () => this.#crlListeners.delete(listener);
  }

  /** Runs `listener` with the ids of devices registered or changed (here at once; elsewhere after `refresh`). */
  onDevicesChanged(listener: DevicesListener): () => void {
    this.#deviceListeners.add(listener);
    return () => this.#deviceListeners.delete(listener);
  }

  #emitDevices(ids: readonly string[]): void {
    for (const l of this.#deviceListeners) {
      try {
        l(ids);
      } catch {
        // as for status listeners: a listener's failure must not undo or hide the change
      }
    }
  }

  #emitStatus(deviceId: string, status: DeviceStatus, prev: DeviceStatus | undefined): void {
    for (const l of this.#statusListeners) {
      try {
        l(deviceId, status, prev);
      } catch {
        // a listener's failure must not undo or hide the change
      }
    }
  }

  #emitCrl(info: { crlNumber?: number; crlPath?: string }): void {
    for (const l of this.#crlListeners) {
      try {
        l(info);
      } catch {
        // as above
      }
    }
  }
}
