/**
 * `vitalseal ingest ...`: run and operate the ingest service. Every sub-command reads the same
 * configuration file (--config, docs/ingest.md). Commands that open a key (the key store or the CA
 * key) run the start-up self-test first; the operator commands write their own audit log
 * (`audit.cliPath`), since the running service owns the main one.
 *
 *   vitalseal ingest run --config /etc/vitalseal/ingest.yaml
 *   vitalseal ingest keygen --config ingest.yaml --public-out ingest-static.pub.pem
 *   vitalseal ingest enrol-token --config ingest.yaml --device-id bed-7 --ttl 24h
 *   vitalseal ingest devices revoke bed-7 --config ingest.yaml --reason stolen
 *   vitalseal ingest backup --config ingest.yaml --out /backups/ingest-2026-11-25.vsbackup
 *   vitalseal ingest restore /backups/ingest-2026-11-25.vsbackup --config restore.yaml --verify
 */
import { createPublicKey } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import pino from 'pino';
import { openAuditLog } from '../../audit/log.ts';
import { writeBackup } from '../../ingest/backup/archive.ts';
import { formatDrillReport, restoreBackup } from '../../ingest/backup/restore.ts';
import { loadIngestConfig, type IngestConfig } from '../../ingest/config.ts';
import { DeviceRegistry } from '../../ingest/registry.ts';
import { coapsListener, mqttListener } from '../../ingest/listeners/index.ts';
import { registerPskDevice } from '../../ingest/psk-store.ts';
import { INGEST_NODE_OPTIONS, missingNodeOptions } from '../../ingest/node-options.ts';
import { checkListeners, devCaAdapters, openCa, openCoreFromConfig, openStorage, startIngest, type Listeners, type RuntimeDeps } from '../../ingest/runtime.ts';
import { cryptoSelfTest, INGEST_AEADS, type StartupSelfTest } from '../../ingest/selftest.ts';
import type { IngestLogger } from '../../ingest/service.ts';
import { retireStaticKeys, rotateStaticKey } from '../../ingest/static-key.ts';
import type { DeviceStatus, IngestStorage } from '../../ingest/storage/types.ts';
import { createApiToken, createEnrolToken, TOKEN_NAME_PATTERN } from '../../ingest/tokens.ts';
import { AuditTrail } from '../../ingest/audit-trail.ts';
import { openKeyStore } from '../../keystore/open.ts';
import { KEY_NAME_PATTERN } from '../../keystore/types.ts';
import { systemClock, type Clock } from '../../util/clock.ts';
import { isDeviceId } from '../../util/device-id.ts';
import { parse } from '../args.ts';
import { UsageError, type CliIo, type CommandModule } from '../types.ts';

const HELP = `usage: vitalseal ingest <command> --config FILE [options]

  run                            start the service (HTTPS API, enrolment, dashboard, metrics, and the MQTT listener
                                 when configured); SIGINT/SIGTERM stop it
  check-config                   validate the configuration and say what it would start
  keygen [--public-out FILE]     make the static X25519 key (or its next version); prints the public key devices pin
  devices list [--json]          the registry with each device's posture
  devices add-psk --device-id ID --key-out FILE
                                 register a PSK device (CoAPS): its key is wrapped under the KEK and
                                 written once to FILE (new, mode 0600; - prints it once)
  devices suspend|resume|revoke ID [--reason TEXT]
                                 change a device's status (revoke is final and regenerates the CRL)
  enrol-token --device-id ID [--ttl 24h]
                                 a one-time enrolment token (printed once; stored hashed)
  api-token create --name NAME [--role reader|admin] [--ttl 90d]
  api-token list | api-token revoke --name NAME
  backup --out FILE              encrypted archive with a signed manifest
  restore FILE [--verify] [--signer-pubkey PEM]
                                 restore into the (empty) configured database; --verify runs the drill
  keys rotate --device ID        rotate a device's data key now
  keys rotate-kek --name NEW     re-wrap every wrapped key (data keys, static key, PSKs) under a new KEK
  keys retire-kek --name OLD     delete an old KEK from the key store once nothing uses it
  keys retire-static             destroy every static key version but the current one (after devices moved)
  rekey [--device ID] [--force]  run a re-key pass now (--force: without the grace period; stop the service first)

Durations: 90s, 15m, 24h, 30d. Secrets are never options: the configuration says where they are.
`;

