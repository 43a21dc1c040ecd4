/**
 * Has the MQTT broker load the fleet CRL after a revocation. mosquitto reads its `crlfile` only at
 * start and on SIGHUP (docs/transport-mqtts.md, "Revocation in mosquitto 2.0.11"), so a CRL the CA
 * has just written does nothing until the broker is told. The operator says how
 * (`mqtt.crlReload`, docs/ingest.md), in up to three steps, run in this order:
 *
 *   copyTo    the CA's CRL is checked (a PEM X.509 CRL that parses) and copied atomically, mode
 *             0644, to the broker's `crlfile` (when the broker does not read the CA's file itself)
 *   pidFile   SIGHUP to the process whose id the file holds (mosquitto's `pid_file`)
 *   command   a program run without a shell, with only PATH, VITALSEAL_CRL_PATH and
 *             VITALSEAL_CRL_NUMBER in its environment (the ingest's own environment may carry
 *             secret sources), e.g. [/usr/bin/systemctl, reload, mosquitto]; exit status 0 = done
 *
 * Reloads never overlap: a change while one runs queues exactly one more, with the newest CRL.
 * A failure is logged and counted, never thrown at the registry: the revocation has taken effect
 * in the registry regardless (the ingest refuses the device's messages), and the next CRL change
 * tries again.
 *
 * @example
 *   const reloader = new BrokerCrlReloader({ config: { copyTo: '/etc/mosquitto/fleet-crl.pem', command: ['/usr/bin/systemctl', 'reload', 'mosquitto'] }, log });
 *   core.registry.onCrlChange((info) => void reloader.reload(info));
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../../util/atomic-file.ts';
import { parseCrl } from '../../pki/crl.ts';
import { pemDecode } from '../../pki/pem.ts';
import { ApiMisuse, DecodeError, TransportError, VitalsealError } from '../../util/errors.ts';
import type { BrokerCrlReloadConfig } from '../config.ts';
import type { IngestLogger } from '../service.ts';

/** What the registry's CRL listeners receive. */
export interface CrlChange {
  readonly crlPath?: string;
  readonly crlNumber?: number;
}

export interface BrokerCrlReloaderOptions {
  readonly config: BrokerCrlReloadConfig;
  readonly log: IngestLogger;
  /** Called after each reload with its result (the runtime counts them). */
  readonly onResult?: (ok: boolean) => void;
  /** How long `command` may run (default 30 s). */
  readonly commandTimeoutMs?: number;
}

export type ReloadResult = 'reloaded' | 'unchanged' | 'failed';

/** A CRL far larger than any fleet's: refused before it is read. */
const MAX_CRL_FILE_BYTES = 16 * 1024 * 1024;

export class BrokerCrlReloader {
  readonly #o: BrokerCrlReloaderOptions;
  #running: Promise<ReloadResult> | undefined;
  #next: { info: CrlChange; onlyIfChanged: boolean; done: Promise<ReloadResult>; resolve: (r: ReloadResult) => void } | undefined;

  constructor(o: BrokerCrlReloaderOptions) {
    if (o.config.copyTo === undefined && o.config.pidFile === undefined && o.config.command === undefined) {
      throw new ApiMisuse('invalid-config', 'mqtt.crlReload: give at least one of copyTo, pidFile, command');
    }
    this.#o = o;
  }

