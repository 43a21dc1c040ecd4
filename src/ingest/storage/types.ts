/**
 * Ingest storage: one interface, two implementations (SQLite embedded default, PostgreSQL for
 * production), one contract suite (test/ingest/storage/contract.ts).
 *
 * Storage sees only ciphertext for readings: the ingest service encrypts each opened message under
 * the device's current data key (envelope encryption) before it reaches `storeMessage`. Indexed
 * columns are the non-sensitive ones: device id, sequence, time range, key version.
 *
 * Exactly-once: (deviceId, seq) is unique; storing it again reports 'duplicate' and changes nothing.
 */
export type DeviceStatus = 'active' | 'suspended' | 'revoked';

export interface DeviceRecord {
  readonly deviceId: string;
  /** SHA-256 of the certificate's SubjectPublicKeyInfo, hex; or of the PSK identity for PSK devices. */
  readonly spkiSha256: string;
  readonly status: DeviceStatus;
  readonly enrolledAt: number;
  readonly lastSeenAt?: number;
  /** Hex of the current sealing epoch's ephemeral public key (or kid), for the posture view. */
  readonly sealingEpoch?: string;
}

export interface StoredMessage {
  readonly deviceId: string;
  readonly seq: number;
  readonly receivedAt: number;
  /** Earliest and latest reading time in the message (ms), for time-range queries. */
  readonly firstTime: number;
  readonly lastTime: number;
  /** Data key that encrypts `ciphertext`. */
  readonly keyVersion: number;
  readonly nonce: Uint8Array;
  readonly ciphertext: Uint8Array;
}

export interface DataKeyRecord {
  readonly deviceId: string;
  readonly version: number;
  /** The data key wrapped by the ingest KEK (KeyStore.wrapKey). */
  readonly wrapped: Uint8Array;
  readonly kekName: string;
  readonly createdAt: number;
  /** 'current' for writing; 'retired' stays readable until re-key has moved everything off it. */
  readonly state: 'current' | 'retired' | 'destroyed';
}

export interface SequenceGap {
  /** First missing sequence number. */
  readonly from: number;
  /** Last missing sequence number. */
  readonly to: number;
}

export interface IngestStorage {
  readonly kind: 'sqlite' | 'postgres';
  /** Creates tables if missing (idempotent). */
  init(): Promise<void>;

  upsertDevice(device: DeviceRecord): Promise<void>;
  getDevice(deviceId: string): Promise<DeviceRecord | undefined>;
  listDevices(): Promise<DeviceRecord[]>;
  setDeviceStatus(deviceId: string, status: DeviceStatus): Promise<boolean>;
  touchDevice(deviceId: string, seenAt: number, sealingEpoch?: string): Promise<void>;

  /** 'stored' the first time, 'duplicate' when (deviceId, seq) is already there. */
  storeMessage(message: StoredMessage): Promise<'stored' | 'duplicate'>;
  /** Messages whose time range overlaps [from, to], by seq. */
  readMessages(deviceId: string, from: number, to: number, limit?: number): Promise<StoredMessage[]>;
  /** Missing sequence numbers between 1 and the highest stored. */
  gaps(deviceId: string): Promise<SequenceGap[]>;
  highestSeq(deviceId: string): Promise<number>;
  countMessages(deviceId?: string): Promise<number>;

  putDataKey(key: DataKeyRecord): Promise<void>;
  dataKeys(deviceId: string): Promise<DataKeyRecord[]>;
  setDataKeyState(deviceId: string, version: number, state: DataKeyRecord['state'], wrapped?: Uint8Array): Promise<void>;
  /** Up to `limit` messages of a device still under a key version below `version` (re-key work list). */
  messagesBelowKeyVersion(deviceId: string, version: number, limit: number): Promise<StoredMessage[]>;
  /** Replaces a message's ciphertext after re-encryption under a newer key; returns false if it changed meanwhile. */
  rewriteMessage(deviceId: string, seq: number, fromVersion: number, toVersion: number, nonce: Uint8Array, ciphertext: Uint8Array): Promise<boolean>;

  close(): Promise<void>;
}
