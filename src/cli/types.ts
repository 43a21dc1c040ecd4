/** What a sub-command module exports. */
export interface CliIo {
  readonly stdin: NodeJS.ReadableStream;
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly env: NodeJS.ProcessEnv;
}

export interface CommandModule {
  /** One line for `vitalseal --help`. */
  readonly summary: string;
  /** Runs the command; returns the process exit code. Errors thrown are printed without stack. */
  run(args: string[], io: CliIo): Promise<number>;
}

/** A usage error: printed with the command's help, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export type SubCommand = (args: string[], io: CliIo) => Promise<number>;

/**
 * A command made of sub-commands (`vitalseal cose seal ...`): no arguments prints the help and
 * exits 2, `--help` anywhere prints it and exits 0, an unknown sub-command is a usage error (or goes
 * to `fallback`, for commands whose sub-commands are data-driven).
 */
export function withSubCommands(summary: string, help: string, table: Readonly<Record<string, SubCommand>>, fallback?: (sub: string) => SubCommand): CommandModule {
  return {
    summary,
    async run(args, io) {
      const [sub, ...rest] = args;
      if (sub === undefined || sub === '--help' || sub === '-h' || rest.includes('--help')) {
        io.stdout.write(help);
        return sub === undefined ? 2 : 0;
      }
      const handler = Object.hasOwn(table, sub) ? table[sub] : fallback?.(sub);
      if (handler === undefined) throw new UsageError(`unknown sub-command '${sub}'`);
      return handler(rest, io);
    },
  };
}
