#!/usr/bin/env node
// `npm run demo`: installs what the demo needs (scripts/setup: Debian packages, npm ci; a no-op when
// present), then runs scripts/demo/main.ts. `npm run demo -- --help` lists the options.
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { HELP } from './demo/help.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  process.stdout.write(HELP);
  process.exit(0);
}

const setup = spawnSync('bash', ['scripts/setup'], { cwd: root, stdio: 'inherit' });
if (setup.status !== 0) {
  process.stderr.write('npm run demo: the setup step failed (see above); nothing was started\n');
  process.exit(setup.status ?? 1);
}

const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/demo/main.ts', ...args], { cwd: root, stdio: 'inherit' });
// Ctrl-C reaches the demo itself (same process group); a SIGTERM sent to this wrapper is passed on.
// Either way the demo stops its fleet and exits, and this wrapper exits with it.
process.on('SIGINT', () => undefined);
process.on('SIGTERM', () => child.kill('SIGTERM'));
child.on('exit', (code, signal) => process.exit(code ?? (signal === null ? 1 : 128)));
