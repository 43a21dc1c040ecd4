/**
 * What a device does with one second of readings, and what the ingest service does on receipt:
 * encode them as a SenML pack, seal it for the ingest service's X25519 public key, and open it
 * again with the private key. Run it from a checkout:
 *
 *   npx tsx examples/seal-a-second-of-vitals.ts
 *
 * In a device maker's program the ingest public key is pinned in configuration (a PEM file written
 * by `vitalseal cose keygen`), and the sealed bytes go into the agent's durable queue.
 */
import { SimulatedPatient } from 'vitalseal/agent/sensors';
import { decodeVitalsPack, encodeVitalsPack } from 'vitalseal/codec';
import { EpochKeyCache, Header, openCose, SealingSession, x25519Recipient } from 'vitalseal/cose';
import { getProvider } from 'vitalseal/crypto';

const crypto = getProvider();

// The ingest service's key pair. Here it is made on the spot; in production only its public half
// is on the device.
const ingestKey = crypto.x25519Generate();
const ingest = x25519Recipient(crypto, ingestKey.privateKey);
ingestKey.privateKey.fill(0);

// One second of a simulated patient: heart rate, SpO2, respiration, temperature and 250 ECG samples.
const patient = new SimulatedPatient({ id: 'bed-7', seed: 42 });
const start = Date.now();
patient.start(start);
const readout = patient.read(start + 1000);
const pack = encodeVitalsPack({
  deviceId: 'bed-7',
  readings: readout.vitals.map((v) => ({ kind: v.name, time: v.time, value: v.value })),
  ecg: readout.waveforms.map((w) => ({ start: w.start, intervalMs: w.intervalMs, samplesMv: w.samples })),
});

// The device seals under a sealing epoch: one ephemeral X25519 key for many messages.
const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: ingest.publicKey, clock: { now: Date.now } });
const sealed = session.seal(pack, { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-7'], [Header.SEQUENCE, 1]]) });

// The ingest service opens it; the epoch cache makes the next message of this epoch cost no ECDH.
const opened = openCose(sealed, { recipient: ingest, cache: new EpochKeyCache() });
const batch = decodeVitalsPack(opened.plaintext);

console.log(`sealed ${pack.length} bytes of SenML-CBOR into a ${sealed.length}-byte COSE_Encrypt (${opened.alg.name})`);
console.log(`device ${batch.deviceId}, sequence ${String(opened.protected.get(Header.SEQUENCE))}:`);
for (const r of batch.readings) console.log(`  ${r.kind.padEnd(18)} ${r.value}`);
for (const e of batch.ecg) console.log(`  ecg: ${e.samplesMv.length} samples every ${e.intervalMs} ms`);

session.destroy();
ingest.destroy();
