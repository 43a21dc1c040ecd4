/**
 * One sub-command run the way every `vitalseal` entry point runs it (the full command and the
 * device agent's bundle): what it throws becomes the exit code and a message without a stack.
 *
 * @example
 *   process.exitCode = await runCommand('agent', agentCommand, ['run', '--config', file], process);
 */
import { VitalsealError } from '../util/errors.ts';
import { UsageError, type CliIo, type CommandModule } from './types.ts';

/** A usage error exits 2, a typed error 1 with its code, anything else 1. */
export async function runCommand(name: string, command: CommandModule, rest: string[], io: CliIo): Promise<number> {
  try {
    return await command.run(rest, io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr.write(`vitalseal ${name}: ${e.message}\n(see vitalseal ${name} --help)\n`);
      return 2;
    }
    if (e instanceof VitalsealError) {
      io.stderr.write(`vitalseal ${name}: ${e.message} [${e.code}]\n`);
      return 1;
    }
    io.stderr.write(`vitalseal ${name}: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}
