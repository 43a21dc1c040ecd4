/**
 * MQTTS with a software-held device key (TLS in this process), against the real broker: the Uplink
 * contract, and the delivery details only MQTT has (content type, user properties, the topic the
 * ingest sees, PUBACK 0x10 when no ingest session exists).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startMqttRig, type IngestInstance, type MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { TransportError } from '../../src/util/errors.ts';
import { uplinkContract } from './contract.ts';
import { mqttsContractFixture } from './support/mqtts-fixture.ts';

uplinkContract('MQTTS, software key in process', async () => {
  const rig = await startMqttRig({ devices: ['bed-7'] });
  const ingest = await rig.startIngest('ingest-contract');
  return mqttsContractFixture(rig, ingest, 'bed-7', () => rig.uplink('bed-7', { serverName: 'localhost' }), () => rig.stop());
});

describe('MQTTS delivery details', () => {
  let rig: MqttRig;
  let ingest: IngestInstance;

  before(async () => {
    rig = await startMqttRig({ devices: ['bed-8', 'bed-9'] });
  });

  after(async () => {
    await rig?.stop();
  });

  it('PUBACK 0x10 (no ingest session yet): the broker dropped the message, so send fails with TransportError and the agent keeps it', async () => {
    const u = rig.uplink('bed-8');
    await u.connect();
    await assert.rejects(u.send(rig.seal('bed-8', 1)), (e: unknown) => e instanceof TransportError && e.code === 'no-subscribers');
    assert.equal(u.counters().acknowledged, 0);
    assert.equal(u.counters().transportErrors, 1);
    await u.close();
  });

  it('the ingest sees the topic\'s device id, the COSE content type, the advisory seq user property, and opens the payload', async () => {
    const seen: { deviceId: string; format: string; seq: unknown; topic: string }[] = [];
    ingest = await rig.startIngest('ingest-details', {
      handler: async (m) => {
        seen.push({ deviceId: m.deviceId, format: m.contentFormat, seq: m.userProperties['seq'], topic: m.topic });
      },
    });
    const u = rig.uplink('bed-9');
    await u.connect();
    await u.send(rig.seal('bed-9', 41));
    await ingest.waitFor(1);
    assert.deepEqual(seen, [{ deviceId: 'bed-9', format: 'cose-encrypt', seq: '41', topic: 'vitals/bed-9/v1' }]);
    assert.equal(ingest.received[0]?.seq, 41, 'the sealed sequence number, read by opening the payload');
    await u.close();
  });
});
