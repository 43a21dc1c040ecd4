/**
 * Child processes a script starts and must not leave behind: each one's output goes to a log file,
 * `stopAll` asks every process to stop (SIGTERM), waits, then kills what is left, and a process
 * exit hook kills anything still running if the script dies first. Used by the demo, the
 * end-to-end suite and the examples that start a local installation.
 *
 * @example
 *   const procs = new ProcessGroup();
 *   const ingest = procs.spawn('ingest', process.execPath, [bin, 'ingest', 'run', '--config', cfg], { log: 'ingest.log' });
 *   ...
 *   await procs.stopAll();
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The `vitalseal` command of this checkout. */
export const VITALSEAL_BIN = fileURLToPath(new URL('../bin/vitalseal.mjs', import.meta.url));

export interface Managed {
  readonly name: string;
  readonly child: ChildProcess;
  /** Resolves with the exit code (or the signal's name) once the process is gone. */
  readonly exited: Promise<number | string>;
  readonly alive: boolean;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<number | string>;
  /** SIGKILL at once, as a crash. */
  kill(): Promise<number | string>;
}

/** Whether a process with this id exists (EPERM: it does, and belongs to someone else). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The processes `pid` started and that still run, with their argv (from /proc/PID/task/TID/children;
 * a process that is gone by the time it is read is left out).
 */
export function childProcesses(pid: number): { pid: number; argv: string[] }[] {
  const out: { pid: number; argv: string[] }[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    let kids: string;
    try {
      kids = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
    } catch {
      continue; // the thread ended
    }
    for (const k of kids === '' ? [] : kids.split(' ')) {
      try {
        out.push({ pid: Number(k), argv: readFileSync(`/proc/${k}/cmdline`, 'utf8').split('\0').filter((a) => a !== '') });
      } catch {
        // exited meanwhile
      }
    }
  }
  return out;
}

const everyone = new Set<ChildProcess>();
let hooked = false;

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const c of everyone) {
      try {
        c.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

export class ProcessGroup {
  readonly #members: Managed[] = [];

  /** Starts `command`; stdout and stderr append to `log` (or are ignored). */
  spawn(name: string, command: string, args: readonly string[], opts: { log?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Managed {
    hook();
    const fd = opts.log === undefined ? 'ignore' : openSync(opts.log, 'a', 0o600);
    const child = spawn(command, args, { stdio: ['ignore', fd, fd], env: opts.env ?? process.env, ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }) });
    if (typeof fd === 'number') closeSync(fd);
    everyone.add(child);
    let alive = true;
    const exited = new Promise<number | string>((resolve) => {
      child.once('exit', (code, signal) => {
        alive = false;
        everyone.delete(child);
        resolve(code ?? signal ?? 'unknown');
      });
      child.once('error', () => {
        alive = false;
        everyone.delete(child);
        resolve('spawn-failed');
      });
    });
    const m: Managed = {
      name,
      child,
      exited,
      get alive() {
        return alive;
      },
      async stop(graceMs = 10_000) {
        if (!alive) return exited;
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        const r = await exited;
        clearTimeout(timer);
        return r;
      },
      async kill() {
        if (alive) child.kill('SIGKILL');
        return exited;
      },
    };
    this.#members.push(m);
    return m;
  }

  /** Stops every process started here, the newest first. */
  async stopAll(graceMs = 10_000): Promise<void> {
    for (const m of [...this.#members].reverse()) await m.stop(graceMs);
  }
}
