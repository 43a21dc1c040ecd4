/**
 * The whole agent in one process: simulated patient and an HL7 monitor (real MLLP client) as
 * sources, the real segment queue on disk, a real loopback socket to the fixture receiver; status
 * socket, metrics endpoint, certificate warning, graceful stop; and a scan of every log line for
 * reading values, patient fields and key bytes.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { get } from 'node:http';
import { PassThrough } from 'node:stream';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Hl7Message } from '@medplum/core';
import { Hl7Client } from '@medplum/hl7';
import { createAgent, type Agent } from '../../src/agent/agent.ts';
import { ConfigError, parseAgentConfig } from '../../src/agent/config.ts';
import { createLogger } from '../../src/agent/log.ts';
import { readStatus } from '../../src/agent/status-socket.ts';
import { openSegmentQueue } from '../../src/agent/queue/index.ts';
import { getProvider } from '../../src/crypto/registry.ts';
import type { CryptoProvider } from '../../src/crypto/provider.ts';
import { SelfTestFailure } from '../../src/crypto/selftest.ts';
import { SimulatedPatient } from '../../src/agent/sensors/simulated-patient.ts';
import { toHex } from '../../src/util/bytes.ts';
import { main } from '../../src/cli/main.ts';
import { FixtureReceiver, FixtureUplink } from '../support/fixture-uplink.ts';
import { obx, oru } from './sensors/hl7/messages.ts';
import { agentTestEnv } from './support.ts';

function capture() {
  const lines: string[] = [];
  return { lines, log: createLogger({ level: 'debug', destination: { write: (s: string) => { lines.push(s); } } }) };
}

const waitFor = async (cond: () => boolean, what: string, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

describe('agent: a full run', () => {
  const env = agentTestEnv();
  after(() => env.cleanup());

  it('seals, queues and delivers every batch; HL7 readings get AA after storage; status, metrics, cert warning; logs hold no readings, PHI or keys', async () => {
    const receiver = new FixtureReceiver({ ingestPrivateKey: env.ingestPrivateKey, deviceId: 'bed-7' });
    await receiver.start();
    const cert = env.certificate(10);
    const config = parseAgentConfig(env.config({
      sources: [{ type: 'simulated', id: 'patient', seed: 11 }, { type: 'hl7-mllp', id: 'monitor', listen: '127.0.0.1:0' }],
      certificate: { file: cert, warnDays: 30 },
    }), { baseDir: env.dir });
    const { lines, log } = capture();
    const agent = await createAgent({ config, log, uplinks: { primary: new FixtureUplink(() => receiver.port) } });
    const appended: number[] = [];
    agent.on('appended', ({ seq }) => appended.push(seq));
    await agent.start();

    // A bedside monitor sends distinctive readings over MLLP.
    const port = agent.gatewayAddresses['monitor']?.port as number;
    const client = new Hl7Client({ host: '127.0.0.1', port });
    const t = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14) + '+0000';
    const msg = oru([obx(1, '8867-4^Heart rate^LN', '187.3', '/min', { time: t }), obx(2, '59408-5^SpO2^LN', '83.7', '%', { time: t }),
      obx(3, '8310-5^Temp^LN', '38.91', 'Cel', { time: t })], { control: 'MON-1' });
    const ack = await client.sendAndWait(Hl7Message.parse(msg), { timeoutMs: 5000 });
    await client.close();
    assert.equal(ack.getSegment('MSA')?.getField(1)?.toString(), 'AA');

    await waitFor(() => appended.length >= 8, 'eight batches');
    await waitFor(() => receiver.messages.size >= appended.length, 'delivery');
    const status = (await readStatus(config.status.socket)) as Awaited<ReturnType<Agent['status']>>;
    assert.equal(status.device, 'bed-7');
    assert.equal(status.transport.link, 'connected');
    assert.equal(status.transport.protocol, 'fixture-tcp');
    assert.equal(status.sealing.suite, 'chacha20-poly1305');
    assert.ok(status.sealing.epochAgeSeconds !== null && status.sealing.epochAgeSeconds >= 0);
    assert.ok(status.lastAck !== null && status.lastAck.seq >= 1);
    assert.equal(status.certificate?.state, 'renew-soon');
    assert.match(status.certificate?.message ?? '', /automatic renewal is not configured \(certificate\.renew/);
    assert.ok(status.selfTest.passed.some((p) => p.startsWith('aead:chacha20-poly1305')));
    assert.match(status.selfTest.keyedContexts, /^node: the agent seals about one message a second/);
    assert.equal(status.hl7['monitor']?.['messagesAccepted'], 1);

    // The operator's view: `vitalseal agent status --socket PATH`.
    const out: string[] = [];
    const sink = new PassThrough();
    sink.on('data', (d: Buffer) => out.push(d.toString()));
    const code = await main(['agent', 'status', '--socket', config.status.socket], { stdin: new PassThrough(), stdout: sink, stderr: new PassThrough(), env: {} });
    assert.equal(code, 0);
    const shown = out.join('');
    for (const re of [/^queue +\d+ message/m, /^last ack +message \d+ at /m, /^transport +mqtts connected \(primary\) to 127\.0\.0\.1:\d+, fixture-tcp/m,
      /^sealing +chacha20-poly1305; key epoch [\d.]+ s old/m, /^certificate +device certificate expires in \d+ day/m, /^self-test +passed: aead:chacha20-poly1305/m]) {
      assert.match(shown, re);
    }

    const metrics = await httpGet(`http://127.0.0.1:${agent.metricsAddress?.port}/metrics`);
    assert.match(metrics, /^# TYPE vitalseal_agent_queue_depth gauge$/m);
    assert.match(metrics, /^vitalseal_agent_uplink_connected 1$/m);
    assert.match(metrics, /^vitalseal_agent_hl7_messages_accepted_total\{source="monitor"\} 1$/m);
    assert.match(metrics, /^vitalseal_agent_certificate_expiry_timestamp_seconds \d+/m);
    assert.equal(agent.metricsAddress?.host, '127.0.0.1');

    await agent.stop();
    await receiver.stop();
    const finalSeq = appended.at(-1) as number;
    // Everything delivered exactly once, opened and checked by the receiver; the last batch, sealed
    // during the stop, waits in the queue on disk for the next start.
    assert.deepEqual(receiver.problems, []);
    const got = [...receiver.messages.keys()].sort((a, b) => a - b);
    assert.deepEqual(got, Array.from({ length: got.length }, (_, i) => i + 1));
    const reopened = await openSegmentQueue({ dir: config.queue.dir });
    const left = (await reopened.peek(1000)).map((m) => m.seq);
    await reopened.close();
    // At least once: a message can be both delivered and still queued when its ack was in flight at
    // the stop (it goes again and the receiver dedupes); together they cover everything appended.
    assert.deepEqual([...new Set([...got, ...left])].sort((a, b) => a - b), Array.from({ length: finalSeq }, (_, i) => i + 1), 'delivered ∪ still queued = everything appended');
    assert.deepEqual(left, Array.from({ length: left.length }, (_, i) => finalSeq - left.length + 1 + i), 'what is left is the newest, in order');
    const all = [...receiver.messages.values()].flatMap((m) => m.batch.readings);
    const hl7 = all.filter((r) => r.value === 187.3 || r.value === 83.7 || r.value === 38.91);
    assert.equal(hl7.length, 3, 'the monitor\'s readings arrived sealed');
    assert.ok(all.some((r) => r.kind === 'spo2' && r.value !== 83.7), 'simulated readings arrived too');
    const ecg = [...receiver.messages.values()].flatMap((m) => m.batch.ecg);
    assert.ok(ecg.length > 0);

    // On disk: only sealed records (every record starts with the COSE_Encrypt tag) and state.
    const qdir = config.queue.dir;
    for (const f of readdirSync(qdir).filter((n) => n.endsWith('.seg'))) {
      const data = readFileSync(join(qdir, f));
      assert.ok(!data.includes(Buffer.from('heart-rate')), 'no SenML names in clear on disk');
      assert.ok(!data.includes(Buffer.from('bed-7/')), 'no SenML base name in clear on disk');
    }

    // The logs: structured, and free of values, patient fields and key bytes.
    const text = lines.join('');
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(parsed.some((l) => l['msg'] === 'power-on self-test passed'));
    assert.ok(parsed.some((l) => typeof l['msg'] === 'string' && (l['msg'] as string).includes('device certificate expires in')));
    assert.ok(parsed.some((l) => l['msg'] === 'agent stopped; queue state saved'));
    const forbidden = ['187.3', '83.7', '38.91', 'DOE', 'JANE', '123456', 'heart-rate'];
    for (const s of [...new Set(ecg.flatMap((e) => Array.from(e.samplesMv).slice(0, 50)))].filter((v) => Math.abs(v) > 0.001)) forbidden.push(String(s));
    const keyForms = [toHex(env.ingestPrivateKey), Buffer.from(env.ingestPrivateKey).toString('base64'), Buffer.from(env.ingestPrivateKey).toString('base64url'),
      env.ingestPrivatePem.split('\n')[1] as string];
    for (const f of [...forbidden, ...keyForms]) assert.ok(!text.includes(f), `log mentions ${JSON.stringify(f.slice(0, 12))}`);
    receiver.destroy();
  });
});

describe('agent logs: redaction as a second line of defence', () => {
  it('blanks fields that could carry values, keys or patient data, at depth', () => {
    const { lines, log } = capture();
    log.info({ value: 72, reading: { value: 97 }, nested: { deep: { privateKey: 'abc', pin: '1234' } }, patient: 'DOE^JANE', seq: 5 }, 'x');
    const l = JSON.parse(lines[0] as string) as Record<string, unknown>;
    assert.equal(l['value'], '[redacted]');
    assert.equal(l['reading'], '[redacted]');
    assert.deepEqual(l['nested'], { deep: { privateKey: '[redacted]', pin: '[redacted]' } });
    assert.equal(l['patient'], '[redacted]');
    assert.equal(l['seq'], 5);
  });
});

describe('agent: graceful stop with an HL7 message in flight', () => {
  const env = agentTestEnv();
  after(() => env.cleanup());

  it('the message being stored is sealed, queued and answered AA before the agent stops', async () => {
    const config = parseAgentConfig(env.config({
      sources: [{ type: 'hl7-mllp', id: 'monitor', listen: '127.0.0.1:0' }],
      batch: { windowMs: 600_000 }, // no flush of its own: only the stop will flush
      metrics: { listen: false },
    }), { baseDir: env.dir });
    const agent = await createAgent({ config, log: capture().log, uplinks: { primary: new FixtureUplink(() => 1) } });
    await agent.start();
    const client = new Hl7Client({ host: '127.0.0.1', port: agent.gatewayAddresses['monitor']?.port as number });
    const t = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14) + '+0000';
    const acked = client.sendAndWait(Hl7Message.parse(oru([obx(1, '8867-4^HR^LN', '64', '/min', { time: t })], { control: 'LAST' })), { timeoutMs: 10_000 });
    await waitFor(() => agent.status().hl7['monitor']?.['connections'] === 1, 'the monitor connected');
    await new Promise((r) => setTimeout(r, 100));
    await agent.stop();
    const ack = await acked;
    await client.close();
    assert.equal(ack.getSegment('MSA')?.getField(1)?.toString(), 'AA');
    const q = await openSegmentQueue({ dir: config.queue.dir });
    assert.equal(q.stats().depth, 1, 'the reading is in the queue for the next start');
    await q.close();
  });
});

describe('agent: start-up refusals', () => {
  const env = agentTestEnv();
  after(() => env.cleanup());

  it('a broken primitive fails the self-test before any key is opened, and the agent refuses to start', async () => {
    const node = getProvider('node');
    const broken: CryptoProvider = { ...node, name: node.name, supportsAead: (id) => node.supportsAead(id), aeadSeal: node.aeadSeal, aeadOpen: node.aeadOpen,
      x25519Generate: node.x25519Generate, x25519PublicKey: node.x25519PublicKey, x25519: node.x25519, hmacSha256: node.hmacSha256, randomBytes: node.randomBytes,
      aesEcbBlock: node.aesEcbBlock, chacha20: node.chacha20, sha256: () => new Uint8Array(32) };
    // The key file does not exist: had the agent opened it before the self-test, the error would be about the key.
    const config = parseAgentConfig(env.config({ sealing: { ingestPublicKeyFile: join(env.dir, 'missing.pub') } }), { baseDir: env.dir });
    const { lines, log } = capture();
    await assert.rejects(createAgent({ config, log, crypto: broken, uplinks: { primary: new FixtureUplink(() => 1) } }),
      (e) => e instanceof SelfTestFailure && e.primitive === 'sha256' && /sha256/.test(e.message));
    assert.ok(lines.some((l) => l.includes('refusing to start') && l.includes('sha256')));
    assert.deepEqual(readdirSync(env.dir).filter((n) => n === 'queue'), [], 'queue never opened');
  });

  it('a configured transport missing its certificate settings is a configuration error naming the field', async () => {
    const config = parseAgentConfig(env.config({ transport: { primary: { kind: 'mqtts', host: '127.0.0.1' } } }), { baseDir: env.dir });
    await assert.rejects(createAgent({ config, log: capture().log }), (e) => e instanceof ConfigError && /transport\.primary\.identity: is required/.test(e.message));
  });

  it('no source at all (none configured, none passed) is a configuration error; sources passed by the program suffice', async () => {
    const config = parseAgentConfig({ ...env.config(), sources: [] }, { baseDir: env.dir, sourcesOptional: true });
    await assert.rejects(createAgent({ config, log: capture().log, uplinks: { primary: new FixtureUplink(() => 1) } }),
      (e) => e instanceof ConfigError && /sources: no source of readings/.test(e.message));
    const agent = await createAgent({ config, log: capture().log, uplinks: { primary: new FixtureUplink(() => 1) }, sources: [new SimulatedPatient({ id: 'own', seed: 3 })] });
    assert.equal(agent.status().sources.length, 1);
    await agent.stop();
  });

  it('a wrong pinned key file is a configuration error naming the field', async () => {
    const config = parseAgentConfig(env.config({ sealing: { ingestPublicKeyFile: env.certificate(30) } }), { baseDir: env.dir });
    await assert.rejects(createAgent({ config, log: capture().log, uplinks: { primary: new FixtureUplink(() => 1) } }),
      (e) => e instanceof ConfigError && /sealing\.ingestPublicKeyFile/.test(e.message));
  });
});
