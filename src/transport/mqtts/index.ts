/**
 * MQTT v5 over mutual TLS 1.3: the device's `Uplink` (mqtt.js), the ingest's shared-subscription
 * consumer, and the two ways a device holds its TLS key (in this process, or in the TPM: TLS run by
 * `openssl s_client` with the tpm2 provider). docs/transport-mqtts.md describes the broker, topics,
 * TLS settings and failure semantics.
 *
 * @example
 *   import { createMqttsUplink, opensslTpmTls, trustFromPem } from 'vitalseal/transport';
 *   const trust = trustFromPem(rootPem);
 *   const tls = opensslTpmTls({ certChainPem, key: await tpmStore.loadableKey('device-identity'), trust });
 *   const uplink = createMqttsUplink({ deviceId: 'bed-7', host: 'broker.ward7', port: 8883, tls });
 */
export { inProcessTls, type InProcessTlsOptions, type TlsConnection, type TlsConnector, type TlsTarget } from './connector.ts';
export { connackError, pubackOutcome, reasonName, type PubackOutcome } from './reason-codes.ts';
export { createMqttsSubscriber, MqttsSubscriber, type IngestHandler, type IngestMessage, type MqttsSubscriberOptions, type SubscriberCounters, type SubscriberEvents } from './subscriber.ts';
export { clientContextOptions, mapConnectionError, tlsAlertName, trustFromPem, type MqttsTrust, type TlsSessionInfo } from './tls.ts';
export { contentTypeFor, deviceIdFromTopic, formatFromContentType, hasCoseTag, INGEST_SUBSCRIPTION, SHARE_GROUP, vitalsTopic } from './topics.ts';
export { errorFromSClient, opensslTpmTls, type OpensslTpmTlsOptions } from './openssl-tpm-tls.ts';
export { findTpm2Provider, TPM2_PROPERTY_QUERY, tpm2OpensslConfig, tpmRmHint } from './tpm2-provider.ts';
export { createMqttsUplink, type MqttsUplinkOptions } from './uplink.ts';