/** What the command needs from outside; tests give their own. */
export interface IngestCommandDeps {
  readonly selfTest?: StartupSelfTest;
  /** `run` stops when this aborts (default: SIGINT or SIGTERM). */
  readonly signal?: AbortSignal;
  readonly clock?: Clock;
  /** Called once `run` is serving (tests read the URL). */
  readonly onListening?: (url: string) => void;
  /** The node options `run` checks for INGEST_NODE_OPTIONS (default `process.execArgv`). */
  readonly execArgv?: readonly string[];
}

/** The transport listeners in this build; a section for any other is refused (`checkListeners`). */
const LISTENERS: Listeners = { mqtt: mqttListener, coaps: coapsListener };

function duration(v: string | undefined, flag: string, def: number): number {
  if (v === undefined) return def;
  const m = /^([1-9][0-9]{0,6})(s|m|h|d)$/.exec(v);
  if (m === null) throw new UsageError(`${flag}: a duration such as 90s, 15m, 24h or 30d`);
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd'];
}

function stderrLogger(io: CliIo, level: IngestConfig['log']['level']): IngestLogger {
  return pino({ level, base: { service: 'vitalseal-ingest' } }, io.stderr as unknown as pino.DestinationStream);
}

function quietLogger(io: CliIo): IngestLogger {
  return {
    info: () => undefined,
    warn: (_o, m) => io.stderr.write(`warning: ${m}\n`),
    error: (o, m) => io.stderr.write(`error: ${m} ${JSON.stringify(o)}\n`),
  };
}

async function withStorage<T>(cfg: IngestConfig, io: CliIo, fn: (s: IngestStorage) => Promise<T>): Promise<T> {
  const s = await openStorage(cfg, io.env);
  try {
    await s.init();
    return await fn(s);
  } finally {
    await s.close();
  }
}

/** An audit trail on the operator commands' log, for commands that open no key. */
async function withCliAudit<T>(cfg: IngestConfig, clock: Clock, fn: (t: AuditTrail) => Promise<T>): Promise<T> {
  const log = await openAuditLog({ path: cfg.audit.cliPath, clock, actor: 'cli' });
  try {
    return await fn(new AuditTrail({ log, actor: 'cli' }));
  } finally {
    await log.close();
  }
}

function ageText(ms: number | undefined, now: number): string {
  if (ms === undefined) return '-';
  const s = Math.round((now - ms) / 1000);
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : s < 172_800 ? `${Math.round(s / 3600)}h` : `${Math.round(s / 86_400)}d`;
}

