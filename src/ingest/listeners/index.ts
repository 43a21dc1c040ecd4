/**
 * The transport listeners this build has, as the runtime takes them (`startIngest(cfg, { listeners })`).
 *
 * @example
 *   await startIngest(cfg, { env, selfTest, log, listeners: { mqtt: mqttListener } });
 */
export { mqttListener } from './mqtt.ts';
