/**
 * vitalseal/transport: the `Uplink` a device sends sealed messages through, and its
 * implementations. MQTTS (MQTT v5 over mutual TLS 1.3) is here; CoAPS (CoAP over DTLS 1.3) joins it.
 *
 * @example
 *   import { createMqttsUplink, inProcessTls, trustFromPem, type Uplink } from 'vitalseal/transport';
 */
export * from './types.ts';
export { ManualTimers, systemTimers, type TimerHandle, type Timers } from './timers.ts';
export * from './mqtts/index.ts';
export * from './coaps/index.ts';
