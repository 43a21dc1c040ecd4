/**
 * `vitalseal cose seal|open|keygen`: the operator's view of the COSE layer.
 *
 *   vitalseal cose keygen --out ingest            # ingest.key (PKCS#8, 0600) and ingest.pub (SPKI)
 *   vitalseal cose seal --to ingest.pub < reading.cbor > reading.cose
 *   vitalseal cose open --key ingest.key < reading.cose > reading.cbor
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { getProvider } from '../../crypto/registry.ts';
import { COSE_CONTENT_ALGS, contentAlgByName, type CoseAlgName } from '../../cose/algorithms.ts';
import { openCose, sealEncrypt } from '../../cose/encrypt.ts';
import { generateX25519Pem, x25519PrivateFromPem, x25519PublicFromPem, x25519Recipient } from '../../cose/keys.ts';
import { zeroize } from '../../util/bytes.ts';
import { parse, readAll } from '../args.ts';
import { UsageError, withSubCommands, type CliIo, type CommandModule } from '../types.ts';

const HELP = `usage:
  vitalseal cose seal --to PUBLIC.pem [--alg ${COSE_CONTENT_ALGS.map((a) => a.name).join('|')}]
      reads plaintext on stdin, writes a tagged COSE_Encrypt (ECDH-ES + HKDF-256, X25519) on stdout
  vitalseal cose open --key PRIVATE.pem
      reads a COSE message on stdin, writes the plaintext on stdout; fails on any tampering
  vitalseal cose keygen --out NAME
      writes NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (SubjectPublicKeyInfo PEM)
Keys are X25519 PEM files as written by: openssl genpkey -algorithm X25519
`;

function readKeyFile(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

async function seal(args: string[], io: CliIo): Promise<number> {
  const { values } = parse(args, { to: { type: 'string' }, alg: { type: 'string', default: 'chacha20-poly1305' } });
  if (values.to === undefined) throw new UsageError('seal needs --to PUBLIC.pem');
  const alg = contentAlgByName(values.alg ?? '');
  if (alg === undefined) throw new UsageError(`unknown --alg ${values.alg ?? ''}; one of ${COSE_CONTENT_ALGS.map((a) => a.name).join(', ')}`);
  const recipientPublicKey = x25519PublicFromPem(readKeyFile(values.to));
  const plaintext = await readAll(io.stdin);
  io.stdout.write(sealEncrypt({ alg: alg.name as CoseAlgName, recipientPublicKey, plaintext }));
  zeroize(plaintext);
  return 0;
}

async function open(args: string[], io: CliIo): Promise<number> {
  const { values } = parse(args, { key: { type: 'string' } });
  if (values.key === undefined) throw new UsageError('open needs --key PRIVATE.pem');
  const privateKey = x25519PrivateFromPem(readKeyFile(values.key));
  const recipient = x25519Recipient(getProvider(), privateKey);
  zeroize(privateKey);
  try {
    const { plaintext } = openCose(await readAll(io.stdin), { recipient });
    io.stdout.write(plaintext);
    return 0;
  } finally {
    recipient.destroy();
  }
}

async function keygen(args: string[], io: CliIo): Promise<number> {
  const { values } = parse(args, { out: { type: 'string' } });
  if (values.out === undefined) throw new UsageError('keygen needs --out NAME');
  const keyPath = `${values.out}.key`;
  const pubPath = `${values.out}.pub`;
  for (const p of [keyPath, pubPath]) if (existsSync(p)) throw new UsageError(`${p} exists; refusing to overwrite a key`);
  const { privatePem, publicPem } = generateX25519Pem();
  // 'wx' (O_CREAT | O_EXCL): never write through a file planted between the check and the write.
  writeFileSync(keyPath, privatePem, { mode: 0o600, flag: 'wx' });
  writeFileSync(pubPath, publicPem, { mode: 0o644, flag: 'wx' });
  io.stderr.write(`wrote ${keyPath} (private, mode 0600) and ${pubPath}\n`);
  return 0;
}

export const command: CommandModule = withSubCommands('seal/open COSE messages, make X25519 key pairs', HELP, { seal, open, keygen });
