/**
 * `npm run demo` as a newcomer runs it, for a bounded time: every simulated device (MQTTS with a
 * software key and with a TPM key, CoAPS with a certificate and with a PSK, an HL7 gateway) gets
 * readings stored by the ingest service, the summary shows them, and
 * when it stops nothing it started is left running and its directory is gone.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { processesMarked } from '../support/marked-processes.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

describe('npm run demo', () => {
  it('--help lists the options without installing or starting anything', () => {
    const out = execFileSync(process.execPath, ['scripts/demo.mjs', '--help'], { cwd: root, encoding: 'utf8' });
    for (const opt of ['--mqtts', '--coaps', '--no-tpm', '--no-hl7', '--seconds', '--https-port', '--keep']) assert.match(out, new RegExp(opt));
  });

  it('runs the fleet, stores every device\'s readings, and leaves nothing behind', { timeout: 300_000 }, async () => {
    const marker = `VITALSEAL_DEMO_TEST=${randomUUID()}`;
    const child = spawn(process.execPath, ['scripts/demo.mjs', '--seconds', '30', '--https-port', '0'], {
      cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, [marker.split('=')[0] as string]: marker.split('=')[1] },
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0, out.slice(-4000));
    const dir = /directory:\s+(\S+)/.exec(out)?.[1];
    assert.ok(dir !== undefined, 'the demo names its directory');
    assert.match(out, /dashboard:\s+https:\/\/127\.0\.0\.1:\d+\//);
    assert.match(out, /API token:\s+vst_/);
    const stored = /stored messages per device: (.*)/.exec(out)?.[1] ?? '';
    for (const id of ['bed-1', 'bed-2', 'bed-3', 'oxi-4', 'monitor-gw']) {
      const n = Number(new RegExp(`${id} (\\d+)`).exec(stored)?.[1] ?? '0');
      assert.ok(n > 0, `${id} had readings stored (${stored})`);
    }
    assert.match(out, /bed-2\s+mqtts\s+TPM/);
    assert.match(out, /bed-3\s+coaps\s+software\s+simulated.*DTLSv1\.3/);
    assert.match(out, /oxi-4\s+coaps\s+PSK\s+simulated.*DTLSv1\.3/);
    assert.match(out, /monitor-gw\s+mqtts\s+software\s+HL7 gateway/);
    assert.match(out, /stopped; no process left running/);
    assert.equal(existsSync(dir), false, 'the demo directory is removed');
    assert.deepEqual(processesMarked(marker), [], 'no process the demo started is left (mosquitto, swtpm, tpm2-abrmd, agents, ingest)');
  });
});
