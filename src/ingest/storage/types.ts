/**
 * Ingest storage: one interface, two implementations (SQLite embedded default, PostgreSQL for
 * production), one contract suite (test/ingest/storage/contract.ts).
 *
 * Storage sees only ciphertext for readings: the ingest service encrypts each opened message under
 * the device's current data key (envelope encryption, src/ingest/at-rest.ts) before it reaches
 * `storeMessage`. Indexed columns are the non-sensitive ones: device id, sequence, time range, key
 * version. The wrapped data keys themselves live in the same database through `keyRecords()`, the
 * `WrappedKeyRecordStore` of the key hierarchy (src/keystore/hierarchy): one bookkeeping of data
 * keys, not two.
 *
 * Exactly-once: (deviceId, seq) is unique; storing it again reports 'duplicate' and changes nothing.
 * Several ingest instances may share one PostgreSQL database: nothing here relies on in-process state.
 */
import type { WrappedKeyRecord, WrappedKeyRecordStore } from '../../keystore/hierarchy/types.ts';

export type DeviceStatus = 'active' | 'suspended' | 'revoked';
export const DEVICE_STATUSES: readonly DeviceStatus[] = ['active', 'suspended', 'revoked'];

/** How a device authenticates to the transports. */
export type CredentialKind = 'certificate' | 'psk';

/** What enrolment (or an operator) says about a device. */
export interface DeviceRegistration {
  readonly deviceId: string;
  readonly credential: CredentialKind;
  /** Hex SHA-256 of the certificate's SubjectPublicKeyInfo, or of the PSK identity for PSK devices. */
  readonly credentialSha256: string;
  readonly status: DeviceStatus;
  readonly enrolledAt: number;
  /** The current certificate (certificate devices): serial (hex) and notAfter (ms). */
  readonly certSerial?: string;
  readonly certNotAfter?: number;
}

/** What the ingest path learns from traffic: the posture view's inputs. */
export interface DeviceActivity {
  readonly seenAt: number;
  /** 'coaps', 'mqtts', ... */
  readonly transport: string;
  /** Transport protocol suite and the COSE content algorithm, e.g. 'TLS_AES_128_GCM_SHA256 / chacha20-poly1305'. */
  readonly suite: string;
  /** Hex of the sealing epoch's ephemeral public key, and when this service first saw it. */
  readonly sealingEpoch?: string;
  readonly epochStartedAt?: number;
}

export interface DeviceRecord extends DeviceRegistration {
  readonly statusChangedAt?: number;
  readonly lastSeenAt?: number;
  readonly transport?: string;
  readonly suite?: string;
  readonly sealingEpoch?: string;
  readonly epochStartedAt?: number;
  /** Messages from this device that were refused, over its lifetime. */
  readonly rejections: number;
  readonly lastRejectionAt?: number;
  readonly lastRejectionReason?: string;
}

export interface StoredMessage {
  readonly deviceId: string;
  readonly seq: number;
  readonly receivedAt: number;
  /** Earliest and latest reading time in the message (ms), for time-range queries. */
  readonly firstTime: number;
  readonly lastTime: number;
  /** Data key version that encrypts `ciphertext`. */
  readonly keyVersion: number;
  readonly nonce: Uint8Array;
  readonly ciphertext: Uint8Array;
}

export interface SequenceGap {
  /** First missing sequence number. */
  readonly from: number;
  /** Last missing sequence number. */
  readonly to: number;
}

/** A one-time enrolment token, stored only as its SHA-256. */
export interface EnrolTokenRecord {
  readonly tokenSha256: string;
  readonly deviceId: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly usedAt?: number;
}

export type ConsumeResult =
  | { readonly status: 'ok'; readonly token: EnrolTokenRecord }
  | { readonly status: 'unknown' | 'used' | 'expired' };

export type ApiRole = 'reader' | 'admin';

/** An API bearer token, stored only as its SHA-256. */
export interface ApiTokenRecord {
  readonly tokenSha256: string;
  readonly name: string;
  readonly role: ApiRole;
  readonly createdAt: number;
  readonly expiresAt?: number;
  readonly revokedAt?: number;
}

export interface StoreRequest {
  readonly message: StoredMessage;
  readonly activity?: DeviceActivity;
}

/** The latest activity per device in a batch (what the last-seen update writes). */
export function latestActivity(batch: readonly StoreRequest[]): Map<string, DeviceActivity> {
  const out = new Map<string, DeviceActivity>();
  for (const r of batch) {
    if (r.activity === undefined) continue;
    const prev = out.get(r.message.deviceId);
    if (prev === undefined || r.activity.seenAt >= prev.seenAt) out.set(r.message.deviceId, r.activity);
  }
  return out;
}

/** Position in the (device id, seq) order, for paging through every message (backups). */
export interface MessageCursor {
  readonly deviceId: string;
  readonly seq: number;
}

