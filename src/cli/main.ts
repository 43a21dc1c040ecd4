/**
 * `vitalseal` command dispatcher. Thin: each sub-command lives in its own module under commands/,
 * loaded only when used, so `vitalseal cose ...` never loads DTLS or key-store code.
 */
import { runCommand } from './run-command.ts';
import type { CliIo, CommandModule } from './types.ts';

/** Every sub-command, by name; its module is commands/<name>.ts. One not built yet says so plainly. */
const COMMANDS: Record<string, { summary: string }> = {
  cose: { summary: 'seal/open COSE messages, make X25519 key pairs' },
  keys: { summary: 'key store operations: seal, unseal, sign, pubkey, list, delete, split' },
  audit: { summary: 'verify a hash-chained audit log' },
  pki: { summary: 'fleet CA: init, issue, revoke, crl, inspect' },
  provision: { summary: 'create a device identity key and certificate' },
  dtls: { summary: 'DTLS 1.3 client and server (like openssl s_client/s_server)' },
  agent: { summary: 'run the device agent' },
  ingest: { summary: 'run and operate the ingest service' },
  bench: { summary: 'run the benchmarks' },
};

function help(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: vitalseal <command> [options]\n\ncommands:\n${lines.join('\n')}\n\nvitalseal <command> --help for a command's options.\n`;
}

export async function main(argv: string[], io: CliIo = process): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.stdout.write(help());
    return name === undefined ? 2 : 0;
  }
  const entry = COMMANDS[name];
  if (entry === undefined) {
    io.stderr.write(`vitalseal: unknown command '${name}'\n\n${help()}`);
    return 2;
  }
  let mod: { command: CommandModule };
  try {
    // A computed specifier: sub-commands load lazily and one missing module does not break the rest.
    mod = (await import(`./commands/${name}.ts`)) as { command: CommandModule };
  } catch (e) {
    if ((e as { code?: string }).code === 'ERR_MODULE_NOT_FOUND' && String((e as Error).message).includes(`commands/${name}.ts`)) {
      io.stderr.write(`vitalseal: '${name}' is not built yet in this version\n`);
      return 3;
    }
    throw e;
  }
  return runCommand(name, mod.command, rest, io);
}
