/**
 * `vitalseal audit verify FILE [--pubkey PEM] [--anchor SEQ:HASH] [--require-final-checkpoint]`:
 * checks an audit log's hash chain and checkpoint signatures and prints where it was tampered with.
 * Exit status 0 when intact, 1 when not.
 */
import { readFileSync } from 'node:fs';
import { verifyAuditLog } from '../../audit/verify.ts';
import { parse } from '../args.ts';
import { UsageError, withSubCommands, type CliIo, type CommandModule } from '../types.ts';

const HELP = `usage:
  vitalseal audit verify FILE [--pubkey PEM] [--anchor SEQ:HASH] [--require-final-checkpoint]
      checks the hash chain and the signed checkpoints of an audit log; prints each problem as
      "line N: KIND: what", and the head (SEQ:HASH) to pass as --anchor next time
  --pubkey PEM                  the device identity public key that signs checkpoints (without it,
                                signatures are not checked and a re-chained forgery goes unseen)
  --anchor SEQ:HASH             a head seen earlier: the log must still contain it (catches lines cut from the end)
  --require-final-checkpoint    the log must end with a checkpoint, as a cleanly closed log does
exit status: 0 intact, 1 problems found, 2 usage error
`;

function readInput(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

async function verify(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, {
    pubkey: { type: 'string' },
    anchor: { type: 'string' },
    'require-final-checkpoint': { type: 'boolean' },
  });
  const [file, extra] = positionals;
  if (file === undefined) throw new UsageError('verify needs the audit log FILE');
  if (extra !== undefined) throw new UsageError(`unexpected argument '${extra}'`);
  let anchor: { seq: number; hash: string } | undefined;
  if (values.anchor !== undefined) {
    const m = /^(\d{1,15}):([0-9a-f]{64})$/.exec(values.anchor);
    if (m === null) throw new UsageError('--anchor SEQ:HASH (HASH: 64 lowercase hex digits)');
    anchor = { seq: Number(m[1]), hash: m[2] as string };
  }
  let publicKey: string | undefined;
  if (values.pubkey !== undefined) {
    publicKey = readInput(values.pubkey, 'public key').toString('utf8');
    if (!publicKey.includes('-----BEGIN PUBLIC KEY-----')) throw new UsageError(`${values.pubkey} is not a PEM public key (SubjectPublicKeyInfo)`);
  }
  const result = verifyAuditLog(readInput(file, 'audit log'), {
    ...(publicKey === undefined ? {} : { publicKey }),
    ...(anchor === undefined ? {} : { anchor }),
    ...(values['require-final-checkpoint'] === true ? { requireFinalCheckpoint: true } : {}),
  });
  const out: string[] = [];
  for (const p of result.problems) out.push(`line ${p.line}: ${p.kind}: ${p.message}`);
  const sigs = result.signaturesChecked
    ? `${result.verifiedCheckpoints} of ${result.checkpoints} checkpoint signatures verified`
    : `${result.checkpoints} checkpoints, signatures NOT checked (pass --pubkey)`;
  out.push(`${file}: ${result.ok ? 'intact' : `${result.problems.length} problem(s)`}; ${result.lines} lines, ${result.events} events, ${sigs}; ${result.uncheckpointedTail} events after the last checkpoint`);
  if (result.logId !== undefined) out.push(`log ${result.logId}`);
  if (result.head !== undefined) out.push(`head ${result.head.seq}:${result.head.hash}`);
  io.stdout.write(`${out.join('\n')}\n`);
  if (!result.signaturesChecked) io.stderr.write('warning: checkpoint signatures were not checked; a log re-chained after an edit looks intact without --pubkey\n');
  return result.ok ? 0 : 1;
}

export const command: CommandModule = withSubCommands('verify a hash-chained audit log', HELP, { verify });
