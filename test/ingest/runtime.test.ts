/**
 * The runtime from a configuration file: a transport listener plugged in as a factory gets the core
 * and its section, its messages reach the database, and on stop it is stopped before the core
 * drains; messages in flight at shutdown are either stored or refused as unavailable, never lost
 * silently; a listener section whose listener the build lacks is refused before anything opens.
 * (The real MQTT listener: test/ingest/listener-mqtt.test.ts.)
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { encodeVitalsPack } from '../../src/codec/vitals.ts';
import { Header } from '../../src/cose/headers.ts';
import { SealingSession } from '../../src/cose/sealing-session.ts';
import { loadIngestConfig, type MqttListenerConfig } from '../../src/ingest/config.ts';
import { mqttListener } from '../../src/ingest/listeners/index.ts';
import { openCoreFromConfig, startIngest, type ListenerFactory } from '../../src/ingest/runtime.ts';
import { SqliteStorage } from '../../src/ingest/storage/sqlite.ts';
import type { IngestCore } from '../../src/ingest/core.ts';
import { rotateStaticKey } from '../../src/ingest/static-key.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa } from '../../src/pki/dev-ca.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { systemClock } from '../../src/util/clock.ts';
import { Unsupported } from '../../src/util/errors.ts';
import { batchFor } from './support/harness.ts';
import { cryptoSelfTest } from '../../src/ingest/selftest.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-runtime-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const env = { ...process.env, VS_RT_PASS: 'runtime test passphrase' };
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };

describe('ingest runtime', () => {
  let cfgPath: string;
  before(async () => {
    const ca = await initDevCa({ dir: join(dir, 'ca'), organization: 'Runtime Test', now: Date.now() });
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const cert = await ca.issueService(await createCsr({ signer: keyObjectSigner(privateKey), subject: { commonName: '127.0.0.1' } }), { ipAddresses: ['127.0.0.1'] }, Date.now());
    writeFileSync(join(dir, 'tls.pem'), pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', ca.issuing.der));
    writeFileSync(join(dir, 'tls.key'), privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), { mode: 0o600 });
    cfgPath = join(dir, 'ingest.yaml');
    writeFileSync(cfgPath, `storage: { sqlite: { path: ${join(dir, 'ingest.db')} } }
keystore: { kind: software, path: ${join(dir, 'keys.vsks')}, passphrase: { env: VS_RT_PASS } }
audit: { path: ${join(dir, 'audit.log')} }
pki: { dir: ${join(dir, 'ca')} }
https: { port: 0, certificate: ${join(dir, 'tls.pem')}, key: ${join(dir, 'tls.key')} }
mqtt: { url: "mqtts://127.0.0.1:8883", caFile: ca.pem, certFile: i.pem, keyFile: i.key, sharedGroup: g1 }
`);
    const setup = await openCoreFromConfig(loadIngestConfig(cfgPath), { env, selfTest: cryptoSelfTest(), log: quiet }, { allowNoStaticKey: true, cli: true });
    await rotateStaticKey(setup.hierarchy, setup.provider);
    await setup.registry.register({ deviceId: 'bed-rt', credential: 'certificate', credentialSha256: 'cd'.repeat(32), status: 'active', enrolledAt: Date.now() });
    await setup.close();
  });

  it('refuses a listener section whose listener the build did not pass, before opening anything', async () => {
    let opened = false;
    const selfTest = () => { opened = true; return cryptoSelfTest()(); };
    await assert.rejects(startIngest(loadIngestConfig(cfgPath), { env, selfTest, log: quiet }),
      (e: unknown) => e instanceof Unsupported && e.code === 'transport-not-built' && /src\/transport\/mqtts/.test(e.message));
    // A build that passes only the MQTT listener refuses a coaps section, naming what is missing.
    const withCoaps = join(dir, 'coaps.yaml');
    writeFileSync(withCoaps, `${readFileSync(cfgPath, 'utf8')}coaps: { port: 5684, certificate: c.pem, key: c.key, clientRoots: [root.pem] }\n`);
    await assert.rejects(startIngest(loadIngestConfig(withCoaps), { env, selfTest, log: quiet, listeners: { mqtt: mqttListener } }),
      (e: unknown) => e instanceof Unsupported && e.code === 'transport-not-built' && /coaps: the CoAPS listener/.test(e.message));
    assert.equal(opened, false);
  });

  it('starts a listener factory with its section; stops it before draining; in-flight messages are stored or refused as unavailable', async () => {
    const events: string[] = [];
    let core: IngestCore | undefined;
    let section: MqttListenerConfig | undefined;
    // Stands in for the MQTT subscriber: hands broker-authenticated messages to accept().
    const mqtt: ListenerFactory<MqttListenerConfig> = {
      async start(c, s) {
        core = c;
        section = s;
        events.push('listener started');
        return { stop: async () => { events.push('listener stopped'); } };
      },
    };
    const running = await startIngest(loadIngestConfig(cfgPath), { env, selfTest: cryptoSelfTest(), log: quiet, listeners: { mqtt } });
    assert.equal(section?.sharedGroup, 'g1');
    assert.ok(core !== undefined && core === running.core);
    const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: core.staticKeys?.current.publicKey as Uint8Array, clock: systemClock });
    const seal = (seq: number) => session.seal(encodeVitalsPack(batchFor('bed-rt', seq)), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-rt'], [Header.SEQUENCE, seq]]) });
    const peer = { kind: 'broker' as const, deviceId: 'bed-rt', transport: 'mqtts' as const, suite: 'TLSv1.3 via broker' };
    assert.equal((await core.service?.accept({ payload: seal(1), contentFormat: undefined, peer }))?.status, 'accepted');
    assert.ok(core.storage instanceof SqliteStorage && core.storage.backgroundBatches === 1, 'the service commits message batches on the writer thread');
    const inFlight = Array.from({ length: 40 }, (_, i) => core?.service?.accept({ payload: seal(i + 2), contentFormat: undefined, peer }));
    const stopping = running.stop().then(() => events.push('core closed'));
    const outcomes = await Promise.all(inFlight);
    await stopping;
    assert.deepEqual(events, ['listener started', 'listener stopped', 'core closed']);
    const accepted = outcomes.filter((o) => o?.status === 'accepted').map((o) => (o as { seq: number }).seq);
    assert.ok(outcomes.every((o) => o?.status === 'accepted' || o?.status === 'unavailable'), JSON.stringify(outcomes.map((o) => o?.status)));
    // Reopen: every acknowledged message is there, nothing else.
    const again = await openCoreFromConfig(loadIngestConfig(cfgPath), { env, selfTest: cryptoSelfTest(), log: quiet }, { cli: true });
    try {
      const stored = (await again.storage.readMessages('bed-rt', 0, Number.MAX_SAFE_INTEGER)).map((m) => m.seq);
      assert.deepEqual(stored, [1, ...accepted].sort((a, b) => a - b));
    } finally {
      await again.close();
    }
  });
});
