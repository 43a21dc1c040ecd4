/**
 * examples/hl7-gateway.ts as its header says to try it, over each transport: the simulated bedside
 * monitor's ORU^R01 messages are answered AA, sealed, sent with the gateway's enrolled certificate,
 * and come back decrypted from the ingest's API; nothing is left running.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cleanEnd, runExample } from './run-example.ts';

describe('examples/hl7-gateway.ts', () => {
  for (const [transport, link] of [['mqtts', 'TLSv1\\.3'], ['coaps', 'DTLSv1\\.3']] as const) {
    it(`--local --seconds 7 --transport ${transport}: monitor answered AA, readings stored at the ingest, everything stopped`, { timeout: 120_000 }, async () => {
      const r = await runExample('hl7-gateway.ts', ['--local', '--seconds', '7', '--transport', transport]);
      assert.equal(cleanEnd(r), undefined);
      assert.match(r.stdout, /^enrolled monitor-gw: certificate \S+\/monitor-gw-identity\/chain\.pem$/m);
      assert.match(r.stdout, /^gateway monitor: listening on 127\.0\.0\.1:\d+ for HL7 v2 ORU\^R01 over MLLP$/m);
      const hl7 = /^HL7 monitor: (\d+) messages answered AA, 0 AE, 0 AR; (\d+) readings taken$/m.exec(r.stdout);
      assert.ok(hl7, r.stdout);
      assert.ok(Number(hl7[1]) >= 1);
      const sent = /the simulated monitor sent (\d+) messages: (\d+) answered AA, 0 otherwise/.exec(r.stderr);
      assert.ok(sent, r.stderr.slice(-2000));
      assert.equal(sent[2], hl7[1], 'every AA the monitor got is a message the gateway accepted');
      const agent = new RegExp(`^agent monitor-gw: (\\d+) messages sealed \\((\\d+) readings\\), (\\d+) acknowledged, \\d+ left in the queue; ${transport} to 127\\.0\\.0\\.1:\\d+, ${link} TLS_\\w+$`, 'm').exec(r.stdout);
      assert.ok(agent, r.stdout);
      assert.equal(agent[2], hl7[2], 'every reading taken from HL7 was sealed');
      const stored = /^monitor-gw: stored (\d+) messages \((\d+) readings\) at the ingest; last heart rate \d+ beat\/min, SpO2 \d+ %, respiration \d+ \/min, temperature 3\d\.\d °C, NIBP systolic \d+ mmHg/m.exec(r.stdout);
      assert.ok(stored, r.stdout);
      // Every acknowledged message is stored; one stored as the agent stopped may have lost its acknowledgement.
    assert.ok(Number(agent[3]) <= Number(stored[1]) && Number(stored[1]) <= Number(agent[1]), `acknowledged ${agent[3]} <= stored ${stored[1]} <= sealed ${agent[1]}`);
    });
  }

  it('--transport is refused without --local (a real gateway\'s transport is in its configuration)', async () => {
    const r = await runExample('hl7-gateway.ts', ['--config', 'gw.yaml', '--transport', 'coaps']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--transport is for --local/);
  });
});
