/**
 * The ingest's transport listeners, as `ListenerFactory`s for `startIngest` (docs/ingest.md,
 * "Wiring the listeners").
 */
export { coapsListener } from './coaps.ts';
