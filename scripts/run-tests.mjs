#!/usr/bin/env node
// Runs every test/**/*.test.ts file with node's built-in test runner (TypeScript loaded by tsx).
// Usage: node scripts/run-tests.mjs [substring ...]   (only files whose path contains a substring)
//        node scripts/run-tests.mjs --e2e [substring ...]   the end-to-end suite (test/e2e/*.e2e.ts),
//        one file at a time: each starts a whole installation and some change the host's network;
//        the scenarios' figures go to bench-results/e2e/ (docs/e2e.md).
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

function collect(dir, suffix) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...collect(path, suffix));
    else if (name.endsWith(suffix)) out.push(path);
  }
  return out;
}

const e2e = process.argv[2] === '--e2e';
const filters = process.argv.slice(e2e ? 3 : 2);
const files = collect(join(root, 'test'), e2e ? '.e2e.ts' : '.test.ts')
  .map((f) => relative(root, f))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)));
if (files.length === 0) {
  console.error('run-tests: no test files matched');
  process.exit(1);
}
const started = new Date();
// The e2e scenarios record their figures in bench-results/e2e/<run>.json as well as latest.json.
const run = started.toISOString().replace(/[:.]/g, '-');
const result = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', `--test-concurrency=${e2e ? 1 : 4}`, `--test-timeout=${e2e ? 900000 : 600000}`, ...files],
  { cwd: root, stdio: 'inherit', env: e2e ? { ...process.env, VITALSEAL_E2E_RUN: run } : process.env },
);
if (e2e) recordE2eRun();
process.exit(result.status ?? 1);

/** Adds the run's wall time and outcome to bench-results/e2e/<run>.json (and to latest.json when it ran every scenario). */
function recordE2eRun() {
  const seconds = Math.round((Date.now() - started.getTime()) / 1000);
  const suite = { startedAt: started.toISOString(), seconds, files, passed: result.status === 0 };
  const dir = join(root, 'bench-results', 'e2e');
  mkdirSync(dir, { recursive: true });
  for (const name of [`${run}.json`, ...(filters.length === 0 ? ['latest.json'] : [])]) {
    const path = join(dir, name);
    let doc = {};
    try {
      doc = JSON.parse(readFileSync(path, 'utf8'));
    } catch {
      // no scenario reported (all skipped or failed before their figures)
    }
    writeFileSync(path, `${JSON.stringify({ ...doc, suite }, null, 2)}\n`);
  }
  console.error(`run-tests: e2e suite ${suite.passed ? 'passed' : 'FAILED'} in ${Math.floor(seconds / 60)} min ${seconds % 60} s; figures in bench-results/e2e/${run}.json`);
}
