/**
 * Smoke tests: every program in examples/ runs from a checkout exactly as its header says, and
 * prints what it promises.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';

const root = fileURLToPath(new URL('../..', import.meta.url));

function runExample(file: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', file], { cwd: root, timeout: 60_000, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('examples/', () => {
  it('seal-a-second-of-vitals.ts seals a second of readings and opens it again', () => {
    const r = runExample('examples/seal-a-second-of-vitals.ts');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /sealed \d+ bytes of SenML-CBOR into a \d+-byte COSE_Encrypt \(chacha20-poly1305\)/);
    assert.match(r.stdout, /device bed-7, sequence 1:/);
    for (const kind of ['heart-rate', 'spo2', 'respiration-rate', 'body-temperature']) assert.match(r.stdout, new RegExp(`\\b${kind}\\b`));
    assert.match(r.stdout, /ecg: 25\d samples every 4 ms/);
  });
});