export interface IngestStorage {
  readonly kind: 'sqlite' | 'postgres';
  /** Creates tables if missing (idempotent); refuses a database made by a newer schema. */
  init(): Promise<void>;

  /** Inserts or updates a device's registration; its activity fields are kept. Bumps the registry version. */
  upsertDevice(device: DeviceRegistration): Promise<void>;
  getDevice(deviceId: string): Promise<DeviceRecord | undefined>;
  listDevices(): Promise<DeviceRecord[]>;
  /** Changes the status (false if the device is unknown). Bumps the registry version. */
  setDeviceStatus(deviceId: string, status: DeviceStatus, at: number): Promise<boolean>;
  /** A counter that changes whenever a registration or status changes: instances poll it to refresh their cache. */
  registryVersion(): Promise<number>;
  /** Inserts devices with every field as they are (restore); an existing device id is an error. */
  importDevices(devices: readonly DeviceRecord[]): Promise<void>;
  /**
   * Registers a new device together with the wrapped key of its credential (a PSK device's key,
   * src/ingest/psk-store.ts), in one transaction: both are written or neither. A device id already
   * registered is `ApiMisuse('exists')`; a key record already there `KeyStoreError('exists')`.
   * Bumps the registry version.
   */
  registerDeviceWithKey(device: DeviceRegistration, key: WrappedKeyRecord): Promise<void>;
  /** Adds `count` refused messages to a device's tally. */
  addRejections(deviceId: string, count: number, at: number, reason: string): Promise<void>;

  /**
   * 'stored' the first time, 'duplicate' when (deviceId, seq) is already there. With `activity`,
   * the device's last-seen fields move forward in the same transaction.
   */
  storeMessage(message: StoredMessage, activity?: DeviceActivity): Promise<'stored' | 'duplicate'>;
  /**
   * Stores a batch in one transaction (one commit, one fsync): the group commit the message path
   * uses under load. Results are in input order; a (device, seq) repeated within the batch is
   * 'stored' once and 'duplicate' after. Each device's last-seen fields move to its latest activity.
   */
  storeMessages(batch: readonly StoreRequest[]): Promise<('stored' | 'duplicate')[]>;
  /** Messages whose time range overlaps [from, to], by seq. */
  readMessages(deviceId: string, from: number, to: number, limit?: number): Promise<StoredMessage[]>;
  /** Missing sequence numbers between 1 and the highest stored. */
  gaps(deviceId: string): Promise<SequenceGap[]>;
  highestSeq(deviceId: string): Promise<number>;
  countMessages(deviceId?: string): Promise<number>;
  /**
   * Up to `limit` messages of a device with a sequence number above `afterSeq` (default: from the
   * first), in seq order, still under a key version below `version`: the re-key work list, walked
   * with a cursor along the (device, seq) key, so the messages table needs no index on key_version.
   */
  messagesBelowKeyVersion(deviceId: string, version: number, limit: number, afterSeq?: number): Promise<StoredMessage[]>;
  /** Replaces a message's ciphertext after re-encryption under a newer key; false if it changed meanwhile. */
  rewriteMessage(deviceId: string, seq: number, fromVersion: number, toVersion: number, nonce: Uint8Array, ciphertext: Uint8Array): Promise<boolean>;
  /** Messages after `after` in (device id, seq) order. */
  listMessages(after: MessageCursor | undefined, limit: number): Promise<StoredMessage[]>;
  /** Inserts messages as they are (restore); a (device, seq) already present is an error. */
  importMessages(messages: readonly StoredMessage[]): Promise<void>;

  /** The wrapped data-key records and re-key bookkeeping, in this database. */
  keyRecords(): WrappedKeyRecordStore;

  putEnrolToken(token: EnrolTokenRecord): Promise<void>;
  /** Marks the token used if it is unused and unexpired at `now`, atomically: one caller wins. */
  consumeEnrolToken(tokenSha256: string, now: number): Promise<ConsumeResult>;

  putApiToken(token: ApiTokenRecord): Promise<void>;
  getApiToken(tokenSha256: string): Promise<ApiTokenRecord | undefined>;
  listApiTokens(): Promise<ApiTokenRecord[]>;
  /** Revokes every live token of that name; returns how many. */
  revokeApiToken(name: string, at: number): Promise<number>;

  /**
   * Takes or extends a named lease (e.g. the background re-key worker) for `owner` until now + ttl.
   * True when `owner` holds it afterwards. Instances sharing a database run such work one at a time.
   */
  tryLease(name: string, owner: string, now: number, ttlMs: number): Promise<boolean>;
  releaseLease(name: string, owner: string): Promise<void>;

  /** True when no device, message, key record or token is stored (a restore target). */
  isEmpty(): Promise<boolean>;

  close(): Promise<void>;
}
