/**
 * The Uplink contract's fixture for MQTTS through the test rig's broker and one ingest
 * subscriber, whatever holds the device key: the caller says how an uplink is made.
 *
 * @example
 *   uplinkContract('MQTTS, software key', async () => {
 *     const rig = await startMqttRig({ devices: ['bed-7'] });
 *     return mqttsContractFixture(rig, await rig.startIngest('ingest-contract'), 'bed-7', () => rig.uplink('bed-7'), () => rig.stop());
 *   });
 */
import type { IngestInstance, MqttRig } from '../../../scripts/lib/mqtt-rig.ts';
import type { Uplink } from '../../../src/transport/types.ts';
import { until, type UplinkContractFixture } from '../contract.ts';

export function mqttsContractFixture(rig: MqttRig, ingest: IngestInstance, deviceId: string, uplink: () => Uplink, teardown: () => Promise<void>): UplinkContractFixture {
  return {
    deviceId,
    protocol: 'TLSv1.3',
    kind: 'mqtts',
    uplink,
    message: (seq) => rig.seal(deviceId, seq),
    received: () => ingest.received.map((r) => r.payload),
    waitForReceived: (n) => ingest.waitFor(n),
    stopPeer: () => rig.broker.down(),
    async startPeer() {
      // The receiving side is back once the ingest has re-subscribed: mosquitto 2.0 does not
      // persist shared subscriptions, so until then the broker has no one to give messages to.
      const before = ingest.subscriber.counters().connects;
      await rig.broker.up();
      await until(() => ingest.subscriber.counters().connects > before);
    },
    async freezePeer() {
      const thaw = rig.broker.freeze();
      return async () => thaw();
    },
    teardown,
  };
}