  /**
   * Runs the configured steps for this CRL. `onlyIfChanged` (at start-up): only when `copyTo` holds
   * something else than the CA's CRL; without `copyTo` there is nothing to compare and nothing runs.
   * Never rejects.
   */
  reload(info: CrlChange, opts: { onlyIfChanged?: boolean } = {}): Promise<ReloadResult> {
    const onlyIfChanged = opts.onlyIfChanged === true;
    if (this.#running === undefined) return this.#start(info, onlyIfChanged);
    if (this.#next !== undefined) {
      // Coalesce: the queued run picks up the newest CRL anyway (it reads the file when it runs).
      this.#next.info = info;
      this.#next.onlyIfChanged &&= onlyIfChanged;
      return this.#next.done;
    }
    let resolve!: (r: ReloadResult) => void;
    const done = new Promise<ReloadResult>((r) => {
      resolve = r;
    });
    this.#next = { info, onlyIfChanged, done, resolve };
    return done;
  }

  /** Waits for the running and queued reloads (shutdown). */
  async idle(): Promise<void> {
    while (this.#running !== undefined) await this.#running;
  }

  #start(info: CrlChange, onlyIfChanged: boolean): Promise<ReloadResult> {
    const run = this.#run(info, onlyIfChanged).finally(() => {
      this.#running = undefined;
      const next = this.#next;
      this.#next = undefined;
      if (next !== undefined) void this.#start(next.info, next.onlyIfChanged).then(next.resolve);
    });
    this.#running = run;
    return run;
  }

  async #run(info: CrlChange, onlyIfChanged: boolean): Promise<ReloadResult> {
    const { copyTo, pidFile, command } = this.#o.config;
    if (onlyIfChanged && copyTo === undefined) return 'unchanged';
    let step = 'copyTo';
    try {
      if (copyTo !== undefined) {
        const crl = await readCrl(info.crlPath);
        const current = await readFile(copyTo).catch(() => undefined);
        if (onlyIfChanged && current !== undefined && Buffer.compare(current, crl) === 0) return 'unchanged';
        await writeFileAtomic(copyTo, crl, 0o644);
      }
      step = 'pidFile';
      if (pidFile !== undefined) await signalPidFile(pidFile);
      step = 'command';
      if (command !== undefined) await runCommand(command, info, this.#o.commandTimeoutMs ?? 30_000);
    } catch (e) {
      this.#o.onResult?.(false);
      this.#o.log.error({ step: `mqtt.crlReload.${step}`, crlNumber: info.crlNumber, err: describe(e) }, 'the broker did not get the new CRL: it accepts revoked certificates until it reloads');
      return 'failed';
    }
    this.#o.onResult?.(true);
    this.#o.log.info({ crlNumber: info.crlNumber, copied: copyTo !== undefined, signalled: pidFile !== undefined, command: command !== undefined }, 'broker told to reload the CRL');
    return 'reloaded';
  }
}

/** The CA's CRL, checked to be one: a broker must never be handed something else as its CRL. */
async function readCrl(path: string | undefined): Promise<Buffer> {
  if (path === undefined) throw new ApiMisuse('invalid-config', 'no CRL to copy: the configuration has no pki section (the CA that writes the CRL)');
  const bytes = await readFile(path);
  if (bytes.length > MAX_CRL_FILE_BYTES) throw new DecodeError('too-large', `${path}: larger than ${MAX_CRL_FILE_BYTES} bytes`);
  const blocks = pemDecode(bytes.toString('utf8'), 'X509 CRL');
  if (blocks.length !== 1) throw new DecodeError('malformed', `${path}: expected one PEM X509 CRL, found ${blocks.length}`);
  parseCrl((blocks[0] as { der: Uint8Array }).der);
  return bytes;
}

async function signalPidFile(path: string): Promise<void> {
  const text = (await readFile(path, 'utf8').catch((e: unknown) => {
    throw new ApiMisuse('invalid-config', `mqtt.crlReload.pidFile: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  })).slice(0, 64);
  const m = /^\s*([0-9]{1,10})\s*$/.exec(text);
  const pid = m === null ? NaN : Number(m[1]);
  if (!Number.isSafeInteger(pid) || pid <= 1) throw new ApiMisuse('invalid-config', `mqtt.crlReload.pidFile: ${path} does not hold a process id`);
  try {
    process.kill(pid, 'SIGHUP');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ESRCH' ? 'no such process (a stale pid file?)' : code === 'EPERM' ? 'not permitted (the broker runs as another user: use crlReload.command instead)' : String(code);
    throw new TransportError('crl-reload-failed', `SIGHUP to process ${pid} from ${path}: ${why}`);
  }
}

function runCommand(argv: readonly string[], info: CrlChange, timeoutMs: number): Promise<void> {
  const [file, ...args] = argv as [string, ...string[]];
  const env: NodeJS.ProcessEnv = {
    PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    ...(info.crlPath === undefined ? {} : { VITALSEAL_CRL_PATH: info.crlPath }),
    ...(info.crlNumber === undefined ? {} : { VITALSEAL_CRL_NUMBER: String(info.crlNumber) }),
  };
  return new Promise((resolve, reject) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 64 * 1024, killSignal: 'SIGKILL' }, (err, _stdout, stderr) => {
      if (err === null) {
        resolve();
        return;
      }
      const status = err.killed === true ? `killed after ${timeoutMs} ms` : typeof err.code === 'number' ? `exit status ${err.code}` : String(err.code ?? err.message);
      const tail = String(stderr).trim().split('\n').slice(-2).join(' | ').slice(0, 300);
      reject(new TransportError('crl-reload-failed', `${file}: ${status}${tail.length > 0 ? ` (${tail})` : ''}`));
    });
  });
}

function describe(e: unknown): string {
  if (e instanceof VitalsealError) return `${e.message} [${e.code}]`;
  return (e instanceof Error ? e.message : String(e)).slice(0, 300);
}
