/**
 * `npm run bench [-- [--quick] [name ...]]`: runs scripts/bench/*.bench.ts, writes
 * bench-results/<timestamp>.json and bench-results/latest.json, and prints a table with each
 * result's baseline, ratio and target.
 */
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { BenchModule, BenchResult } from './types.ts';

const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..', '..');
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const filters = args.filter((a) => !a.startsWith('--'));
const outDir = join(root, 'bench-results');
mkdirSync(outDir, { recursive: true });

const files = readdirSync(here).filter((f) => f.endsWith('.bench.ts')).sort()
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)));
if (files.length === 0) {
  console.error(`bench: nothing matches ${filters.join(', ')}`);
  process.exit(2);
}

const all: (BenchResult & { file: string })[] = [];
for (const f of files) {
  console.error(`bench: ${f}${quick ? ' (quick)' : ''}`);
  const mod = (await import(pathToFileURL(join(here, f)).href)) as BenchModule;
  const results = await mod.run({ outDir, quick, log: (l) => console.error(`  ${l}`) });
  for (const r of results) all.push({ ...r, file: f });
}

function met(r: BenchResult): string {
  if (r.target === undefined || r.ratio === undefined) return '';
  const ok = r.target.comparison === '>=' ? r.ratio >= r.target.ratio : r.ratio <= r.target.ratio;
  return `${ok ? 'met' : 'MISSED'} (${r.target.comparison} ${r.target.ratio})`;
}

function fmt(n: number): string {
  if (n >= 100) return Math.round(n).toLocaleString('en-US');
  return n.toPrecision(3);
}

const rows = all.map((r) => [r.name, `${fmt(r.value)} ${r.unit}`, r.baseline ? `${fmt(r.baseline.value)} (${r.baseline.name})` : '', r.ratio === undefined ? '' : r.ratio.toFixed(2), met(r)]);
const head = ['benchmark', 'value', 'baseline (same run)', 'ratio', 'target'];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] as string).length)));
const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] as number)).join('  ');
console.log(line(head));
console.log(widths.map((w) => '-'.repeat(w)).join('  '));
for (const row of rows) console.log(line(row));

const report = {
  date: new Date().toISOString(),
  quick,
  machine: { cpus: cpus().length, model: cpus()[0]?.model, memoryBytes: totalmem(), node: process.version },
  results: all,
};
const stamp = report.date.replace(/[:.]/g, '-');
writeFileSync(join(outDir, `${stamp}.json`), JSON.stringify(report, null, 2));
writeFileSync(join(outDir, 'latest.json'), JSON.stringify(report, null, 2));
console.error(`bench: wrote bench-results/${stamp}.json and bench-results/latest.json`);
const missed = all.filter((r) => met(r).startsWith('MISSED')).length;
console.error(`bench: ${all.length} results, ${missed} target(s) missed`);
