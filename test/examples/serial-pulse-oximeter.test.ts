/**
 * The example serial driver: its parser (every prefix, garbage, resync, probe off) and a smoke run
 * of the example program against its simulated serial device (a FIFO).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { encodeFrame, OximeterProtocol } from '../../examples/serial-pulse-oximeter.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

describe('examples/serial-pulse-oximeter.ts', () => {
  it('decodes frames split at any point and reports once per second', () => {
    const stream = Buffer.concat(Array.from({ length: 120 }, (_, i) => Buffer.from(encodeFrame({ pulse: 150, spo2: 95, pleth: i }))));
    for (const cut of [0, 1, 2, 3, 4, 5, 7, 301, 599]) {
      const p = new OximeterProtocol();
      const a = p.push(stream.subarray(0, cut), 0);
      const b = p.push(stream.subarray(cut), 1000);
      assert.deepEqual(a.vitals, []);
      assert.deepEqual(b.vitals.map((v) => [v.name, v.value]), [['heart-rate', 150], ['spo2', 95]], `cut ${cut}`);
      assert.deepEqual(p.stats(), { frames: 120, errors: 0 });
    }
  });

  it('skips line noise and resynchronises on the next frame, counting the errors', () => {
    const p = new OximeterProtocol();
    p.push(Uint8Array.of(0x01, 0x02), 0);
    p.push(Uint8Array.of(0x85, 0x10), 0); // a frame cut short by the next sync byte
    const out = p.push(Buffer.concat([Buffer.from(encodeFrame({ pulse: 61, spo2: 99, pleth: 3 }))]), 1000);
    assert.deepEqual(out.vitals.map((v) => v.value), [61, 99]);
    assert.deepEqual(p.stats(), { frames: 1, errors: 3 });
  });

  it('no reading while the probe is off or values are flagged unavailable', () => {
    const p = new OximeterProtocol();
    assert.deepEqual(p.push(encodeFrame({ pulse: 70, spo2: 97, pleth: 1, probeOff: true }), 1000).vitals, []);
    assert.equal(p.condition(), 'probe off the finger');
    assert.deepEqual(p.push(encodeFrame({ pleth: 1 }), 3000).vitals, []);
  });

  it('random bytes never throw and never yield an implausible value', () => {
    fc.assert(fc.property(fc.array(fc.uint8Array({ maxLength: 32 }), { maxLength: 20 }), (chunks) => {
      const p = new OximeterProtocol(0);
      for (const [i, c] of chunks.entries()) {
        for (const v of p.push(c, i).vitals) assert.ok(v.value >= 1 && v.value <= 255);
      }
    }), { numRuns: 300, seed: 9 });
  });

  it('runs against its simulated serial device and seals what it reads', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'examples/serial-pulse-oximeter.ts', '--simulate', '--seconds', '3'], { cwd: root, timeout: 60_000, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^t=1s serial pulse oximeter: \d+ frames/m);
    const m = /frames (\d+), errors (\d+); (\d+) readings sealed into (\d+) COSE messages/.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.ok(Number(m[1]) > 100, 'about 60 frames a second');
    assert.ok(Number(m[2]) >= 1, 'the line noise was seen and skipped');
    assert.ok(Number(m[3]) >= 2 && Number(m[4]) >= 1);
  });
});
