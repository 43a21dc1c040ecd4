/**
 * Crash safety: a real agent process (test/agent/fixtures/crash-child.ts) streaming to the fixture
 * receiver over loopback TCP is killed with SIGKILL at random moments, at least 100 times (set
 * VITALSEAL_CRASH_KILLS for a longer run: `npm run test:crash-long`), some during start-up and
 * queue recovery, most mid-stream (mid-append, mid-send, mid-ack). A last run then drains and stops
 * gracefully. Then:
 * - every message that entered the queue (journaled after its append returned) arrived at the
 *   receiver exactly once after dedupe, or is still in the queue;
 * - delivered + still queued is exactly 1..last sequence number: nothing lost, no gaps;
 * - none arrived corrupt (each opened with the ingest key, its sealed sequence number and device id
 *   matching the envelope), and no sequence number ever carried two different messages.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { openSegmentQueue } from '../../src/agent/queue/index.ts';
import { FixtureReceiver } from '../support/fixture-uplink.ts';
import { agentTestEnv } from './support.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const CHILD = join(root, 'test/agent/fixtures/crash-child.ts');
const KILLS = Number(process.env['VITALSEAL_CRASH_KILLS'] ?? 100);

interface Run {
  readonly ready: Promise<string | undefined>;
  readonly exited: Promise<number | null>;
  kill(sig: NodeJS.Signals): void;
  stderr(): string;
}

const live = new Set<Run>();

function startChild(config: string, port: number, journal: string): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, config, String(port), journal], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-4000); });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const ready = new Promise<string | undefined>((resolve) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('ready'));
      if (line !== undefined) resolve(line);
    });
    void exited.then(() => resolve(undefined));
  });
  const run: Run = { ready, exited, kill: (sig) => child.kill(sig), stderr: () => err };
  live.add(run);
  void exited.then(() => live.delete(run));
  return run;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('agent: SIGKILL at random moments', () => {
  const env = agentTestEnv('vitalseal-crash-');
  let receiver: FixtureReceiver | undefined;
  after(async () => {
    // Also when an assertion failed: no child and no server may outlive the test.
    for (const r of live) r.kill('SIGKILL');
    await Promise.all([...live].map((r) => r.exited));
    await receiver?.stop();
    receiver?.destroy();
    env.cleanup();
  });

  it(`every queued message arrives exactly once, none corrupt, across ${KILLS} kills`, { timeout: 1_800_000 }, async () => {
    const rx = new FixtureReceiver({ ingestPrivateKey: env.ingestPrivateKey, deviceId: 'bed-7' });
    receiver = rx;
    const port = await rx.start();
    const configFile = join(env.dir, 'agent.json');
    writeFileSync(configFile, JSON.stringify(env.config({
      batch: { windowMs: 20 },
      sealing: { ingestPublicKeyFile: env.publicKeyFile, epochMessages: 25, epochSeconds: 60 },
      queue: { dir: join(env.dir, 'queue'), segmentBytes: 16 * 1024 },
      uplink: { backoffInitialMs: 20, backoffMaxMs: 100, window: 8 },
      metrics: { listen: false },
      log: { level: 'silent' },
    })));
    const journal = join(env.dir, 'journal.txt');
    let seed = 0x5eed;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    let kills = 0;
    let readyRuns = 0;
    let recoveredRuns = 0;
    let cutBytes = 0;
    for (let i = 0; i < KILLS; i++) {
      const run = startChild(configFile, port, journal);
      if (rand() < 0.25) {
        // During start-up: self-test, queue recovery, first connect.
        await sleep(rand() * 700);
      } else {
        const line = await run.ready;
        assert.ok(line !== undefined, `run ${i} failed to start: ${run.stderr()}`);
        readyRuns++;
        const [, state, bytes] = line.split(' ');
        if (state === 'recovered') recoveredRuns++;
        cutBytes += Number(bytes);
        await sleep(rand() * 300);
      }
      run.kill('SIGKILL');
      await run.exited;
      kills++;
    }
    // The last run drains what is queued, then stops gracefully.
    const final = startChild(configFile, port, journal);
    assert.ok((await final.ready) !== undefined, `final run failed to start: ${final.stderr()}`);
    const journaled = () => readFileSync(journal, 'utf8').split('\n').filter((l) => /^\d+$/.test(l)).map(Number);
    const target = Math.max(...journaled());
    const end = Date.now() + 60_000;
    while ([...Array(target).keys()].some((k) => !rx.messages.has(k + 1))) {
      if (Date.now() > end) throw new Error(`not drained: missing ${[...Array(target).keys()].map((k) => k + 1).filter((s) => !rx.messages.has(s)).slice(0, 10).join(',')}`);
      await sleep(50);
    }
    final.kill('SIGTERM');
    assert.equal(await final.exited, 0, 'graceful stop exits 0');
    await rx.stop();

    assert.ok(kills >= KILLS);
    assert.deepEqual(rx.problems, [], 'no corrupt message, no sequence number reused for other bytes');
    assert.equal(rx.corrupt, 0);
    const q = await openSegmentQueue({ dir: join(env.dir, 'queue') });
    const queued = (await q.peek(100_000)).map((m) => m.seq);
    const last = q.stats().nextSeq - 1;
    await q.close();
    assert.equal(q.recovery.state, 'clean', 'a graceful stop leaves a clean queue');
    const delivered = new Set(rx.messages.keys());
    for (const s of journaled()) assert.ok(delivered.has(s) || queued.includes(s), `journaled message ${s} lost`);
    const union = [...new Set([...delivered, ...queued])].sort((a, b) => a - b);
    assert.deepEqual(union, Array.from({ length: last }, (_, k) => k + 1), 'delivered + queued = 1..last, no gaps');
    assert.ok(existsSync(journal));
    process.stderr.write(`crash test: ${kills} SIGKILLs (${readyRuns} mid-stream, ${kills - readyRuns} during start-up), ${recoveredRuns} restarts recovered a torn tail (${cutBytes} bytes cut in total), `
      + `${last} messages, ${rx.duplicates} duplicates deduped, ${queued.length} left queued at the end\n`);
  });
});
