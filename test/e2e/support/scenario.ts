/**
 * What the end-to-end scenarios share: the seed for their random moments, waiting for devices to
 * deliver, restarting an agent the way a service manager does, and the reasons a scenario cannot
 * run on this machine (printed as the skip reason, never silently passed).
 */
import { spawnSync } from 'node:child_process';
import { after, before } from 'node:test';
import { Prng } from '../../../src/agent/sensors/prng.ts';
import { libfaketimePath } from '../../../scripts/lib/faketime.ts';
import { wardNetworkUnavailable } from '../../../scripts/lib/netns.ts';
import { smallDiskUnavailable } from '../../../scripts/lib/small-disk.ts';
import { startStack, type RunningDevice, type Stack, type StackDevice, type StackOptions } from '../../../scripts/lib/stack.ts';
import { delay, waitFor } from './accounting.ts';

/** The devices most scenarios run: MQTTS with a software key, CoAPS with a certificate, CoAPS with a PSK. */
export const THREE_DEVICES: readonly StackDevice[] = [
  { id: 'bed-1', transport: 'mqtts', keyStore: 'software', source: 'simulated', seed: 1 },
  { id: 'bed-2', transport: 'coaps', keyStore: 'software', source: 'simulated', seed: 2 },
  { id: 'oxi-3', transport: 'coaps', keyStore: 'software', auth: 'psk', source: 'simulated', seed: 3 },
];

/**
 * Starts an installation before the enclosing describe block's tests and stops it after them,
 * whatever happened; returns the accessor its tests use.
 */
export function stackForSuite(opts: StackOptions): () => Stack {
  let stack: Stack | undefined;
  before(async () => {
    stack = await startStack(opts);
  });
  after(async () => {
    await stack?.stop();
  });
  return () => {
    if (stack === undefined) throw new Error('the installation did not start');
    return stack;
  };
}

/** `VITALSEAL_E2E_SEED` or a fresh one; printed, so a run can be repeated. */
export function seeded(scenario: string): { seed: number; rng: Prng; between(lo: number, hi: number): number } {
  const env = process.env['VITALSEAL_E2E_SEED'];
  const seed = env === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(env);
  console.log(`e2e ${scenario}: seed ${seed} (VITALSEAL_E2E_SEED=${seed} repeats the random moments)`);
  const rng = new Prng(seed);
  return { seed, rng, between: (lo, hi) => lo + rng.next() * (hi - lo) };
}

type Need = 'netns' | 'tmpfs' | 'faketime' | 'swtpm';

/** Why the scenario cannot run here (`undefined`: it can). */
export function unavailable(needs: readonly Need[]): string | undefined {
  for (const n of needs) {
    switch (n) {
      case 'netns': {
        const why = wardNetworkUnavailable();
        if (why !== undefined) return why;
        break;
      }
      case 'tmpfs': {
        const why = smallDiskUnavailable();
        if (why !== undefined) return why;
        break;
      }
      case 'faketime':
        if (libfaketimePath() === undefined) return 'libfaketime not found: install the Debian package "faketime" (scripts/setup does)';
        break;
      case 'swtpm':
        if (spawnSync('sh', ['-c', 'command -v swtpm && command -v tpm2-abrmd']).status !== 0) return 'swtpm and tpm2-abrmd are needed (scripts/setup installs them)';
        break;
      default: {
        const never: never = n;
        throw new Error(`unknown need ${String(never)}`);
      }
    }
  }
  return undefined;
}

/** Waits until every device's agent is connected and has had at least `acked` messages acknowledged. */
export async function delivering(stack: Stack, ids: readonly string[], ms = 90_000, acked = 1): Promise<void> {
  for (const id of ids) {
    await waitFor(`${id} connected and delivering`, ms, async () => {
      const s = await stack.device(id).status();
      return s.transport.link === 'connected' && s.queue.ackedThrough >= acked ? true : undefined;
    });
  }
}

/** Waits until the agent answers on its status socket (it has started, its queue is open). */
export async function answering(device: RunningDevice, ms = 60_000): Promise<void> {
  await waitFor(`${device.spec.id} answering on its status socket`, ms, async () => {
    if (!device.agent.alive) throw new Error(`the agent exited (${String(await device.agent.exited)})`);
    await device.status();
    return true;
  }, 100);
}

/** SIGKILL, then a new agent after `restartMs`, as systemd's Restart=on-failure does. */
export async function killAndRestart(device: RunningDevice, restartMs: number): Promise<void> {
  await device.agent.kill();
  await delay(restartMs);
  device.startAgent();
}
