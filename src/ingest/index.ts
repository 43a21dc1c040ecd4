/**
 * vitalseal/ingest: the cloud ingest service as a library. The transport listeners call
 * `IngestService.accept`; everything else (registry, keys, storage, HTTPS, backups) hangs off an
 * `IngestCore`. docs/ingest.md is the reference.
 *
 * @example
 *   import { loadIngestConfig, startIngest, cryptoSelfTest, mqttListener } from 'vitalseal/ingest';
 *   const running = await startIngest(loadIngestConfig('ingest.yaml'), { env: process.env, selfTest: cryptoSelfTest(), log, listeners: { mqtt: mqttListener } });
 *   const outcome = await running.core.service?.accept({ payload, contentFormat: 96, peer });
 */
export { coapResponseCode, mqttShouldAck, REJECT_REASONS, uplinkRejectReason, type AcceptInput, type AcceptOutcome, type BrokerPeer, type CertificatePeer, type CoapResponseCode, type PeerIdentity, type PskPeer, type RejectReason, type TransportName } from './outcome.ts';
export { IngestService, type AcceptedEvent, type IngestLogger, type IngestServiceOptions } from './service.ts';
export { openIngestCore, type IngestCore, type IngestCoreOptions } from './core.ts';
export { loadIngestConfig, parseIngestConfig, type IngestConfig } from './config.ts';
export { checkListeners, startIngest, type ListenerFactory, type Listeners, type RunningIngest, type RuntimeDeps } from './runtime.ts';
export { INGEST_NODE_OPTIONS, missingNodeOptions } from './node-options.ts';
export { cryptoSelfTest, type SelfTestSummary, type StartupSelfTest } from './selftest.ts';
export * from './listeners/index.ts';
export { DeviceRegistry, type CrlPublisher } from './registry.ts';
export { rotateStaticKey, retireStaticKeys, staticKeyKid, type StaticKeys } from './static-key.ts';
export { startIngestHttp, type IngestHttp, type IngestHttpOptions } from './http/server.ts';
export { verifyBackup, writeBackup, ArchiveDamaged } from './backup/archive.ts';
export { formatDrillReport, restoreBackup, type DrillReport } from './backup/restore.ts';
export { PostgresStorage, SqliteStorage, type IngestStorage } from './storage/index.ts';
