export type {
  ApiRole, ApiTokenRecord, ConsumeResult, CredentialKind, DeviceActivity, DeviceRecord, DeviceRegistration, DeviceStatus, EnrolTokenRecord,
  IngestStorage, MessageCursor, SequenceGap, StoredMessage, StoreRequest,
} from './types.ts';
export { DEVICE_STATUSES, latestActivity } from './types.ts';
export { SqliteStorage, type SqliteStorageOptions } from './sqlite.ts';
export { PostgresStorage, type PostgresStorageOptions } from './postgres.ts';
