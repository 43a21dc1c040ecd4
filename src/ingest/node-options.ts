/**
 * The node options the ingest service is meant to run with, in one place: the demo's stack and the
 * end-to-end benchmark start it with them, `vitalseal ingest run` warns at start-up when they are
 * missing, and docs/ingest.md ("Node options") gives the command line.
 *
 * `--no-allocation-site-pretenuring`: V8 watches which allocation sites' objects survive young
 * collections and, past a threshold, allocates those sites straight into the old generation. On the
 * message path that decision is wrong: a message's objects live for one batch commit (a few ms to
 * tens of ms), long enough to survive a scavenge now and then, and once their sites are pretenured
 * every later message's objects wait in the old generation for a full mark-compact. Measured at a
 * fixed 4,000 sealed messages/s from 1000 devices (docs/scaling.md): collection time per 7-s trial
 * 444-540 → 105-215 ms, the ingest's CPU a message 227-229 → 206-225 µs.
 *
 * These are V8 flags, which Node accepts only on the command line (not in NODE_OPTIONS), and which
 * must be set before the heap starts deciding; hence options, not `v8.setFlagsFromString` at run time.
 *
 * @example
 *   spawn(process.execPath, [...INGEST_NODE_OPTIONS, vitalsealBin, 'ingest', 'run', '--config', file]);
 *   missingNodeOptions(process.execArgv);   // [] when started that way
 */
export const INGEST_NODE_OPTIONS: readonly string[] = Object.freeze(['--no-allocation-site-pretenuring']);

/**
 * Which of `wanted` the process was not started with, or started with and then undone: V8 takes
 * the last of `--no-x` and `--x`. It also reads a flag written with underscores
 * (`--no_allocation_site_pretenuring`), so both spellings count.
 */
export function missingNodeOptions(execArgv: readonly string[], wanted: readonly string[] = INGEST_NODE_OPTIONS): string[] {
  const given = execArgv.map((a) => (a.startsWith('--') ? `--${a.slice(2).replace(/_/g, '-')}` : a));
  const opposite = (flag: string) => (flag.startsWith('--no-') ? `--${flag.slice(5)}` : `--no-${flag.slice(2)}`);
  return wanted.filter((w) => given.lastIndexOf(w) <= given.lastIndexOf(opposite(w)));
}