export async function runIngestCommand(args: string[], io: CliIo, deps: IngestCommandDeps = {}): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
    io.stdout.write(HELP);
    return sub === undefined ? 2 : 0;
  }
  const { values, positionals } = parse(rest, {
    config: { type: 'string' }, json: { type: 'boolean' }, reason: { type: 'string' }, 'device-id': { type: 'string' }, device: { type: 'string' },
    ttl: { type: 'string' }, name: { type: 'string' }, role: { type: 'string' }, out: { type: 'string' }, verify: { type: 'boolean' },
    'signer-pubkey': { type: 'string' }, 'public-out': { type: 'string' }, force: { type: 'boolean' }, 'key-out': { type: 'string' },
  });
  if (values.config === undefined) throw new UsageError('--config FILE is required');
  const cfg = loadIngestConfig(values.config);
  const clock = deps.clock ?? systemClock;
  const selfTest = async (): Promise<StartupSelfTest> => deps.selfTest ?? cryptoSelfTest(INGEST_AEADS);
  const runtime = async (log: IngestLogger): Promise<RuntimeDeps> => ({ env: io.env, selfTest: await selfTest(), log, clock });
  const noMore = (n: number) => {
    if (positionals.length > n) throw new UsageError(`unexpected argument ${positionals[n] ?? ''}`);
  };

  switch (sub) {
    case 'run': {
      noMore(0);
      checkListeners(cfg, LISTENERS);
      const log = stderrLogger(io, cfg.log.level);
      const missing = missingNodeOptions(deps.execArgv ?? process.execArgv);
      if (missing.length > 0) {
        log.warn({ missing, run: `node ${INGEST_NODE_OPTIONS.join(' ')} $(command -v vitalseal) ingest run --config FILE` }, 'started without the ingest\'s node options: more CPU a message goes to garbage collection (docs/ingest.md, "Node options")');
      }
      const running = await startIngest(cfg, { ...await runtime(log), listeners: LISTENERS });
      deps.onListening?.(running.http?.url ?? '');
      await new Promise<void>((resolve) => {
        if (deps.signal !== undefined) {
          if (deps.signal.aborted) resolve();
          deps.signal.addEventListener('abort', () => resolve(), { once: true });
          return;
        }
        const stop = () => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      await running.stop();
      return 0;
    }
    case 'check-config': {
      noMore(0);
      checkListeners(cfg, LISTENERS);
      const m = cfg.mqtt;
      const c = cfg.coaps;
      io.stdout.write([
        `${cfg.source}: valid`,
        `  storage   ${cfg.storage.kind === 'sqlite' ? `sqlite ${cfg.storage.path}` : 'postgres (connection string from its secret source)'}`,
        `  key store ${cfg.keystore.kind}, KEK '${cfg.keys.kek}'`,
        `  audit     ${cfg.audit.path} (operator commands: ${cfg.audit.cliPath})`,
        `  https     ${cfg.https === undefined ? 'not configured' : `${cfg.https.host}:${cfg.https.port}${cfg.https.redirectPort === undefined ? '' : `, redirect from :${cfg.https.redirectPort}`}`}`,
        `  enrolment ${cfg.pki === undefined ? 'off (no pki section)' : `CA ${cfg.pki.dir}`}`,
        `  mqtt      ${m === undefined ? 'not configured' : `${m.url} as client ${m.clientId}, $share/${m.sharedGroup}/${m.topic}; CRL reload: ${m.crlReload === undefined ? 'not configured' : Object.keys(m.crlReload).join(' + ')}`}`,
        `  coaps     ${c === undefined ? 'not configured' : `udp ${c.host}:${c.port}${c.path}, client certificates from ${c.clientRoots.length} root file(s)${c.psk ? ', PSK devices too' : ''}; server key ${c.keyStoreKey === undefined ? 'from a PEM file' : `'${c.keyStoreKey}' in the key store`}`}`,
        '',
      ].join('\n'));
      return 0;
    }
    case 'keygen': {
      noMore(0);
      const core = await openCoreFromConfig(cfg, await runtime(quietLogger(io)), { allowNoStaticKey: true, cli: true });
      try {
        const k = await rotateStaticKey(core.hierarchy, core.provider);
        const pem = createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(k.publicKey).toString('base64url') }, format: 'jwk' }).export({ format: 'pem', type: 'spki' }).toString();
        await core.audit.append({ actor: 'cli', operation: 'create', keyId: 'ingest-static', result: 'ok', detail: `static key version ${k.version}` });
        if (values['public-out'] !== undefined) writeFileSync(values['public-out'], pem, { flag: 'wx', mode: 0o644 });
        io.stdout.write(pem);
        io.stderr.write(`ingest static key version ${k.version}, kid ${Buffer.from(k.kid).toString('hex')}${k.version > 1 ? '; older versions keep opening until retired' : ''}\n`);
      } finally {
        await core.close();
      }
      return 0;
    }
    case 'devices': {
      const [action, id] = positionals;
      if (action === 'list') {
        noMore(1);
        return withStorage(cfg, io, async (s) => {
          const list = await s.listDevices();
          const now = clock.now();
          if (values.json === true) io.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
          else {
            io.stdout.write('DEVICE                           STATUS     TRANSPORT  LAST-SEEN  EPOCH-AGE  CERT-EXPIRES  REJECTED\n');
            for (const d of list) {
              io.stdout.write(`${d.deviceId.padEnd(32)} ${d.status.padEnd(10)} ${(d.transport ?? '-').padEnd(10)} ${ageText(d.lastSeenAt, now).padEnd(10)} ${ageText(d.epochStartedAt, now).padEnd(10)} ${(d.certNotAfter === undefined ? '-' : new Date(d.certNotAfter).toISOString().slice(0, 10)).padEnd(13)} ${d.rejections}\n`);
            }
          }
          return 0;
        });
      }
      if (action === 'add-psk') {
        noMore(1);
        const pskId = values['device-id'];
        if (pskId === undefined || !isDeviceId(pskId)) throw new UsageError('devices add-psk needs --device-id ID');
        const out = values['key-out'];
        if (out === undefined) throw new UsageError('devices add-psk needs --key-out FILE (written once, mode 0600; - prints the key once on stdout)');
        return addPskDevice(cfg, io, await runtime(quietLogger(io)), pskId, out);
      }
      if (action !== 'suspend' && action !== 'resume' && action !== 'revoke') throw new UsageError('devices: list, add-psk, suspend, resume or revoke');
      noMore(2);
      if (id === undefined || !isDeviceId(id)) throw new UsageError(`devices ${action} needs a device id`);
      const status: DeviceStatus = action === 'suspend' ? 'suspended' : action === 'resume' ? 'active' : 'revoked';
      const reason = values.reason;
      if (reason !== undefined && (reason.length > 80 || /[^\x20-\x7e]/.test(reason))) throw new UsageError('--reason: at most 80 printable characters');
      const actor = 'cli';
      if (status === 'revoked') {
        // Revocation signs a CRL with the CA key: self-test first.
        await (await selfTest())();
      }
      const ca = status === 'revoked' ? await openCa(cfg, io.env) : undefined;
      return withStorage(cfg, io, (s) => withCliAudit(cfg, clock, async (audit) => {
        const registry = new DeviceRegistry({ storage: s, clock, audit, ...(ca === undefined ? {} : { crl: devCaAdapters(ca).crl }) });
        await registry.load();
        const r = await registry.setStatus(id, status, actor, reason);
        io.stdout.write(`${id}: ${r.device.status}${r.crlNumber === undefined ? '' : ` (CRL #${r.crlNumber} written to ${ca?.paths.crl ?? ''}; the broker must reload it)`}\n`);
        if (status === 'revoked' && ca === undefined) io.stderr.write('warning: no pki section: the device is revoked in the registry, but no CRL was written\n');
        return 0;
      }));
    }
    case 'enrol-token': {
      noMore(0);
      const id = values['device-id'];
      if (id === undefined || !isDeviceId(id)) throw new UsageError('--device-id ID is required (1-64 characters of A-Z a-z 0-9 . _ -)');
      const ttl = duration(values.ttl, '--ttl', cfg.ingest.enrolTokenTtlSeconds * 1000);
      return withStorage(cfg, io, (s) => withCliAudit(cfg, clock, async (audit) => {
        const t = await createEnrolToken(s, { deviceId: id, now: clock.now(), ttlMs: ttl });
        await audit.append({ operation: 'token', result: 'ok', code: 'enrol-token', detail: `enrolment token for ${id}, valid until ${new Date(t.expiresAt).toISOString()}` });
        io.stdout.write(`${t.token}\n`);
        io.stderr.write(`one-time enrolment token for ${id}, valid until ${new Date(t.expiresAt).toISOString()}; it is shown only now\n`);
        return 0;
      }));
    }
    case 'api-token': {
      const [action] = positionals;
      noMore(1);
      return withStorage(cfg, io, (s) => withCliAudit(cfg, clock, async (audit) => {
        if (action === 'list') {
          for (const t of await s.listApiTokens()) {
            const state = t.revokedAt !== undefined ? 'revoked' : t.expiresAt !== undefined && t.expiresAt <= clock.now() ? 'expired' : 'live';
            io.stdout.write(`${t.name.padEnd(24)} ${t.role.padEnd(7)} ${state.padEnd(8)} created ${new Date(t.createdAt).toISOString()}${t.expiresAt === undefined ? '' : ` expires ${new Date(t.expiresAt).toISOString()}`}\n`);
          }
          return 0;
        }
        const name = values.name;
        if (name === undefined || !TOKEN_NAME_PATTERN.test(name)) throw new UsageError('--name NAME is required (1-40 characters of A-Z a-z 0-9 _ . -)');
        if (action === 'create') {
          const role = values.role ?? 'reader';
          if (role !== 'reader' && role !== 'admin') throw new UsageError('--role reader or admin');
          const ttl = values.ttl === undefined ? undefined : duration(values.ttl, '--ttl', 0);
          const t = await createApiToken(s, { name, role, now: clock.now(), ...(ttl === undefined ? {} : { ttlMs: ttl }) });
          await audit.append({ operation: 'token', result: 'ok', code: 'api-token', detail: `API token ${name} (${role}) created` });
          io.stdout.write(`${t.token}\n`);
          io.stderr.write(`API token ${name} (${role})${t.expiresAt === undefined ? '' : `, valid until ${new Date(t.expiresAt).toISOString()}`}; it is shown only now\n`);
          return 0;
        }
        if (action === 'revoke') {
          const n = await s.revokeApiToken(name, clock.now());
          await audit.append({ operation: 'revoke', result: n > 0 ? 'ok' : 'error', code: 'api-token', detail: `API token ${name}: ${n} revoked` });
          if (n === 0) {
            io.stderr.write(`no live API token named ${name}\n`);
            return 1;
          }
          io.stdout.write(`revoked ${n} token(s) named ${name}\n`);
          return 0;
        }
        throw new UsageError('api-token: create, list or revoke');
      }));
    }
    case 'backup': {
      noMore(0);
      if (values.out === undefined) throw new UsageError('backup needs --out FILE');
      const out = values.out;
      const core = await openCoreFromConfig(cfg, await runtime(quietLogger(io)), { allowNoStaticKey: true, cli: true });
      try {
        const r = await writeBackup({ storage: core.storage, keyStore: core.keyStore, kekName: core.kekName, signerName: cfg.keys.backupSigningKey, clock, out, provider: core.provider });
        await core.audit.append({ actor: 'cli', operation: 'backup', keyId: cfg.keys.backupSigningKey, result: 'ok', detail: `${r.counts.messages} messages, ${r.counts.devices} devices, archive ${r.archiveId.slice(0, 16)}` });
        io.stdout.write([
          `backup written: ${r.path} (${r.bytes} bytes, ${r.chunks} chunks)`,
          `  archive id   ${r.archiveId}`,
          `  records      ${r.counts.devices} devices, ${r.counts.keys} wrapped keys, ${r.counts.tokens} API tokens, ${r.counts.messages} messages`,
          `  merkle root  ${r.merkleRoot}`,
          `  signed by    key-store key '${cfg.keys.backupSigningKey}'`,
          '',
        ].join('\n'));
      } finally {
        await core.close();
      }
      return 0;
    }
    case 'restore': {
      const [file] = positionals;
      noMore(1);
      if (file === undefined) throw new UsageError('restore needs the archive FILE');
      const signerPem = values['signer-pubkey'] === undefined ? undefined : readFileSync(values['signer-pubkey'], 'utf8');
      const log = quietLogger(io);
      const rt = await runtime(log);
      // Self-test before the key store opens; the restore runs on a bare database (no static key yet).
      await rt.selfTest();
      const storage = await openStorage(cfg, io.env);
      let keyStore;
      try {
        await storage.init();
        keyStore = await openKeyStore(cfg.keystore, { env: io.env, logger: { warn: (m) => log.warn({}, m) } });
        const report = await restoreBackup({ path: file, storage, keyStore, clock, verify: values.verify === true, ...(signerPem === undefined ? {} : { trustedSignerPem: signerPem }) });
        await withCliAudit(cfg, clock, (audit) => audit.append({ operation: 'restore', result: report.drill?.ok === false ? 'error' : 'ok', detail: `archive ${report.archive.id.slice(0, 16)}: ${report.restored.messages} messages${report.drill === undefined ? '' : `, drill ${report.drill.ok ? 'passed' : 'FAILED'}`}` }));
        io.stdout.write(formatDrillReport(report));
        return report.drill?.ok === false ? 1 : 0;
      } finally {
        await keyStore?.close();
        await storage.close();
      }
    }
    case 'keys': {
      const [action] = positionals;
      noMore(1);
      if (action === 'rotate-kek' || action === 'retire-kek') return kekCommand(cfg, io, await runtime(quietLogger(io)), action, values.name);
      if (action === 'retire-static') {
        const core = await openCoreFromConfig(cfg, await runtime(quietLogger(io)), { cli: true });
        try {
          const destroyed = await retireStaticKeys(core.hierarchy);
          await core.audit.append({ actor: 'cli', operation: 'destroy', keyId: 'ingest-static', result: 'ok', detail: `static key versions retired: ${destroyed.join(', ') || 'none'}` });
          io.stdout.write(destroyed.length === 0 ? 'only the current static key version is held; nothing retired\n'
            : `static key version(s) ${destroyed.join(', ')} destroyed: messages still sealed to them can no longer be opened\n`);
        } finally {
          await core.close();
        }
        return 0;
      }
      if (action !== 'rotate') throw new UsageError('keys: rotate --device ID, rotate-kek --name NEW, retire-kek --name OLD, or retire-static');
      const id = values.device;
      if (id === undefined || !isDeviceId(id)) throw new UsageError('keys rotate needs --device ID');
      const core = await openCoreFromConfig(cfg, await runtime(quietLogger(io)), { allowNoStaticKey: true, cli: true });
      try {
        const v = await core.rekey.rotate(id);
        io.stdout.write(`${id}: data key version ${v} is current; older rows move in the next re-key pass\n`);
      } finally {
        await core.close();
      }
      return 0;
    }
    case 'rekey': {
      noMore(0);
      const id = values.device;
      if (id !== undefined && !isDeviceId(id)) throw new UsageError('--device: a device id');
      const core = await openCoreFromConfig(cfg, await runtime(quietLogger(io)), { allowNoStaticKey: true, cli: true });
      const ac = new AbortController();
      const interrupt = () => ac.abort();
      process.once('SIGINT', interrupt);
      try {
        const r = await core.rekey.runOnce({ signal: ac.signal, force: values.force === true, ...(id === undefined ? {} : { deviceIds: [id] }) });
        if (!r.ran) {
          io.stderr.write('another instance holds the re-key lease; nothing done\n');
          return 1;
        }
        for (const d of r.devices) {
          io.stdout.write(`${d.deviceId}: ${d.rotatedTo === undefined ? '' : `rotated to v${d.rotatedTo}; `}${d.report === undefined ? 're-key waits for the grace period' : `${d.report.rewritten} rows re-keyed${d.report.resumed ? ' (resumed)' : ''}, destroyed v${d.report.destroyedVersions.join(', v') || '-'}`}\n`);
        }
        if (r.devices.length === 0) io.stdout.write('nothing to rotate or re-key\n');
      } finally {
        process.off('SIGINT', interrupt);
        await core.close();
      }
      return 0;
    }
    default:
      throw new UsageError(`unknown sub-command '${sub}'`);
  }
}

