/** The agent configuration schema: every error names its field and what is wrong. */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, loadAgentConfig, parseAgentConfig } from '../../src/agent/config.ts';
import { agentTestEnv } from './support.ts';

const env = agentTestEnv('vitalseal-config-');
after(() => env.cleanup());

function issues(doc: unknown, e: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseAgentConfig(doc, { baseDir: env.dir, env: e });
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    assert.equal(err.code, 'config-invalid');
    return [...err.issues];
  }
  return [];
}

describe('agent configuration', () => {
  it('accepts a minimal file and fills the documented defaults', () => {
    const c = parseAgentConfig({
      device: { id: 'bed-7' },
      sealing: { ingestPublicKeyFile: 'ingest.pub' },
      sources: [{ type: 'simulated' }],
      queue: { dir: 'q' },
      transport: { primary: { kind: 'coaps', host: 'ingest.example' } },
    }, { baseDir: '/etc/vitalseal' });
    assert.equal(c.sealing.alg, 'chacha20-poly1305');
    assert.equal(c.sealing.ingestPublicKeyFile, '/etc/vitalseal/ingest.pub');
    assert.equal(c.batch.windowMs, 1000);
    assert.equal(c.queue.fsync, 'every-batch');
    assert.equal(c.queue.fullPolicy, 'drop-oldest');
    assert.equal(c.transport.primary.port, 5684);
    assert.deepEqual(c.metrics.listen, { host: '127.0.0.1', port: 9464 });
    assert.equal(c.status.socket, '/etc/vitalseal/agent.sock');
    assert.deepEqual(c.sources[0], { type: 'simulated', id: 'simulated-0', seed: 1, ecgHz: 250 });
  });

  it('reports every problem at once, each with its field path', () => {
    const got = issues({
      device: { id: '-bad id' },
      sealing: { alg: 'rot13', ingestPublicKeyFile: 'k.pub', epochMessages: 0 },
      sources: [{ type: 'simulated', seed: -1 }, { type: 'hl7-mllp', listen: 'nowhere' }, { type: 'webcam' }],
      batch: { windowMs: 'fast' },
      queue: { dir: 'q', capacityBytes: 12, fsync: 'sometimes' },
      transport: { primary: { kind: 'http', host: 'x' } },
      uplink: { window: 4, liveSlots: 4, backoffInitialMs: 1000, backoffMaxMs: 100 },
      metrics: { listen: 'localhost' },
      colour: 'blue',
    });
    const expect = [
      /^device\.id: must be 1-64 characters/, /^sealing\.alg: must be one of chacha20-poly1305, .* got "rot13"/, /^sealing\.epochMessages: must be an integer in 1\.\.1000000, got number 0/,
      /^sources\[0\]\.seed: must be an integer/, /^sources\[1\]\.listen: must be "host:port"/, /^sources\[2\]\.type: must be one of simulated, hl7-mllp, got "webcam"/,
      /^batch\.windowMs: must be an integer in 10\.\.600000, got "fast"/, /^queue\.capacityBytes: must be an integer/, /^queue\.fsync: must be one of every-batch, never, got "sometimes"/,
      /^transport\.primary\.kind: must be one of coaps, mqtts, got "http"/, /^uplink\.liveSlots: must be smaller than uplink\.window/,
      /^uplink\.backoffMaxMs: must be at least uplink\.backoffInitialMs/, /^metrics\.listen: must be "host:port"/, /^\(top level\)\.colour: unknown field/,
    ];
    for (const re of expect) assert.ok(got.some((i) => re.test(i)), `missing ${re}\n got:\n  ${got.join('\n  ')}`);
  });

  it('sources are required, unless the program says it passes its own to createAgent (sourcesOptional); a list either way', () => {
    const base = { device: { id: 'bed-7' }, sealing: { ingestPublicKeyFile: 'k.pub' }, queue: { dir: 'q' }, transport: { primary: { kind: 'coaps', host: 'x' } } };
    assert.ok(issues(base).some((i) => /^sources: must be a non-empty list/.test(i)));
    assert.ok(issues({ ...base, sources: [] }).some((i) => /^sources: must be a non-empty list/.test(i)));
    assert.deepEqual(parseAgentConfig(base, { baseDir: '/etc', sourcesOptional: true }).sources, []);
    assert.deepEqual(parseAgentConfig({ ...base, sources: [] }, { baseDir: '/etc', sourcesOptional: true }).sources, []);
    assert.throws(() => parseAgentConfig({ ...base, sources: { type: 'simulated' } }, { baseDir: '/etc', sourcesOptional: true }), /sources: must be a list/);
  });

  it('names missing required sections and misspelt fields', () => {
    const got = issues({ device: { id: 'a', name: 'x' }, sources: [{ type: 'simulated', sed: 3 }] });
    for (const re of [/^device\.name: unknown field/, /^sources\[0\]\.sed: unknown field/, /^sealing: is required/, /^queue: is required/, /^transport: is required/]) {
      assert.ok(got.some((i) => re.test(i)), `missing ${re} in ${got.join(' | ')}`);
    }
  });

  it('key store references carry where a secret lives, never the secret; env variables override locations only', () => {
    const base = env.config();
    const withKs = (ks: unknown) => ({ ...base, transport: { primary: { kind: 'mqtts', host: 'h', identity: { keystore: ks, keyLabel: 'device' } } } });
    assert.deepEqual(issues(withKs({ kind: 'pkcs11', module: '/usr/lib/softhsm/libsofthsm2.so', token: 'pkcs11:token=vs', pin: { env: 'VS_PIN' } })), []);
    const bad = issues(withKs({ kind: 'pkcs11', module: 'm.so', token: 'vs', pin: '1234' }));
    assert.ok(bad.some((i) => /identity\.keystore\.token: must be an RFC 7512 URI/.test(i)));
    assert.ok(bad.some((i) => /identity\.keystore\.pin: must be a mapping/.test(i)), bad.join(' | '));
    const both = issues(withKs({ kind: 'software', path: 'k', passphrase: { env: 'A', file: 'b' } }));
    assert.ok(both.some((i) => /passphrase: must name exactly one of env .* or file/.test(i)));
    const c = parseAgentConfig(withKs({ kind: 'pkcs11', module: 'm.so', token: 'pkcs11:token=vs', pin: { env: 'VS_PIN' } }), {
      baseDir: env.dir, env: { VITALSEAL_KEYSTORE_PIN_FILE: '/run/secrets/pin', VITALSEAL_INGEST_PUBLIC_KEY_FILE: '/run/keys/ingest.pub', VITALSEAL_QUEUE_DIR: '/data/q' },
    });
    assert.deepEqual((c.transport.primary.identity?.keystore as { pin: unknown }).pin, { file: '/run/secrets/pin' });
    assert.equal(c.sealing.ingestPublicKeyFile, '/run/keys/ingest.pub');
    assert.equal(c.queue.dir, '/data/q');
  });

  it('reads YAML and JSON files; a syntax error names the file and line', () => {
    const y = join(env.dir, 'agent.yaml');
    writeFileSync(y, `device:\n  id: bed-7\nsealing:\n  ingestPublicKeyFile: ingest.pub\nsources:\n  - type: simulated\n    seed: 3\nqueue:\n  dir: q\ntransport:\n  primary: { kind: mqtts, host: broker.local }\n`);
    const c = loadAgentConfig(y);
    assert.equal(c.sources[0]?.type, 'simulated');
    assert.equal(c.queue.dir, join(env.dir, 'q'));
    const j = join(env.dir, 'agent.json');
    writeFileSync(j, JSON.stringify(env.config()));
    assert.equal(loadAgentConfig(j).device.id, 'bed-7');
    const broken = join(env.dir, 'broken.yaml');
    writeFileSync(broken, 'device:\n  id: [unclosed\n');
    assert.throws(() => loadAgentConfig(broken), (e) => e instanceof ConfigError && e.message.includes(broken) && /line/i.test(e.message));
    assert.throws(() => loadAgentConfig(join(env.dir, 'nope.yaml')), (e) => e instanceof ConfigError && /ENOENT/.test(e.message));
  });
});
