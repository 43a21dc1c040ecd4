/**
 * A TPM that is not there when the agent starts (swtpm and its resource manager down, as a TPM
 * whose driver has not come up): the agent says so plainly (`the key store is unavailable ...
 * [no-tpm]`, not "configuration is invalid") and exits with status 1, which a service manager
 * answers by starting it again (Restart=on-failure); once the TPM is back, the next start delivers,
 * including what the previous run had queued. For both transports that sign with the TPM key:
 * MQTTS (TLS in openssl s_client through OpenSSL's tpm2 provider) and CoAPS (our DTLS signing
 * through FAPI).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { assertWhole, delay, drainedAll, DuplicateTally, report, waitFor } from './support/accounting.ts';
import { delivering, stackForSuite, unavailable } from './support/scenario.ts';

const DEVICES = ['bed-1', 'bed-2'];
/** Starts attempted while the TPM is away (a service manager's restarts). */
const FAILED_STARTS = 2;

describe('e2e: TPM unavailable when the agent starts', { skip: unavailable(['swtpm']) }, () => {
  const stack = stackForSuite({
    devices: [
      { id: 'bed-1', transport: 'mqtts', keyStore: 'tpm', source: 'simulated', seed: 1 },
      { id: 'bed-2', transport: 'coaps', keyStore: 'tpm', source: 'simulated', seed: 2 },
    ],
  });

  it('exits 1 with a clear error while the TPM is away; delivers everything once it is back', { timeout: 600_000 }, async () => {
    const s = stack();
    const started = Date.now();
    await delivering(s, DEVICES, 90_000, 2);
    const before = new Map<string, number>();
    const queued = new Map<string, number>();
    for (const id of DEVICES) {
      const d = s.device(id);
      queued.set(id, (await d.status()).queue.nextSeq);
      assert.equal(await d.agent.stop(), 0, `${id}: a clean stop`);
      before.set(id, readFileSync(d.logFile, 'utf8').length);
      await d.tpm?.down();
    }
    const awayAt = Date.now();
    const errors: string[] = [];
    for (let attempt = 0; attempt < FAILED_STARTS; attempt++) {
      for (const id of DEVICES) {
        const d = s.device(id);
        const exit = await d.startAgent().exited;
        const log = readFileSync(d.logFile, 'utf8').slice(before.get(id));
        assert.equal(exit, 1, `${id}: exit status 1 (restartable), got ${String(exit)}:\n${log.slice(-2000)}`);
        assert.match(log, /transport\.primary\.identity\.keystore: the key store is unavailable: .*no TPM reachable.*\[no-tpm\]/);
        assert.doesNotMatch(log, /configuration is invalid/);
        errors.push(/vitalseal agent: (.*)/.exec(log)?.[1] ?? '');
      }
      await delay(1000);
    }
    for (const id of DEVICES) await s.device(id).tpm?.up();
    const tpmBack = Date.now();
    const awaySeconds = (tpmBack - awayAt) / 1000;
    for (const id of DEVICES) s.device(id).startAgent();
    // What the run before the outage had queued goes out first.
    for (const id of DEVICES) await delivering(s, [id], 120_000, queued.get(id) ?? 1);

    const duplicates = new DuplicateTally(s);
    const { figures, recovery } = await drainedAll(s, DEVICES, { at: tpmBack, after: 'the TPM came back (agents started again)' });
    await duplicates.sample();
    report({
      scenario: 'tpm-unavailable', title: 'TPM (swtpm + tpm2-abrmd) down when the agent starts, back later',
      devices: figures, duplicatesRemoved: duplicates.total,
      details: { 'failed starts (exit 1, no-tpm)': errors.length, 'TPM away (s)': Math.round(awaySeconds), error: errors[0] ?? '' },
      recovery,
      seconds: (Date.now() - started) / 1000,
    });
    assertWhole(figures);
  });

  it('the TPM goes away while the agents run and must reconnect (broker and ingest restarted), then returns: they deliver again without a restart', { timeout: 600_000 }, async () => {
    const s = stack();
    const started = Date.now();
    await delivering(s, DEVICES);
    const pids = DEVICES.map((id) => s.device(id).agent.child.pid);
    for (const id of DEVICES) await s.device(id).tpm?.down();
    // Every connection must be made again while the TPM is away: MQTTS through a new broker
    // process, CoAPS with a new DTLS session to a new ingest process.
    await s.broker.restart();
    await s.ingest.kill();
    await s.startIngest();
    // The MQTTS device sees the broker go at once; the CoAPS device learns that its DTLS session is
    // gone only when its requests time out (the new ingest drops records of an unknown session,
    // RFC 9147 §4.5.1). Neither can connect again without its TPM.
    const queued = new Map<string, number>();
    for (const id of DEVICES) {
      await waitFor(`${id} noticing its connection is gone`, 120_000, async () => ((await s.device(id).status()).transport.link === 'connected' ? undefined : true));
      await delay(3000);
      const st = await s.device(id).status();
      assert.notEqual(st.transport.link, 'connected', `${id}: cannot connect without its TPM`);
      queued.set(id, st.queue.nextSeq - 1);
    }
    for (const id of DEVICES) await s.device(id).tpm?.up();
    const tpmBack = Date.now();
    for (const id of DEVICES) await delivering(s, [id], 120_000, queued.get(id) ?? 1);
    const duplicates = new DuplicateTally(s);
    const { figures, recovery } = await drainedAll(s, DEVICES, { at: tpmBack, after: 'the TPM came back (same agent processes)' });
    await duplicates.sample();
    report({
      scenario: 'tpm-lost-while-running', title: 'TPM away while the agents must reconnect, back later; no agent restart',
      devices: figures, duplicatesRemoved: duplicates.total,
      details: { 'agents restarted': DEVICES.filter((id, i) => s.device(id).agent.child.pid !== pids[i]).length },
      recovery,
      seconds: (Date.now() - started) / 1000,
    });
    assert.deepEqual(DEVICES.map((id) => s.device(id).agent.child.pid), pids, 'the same agent processes');
    assertWhole(figures);
  });
});
