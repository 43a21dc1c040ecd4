/**
 * A process whose clock is off, for the end-to-end suite's clock-skew scenario: libfaketime (Debian
 * package `faketime`) preloaded into it with an offset. Wall-clock time (`Date.now()`, OpenSSL's
 * certificate checks) moves by the offset; monotonic time is left alone so timers run normally.
 * Child processes inherit the environment, so a TLS process (openssl s_client) is skewed the same way.
 *
 * @example
 *   const env = faketimeEnv('+2d');   // also '-2d', '+400d', '+3h'
 *   spawn(process.execPath, args, { env: { ...process.env, ...env } });
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** libfaketime's multi-threaded variant (Node runs threads), or `undefined` when not installed. */
export function libfaketimePath(): string | undefined {
  for (const lib of ['/usr/lib', '/usr/local/lib']) {
    if (!existsSync(lib)) continue;
    for (const sub of ['', ...readdirSync(lib)]) {
      const p = join(lib, sub, 'faketime', 'libfaketimeMT.so.1');
      if (existsSync(p)) return p;
    }
  }
  return undefined;
}

/** The environment that shifts a process's wall clock by `offset` (libfaketime syntax: `+2d`, `-36h`). */
export function faketimeEnv(offset: string): Record<string, string> {
  if (!/^[+-]\d+(\.\d+)?[smhdy]?$/.test(offset)) throw new RangeError(`faketime: ${JSON.stringify(offset)} is not an offset such as +2d or -36h`);
  const lib = libfaketimePath();
  if (lib === undefined) throw new Error('libfaketime not found: install the Debian package "faketime" (scripts/setup does)');
  return { LD_PRELOAD: lib, FAKETIME: offset, DONT_FAKE_MONOTONIC: '1' };
}
