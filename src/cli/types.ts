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
