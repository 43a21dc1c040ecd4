/**
 * The device agent's own entry point: what `npm run build:agent` bundles into
 * dist/vitalseal-agent.mjs, which a device runs with plain node (no TypeScript loader, no other
 * command's code). It takes what `vitalseal agent` takes; the leading word `agent` may be given or
 * left out, so `vitalseal agent run ...` becomes `node vitalseal-agent.mjs agent run ...`.
 * Everything else (keys, provision, pki, ...) stays with the `vitalseal` command.
 *
 * @example
 *   node dist/vitalseal-agent.mjs agent run --config /etc/vitalseal/agent.yaml
 *   node dist/vitalseal-agent.mjs status --socket /var/lib/vitalseal/agent.sock
 */
import { command } from './commands/agent.ts';
import { runCommand } from './run-command.ts';

const args = process.argv.slice(2);
const rest = args[0] === 'agent' ? args.slice(1) : args;
const sub = rest[0];
if (sub !== undefined && !sub.startsWith('-') && sub !== 'run' && sub !== 'status') {
  // Exit 3 as `vitalseal` does for a command it does not have (the unit does not restart on it).
  process.stderr.write(`vitalseal-agent: '${sub}' is not part of the agent build (run, status); the vitalseal command has the others\n`);
  process.exitCode = 3;
} else {
  process.exitCode = await runCommand('agent', command, rest, process);
}
