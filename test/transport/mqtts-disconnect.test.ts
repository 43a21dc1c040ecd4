/**
 * `disconnect()` ends a connection and leaves the MQTTS uplink usable; `close()` is for good. The
 * agent's uplink runner disconnects a link it gave up on (lost, timed out) and connects the same
 * uplink again later, so this is what keeps a device delivering after a broker restart.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type IngestInstance, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { ApiMisuse, TransportError } from '../../src/util/errors.ts';

describe('MQTTS uplink: disconnect and connect again; close for good', () => {
  let rig: MqttRig;
  let ingest: IngestInstance;
  before(async () => {
    rig = await startMqttRig({ devices: ['bed-dc'] });
    ingest = await rig.startIngest('ingest-dc');
  });
  after(async () => rig?.stop());

  it('delivers over a new connection after disconnect(), even across a broker restart; refuses connect() after close()', async () => {
    const u = rig.uplink('bed-dc');
    const events: string[] = [];
    u.on('connected', () => events.push('connected'));
    u.on('disconnected', ({ reason }) => events.push(`disconnected: ${reason}`));
    await u.connect();
    assert.equal((await u.send(rig.seal('bed-dc', 1))).status, 'accepted');
    await u.disconnect?.();
    assert.equal(u.session, undefined);
    await assert.rejects(u.send(rig.seal('bed-dc', 2)), (e: unknown) => e instanceof TransportError);
    await u.connect();
    assert.equal((await u.send(rig.seal('bed-dc', 2))).status, 'accepted');
    // The broker goes away and comes back: the lost link is disconnected and connected again.
    await rig.broker.restart();
    await u.disconnect?.();
    await u.connect();
    // Until the ingest has subscribed again the broker drops what it gets (PUBACK 0x10): the agent
    // sends such a message again, and so does this test.
    for (let attempt = 0; ; attempt++) {
      try {
        assert.equal((await u.send(rig.seal('bed-dc', 3))).status, 'accepted');
        break;
      } catch (e) {
        if (!(e instanceof TransportError && e.code === 'no-subscribers') || attempt > 200) throw e;
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    await ingest.waitFor(3);
    assert.deepEqual(ingest.received.map((r) => r.seq).sort(), [1, 2, 3]);
    assert.equal(u.counters().connects, 3);
    assert.deepEqual(events.slice(0, 3), ['connected', 'disconnected: closed by the device', 'connected']);
    await u.close();
    await assert.rejects(u.connect(), (e: unknown) => e instanceof ApiMisuse && e.code === 'closed');
    await u.disconnect?.(); // after close: nothing to do
  });
});
