/**
 * vitalseal/agent: the device agent as a library. `createAgent` wires sensors → batches →
 * SenML-CBOR → COSE seal → durable queue → uplink, after a power-on self-test; `loadAgentConfig`
 * reads and validates its configuration file. The parts (pipeline, scheduler core, queue) are
 * exported for device makers who assemble their own.
 *
 * @example
 *   import { createAgent, loadAgentConfig } from 'vitalseal/agent';
 *   const agent = await createAgent({ config: loadAgentConfig('/etc/vitalseal/agent.yaml', process.env) });
 *   await agent.start();
 *   process.once('SIGTERM', () => void agent.stop());
 */
export { Agent, createAgent, type AgentEvents, type AgentStatus, type CreateAgentOptions } from './agent.ts';
export { uplinkFromConfig, type BuiltUplink, type UplinkDeps } from './uplink/from-config.ts';
export { ConfigError, ENV_OVERRIDES, loadAgentConfig, parseAgentConfig, type AgentConfig, type SourceConfig, type TransportConfig } from './config.ts';
export { assessCertificate, CertificateWatcher, type CertStatus } from './cert-watch.ts';
export { createLogger, REDACTED_FIELDS, silentLogger, type Logger } from './log.ts';
export { MetricsRegistry } from './metrics.ts';
export { Pipeline, type PipelineCounters, type PipelineOptions } from './pipeline.ts';
export { readStatus } from './status-socket.ts';
export { Backoff, type BackoffPolicy } from './uplink/backoff.ts';
export { SchedulerCore, type SchedulerAction, type SchedulerOptions } from './uplink/scheduler.ts';
export { UplinkRunner } from './uplink/runner.ts';
export { MllpGateway, type ReadingSink } from './sensors/hl7/gateway.ts';
export { openSegmentQueue, MemoryQueue, type QueueStore } from './queue/index.ts';