/**
 * `devices add-psk`: registers a PSK device (key wrapped under the KEK, in the registry's
 * transaction) and hands its one clear copy to the operator: a new file, mode 0600, opened before
 * anything is registered so a bad path costs nothing; or stdout with `-`.
 */
async function addPskDevice(cfg: IngestConfig, io: CliIo, rt: RuntimeDeps, deviceId: string, out: string): Promise<number> {
  let fd: number | undefined;
  if (out !== '-') {
    try {
      fd = openSync(out, 'wx', 0o600);
    } catch (e) {
      throw new UsageError(`--key-out ${out}: ${(e as NodeJS.ErrnoException).code === 'EEXIST' ? 'exists; refusing to overwrite a key file' : `cannot create (${(e as NodeJS.ErrnoException).code ?? 'error'})`}`);
    }
  }
  let written = false;
  try {
    const core = await openCoreFromConfig(cfg, rt, { allowNoStaticKey: true, cli: true });
    try {
      const reg = await registerPskDevice({ registry: core.registry, keyStore: core.keyStore, kekName: cfg.keys.kek, clock: core.clock, provider: core.provider, audit: core.audit }, deviceId, { actor: 'cli' });
      const hex = Buffer.from(`${Buffer.from(reg.key).toString('hex')}\n`);
      try {
        if (fd === undefined) io.stdout.write(hex.toString());
        else {
          writeSync(fd, hex);
          fsyncSync(fd);
        }
        written = true;
      } finally {
        hex.fill(0);
        reg.key.fill(0);
      }
      io.stderr.write(`${deviceId}: registered as a PSK device (identity ${reg.identity}); ${fd === undefined ? 'the key above is shown only now' : `key in ${out} (mode 0600), the only copy outside the key store`}: give it to the device as transport.primary.psk.keyFile\n`);
      return 0;
    } finally {
      await core.close();
    }
  } finally {
    if (fd !== undefined) {
      closeSync(fd);
      if (!written) rmSync(out, { force: true });
    }
  }
}

