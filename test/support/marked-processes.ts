/**
 * Finding what a test's program left running: give the program a marker in its environment
 * (`NAME=<uuid>`); every process it starts inherits it, whatever its name (mosquitto, swtpm,
 * tpm2-abrmd, PostgreSQL, agents, the ingest), so a survivor is found in /proc.
 *
 * @example
 *   const marker = `VITALSEAL_DEMO_TEST=${randomUUID()}`;
 *   spawn(cmd, args, { env: { ...process.env, VITALSEAL_DEMO_TEST: marker.split('=')[1] } });
 *   ...
 *   assert.deepEqual(processesMarked(marker), []);
 */
import { readdirSync, readFileSync } from 'node:fs';

/** Processes whose environment carries `marker`, as "pid command line". */
export function processesMarked(marker: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (readFileSync(`/proc/${pid}/environ`).includes(marker)) found.push(`${pid} ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')}`);
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return found;
}
