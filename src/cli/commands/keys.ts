/**
 * `vitalseal keys ...`: key store operations for operators, and Shamir split/combine of a key backup.
 *
 *   vitalseal keys create device-identity --store software --file dev.vsks --passphrase-env VS_PASS
 *   vitalseal keys sign device-identity --config agent.yaml < tbs.bin > sig.der
 *   echo -n "$PSK" | vitalseal keys seal mqtt-psk --config agent.yaml
 *   vitalseal keys unseal --store tpm --path /HS/SRK/mqtt-psk > psk.bin
 *   vitalseal keys split --shares 5 --threshold 3 --in ca-backup.key --out shares/ca
 *   vitalseal keys combine --out ca-backup.key shares/ca.share-1-of-5 shares/ca.share-3-of-5 shares/ca.share-4-of-5
 */
import { existsSync, writeFileSync } from 'node:fs';
import { auditKeyEvents, openAuditLog, type AuditKeyEventSink, type AuditLog } from '../../audit/index.ts';
import { combineShares, MAX_SHARED_SECRET_BYTES, splitSecret } from '../../keystore/backup-shares.ts';
import type { KeyStoreConfig } from '../../keystore/config.ts';
import { checkKeyName } from '../../keystore/names.ts';
import { openKeyStore } from '../../keystore/open.ts';
import { readPrivateFile } from '../../keystore/private-file.ts';
import type { KeyStore } from '../../keystore/types.ts';
import { zeroize } from '../../util/bytes.ts';
import { parse, readAll } from '../args.ts';
import { STORE_OPTIONS, STORE_OPTIONS_HELP, storeConfig, type StoreValues } from '../store-options.ts';
import { UsageError, withSubCommands, type CliIo, type CommandModule } from '../types.ts';

const HELP = `usage:
  vitalseal keys create NAME     make a P-256 signing key; prints its public key (PEM)
  vitalseal keys pubkey NAME     prints the public key of a signing key (PEM)
  vitalseal keys sign NAME       signs stdin (ECDSA P-256 over SHA-256), writes the DER signature on stdout
  vitalseal keys seal NAME       seals the secret read on stdin (at most 4096 bytes; 128 on a TPM)
  vitalseal keys unseal NAME     writes the sealed secret on stdout
  vitalseal keys list            lists objects: TYPE NAME
  vitalseal keys delete NAME     destroys an object
  vitalseal keys split --shares N --threshold K --in FILE --out PREFIX
                                 Shamir-splits a key backup into PREFIX.share-I-of-N (mode 0600 each)
  vitalseal keys combine --out FILE SHARE...
                                 rebuilds the backup from K shares (refuses to overwrite FILE)

store options (every sub-command but split/combine):
${STORE_OPTIONS_HELP}
  tpm:      --path /HS/SRK/NAME names the object as tpm2-tools' tss2_* commands do
  --audit-log FILE               record the key events in this audit log (one writer at a time)

Secrets never go on the command line: passphrases and PINs come from an environment variable or a
file only its owner can read (chmod 600).
`;

/** The store options plus what only `keys` takes. */
const KEYS_OPTIONS = { ...STORE_OPTIONS, path: { type: 'string' }, 'audit-log': { type: 'string' } } as const;
type KeysValues = StoreValues & { path?: string; 'audit-log'?: string };

const MAX_SEAL_INPUT = 4096;

/** The object name: the positional NAME, or for the TPM store --path /HS/SRK/NAME. */
function objectName(v: KeysValues, positionals: string[], kind: KeyStoreConfig['kind']): string {
  let name = positionals[0];
  if (v.path !== undefined) {
    if (kind !== 'tpm') throw new UsageError('--path names a TPM object (/HS/SRK/NAME); for other stores give NAME');
    const m = /^\/HS\/SRK\/([^/]+)$/.exec(v.path);
    if (m === null) throw new UsageError(`--path ${v.path}: expected /HS/SRK/NAME (FAPI makes no intermediate path elements)`);
    if (name !== undefined && name !== m[1]) throw new UsageError(`NAME ${name} and --path ${v.path} disagree`);
    name = m[1];
  }
  if (name === undefined) throw new UsageError('name the key: NAME (or --path /HS/SRK/NAME for the TPM store)');
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}'`);
  return checkKeyName(name);
}

/** Writes bytes and waits until the stream has taken them, so the caller can zeroise its buffer. */
function writeOut(stream: NodeJS.WritableStream, bytes: Uint8Array | string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(bytes, (err) => (err ? reject(err) : resolve()));
  });
}

async function withStore<T>(config: KeyStoreConfig, v: KeysValues, io: CliIo, create: boolean, fn: (store: KeyStore) => Promise<T>): Promise<T> {
  let log: AuditLog | undefined;
  let sink: AuditKeyEventSink | undefined;
  if (v['audit-log'] !== undefined) {
    log = await openAuditLog({ path: v['audit-log'] });
    sink = auditKeyEvents(log, { actor: `cli:${(io.env['USER'] ?? 'unknown').replace(/[^A-Za-z0-9_.@-]/g, '_').slice(0, 48) || 'unknown'}` });
  }
  try {
    const store = await openKeyStore(config, {
      env: io.env,
      create,
      logger: { warn: (m) => io.stderr.write(`warning: ${m}\n`) },
      ...(sink === undefined ? {} : { events: sink }),
    });
    try {
      return await fn(store);
    } finally {
      await store.close();
    }
  } finally {
    await sink?.flush();
    await log?.close();
  }
}

