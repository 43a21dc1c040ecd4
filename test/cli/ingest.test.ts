/**
 * `vitalseal ingest`: through the real bin where no key is opened (configuration errors naming the
 * field, the CoAPS listener's Unsupported, the refusal to start without the power-on self-test,
 * tokens, the registry), and in-process with a known-answer self-test for the commands that open
 * keys (keygen, run, revoke with a CRL, backup, restore with the drill, rotation and re-key). Last,
 * `vitalseal ingest run` as a process with its MQTT listener: a device's uplink through mosquitto
 * into the database, and `vitalseal ingest devices revoke` reaching the broker through the running
 * service.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runIngestCommand } from '../../src/cli/commands/ingest.ts';
import type { CliIo } from '../../src/cli/types.ts';
import { encodeVitalsPack } from '../../src/codec/vitals.ts';
import { Header } from '../../src/cose/headers.ts';
import { SealingSession } from '../../src/cose/sealing-session.ts';
import { x25519PublicFromPem } from '../../src/cose/keys.ts';
import { openCoreFromConfig, startIngest } from '../../src/ingest/runtime.ts';
import { INGEST_NODE_OPTIONS } from '../../src/ingest/node-options.ts';
import { PskStore } from '../../src/ingest/psk-store.ts';
import { loadIngestConfig } from '../../src/ingest/config.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { spkiSha256 } from '../../src/pki/certificate.ts';
import { parseCrl } from '../../src/pki/crl.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa, type DevCa } from '../../src/pki/dev-ca.ts';
import { pemDecode, pemEncode } from '../../src/pki/pem.ts';
import { toHex } from '../../src/util/bytes.ts';
import { systemClock } from '../../src/util/clock.ts';
import { cryptoSelfTest } from '../../src/ingest/selftest.ts';
import { SelfTestFailure } from '../../src/crypto/selftest.ts';
import { batchFor } from '../ingest/support/harness.ts';
import { httpsRequest } from '../ingest/support/https.ts';
import { startMqttIngestSite, type MqttIngestSite } from '../../scripts/lib/mqtt-ingest-site.ts';
import { UplinkRejected } from '../../src/util/errors.ts';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vitalseal-cli-ingest-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const STORE_PASS = 'ingest key store passphrase for the cli test';
const CA_PASS = 'ingest ca passphrase for the cli test';
const env = { ...process.env, VS_INGEST_PASS: STORE_PASS, VS_CA_PASS: CA_PASS };

function bin_(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: dir, env, encoding: 'utf8' });
  assert.doesNotMatch(r.stdout + r.stderr, new RegExp(`${STORE_PASS}|${CA_PASS}|BEGIN (ENCRYPTED )?PRIVATE KEY`));
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function io(): CliIo & { out(): string; err(): string } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let o = '';
  let e = '';
  stdout.on('data', (c: Buffer) => (o += c.toString()));
  stderr.on('data', (c: Buffer) => (e += c.toString()));
  return { stdin: new PassThrough(), stdout, stderr, env, out: () => o, err: () => e };
}

async function cli(args: string[], extra: Parameters<typeof runIngestCommand>[2] = {}) {
  const x = io();
  const code = await runIngestCommand(args, x, { selfTest: cryptoSelfTest(), ...extra });
  assert.doesNotMatch(x.out() + x.err(), new RegExp(`${STORE_PASS}|${CA_PASS}|BEGIN (ENCRYPTED )?PRIVATE KEY`));
  return { code, stdout: x.out(), stderr: x.err() };
}

function config(name: string, extra = '', db = 'ingest.db'): string {
  const path = join(dir, name);
  writeFileSync(path, `# ingest test configuration
storage:
  sqlite: { path: ${join(dir, db)} }
keystore: { kind: software, path: ${join(dir, 'ingest-keys.vsks')}, passphrase: { env: VS_INGEST_PASS } }
keys: { kek: ingest-kek, auditSigningKey: ingest-audit, dataKeyCacheTtlSeconds: 60 }
audit: { path: ${join(dir, `${name}.audit.log`)} }
pki: { dir: ${join(dir, 'ca')}, passphrase: { env: VS_CA_PASS } }
https:
  host: 127.0.0.1
  port: 0
  certificate: ${join(dir, 'https-chain.pem')}
  key: ${join(dir, 'https.key')}
${extra}`);
  return path;
}

describe('vitalseal ingest', () => {
  let ca: DevCa;
  let cfg: string;
  let readerToken: string;

  before(async () => {
    ca = await initDevCa({ dir: join(dir, 'ca'), organization: 'Ingest Test Fleet', now: Date.now(), passphrase: new TextEncoder().encode(CA_PASS) });
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const csr = await createCsr({ signer: keyObjectSigner(privateKey), subject: { commonName: '127.0.0.1' } });
    const cert = await ca.issueService(csr, { ipAddresses: ['127.0.0.1'] }, Date.now());
    writeFileSync(join(dir, 'https-chain.pem'), pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', ca.issuing.der));
    writeFileSync(join(dir, 'https.key'), privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), { mode: 0o600 });
    cfg = config('ingest.yaml');
  });

  it('validates the configuration, naming the field; refuses inline secrets', () => {
    const bad = (name: string, extra: string, pattern: RegExp) => {
      const r = bin_(['ingest', 'check-config', '--config', config(name, extra)]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, pattern);
    };
    bad('bad-port.yaml', 'ingest: { maxMessageBytes: 12 }\n', /ingest\.maxMessageBytes: expected an integer from 1024/);
    bad('bad-key.yaml', 'colour: blue\n', /\(top level\)\.colour: unknown setting/);
    bad('bad-op.yaml', 'anomaly: { windowSeconds: -1 }\n', /anomaly\.windowSeconds/);
    const pgInline = join(dir, 'pg-inline.yaml');
    writeFileSync(pgInline, readFileSync(cfg, 'utf8').replace(/storage:\n {2}sqlite: .*\n/, 'storage:\n  postgres: { connection: "postgres://u:hunter2@db/ingest" }\n'));
    const r = bin_(['ingest', 'check-config', '--config', pgInline]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /storage\.postgres\.connection: a connection string holds a password/);
    assert.doesNotMatch(r.stderr, /hunter2/);
    const ok = bin_(['ingest', 'check-config', '--config', cfg]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /valid[\s\S]*key store software, KEK 'ingest-kek'[\s\S]*enrolment CA/);
  });

  it('the listener sections are validated and check-config says what each would start', () => {
    const coaps = bin_(['ingest', 'check-config', '--config', config('coaps.yaml', 'coaps: { port: 5684, certificate: c.pem, key: c.key, clientRoots: [fleet-root.pem], psk: true }\n')]);
    assert.equal(coaps.code, 0, coaps.stderr);
    assert.match(coaps.stdout, /coaps {5}udp 0\.0\.0\.0:5684\/v1\/telemetry, client certificates from 1 root file\(s\), PSK devices too; server key from a PEM file/);
    assert.match(bin_(['ingest', 'check-config', '--config', config('coaps-bad.yaml', 'coaps: { port: 5684, certificate: c.pem, key: c.key }\n')]).stderr, /coaps\.clientRoots/);
    assert.match(bin_(['ingest', 'check-config', '--config', config('mqtt-bad.yaml', 'mqtt: { url: "mqtt://x", caFile: a, certFile: b, keyFile: c }\n')]).stderr, /mqtt\.url: expected mqtts:/);
    const mqtt = bin_(['ingest', 'check-config', '--config', config('mqtt.yaml', 'mqtt: { url: "mqtts://127.0.0.1:8883", caFile: ca.pem, certFile: ingest.pem, keyFile: ingest.key, clientId: ingest-1, crlReload: { command: [/usr/bin/systemctl, reload, mosquitto] } }\n')]);
    assert.equal(mqtt.code, 0, mqtt.stderr);
    assert.match(mqtt.stdout, /mqtt {6}mqtts:\/\/127\.0\.0\.1:8883 as client ingest-1, \$share\/vitalseal\/vitals\/\+\/v1; CRL reload: command/);
  });

  it('a failing power-on self-test stops the command before any key is opened', async () => {
    const failing = () => { throw new SelfTestFailure('x25519', 'node', 'known answer mismatch (test)'); };
    const path = config('failing-selftest.yaml', '', 'failing-selftest.db');
    writeFileSync(path, readFileSync(path, 'utf8').replace(join(dir, 'ingest-keys.vsks'), join(dir, 'failing-selftest-keys.vsks')));
    await assert.rejects(cli(['keygen', '--config', path], { selfTest: failing }), (e) => e instanceof SelfTestFailure && /power-on self-test failed: x25519/.test(e.message));
    assert.equal(existsSync(join(dir, 'failing-selftest-keys.vsks')), false, 'the key store was never opened');
    const ok = bin_(['ingest', 'keygen', '--config', config('real-selftest.yaml', '', 'real-selftest.db')]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /BEGIN PUBLIC KEY/);
  });

  it('keygen makes the static key; tokens and the registry work without opening keys', async () => {
    const k = await cli(['keygen', '--config', cfg, '--public-out', join(dir, 'ingest-static.pub.pem')]);
    assert.equal(k.code, 0, k.stderr);
    assert.match(k.stderr, /static key version 1, kid [0-9a-f]{16}/);
    assert.equal(x25519PublicFromPem(k.stdout).length, 32);
    assert.equal(readFileSync(join(dir, 'ingest-static.pub.pem'), 'utf8'), k.stdout);

    const t = bin_(['ingest', 'enrol-token', '--config', cfg, '--device-id', 'bed-cli', '--ttl', '2h']);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /^vse_[A-Za-z0-9_-]{43}\n$/);
    assert.equal(bin_(['ingest', 'enrol-token', '--config', cfg, '--device-id', '../x']).code, 2);
    assert.equal(bin_(['ingest', 'enrol-token', '--config', cfg, '--device-id', 'x', '--ttl', 'forever']).code, 2);
    const a = bin_(['ingest', 'api-token', 'create', '--config', cfg, '--name', 'ward', '--role', 'reader', '--ttl', '30d']);
    assert.equal(a.code, 0, a.stderr);
    readerToken = a.stdout.trim();
    assert.match(readerToken, /^vst_/);
    bin_(['ingest', 'api-token', 'create', '--config', cfg, '--name', 'old']);
    assert.equal(bin_(['ingest', 'api-token', 'revoke', '--config', cfg, '--name', 'old']).code, 0);
    assert.equal(bin_(['ingest', 'api-token', 'revoke', '--config', cfg, '--name', 'old']).code, 1);
    const list = bin_(['ingest', 'api-token', 'list', '--config', cfg]).stdout;
    assert.match(list, /^ward\s+reader\s+live/m);
    assert.match(list, /^old\s+reader\s+revoked/m);
    assert.doesNotMatch(list, /vst_/, 'tokens are stored hashed and never shown again');
    const audit = readFileSync(join(dir, 'ingest.yaml.audit.log.cli'), 'utf8');
    assert.match(audit, /"op":"token".*enrolment token for bed-cli/);
  });

  it('run serves HTTPS with the configured token, enrols a device, takes its messages, and stops gracefully', async () => {
    const ac = new AbortController();
    let url = '';
    const listening = new Promise<void>((resolve) => {
      void cli(['run', '--config', cfg], { signal: ac.signal, execArgv: ['--import', 'tsx'], onListening: (u) => { url = u; resolve(); } }).then((r) => {
        assert.equal(r.code, 0, r.stderr);
        // Started without the ingest's node options: said once, with the command line that has them.
        assert.match(r.stderr, /"level":40,.*"missing":\["--no-allocation-site-pretenuring","--max-semi-space-size=8"\].*"run":"node --no-allocation-site-pretenuring --max-semi-space-size=8 .* ingest run --config FILE".*"msg":"started without the ingest's node options/);
        assert.match(r.stderr, /"msg":"ingest service listening"/);
        assert.match(r.stderr, /"msg":"ingest service stopped"/);
      });
    });
    await listening;
    const root = pemEncode('CERTIFICATE', ca.root.der);
    assert.equal((await httpsRequest(url, '/api/v1/devices', root, { token: readerToken })).status, 200);
    // Enrol bed-cli with the token from the command line, then send it a sealed message directly.
    const t = bin_(['ingest', 'enrol-token', '--config', cfg, '--device-id', 'bed-cli']).stdout.trim();
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const csr = Buffer.from(await createCsr({ signer: keyObjectSigner(privateKey), subject: { commonName: 'bed-cli' } })).toString('base64');
    const enrol = await httpsRequest(url, '/.well-known/est/simpleenroll', root, { method: 'POST', token: t, body: csr });
    assert.equal(enrol.status, 200, enrol.text());
    assert.equal((await httpsRequest(url, '/api/v1/devices/bed-cli', root, { token: readerToken })).json<{ device: { status: string } }>().device.status, 'active');
    ac.abort();
    await new Promise((r) => setTimeout(r, 300));
  });

  it('devices list/suspend/resume through the bin; revoke writes the CRL', async () => {
    assert.match(bin_(['ingest', 'devices', 'list', '--config', cfg]).stdout, /^bed-cli\s+active/m);
    assert.equal(bin_(['ingest', 'devices', 'suspend', 'bed-cli', '--config', cfg, '--reason', 'maintenance']).code, 0);
    assert.match(bin_(['ingest', 'devices', 'list', '--config', cfg]).stdout, /^bed-cli\s+suspended/m);
    assert.equal(bin_(['ingest', 'devices', 'resume', 'bed-cli', '--config', cfg]).code, 0);
    const serial = (JSON.parse(bin_(['ingest', 'devices', 'list', '--config', cfg, '--json']).stdout) as { deviceId: string; certSerial: string }[]).find((d) => d.deviceId === 'bed-cli')?.certSerial;
    assert.ok(serial);
    const rev = await cli(['devices', 'revoke', 'bed-cli', '--config', cfg, '--reason', 'stolen']);
    assert.equal(rev.code, 0, rev.stderr);
    assert.match(rev.stdout, /bed-cli: revoked \(CRL #\d+ written to .*crl\.pem; the broker must reload it\)/);
    const crl = parseCrl(pemDecode(readFileSync(join(dir, 'ca', 'crl.pem'), 'utf8'), 'X509 CRL')[0]?.der as Uint8Array);
    assert.ok(crl.revoked.has(serial), 'the device certificate is on the CRL');
    assert.equal(bin_(['ingest', 'devices', 'resume', 'bed-cli', '--config', cfg]).code, 1, 'revocation is final');
    assert.match(readFileSync(join(dir, 'ingest.yaml.audit.log.cli'), 'utf8'), /"op":"revoke".*bed-cli \(stolen\)/);
  });

  it('backup, then restore into a fresh database with the drill; rotation and re-key from the command line', async () => {
    // Some data first: a device sealing to the static key, through the library on the same files.
    const running = await startIngest(loadIngestConfig(cfg), { env, selfTest: cryptoSelfTest(), log: { info: () => undefined, warn: () => undefined, error: () => undefined }, clock: systemClock });
    const spki = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const csr = await createCsr({ signer: keyObjectSigner(spki.privateKey), subject: { commonName: 'bed-b' } });
    const cert = await ca.issueDevice(csr, 'bed-b', Date.now());
    await running.core.registry.register({ deviceId: 'bed-b', credential: 'certificate', credentialSha256: toHex(spkiSha256(cert.spki.der)), status: 'active', enrolledAt: Date.now(), certSerial: cert.serialHex, certNotAfter: cert.notAfter });
    const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: running.core.staticKeys?.current.publicKey as Uint8Array, clock: systemClock });
    for (let seq = 1; seq <= 20; seq++) {
      const payload = session.seal(encodeVitalsPack(batchFor('bed-b', seq)), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-b'], [Header.SEQUENCE, seq]]) });
      assert.equal((await running.core.service?.accept({ payload, contentFormat: 96, peer: { kind: 'certificate', deviceId: 'bed-b', spkiSha256: toHex(spkiSha256(cert.spki.der)), transport: 'coaps', suite: 'test' } }))?.status, 'accepted');
    }
    await running.stop();

    const rot = await cli(['keys', 'rotate', '--config', cfg, '--device', 'bed-b']);
    assert.match(rot.stdout, /bed-b: data key version 2 is current/);
    const rk = await cli(['rekey', '--config', cfg, '--force']);
    assert.equal(rk.code, 0, rk.stderr);
    assert.match(rk.stdout, /bed-b: 20 rows re-keyed, destroyed v1/);

    const out = join(dir, 'ingest.vsbackup');
    const b = await cli(['backup', '--config', cfg, '--out', out]);
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stdout, /records {6}2 devices, \d+ wrapped keys, 2 API tokens, 20 messages/);
    await assert.rejects(cli(['backup', '--config', cfg, '--out', out]), /refusing to overwrite a backup/);

    const restoreCfg = config('restore.yaml', '', 'restored.db');
    const r = await cli(['restore', out, '--config', restoreCfg, '--verify']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /decryptable {4}20 of 20 messages decrypted and decoded/);
    assert.match(r.stdout, /result {9}PASS/);
    const again = await cli(['restore', out, '--config', restoreCfg]).catch((e: unknown) => e);
    assert.match(String(again), /not empty/);
    const damaged = join(dir, 'damaged.vsbackup');
    const bytes = readFileSync(out);
    bytes[bytes.length >> 1] = (bytes[bytes.length >> 1] as number) ^ 0x10;
    writeFileSync(damaged, bytes);
    await assert.rejects(cli(['restore', damaged, '--config', config('restore2.yaml', '', 'restored2.db')]),
      /backup archive damaged in (chunk \d+ \(records \d+-\d+\)|manifest|signature)/);
  });

  it('devices add-psk writes the key once (0600, never printed); rotate-kek re-wraps every key, retire-kek deletes the old KEK only once unused; retire-static', async () => {
    const pskCfg = config('psk.yaml', '', 'psk.db');
    assert.equal((await cli(['keygen', '--config', pskCfg])).code, 0);
    const keyOut = join(dir, 'oxi-9.psk');
    const r = await cli(['devices', 'add-psk', '--config', pskCfg, '--device-id', 'oxi-9', '--key-out', keyOut]);
    assert.equal(r.code, 0, r.stderr);
    const hex = readFileSync(keyOut, 'utf8').trim();
    assert.match(hex, /^[0-9a-f]{64}$/);
    assert.equal(statSync(keyOut).mode & 0o777, 0o600);
    assert.doesNotMatch(r.stdout + r.stderr, new RegExp(hex));
    assert.doesNotMatch(readFileSync(join(dir, 'psk.yaml.audit.log.cli'), 'utf8'), new RegExp(hex));
    assert.match(r.stderr, /oxi-9: registered as a PSK device/);
    // The same id again: refused, and the new key file it would have written is not left behind.
    const again = join(dir, 'oxi-9-again.psk');
    await assert.rejects(cli(['devices', 'add-psk', '--config', pskCfg, '--device-id', 'oxi-9', '--key-out', again]), /already registered/);
    assert.equal(existsSync(again), false);
    // An existing file is never overwritten, and nothing is registered then.
    await assert.rejects(cli(['devices', 'add-psk', '--config', pskCfg, '--device-id', 'oxi-10', '--key-out', keyOut]), /exists; refusing to overwrite/);
    assert.doesNotMatch((await cli(['devices', 'list', '--config', pskCfg])).stdout, /oxi-10/);

    // What the CoAPS listener would look up: the key the operator got.
    const pskOf = async (file: string): Promise<string | undefined> => {
      const core = await openCoreFromConfig(loadIngestConfig(file), { env, selfTest: cryptoSelfTest(), log: { info: () => undefined, warn: () => undefined, error: () => undefined } }, { cli: true });
      try {
        const store = await PskStore.open({ registry: core.registry, hierarchy: core.hierarchy });
        const k = store.lookup(new TextEncoder().encode('oxi-9'));
        const out = k === undefined ? undefined : toHex(k);
        store.destroy();
        return out;
      } finally {
        await core.close();
      }
    };
    assert.equal(await pskOf(pskCfg), hex);

    const rot = await cli(['keys', 'rotate-kek', '--config', pskCfg, '--name', 'ingest-kek-2']);
    assert.equal(rot.code, 0, rot.stderr);
    assert.match(rot.stdout, /\d+ wrapped key record\(s\) re-wrapped under ingest-kek-2/);
    await assert.rejects(cli(['keys', 'retire-kek', '--config', pskCfg, '--name', 'ingest-kek']), /is keys\.kek/);
    const next = join(dir, 'psk-kek2.yaml');
    writeFileSync(next, readFileSync(pskCfg, 'utf8').replace('kek: ingest-kek,', 'kek: ingest-kek-2,'));
    assert.equal((await cli(['keys', 'retire-kek', '--config', next, '--name', 'ingest-kek'])).code, 0);
    // The old KEK is gone from the store, and every key still opens under the new one.
    assert.equal(await pskOf(next), hex);
    await assert.rejects(cli(['keys', 'retire-kek', '--config', next, '--name', 'ingest-kek-2']), /is keys\.kek/);

    // Static key rotation: a second version, then the first retired once devices have moved.
    assert.match((await cli(['keygen', '--config', next])).stderr, /static key version 2/);
    assert.match((await cli(['keys', 'retire-static', '--config', next])).stdout, /static key version\(s\) 1 destroyed/);
    assert.match((await cli(['keys', 'retire-static', '--config', next])).stdout, /nothing retired/);
  });
});

describe('vitalseal ingest run with the MQTT listener (a real process, mosquitto, a device uplink)', () => {
  let site: MqttIngestSite;
  let child: ChildProcess | undefined;
  before(async () => {
    site = await startMqttIngestSite({ devices: ['bed-mq', 'bed-mq2'] });
  });
  after(async () => {
    if (child !== undefined && child.exitCode === null) child.kill('SIGKILL');
    await site?.stop();
  });

  it('receives a device\'s sealed messages through the broker, stores them, serves them; a revocation from the command line reaches the broker', async () => {
    const cfg = site.config('ingest-run', { sqlite: join(site.dir, 'run.db') }, { crlReload: site.brokerCrlReload });
    const staticKey = await site.prepare(cfg);
    const run = (args: string[]) => spawnSync(process.execPath, [bin, 'ingest', ...args, '--config', cfg], { cwd: site.dir, env: site.env, encoding: 'utf8' });
    const token = run(['api-token', 'create', '--name', 'mqtt-test']).stdout.trim();
    assert.match(token, /^vst_/);

    const proc = spawn(process.execPath, [...INGEST_NODE_OPTIONS, bin, 'ingest', 'run', '--config', cfg], { cwd: site.dir, env: site.env, stdio: ['ignore', 'ignore', 'pipe'] });
    child = proc;
    let log = '';
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => (log += d));
    const logged = async (re: RegExp, ms = 20_000) => {
      const end = Date.now() + ms;
      while (!re.test(log)) {
        if (Date.now() > end || proc.exitCode !== null) throw new Error(`not logged: ${re} (exit ${proc.exitCode}); log:\n${log.slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    };
    // The listeners and the HTTPS server start side by side: their lines come in either order.
    await logged(/"msg":"MQTT listener subscribed"/);
    await logged(/"url":"https:/);
    const url = (/"url":"(https:\/\/[^"]+)"/.exec(log) as RegExpExecArray)[1] as string;
    assert.match(log, /"clientId":"ingest-run".*"username":"ingest\.vitalseal\.test"/);

    const session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: staticKey, clock: systemClock });
    const uplink = site.uplink('bed-mq');
    await uplink.connect();
    const t0 = Date.now();
    for (let seq = 1; seq <= 5; seq++) {
      const payload = session.seal(encodeVitalsPack(batchFor('bed-mq', seq, t0)), { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, 'bed-mq'], [Header.SEQUENCE, seq]]) });
      assert.equal((await uplink.send({ deviceId: 'bed-mq', seq, payload, contentFormat: 'cose-encrypt' })).status, 'accepted');
    }
    await uplink.close();
    let device: { messages?: number; transport?: string } = {};
    for (let i = 0; i < 200 && device.messages !== 5; i++) {
      device = (await httpsRequest(url, '/api/v1/devices/bed-mq', site.rootPem, { token })).json<{ device: typeof device }>().device;
      if (device.messages !== 5) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(device.messages, 5);
    assert.equal(device.transport, 'mqtts');
    assert.doesNotMatch(log, /node options/, 'started with INGEST_NODE_OPTIONS: no warning');
    const readings = await httpsRequest(url, `/api/v1/devices/bed-mq/readings?from=${t0}&to=${t0 + 60_000}`, site.rootPem, { token });
    assert.equal(readings.status, 200);
    assert.ok(readings.json<unknown[]>().length >= 15, 'the readings decrypt and decode');

    // The operator revokes from the command line; the running service sees it (registry refresh)
    // and has the broker reload the CRL: the device's next connection is refused.
    const rev = run(['devices', 'revoke', 'bed-mq', '--reason', 'stolen']);
    assert.equal(rev.status, 0, rev.stderr);
    await logged(/"msg":"broker told to reload the CRL"/);
    // mosquitto reloads on the signal in its own time: a connection in between may still get in.
    // Bounded by time (a minute) rather than a count of probes: on a loaded machine the reload itself
    // comes later, while quick probes would use up a count in about ten seconds.
    let refusal: unknown;
    for (const until = Date.now() + 60_000; refusal === undefined && Date.now() < until;) {
      const probe = site.uplink('bed-mq');
      try {
        await probe.connect();
        await probe.close();
        await new Promise((r) => setTimeout(r, 100));
      } catch (e) {
        refusal = e;
      }
    }
    assert.ok(refusal instanceof UplinkRejected && /certificate_revoked/.test(refusal.message), `refused as revoked: ${String(refusal)}`);
    await site.uplink('bed-mq2').connect();

    proc.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => (proc.exitCode !== null ? resolve(proc.exitCode) : proc.once('exit', (c) => resolve(c))));
    assert.equal(code, 0, log.slice(-2000));
    assert.match(log, /"msg":"MQTT listener stopped"[\s\S]*"msg":"ingest service stopped"/);
    assert.doesNotMatch(log, /BEGIN (EC |ENCRYPTED )?PRIVATE KEY|VS_SITE_PASS|vst_/);
  });
});
