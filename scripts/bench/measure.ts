/**
 * Throughput measurement with the baseline interleaved: each round runs the candidate and then the
 * baseline for the same window, and the reported rates are medians over rounds, so drift (CPU
 * frequency, another process) hits both sides alike.
 *
 * Rates are operations per second of this process's CPU time (user + system), not of wall time:
 * for the synchronous loops measured here that is the cost of the work itself, and it stays
 * meaningful when other processes compete for the cores (wall-clock rates then mostly measure the
 * scheduler). On an idle machine the two agree.
 */
import { readFileSync } from 'node:fs';

export interface RatePair {
  readonly value: number;
  readonly baseline: number;
}

function opsPerSecond(fn: () => void, windowMs: number): number {
  let ops = 0;
  const start = performance.now();
  const cpuStart = process.cpuUsage();
  const end = start + windowMs;
  let now = start;
  // Check the clock every 16 calls: cheap enough not to dominate sub-microsecond operations.
  while (now < end) {
    for (let i = 0; i < 16; i++) fn();
    ops += 16;
    now = performance.now();
  }
  const cpu = process.cpuUsage(cpuStart);
  const cpuMs = (cpu.user + cpu.system) / 1000;
  return (ops * 1000) / cpuMs;
}

/** CPU time (user + system) of another process in ms, from /proc (clock ticks of 10 ms on Linux); 0 if it is gone. */
export function processCpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return 0;
  }
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function compareRates(candidate: () => void, baseline: () => void, opts: { windowMs: number; rounds: number }): RatePair {
  // Warm-up: let V8 optimise both before anything counts.
  opsPerSecond(candidate, Math.min(100, opts.windowMs));
  opsPerSecond(baseline, Math.min(100, opts.windowMs));
  const a: number[] = [];
  const b: number[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    a.push(opsPerSecond(candidate, opts.windowMs));
    b.push(opsPerSecond(baseline, opts.windowMs));
  }
  return { value: median(a), baseline: median(b) };
}

/**
 * Median milliseconds per call of an async operation (wall time: these wait on I/O, a TPM, a peer),
 * candidate and baseline interleaved per round, after a warm-up of each.
 */
export async function compareLatency(candidate: () => Promise<unknown>, baseline: () => Promise<unknown>, opts: { windowMs: number; rounds: number }): Promise<RatePair> {
  const run = async (fn: () => Promise<unknown>, ms: number) => {
    const times: number[] = [];
    const end = performance.now() + ms;
    while (performance.now() < end || times.length < 3) {
      const t = performance.now();
      await fn();
      times.push(performance.now() - t);
    }
    return median(times);
  };
  await run(candidate, Math.min(100, opts.windowMs));
  await run(baseline, Math.min(100, opts.windowMs));
  const a: number[] = [];
  const b: number[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    a.push(await run(candidate, opts.windowMs));
    b.push(await run(baseline, opts.windowMs));
  }
  return { value: median(a), baseline: median(b) };
}

export function windows(quick: boolean): { windowMs: number; rounds: number } {
  return quick ? { windowMs: 40, rounds: 1 } : { windowMs: 150, rounds: 5 };
}

export const SIZES: readonly [string, number][] = [['64B', 64], ['1KiB', 1024], ['16KiB', 16384]];
