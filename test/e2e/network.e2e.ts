/**
 * Network loss, a bandwidth limit and an outage between a ward and the cloud, with real kernel
 * networking: the agents run in a network namespace of their own (the ward), joined to the host
 * (broker, ingest, relay) by a veth pair. This kernel has no netem qdisc, so (scripts/lib/netns.ts):
 * random loss is an nftables `numgen random` drop rule in the ward, both directions; bandwidth is a
 * tbf qdisc on both ends; the outage is the ward's link set down; and delay, reordering and
 * duplication come from a seeded UDP relay on the CoAPS path (a TCP stream cannot be reordered or
 * duplicated as the application sees it).
 *
 *   phase 1  25 % loss both ways, 512 kbit/s, relay reordering/duplicating CoAPS datagrams
 *   phase 2  the link down for OUTAGE seconds (readings keep being sealed and queued)
 *   phase 3  link up: the backlog drains (oldest first) while live readings go out
 *
 * Every message that entered a queue is stored exactly once; over MQTTS (one ordered TCP stream)
 * the backlog is stored in sequence order; over CoAPS through the reordering relay it may be
 * stored out of order, and the figures count by how much.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createWardNetwork, type WardNetwork } from '../../scripts/lib/netns.ts';
import { freePort } from '../../scripts/lib/ports.ts';
import { startStack, type Stack } from '../../scripts/lib/stack.ts';
import { CLEAN, startUdpRelay, type UdpRelay } from '../../scripts/lib/udp-relay.ts';
import { assertWhole, delay, drainedAll, DuplicateTally, report, storedInOrder } from './support/accounting.ts';
import { delivering, seeded, THREE_DEVICES, unavailable } from './support/scenario.ts';

const LOSS = Number(process.env['VITALSEAL_E2E_LOSS'] ?? 0.25);
const LOSS_SECONDS = Number(process.env['VITALSEAL_E2E_LOSS_SECONDS'] ?? 30);
/** Longer than the agent's send timeout (30 s), so the agents notice and reconnect afterwards. */
const OUTAGE_SECONDS = Number(process.env['VITALSEAL_E2E_OUTAGE_SECONDS'] ?? 35);
const DEVICES = THREE_DEVICES.map((d) => d.id);
const REORDERING = { drop: 0, duplicate: 0.1, delayMs: 10, jitterMs: 80 };

/** Pairs (i < j) in `seqs` (insertion order) where a later-inserted number is smaller. */
function inversions(seqs: readonly number[]): number {
  let n = 0;
  for (let i = 0; i < seqs.length; i++) for (let j = i + 1; j < seqs.length; j++) if ((seqs[j] as number) < (seqs[i] as number)) n++;
  return n;
}

