/**
 * `vitalseal agent run|status`.
 *
 *   vitalseal agent run --config /etc/vitalseal/agent.yaml
 *   vitalseal agent status --config /etc/vitalseal/agent.yaml [--json]
 *   vitalseal agent status --socket /var/lib/vitalseal/agent.sock
 *
 * Only the configuration file's path is taken on the command line; secrets stay in the key store
 * and in files named by the configuration (or by the VITALSEAL_* location variables).
 */
import { createAgent } from '../../agent/agent.ts';
import { loadAgentConfig } from '../../agent/config.ts';
import { readStatus } from '../../agent/status-socket.ts';
import type { AgentStatus } from '../../agent/agent.ts';
import { parse } from '../args.ts';
import { UsageError, type CliIo, type CommandModule } from '../types.ts';

const HELP = `usage:
  vitalseal agent run --config FILE
      runs the device agent until SIGTERM or SIGINT (then flushes the queue state and exits 0)
  vitalseal agent status (--config FILE | --socket PATH) [--json]
      queue depth, last acknowledgement, transport, sealing suite, key epoch age, certificate expiry
Environment (locations only, never secret values): VITALSEAL_INGEST_PUBLIC_KEY_FILE, VITALSEAL_DEVICE_CERT_FILE,
  VITALSEAL_CA_FILE, VITALSEAL_KEYSTORE_PIN_FILE, VITALSEAL_KEYSTORE_PASSPHRASE_FILE, VITALSEAL_QUEUE_DIR
`;

async function run(args: string[], io: CliIo): Promise<number> {
  const { values } = parse(args, { config: { type: 'string' } });
  if (values.config === undefined) throw new UsageError('run needs --config FILE');
  const config = loadAgentConfig(values.config, io.env);
  const agent = await createAgent({ config });
  // The handlers go in before start (a signal during start-up stops the agent once it is up) and
  // stay until the queue state is flushed: a second signal during the stop is acknowledged, never
  // allowed to fall through to the default action (killed mid-flush).
  let started: Promise<void> | undefined;
  let stopping: Promise<void> | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping !== undefined) {
      io.stderr.write(`vitalseal agent: ${sig} received again; still flushing the queue state\n`);
      return;
    }
    io.stderr.write(`vitalseal agent: ${sig} received, stopping\n`);
    stopping = (started ?? Promise.resolve()).catch(() => undefined).then(() => agent.stop());
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    started = agent.start();
    try {
      await started;
    } catch (e) {
      // A port in use, a socket path not writable: release what did start, then report.
      await agent.stop().catch(() => undefined);
      throw e;
    }
    await new Promise<void>((resolve) => agent.once('stopped', resolve));
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
  return 0;
}

function human(s: AgentStatus): string {
  const lines = [
    `device        ${s.device} (${s.state}${s.startedAt === null ? '' : ` since ${s.startedAt}`})`,
    `queue         ${s.queue.depth} message(s), ${s.queue.bytes} of ${s.queue.capacityBytes} bytes${s.queue.nearlyFull ? ' NEARLY FULL' : ''}; acknowledged through ${s.queue.ackedThrough}, next ${s.queue.nextSeq}; dropped ${s.queue.dropped}, moved aside ${s.queue.movedAside}`,
    `last ack      ${s.lastAck === null ? 'none yet' : `message ${s.lastAck.seq} at ${s.lastAck.at}`}`,
    `transport     ${s.transport.kind} ${s.transport.link}${s.transport.target === null ? '' : ` (${s.transport.target})`}${s.transport.peer === null ? '' : ` to ${s.transport.peer}, ${s.transport.protocol ?? '?'} ${s.transport.suite ?? ''}`}${s.transport.lastError === null ? '' : `; last error ${s.transport.lastError}`}${s.transport.retryAt === null ? '' : `; retry at ${s.transport.retryAt}`}`,
    `sealing       ${s.sealing.suite}; key epoch ${s.sealing.epochAgeSeconds === null ? 'not started' : `${s.sealing.epochAgeSeconds} s old, ${s.sealing.epochMessages ?? 0} message(s)`}; ${s.sealing.epochsStarted} epoch(s) so far`,
    `certificate   ${s.certificate === null ? 'not configured' : s.certificate.message}`,
    `renewal       ${renewalLine(s.certificate?.renewal ?? null)}`,
    `self-test     passed: ${s.selfTest.passed.join(', ')}`,
  ];
  return `${lines.join('\n')}\n`;
}

function renewalLine(r: NonNullable<AgentStatus['certificate']>['renewal']): string {
  if (r === null) return 'not configured (certificate.renew)';
  const parts = [`${r.state} via ${r.url}`, r.dueAt === null ? 'not checked yet' : `due from ${r.dueAt}`];
  if (r.lastRenewal !== null) parts.push(`last renewed ${r.lastRenewal.at} (serial ${r.lastRenewal.serial})`);
  if (r.lastError !== null && r.consecutiveFailures > 0) parts.push(`${r.consecutiveFailures} failure(s), last ${r.lastError.code}: ${r.lastError.message}`);
  if (r.retryAt !== null) parts.push(`next attempt after ${r.retryAt}`);
  return parts.join('; ');
}

async function status(args: string[], io: CliIo): Promise<number> {
  const { values } = parse(args, { config: { type: 'string' }, socket: { type: 'string' }, json: { type: 'boolean' } });
  let socket = values.socket;
  if (socket === undefined) {
    if (values.config === undefined) throw new UsageError('status needs --config FILE or --socket PATH');
    socket = loadAgentConfig(values.config, io.env).status.socket;
  }
  const doc = (await readStatus(socket)) as AgentStatus;
  io.stdout.write(values.json === true ? `${JSON.stringify(doc, null, 2)}\n` : human(doc));
  return 0;
}

export const command: CommandModule = {
  summary: 'run the device agent',
  async run(args, io) {
    const [sub, ...rest] = args;
    if (sub === undefined || sub === '--help' || sub === '-h') {
      io.stdout.write(HELP);
      return sub === undefined ? 2 : 0;
    }
    if (sub === 'run') return run(rest, io);
    if (sub === 'status') return status(rest, io);
    throw new UsageError(`unknown sub-command '${sub}'`);
  },
};
