/** The envelope key hierarchy: KEK in a KeyStore, DEKs in host memory, wrapped records beside the data. */
export { DataKey } from './data-key.ts';
export { KeyHierarchy, type KeyHierarchyOptions, type RekeyOptions, type RekeyReport, type RekeyTarget, type StaleItem } from './envelope.ts';
export { JsonFileRecordStore, openJsonFileRecordStore } from './json-file-records.ts';
export type { RekeyState, WrappedKeyRecord, WrappedKeyRecordStore } from './types.ts';