const STORE_SUBCOMMANDS = ['create', 'pubkey', 'sign', 'seal', 'unseal', 'list', 'delete'];

async function storeCommand(sub: string, args: string[], io: CliIo): Promise<number> {
  if (!STORE_SUBCOMMANDS.includes(sub)) throw new UsageError(`unknown sub-command '${sub}'`);
  const { values, positionals } = parse(args, KEYS_OPTIONS);
  const v = values as KeysValues;
  // Everything about the command line is checked before the store is opened.
  const config = storeConfig(v, io.env);
  if (sub === 'list') {
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    if (v.path !== undefined) throw new UsageError('list takes no --path');
    return withStore(config, v, io, false, async (store) => {
      await writeOut(io.stdout, (await store.list()).map((k) => `${k.type.padEnd(8)} ${k.name}\n`).join(''));
      return 0;
    });
  }
  const name = objectName(v, positionals, config.kind);
  switch (sub) {
    case 'create':
      return withStore(config, v, io, true, async (store) => {
        await store.createSigningKey(name);
        await writeOut(io.stdout, await store.publicKeyPem(name));
        return 0;
      });
    case 'pubkey':
      return withStore(config, v, io, false, async (store) => {
        await writeOut(io.stdout, await store.publicKeyPem(name));
        return 0;
      });
    case 'sign':
      return withStore(config, v, io, false, async (store) => {
        const signer = await store.openSigningKey(name);
        await writeOut(io.stdout, await signer.sign(await readAll(io.stdin)));
        return 0;
      });
    case 'seal': {
      const secret = await readAll(io.stdin, MAX_SEAL_INPUT);
      try {
        if (secret.length === 0) throw new UsageError('nothing on stdin to seal');
        await withStore(config, v, io, true, (store) => store.seal(name, secret));
        io.stderr.write(`sealed ${secret.length} bytes as '${name}'\n`);
      } finally {
        zeroize(secret);
      }
      return 0;
    }
    case 'unseal':
      return withStore(config, v, io, false, async (store) => {
        const secret = await store.unseal(name);
        try {
          await writeOut(io.stdout, secret);
        } finally {
          zeroize(secret);
        }
        return 0;
      });
    default: // 'delete'
      return withStore(config, v, io, false, async (store) => {
        await store.delete(name);
        io.stderr.write(`deleted '${name}'\n`);
        return 0;
      });
  }
}

function positiveInt(value: string | undefined, flag: string): number {
  if (value === undefined || !/^\d{1,3}$/.test(value)) throw new UsageError(`${flag} needs a number`);
  return Number(value);
}

async function splitCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, { shares: { type: 'string' }, threshold: { type: 'string' }, in: { type: 'string' }, out: { type: 'string' } });
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const shares = positiveInt(values.shares, '--shares');
  const threshold = positiveInt(values.threshold, '--threshold');
  if (values.in === undefined || values.out === undefined) throw new UsageError('split needs --in FILE and --out PREFIX');
  const secret = await readPrivateFile(values.in, { maxBytes: MAX_SHARED_SECRET_BYTES, what: 'key backup' });
  let texts: string[];
  try {
    texts = await splitSecret(secret, { shares, threshold });
  } finally {
    zeroize(secret);
  }
  const paths = texts.map((_, i) => `${values.out}.share-${i + 1}-of-${shares}`);
  const taken = paths.filter((p) => existsSync(p));
  if (taken.length > 0) throw new UsageError(`${taken.join(', ')} exist; refusing to overwrite shares`);
  for (const [i, text] of texts.entries()) {
    // 'wx': never overwrite an existing share (it may be the only copy of another split's share).
    writeFileSync(paths[i] as string, text, { mode: 0o600, flag: 'wx' });
  }
  io.stderr.write(`wrote ${shares} shares (any ${threshold} rebuild the backup), each mode 0600:\n${paths.map((p) => `  ${p}\n`).join('')}give each to a different custodian and delete ${values.in} once the shares are stored\n`);
  return 0;
}

async function combineCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, { out: { type: 'string' } });
  if (values.out === undefined) throw new UsageError('combine needs --out FILE');
  if (positionals.length === 0) throw new UsageError('combine needs the share files');
  const texts: string[] = [];
  for (const p of positionals) texts.push(new TextDecoder().decode(await readPrivateFile(p, { maxBytes: 4 * MAX_SHARED_SECRET_BYTES, what: 'share' })));
  const secret = await combineShares(texts);
  try {
    writeFileSync(values.out, secret, { mode: 0o600, flag: 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError(`${values.out} exists; refusing to overwrite it`);
    throw e;
  } finally {
    zeroize(secret);
  }
  io.stderr.write(`rebuilt ${values.out} (mode 0600) from ${positionals.length} shares; checksum verified\n`);
  return 0;
}

export const command: CommandModule = withSubCommands('key store operations: seal, unseal, sign, pubkey, list, delete, split',
  HELP, { split: splitCommand, combine: combineCommand }, (sub) => (args, io) => storeCommand(sub, args, io));