/**
 * `keys rotate-kek --name NEW`: every wrapped record (data keys, the static key, PSKs) re-wrapped
 * under NEW; resumable (run it again). `keys retire-kek --name OLD`: deletes OLD from the key store
 * once nothing uses it. docs/operations.md has the whole procedure (configuration, restarts, backups).
 */
async function kekCommand(cfg: IngestConfig, io: CliIo, rt: RuntimeDeps, action: 'rotate-kek' | 'retire-kek', name: string | undefined): Promise<number> {
  if (name === undefined || !KEY_NAME_PATTERN.test(name)) throw new UsageError(`keys ${action} needs --name NAME (a key name: letters, digits, . _ -)`);
  const core = await openCoreFromConfig(cfg, rt, { allowNoStaticKey: true, cli: true });
  try {
    if (action === 'rotate-kek') {
      if (name === cfg.keys.kek) throw new UsageError(`--name ${name} is already keys.kek; name the new KEK`);
      const r = await core.hierarchy.rotateKek(name);
      await core.audit.append({ actor: 'cli', operation: 'rotate', keyId: name, result: 'ok', detail: `KEK rotation: ${r.rewrapped} wrapped key record(s) now under ${name}` });
      io.stdout.write(`${r.rewrapped} wrapped key record(s) re-wrapped under ${name}; the data is untouched\n`);
      io.stderr.write(`next: set keys.kek: ${name} in ${cfg.source}, restart every instance, run this command again (it re-wraps what instances wrapped meanwhile), then retire the old KEK once no backup you keep needs it\n`);
      return 0;
    }
    if (name === cfg.keys.kek) throw new UsageError(`--name ${name} is keys.kek in ${cfg.source}: rotate to a new KEK first`);
    // A record wrapped under `name` makes retireKek refuse; it also refuses the hierarchy's current KEK.
    await core.hierarchy.retireKek(name);
    await core.audit.append({ actor: 'cli', operation: 'destroy', keyId: name, result: 'ok', detail: `KEK ${name} retired: deleted from the key store` });
    io.stdout.write(`KEK ${name} deleted from the key store; backups whose archive key it wrapped can no longer be restored\n`);
    return 0;
  } finally {
    await core.close();
  }
}

export const command: CommandModule = {
  summary: 'run and operate the ingest service',
  run: (args, io) => runIngestCommand(args, io),
};
