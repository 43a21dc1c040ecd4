export type { DataKeyRecord, DeviceRecord, DeviceStatus, IngestStorage, SequenceGap, StoredMessage } from './types.ts';
export { SqliteStorage, type SqliteStorageOptions } from './sqlite.ts';
export { PostgresStorage, type PostgresStorageOptions } from './postgres.ts';