describe('e2e: loss, bandwidth limit and an outage between the ward and the cloud', { skip: unavailable(['netns']) }, () => {
  let ward: WardNetwork | undefined;
  let relay: UdpRelay | undefined;
  let stack: Stack | undefined;
  let seed = 0;

  before(async () => {
    const random = seeded('network');
    seed = random.seed;
    const w = await createWardNetwork();
    ward = w;
    const coapsPort = await freePort();
    relay = await startUdpRelay({ listen: { host: w.hostIp }, target: { host: w.hostIp, port: coapsPort }, seed, profile: CLEAN });
    const viaRelay = { host: w.hostIp, port: relay.port };
    stack = await startStack({
      batchWindowMs: 250, bindHost: w.hostIp, coapsPort,
      // Every agent in the ward; the CoAPS ones through the relay.
      devices: THREE_DEVICES.map((d) => ({ ...d, wrapper: w.exec, ...(d.transport === 'coaps' ? { target: viaRelay } : {}) })),
    });
  });
  after(async () => {
    await stack?.stop();
    await relay?.stop();
    await ward?.destroy();
  });

  it(`${LOSS * 100} % loss for ${LOSS_SECONDS} s, then ${OUTAGE_SECONDS} s without a link: everything stored once, the MQTTS backlog in order`, { timeout: 600_000 }, async () => {
    const s = stack as Stack;
    const w = ward as WardNetwork;
    const r = relay as UdpRelay;
    const started = Date.now();
    await delivering(s, DEVICES);

    // Phase 1: loss, bandwidth, reordering.
    const lossStart = Date.now();
    r.profile = REORDERING;
    await w.setLoss(LOSS);
    await w.setRate(512);
    const lossFrom = new Map<string, number>();
    for (const id of DEVICES) lossFrom.set(id, (await s.device(id).status()).queue.ackedThrough);
    await delay(LOSS_SECONDS * 1000);
    const lossCounters = await w.counters();
    const progressUnderLoss = new Map<string, number>();
    for (const id of DEVICES) progressUnderLoss.set(id, (await s.device(id).status()).queue.ackedThrough - (lossFrom.get(id) ?? 0));
    const lossEnd = Date.now();
    await w.setLoss(0);
    await w.setRate(undefined);

    // Phase 2: the outage.
    const ackedAtDown = new Map<string, number>();
    for (const id of DEVICES) ackedAtDown.set(id, (await s.device(id).status()).queue.ackedThrough);
    await w.linkDown();
    await delay(OUTAGE_SECONDS * 1000);
    const queuedAtUp = new Map<string, number>();
    for (const id of DEVICES) queuedAtUp.set(id, (await s.device(id).status()).queue.nextSeq - 1);
    await w.linkUp();
    const linkUp = Date.now();

    // Phase 3: the drain.
    const duplicates = new DuplicateTally(s);
    const { figures, recovery } = await drainedAll(s, DEVICES, { at: linkUp, after: 'the link came back up' }, () => ({ ms: 180_000 }));
    await duplicates.sample();

    // Delivered under loss: what the ingest stored meanwhile. The agent's acknowledged position
    // (contiguous) can stay put for the whole phase while later messages are stored: one message
    // whose every transmission or answer was dropped holds it until the send timeout.
    const storedUnderLoss = new Map<string, number>();
    for (const id of DEVICES) storedUnderLoss.set(id, storedInOrder(s.ingestDb, id).filter((x) => x.receivedAt >= lossStart && x.receivedAt <= lossEnd).length);
    const backlog = new Map<string, { size: number; inversions: number }>();
    for (const id of DEVICES) {
      const lo = (ackedAtDown.get(id) ?? 0) + 1;
      const hi = queuedAtUp.get(id) ?? 0;
      const order = storedInOrder(s.ingestDb, id).map((x) => x.seq).filter((q) => q >= lo && q <= hi);
      backlog.set(id, { size: hi - lo + 1, inversions: inversions(order) });
    }
    report({
      scenario: 'network', title: 'ward network namespace: nftables random loss + tbf, link down, CoAPS through a reordering/duplicating relay',
      devices: figures, duplicatesRemoved: duplicates.total,
      details: {
        'loss (both ways)': `${LOSS * 100} % for ${LOSS_SECONDS} s at 512 kbit/s`,
        'packets dropped ward→cloud / cloud→ward': `${lossCounters.droppedOut} / ${lossCounters.droppedIn}`,
        'stored under loss': DEVICES.map((id) => `${id} ${storedUnderLoss.get(id) ?? 0}`).join(' '),
        'acknowledged position advanced under loss': DEVICES.map((id) => `${id} ${progressUnderLoss.get(id) ?? 0}`).join(' '),
        'outage (s)': OUTAGE_SECONDS,
        'backlog after the outage': DEVICES.map((id) => `${id} ${backlog.get(id)?.size ?? 0}`).join(' '),
        'backlog stored out of order (inversions)': DEVICES.map((id) => `${id} ${backlog.get(id)?.inversions ?? 0}`).join(' '),
        'relay datagrams forwarded / duplicated': `${r.counters.forwarded} / ${r.counters.duplicated}`,
        'netem': 'absent from this kernel; nftables numgen + tbf + link down + user-space UDP relay stand in',
        seed,
      },
      recovery,
      seconds: (Date.now() - started) / 1000,
    });
    assert.ok(lossCounters.droppedOut > 0 && lossCounters.droppedIn > 0, 'the loss rules dropped packets both ways');
    assert.ok(r.counters.duplicated > 0, 'the relay duplicated datagrams');
    assertWhole(figures);
    for (const f of figures) {
      assert.ok((storedUnderLoss.get(f.device) ?? 0) > 0, `${f.device}: delivered under ${LOSS * 100} % loss`);
      assert.ok((backlog.get(f.device)?.size ?? 0) > 0, `${f.device}: queued during the outage`);
    }
    assert.equal(backlog.get('bed-1')?.inversions, 0, 'MQTTS: the backlog is stored in sequence order');
  });
});
