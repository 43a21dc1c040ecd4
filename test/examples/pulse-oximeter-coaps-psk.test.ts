/**
 * examples/pulse-oximeter-coaps-psk.ts as its header says to try it: the oximeter driver's readings
 * cross CoAPS with a PSK and come back decrypted from the local ingest's API; nothing is left running.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { stringify } from 'yaml';
import { simulate } from '../../examples/serial-pulse-oximeter.ts';
import { startStack } from '../../scripts/lib/stack.ts';
import { cleanEnd, notableStderr, runExample } from './run-example.ts';

describe('examples/pulse-oximeter-coaps-psk.ts', () => {
  it('--local --seconds 6: sealed over CoAPS/PSK, stored at the ingest, everything stopped', { timeout: 120_000 }, async () => {
    const r = await runExample('pulse-oximeter-coaps-psk.ts', ['--local', '--seconds', '6']);
    assert.equal(cleanEnd(r), undefined);
    const agent = /^agent oxi-1: (\d+) messages sealed \((\d+) readings\), (\d+) acknowledged, \d+ left in the queue; coaps to 127\.0\.0\.1:\d+, DTLSv1\.3 TLS_\w+$/m.exec(r.stdout);
    assert.ok(agent, r.stdout);
    const stored = /^oxi-1: stored (\d+) messages \((\d+) readings\) at the ingest; last heart rate (\d+) beat\/min, SpO2 (\d+) %$/m.exec(r.stdout);
    assert.ok(stored, r.stdout);
    assert.ok(Number(stored[1]) >= 1, 'at least one message stored');
    // Every acknowledged message is stored; one stored as the agent stopped may have lost its acknowledgement.
    assert.ok(Number(agent[3]) <= Number(stored[1]) && Number(stored[1]) <= Number(agent[1]), `acknowledged ${agent[3]} <= stored ${stored[1]} <= sealed ${agent[1]}`);
    assert.ok(Math.abs(Number(stored[3]) - 72) <= 3, 'the simulated pulse (72 ± 2)');
    assert.equal(stored[4], '97', 'the simulated SpO2');
    assert.match(r.stderr, /"auth":"psk"/, 'the uplink authenticated with the PSK');
  });

  it('without --local: a real installation\'s files and endpoints given as flags (--config, --serial, --api ...)', { timeout: 120_000 }, async () => {
    const stack = await startStack({ devices: [] });
    try {
      const dir = join(stack.dir, 'device');
      mkdirSync(dir, { mode: 0o700 });
      const psk = join(dir, 'psk.key');
      await stack.addPskDevice('oxi-9', psk);
      const config = join(dir, 'oximeter.yaml');
      writeFileSync(config, stringify({
        device: { id: 'oxi-9' }, sealing: { ingestPublicKeyFile: stack.ingestPublicKeyFile }, queue: { dir: join(dir, 'queue') },
        transport: { primary: { kind: 'coaps', host: '127.0.0.1', port: stack.coapsPort, psk: { keyFile: psk } } },
        metrics: { listen: false }, status: { socket: join(dir, 'agent.sock') },
      }));
      const token = join(dir, 'reader.token');
      writeFileSync(token, stack.readerToken, { mode: 0o600 });
      const serial = join(dir, 'ttyV0');
      execFileSync('mkfifo', [serial]);
      const fed = simulate(serial, 6);
      const r = await runExample('pulse-oximeter-coaps-psk.ts', ['--config', config, '--serial', serial, '--seconds', '4',
        '--api', stack.httpsUrl, '--api-token-file', token, '--api-ca-file', stack.rootCaFile]);
      await fed;
      assert.equal(r.code, 0, `${notableStderr(r)}\n(the installation's ingest ${stack.ingest.alive ? 'was running' : `had exited: ${String(await stack.ingest.exited)}`})`);
      assert.deepEqual(r.leftOver, []);
      assert.match(r.stdout, /^agent oxi-9: \d+ messages sealed \(\d+ readings\), [1-9]\d* acknowledged, \d+ left in the queue; coaps to 127\.0\.0\.1:\d+, DTLSv1\.3/m);
      assert.match(r.stdout, /^oxi-9: stored [1-9]\d* messages \(\d+ readings\) at the ingest; last heart rate \d+ beat\/min, SpO2 97 %$/m);
    } finally {
      await stack.stop();
    }
  });

  it('without --local it needs --config and --serial, and says so', async () => {
    const r = await runExample('pulse-oximeter-coaps-psk.ts', ['--seconds', '1']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /give --local .* or --config FILE/);
    assert.match(r.stderr, /usage:/);
  });
});
