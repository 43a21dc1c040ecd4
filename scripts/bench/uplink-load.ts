/**
 * The measured window every uplink benchmark shares: `inFlight` senders per uplink, each sending
 * the next message of its device's pool as soon as the previous one is acknowledged; a warm-up,
 * then a window in which acknowledgements and send → ack latencies are counted and the CPU time of
 * this process and of the named peer processes is taken.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Uplink, UplinkMessage } from '../../src/transport/types.ts';
import { processCpuMs } from './measure.ts';

export const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface LoadResult {
  readonly acked: number;
  readonly seconds: number;
  readonly latencies: number[];
  /** CPU ms during the window: 'self' (the senders) and each named peer process. */
  readonly cpuMs: Readonly<Record<string, number>>;
}

export async function driveUplinks(o: {
  readonly uplinks: readonly Uplink[];
  readonly pools: readonly (readonly UplinkMessage[])[];
  readonly inFlight: number;
  readonly windowMs: number;
  readonly peers: Readonly<Record<string, number | undefined>>;
}): Promise<LoadResult> {
  const latencies: number[] = [];
  let acked = 0;
  let measuring = false;
  let stop = false;
  const sender = async (u: Uplink, pool: readonly UplinkMessage[], slot: number) => {
    for (let k = slot; !stop; k += o.inFlight) {
      const m = pool[k % pool.length] as UplinkMessage;
      const t0 = performance.now();
      await u.send(m);
      if (measuring) {
        latencies.push(performance.now() - t0);
        acked += 1;
      }
    }
  };
  const running = o.uplinks.flatMap((u, i) => Array.from({ length: o.inFlight }, (_, slot) => sender(u, o.pools[i] as UplinkMessage[], slot)));
  await delay(Math.min(500, o.windowMs / 4)); // warm-up: connections settled, JIT warm
  const peers0 = Object.fromEntries(Object.entries(o.peers).map(([name, pid]) => [name, processCpuMs(pid)]));
  const self0 = process.cpuUsage();
  const t0 = performance.now();
  measuring = true;
  await delay(o.windowMs);
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  const self = process.cpuUsage(self0);
  const cpu: Record<string, number> = { self: (self.user + self.system) / 1000 };
  for (const [name, pid] of Object.entries(o.peers)) cpu[name] = processCpuMs(pid) - (peers0[name] as number);
  stop = true;
  await Promise.all(running);
  return { acked, seconds, latencies, cpuMs: cpu };
}

/**
 * A receiving side in its own process (a sink script next to the benchmark), spoken to over IPC:
 * `ask` sends a message and resolves with the first reply of the given type.
 */
export class BenchChild {
  readonly #child: ChildProcess;

  constructor(script: URL) {
    this.#child = fork(fileURLToPath(script), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  ask<T>(msg: object, type: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const onMessage = (m: { type: string }) => {
        if (m.type !== type) return;
        this.#child.off('message', onMessage);
        resolve(m as T);
      };
      this.#child.on('message', onMessage);
      this.#child.once('exit', () => reject(new Error(`${this.#child.spawnfile} exited`)));
      this.#child.send(msg);
    });
  }

  stop(): void {
    this.#child.kill('SIGTERM');
  }
}
