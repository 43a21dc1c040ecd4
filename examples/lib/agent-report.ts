/**
 * One line from `agent.status()`: what the device itself knows about its readings (sealed, queued,
 * acknowledged by the receiver) and its link. The ingest's side of the story is `describeStored`
 * in ingest-api.ts.
 *
 * @example
 *   const link = agent.status();            // while running: the link's peer and suite
 *   await agent.stop();
 *   console.log(describeAgent(agent.status(), link));
 *   // agent oxi-1: 5 messages sealed (14 readings), 4 acknowledged, 1 left in the queue; coaps to 127.0.0.1:5684, DTLSv1.3 TLS_AES_128_GCM_SHA256
 */
import type { AgentStatus } from 'vitalseal/agent';

export function describeAgent(s: AgentStatus, whileRunning: AgentStatus = s): string {
  const t = whileRunning.transport;
  const link = t.peer === null ? `${t.kind}, ${t.link}${t.lastError === null ? '' : ` (${t.lastError})`}` : `${t.kind} to ${t.peer}, ${[t.protocol, t.suite].filter((x) => x !== null).join(' ')}`;
  return `agent ${s.device}: ${s.pipeline['messages'] ?? 0} messages sealed (${s.pipeline['readings'] ?? 0} readings), `
    + `${s.uplink['acknowledged'] ?? 0} acknowledged, ${s.queue.depth} left in the queue; ${link}`;
}
