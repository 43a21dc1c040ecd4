/**
 * The transport listeners this build has, as the runtime takes them (`startIngest(cfg, { listeners })`;
 * docs/ingest.md, "Wiring the listeners").
 *
 * @example
 *   await startIngest(cfg, { env, selfTest, log, listeners: { mqtt: mqttListener, coaps: coapsListener } });
 */
export { coapsListener } from './coaps.ts';
export { mqttListener } from './mqtt.ts';
