/**
 * Runs an example as its header says (`npx tsx examples/NAME.ts ...`: node with tsx, from the
 * checkout) and reports what it printed, how it ended, and what it left behind: every process it
 * started inherits a marker in its environment, so a survivor is found in /proc whatever its name
 * (mosquitto, swtpm, tpm2-abrmd, PostgreSQL, the ingest, the monitor).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { processesMarked } from '../support/marked-processes.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

export interface ExampleRun {
  readonly code: number | null;
  readonly signal: string | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Processes still carrying the run's marker after the example exited (should be none). */
  readonly leftOver: string[];
  /** The local installation's directory, from the example's `local:` progress lines (gone after a clean stop). */
  readonly localDir: string | undefined;
}

export interface RunningExample {
  readonly child: ChildProcess;
  /** Resolves once stdout has a line matching `re` (rejects if the example exits first). */
  waitFor(re: RegExp, ms: number): Promise<string>;
  readonly done: Promise<ExampleRun>;
}

/** Starts `node --import tsx examples/<file> ...args` in the checkout. */
export function startExample(file: string, args: readonly string[], timeoutMs: number): RunningExample {
  const markerValue = randomUUID();
  const marker = `VITALSEAL_EXAMPLE_TEST=${markerValue}`;
  const child = spawn(process.execPath, ['--import', 'tsx', `examples/${file}`, ...args], {
    cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VITALSEAL_EXAMPLE_TEST: markerValue },
  });
  let stdout = '';
  let stderr = '';
  const waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    for (const w of [...waiters]) {
      const m = w.re.exec(stdout);
      if (m !== null) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m[0]);
      }
    }
  });
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise<ExampleRun>((resolve) => {
    child.once('exit', (code, signal) => {
      clearTimeout(killer);
      // A moment for children that were told to stop to be gone from /proc.
      setTimeout(() => resolve({
        code, signal, stdout, stderr, leftOver: processesMarked(marker),
        localDir: /^local: .*directory (\S+)/m.exec(stderr)?.[1],
      }), 300);
    });
  });
  return {
    child, done,
    waitFor(re, ms) {
      const m = re.exec(stdout);
      if (m !== null) return Promise.resolve(m[0]);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no line matching ${re} within ${ms} ms:\n${stdout}\n${stderr.split('\n').filter((l) => !l.startsWith('{"level":"info"')).join('\n').slice(-4000)}`)), ms);
        waiters.push({ re, resolve: (l) => { clearTimeout(t); resolve(l); } });
        void done.then((r) => { clearTimeout(t); reject(new Error(`the example exited (${String(r.code ?? r.signal)}) before printing ${re}:\n${r.stdout}\n${r.stderr.slice(-3000)}`)); });
      });
    },
  };
}

/** Runs an example to its end. */
export function runExample(file: string, args: readonly string[], timeoutMs = 90_000): Promise<ExampleRun> {
  return startExample(file, args, timeoutMs).done;
}

/** stderr without the agent's and the ingest's routine (info) log lines: what explains a failure. */
export function notableStderr(r: ExampleRun): string {
  return r.stderr.split('\n').filter((l) => !/^\{"level":("info"|30),/.test(l)).join('\n').slice(-6000);
}

/** What every local run must end with: exit 0, nothing running, its directory gone. */
export function cleanEnd(r: ExampleRun): string | undefined {
  if (r.code !== 0) return `exit ${String(r.code ?? r.signal)}\n${r.stdout}\n${notableStderr(r)}`;
  if (r.leftOver.length > 0) return `left running: ${r.leftOver.join('; ')}`;
  if (r.localDir === undefined) return `no local directory named on stderr:\n${r.stderr.slice(-2000)}`;
  if (existsSync(r.localDir)) return `${r.localDir} was not removed`;
  return undefined;
}
