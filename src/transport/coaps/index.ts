/**
 * CoAP over DTLS 1.3: the device's `Uplink` (a confirmable POST of each sealed message to
 * `/v1/telemetry`) and the receiving server the ingest listener runs on. docs/transport-coaps.md
 * describes the wire format, response codes, identities, limits and failure semantics.
 *
 * @example
 *   import { createCoapsUplink, createCoapsServer } from 'vitalseal/transport';
 *   const uplink = createCoapsUplink({ deviceId: 'pulse-ox-17', host: 'ingest.ward7',
 *     identity: { kind: 'psk', key: psk } });
 */
export { COAPS_PORT, DUPLICATE_PAYLOAD, mapDtlsError, responseCodeValue, responseOutcome, TELEMETRY_PATH, type CoapsResponseCode, type ResponseOutcome } from './codes.ts';
export {
  createCoapsServer, DEFAULT_COAPS_SERVER_LIMITS, peerOf, type CoapsHandler, type CoapsPeer, type CoapsRefusal, type CoapsReply, type CoapsRequest,
  type CoapsServer, type CoapsServerCounters, type CoapsServerDtlsOptions, type CoapsServerEvents, type CoapsServerLimits, type CoapsServerOptions, type CoapsSessionInfo,
} from './server.ts';
export { createCoapsUplink, type CoapsIdentity, type CoapsUplink, type CoapsUplinkOptions } from './uplink.ts';
