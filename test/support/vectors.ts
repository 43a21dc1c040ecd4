/** Loads a known-answer file from test/vectors/ and insists it names its source. */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export function loadVectors<T = Record<string, unknown>>(name: string): { source: string; vectors: T[]; [k: string]: unknown } {
  const path = fileURLToPath(new URL(`../vectors/${name}`, import.meta.url));
  const data = JSON.parse(readFileSync(path, 'utf8')) as { source?: unknown; vectors?: unknown };
  if (typeof data.source !== 'string' || data.source.length === 0) throw new Error(`${name}: no source field`);
  if (!Array.isArray(data.vectors) || data.vectors.length === 0) throw new Error(`${name}: no vectors`);
  return data as { source: string; vectors: T[] };
}
