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
 * `--max-semi-space-size=8` (MiB): V8 grows the young generation's semi-spaces, up to 16 MiB on
 * 64-bit, when many objects survive a scavenge, and thousands of DTLS handshakes do that. A server
 * whose young generation has grown that far spends about twice the CPU on each 1 KiB DTLS record
 * it opens (after 6,000 handshakes: 5.8–6.05 µs at 16 MiB, 3.0–3.2 µs at 8 or 4 MiB, 3.35–3.7 µs
 * for a fresh server; its system time doubles too), and turning off parallel scavenges does not help
 * (7.0–7.3 µs). The same cap on the ingest's MQTT path, two interleaved pairs of full
 * `ingest-load` runs: sealed readings/s against plaintext 0.66–0.71 (SQLite) and 0.63–0.67
 * (PostgreSQL) with it, 0.51–0.60 and 0.68 without; the ingest's RSS 13–17 MiB lower
 * (docs/dtls.md, docs/scaling.md).
 *
 * These are V8 flags, which Node accepts only on the command line (not in NODE_OPTIONS), and which
 * must be set before the heap starts deciding; hence options, not `v8.setFlagsFromString` at run time.
 *
 * @example
 *   spawn(process.execPath, [...INGEST_NODE_OPTIONS, vitalsealBin, 'ingest', 'run', '--config', file]);
 *   missingNodeOptions(process.execArgv);   // [] when started that way
 */
export const INGEST_NODE_OPTIONS: readonly string[] = Object.freeze(['--no-allocation-site-pretenuring', '--max-semi-space-size=8']);

/**
 * Which of `wanted` the process was not started with, or started with and then undone: V8 takes
 * the last of `--no-x` and `--x`. It also reads a flag written with underscores
 * (`--no_allocation_site_pretenuring`), so both spellings count. A flag with a value
 * (`--max-semi-space-size=8`) counts as given with any value: the operator's own choice stands.
 */
export function missingNodeOptions(execArgv: readonly string[], wanted: readonly string[] = INGEST_NODE_OPTIONS): string[] {
  const given = execArgv.map((a) => {
    if (!a.startsWith('--')) return a;
    const eq = a.indexOf('=');
    const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
    return `--${name.replace(/_/g, '-')}${eq < 0 ? '' : a.slice(eq)}`;
  });
  const opposite = (flag: string) => (flag.startsWith('--no-') ? `--${flag.slice(5)}` : `--no-${flag.slice(2)}`);
  return wanted.filter((w) => {
    const eq = w.indexOf('=');
    if (eq >= 0) return !given.some((g) => g.startsWith(w.slice(0, eq + 1)));
    return given.lastIndexOf(w) <= given.lastIndexOf(opposite(w));
  });
}
