/**
 * The MQTT listener's parts without a broker: its configuration section (every refusal names the
 * field), the broker CRL reload steps with real files, processes and signals (a CRL that is not one
 * is never installed, a stale pid file and a failing command are reported, the command sees the CRL
 * and nothing of the ingest's environment, reloads never overlap), the outcome → acknowledgement
 * contract of the handler, and the alert a failed connection is counted under.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseIngestConfig } from '../../src/ingest/config.ts';
import { BrokerCrlReloader } from '../../src/ingest/listeners/broker-crl.ts';
import { acceptHandler, handshakeAlert } from '../../src/ingest/listeners/mqtt.ts';
import type { AcceptOutcome } from '../../src/ingest/outcome.ts';
import type { IngestService } from '../../src/ingest/service.ts';
import { initDevCa } from '../../src/pki/dev-ca.ts';
import { mapConnectionError } from '../../src/transport/mqtts/tls.ts';
import { CertificateError, PeerIncompatible, TransportError, UplinkRejected } from '../../src/util/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-mqtt-parts-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const base = {
  storage: { sqlite: { path: '/tmp/x.db' } },
  keystore: { kind: 'software', path: '/tmp/k.vsks', passphrase: { env: 'P' } },
  audit: { path: '/tmp/a.log' },
};
const mqtt = (m: Record<string, unknown>) => parseIngestConfig({ ...base, mqtt: { url: 'mqtts://broker.example:8883', caFile: 'ca.pem', certFile: 'c.pem', keyFile: 'c.key', ...m } }).mqtt;
const refused = (m: Record<string, unknown>, pattern: RegExp) => assert.throws(() => mqtt(m), (e: unknown) => e instanceof Error && pattern.test(e.message), `${JSON.stringify(m)} should be refused with ${pattern}`);

function logger() {
  const lines: { level: string; obj: object; msg: string }[] = [];
  return {
    lines,
    info: (obj: object, msg: string) => lines.push({ level: 'info', obj, msg }),
    warn: (obj: object, msg: string) => lines.push({ level: 'warn', obj, msg }),
    error: (obj: object, msg: string) => lines.push({ level: 'error', obj, msg }),
  };
}

describe('mqtt configuration section', () => {
  it('takes the defaults and parses the URL', () => {
    const c = mqtt({});
    assert.ok(c !== undefined);
    assert.equal(c.host, 'broker.example');
    assert.equal(c.port, 8883);
    assert.equal(c.serverName, 'broker.example');
    assert.equal(c.sharedGroup, 'vitalseal');
    assert.equal(c.topic, 'vitals/+/v1');
    assert.match(c.clientId, /^vitalseal-ingest-[A-Za-z0-9._-]+$/);
    assert.equal(c.receiveMaximum, 128);
    assert.equal(c.sessionExpirySeconds, 7 * 86_400);
    assert.equal(c.drainSeconds, 10);
    assert.equal(c.crlReload, undefined);
    const v6 = mqtt({ url: 'mqtts://[::1]:18883', serverName: 'localhost', clientId: 'ingest-2' });
    assert.equal(v6?.host, '::1');
    assert.equal(v6?.port, 18883);
    assert.equal(v6?.serverName, 'localhost');
    assert.equal(mqtt({ url: 'mqtts://10.0.0.5' })?.port, 8883);
    const r = mqtt({ crlReload: { copyTo: '/etc/mosquitto/crl.pem', command: ['/usr/bin/systemctl', 'reload', 'mosquitto'] } });
    assert.deepEqual(r?.crlReload, { copyTo: '/etc/mosquitto/crl.pem', command: ['/usr/bin/systemctl', 'reload', 'mosquitto'] });
  });

  it('refuses what the listener cannot honour, naming the field', () => {
    refused({ url: 'mqtt://broker:1883' }, /^mqtt\.url: expected mqtts:/);
    refused({ url: 'mqtts://broker:99999' }, /^mqtt\.url: the port must be/);
    refused({ url: 'mqtts://[zz]:1' }, /^mqtt\.url/);
    refused({ url: 'mqtts://user:pw@broker' }, /^mqtt\.url/);
    refused({ topic: 'devices/+/vitals' }, /^mqtt\.topic: only vitals\/\+\/v1/);
    refused({ sharedGroup: 'a/b' }, /^mqtt\.sharedGroup/);
    refused({ clientId: 'has space' }, /^mqtt\.clientId/);
    refused({ receiveMaximum: 0 }, /^mqtt\.receiveMaximum: expected an integer from 1 to 65535/);
    refused({ sessionExpirySeconds: 5 }, /^mqtt\.sessionExpirySeconds/);
    refused({ serverName: 'bad name!' }, /^mqtt\.serverName/);
    refused({ keyPassphrase: { env: 'X' } }, /^mqtt\.keyPassphrase: unknown setting/);
    refused({ crlReload: {} }, /^mqtt\.crlReload: give at least one of copyTo, pidFile, command/);
    refused({ crlReload: { copyTo: 'relative/crl.pem' } }, /^mqtt\.crlReload\.copyTo: an absolute path/);
    refused({ crlReload: { command: 'systemctl reload mosquitto' } }, /^mqtt\.crlReload\.command: a list/);
    refused({ crlReload: { command: ['systemctl', 'reload', 'mosquitto'] } }, /^mqtt\.crlReload\.command: the program must be an absolute path/);
    refused({ crlReload: { command: ['/bin/true', ''] } }, /^mqtt\.crlReload\.command/);
    refused({ crlReload: { signal: 'HUP' } }, /^mqtt\.crlReload\.signal: unknown setting/);
  });
});

describe('broker CRL reload', async () => {
  const ca = await initDevCa({ dir: join(dir, 'ca'), organization: 'CRL Reload Test', now: Date.now() - 60_000 });
  await ca.writeCrl(Date.now());
  const crlPath = ca.paths.crl;

  it('copies a valid CRL atomically (0644), and at start only when the copy differs', async () => {
    const copyTo = join(dir, 'broker-crl.pem');
    const log = logger();
    const results: boolean[] = [];
    const r = new BrokerCrlReloader({ config: { copyTo }, log, onResult: (ok) => results.push(ok) });
    assert.equal(await r.reload({ crlPath }, { onlyIfChanged: true }), 'reloaded', 'nothing there yet');
    assert.deepEqual(readFileSync(copyTo), readFileSync(crlPath));
    assert.equal(statSync(copyTo).mode & 0o777, 0o644);
    assert.equal(await r.reload({ crlPath }, { onlyIfChanged: true }), 'unchanged');
    await ca.writeCrl(Date.now());
    assert.equal(await r.reload({ crlPath, crlNumber: 3 }, { onlyIfChanged: true }), 'reloaded');
    assert.deepEqual(readFileSync(copyTo), readFileSync(crlPath));
    assert.deepEqual(results, [true, true]);
    // Without copyTo there is nothing to compare: a start-up sync does nothing.
    assert.equal(await new BrokerCrlReloader({ config: { command: ['/bin/false'] }, log }).reload({ crlPath }, { onlyIfChanged: true }), 'unchanged');
  });

  it('never installs something that is not a CRL, and says why', async () => {
    const copyTo = join(dir, 'kept-crl.pem');
    writeFileSync(copyTo, readFileSync(crlPath));
    const bogus = join(dir, 'bogus.pem');
    writeFileSync(bogus, '-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n');
    const log = logger();
    const r = new BrokerCrlReloader({ config: { copyTo }, log });
    assert.equal(await r.reload({ crlPath: bogus }), 'failed');
    assert.deepEqual(readFileSync(copyTo), readFileSync(crlPath), 'the broker keeps its CRL');
    assert.equal(await r.reload({ crlPath: join(dir, 'missing.pem') }), 'failed');
    assert.equal(await r.reload({}), 'failed');
    const errors = log.lines.filter((l) => l.level === 'error');
    assert.equal(errors.length, 3);
    assert.match(JSON.stringify(errors[2]), /no pki section/);
    assert.ok(errors.every((l) => (l.obj as { step: string }).step === 'mqtt.crlReload.copyTo'));
  });

  it('signals the process in the pid file; a stale or bad pid file is reported', async () => {
    // A real process that records the SIGHUP it gets.
    const child = spawn(process.execPath, ['-e', "process.on('SIGHUP', () => { console.log('hup'); process.exit(0); }); setInterval(() => {}, 1000); console.log('ready');"], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    while (!out.includes('ready')) await new Promise((r) => setTimeout(r, 10));
    const pidFile = join(dir, 'broker.pid');
    writeFileSync(pidFile, `${child.pid}\n`);
    const log = logger();
    const r = new BrokerCrlReloader({ config: { pidFile }, log });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    assert.equal(await r.reload({ crlPath }), 'reloaded');
    assert.equal(await exited, 0);
    assert.match(out, /hup/);
    // A stale pid file: no process has this id (pids stay below pid_max; a dead child's pid could be
    // reused by an unrelated process, so it is not used here).
    writeFileSync(pidFile, `${readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()}\n`);
    assert.equal(await r.reload({ crlPath }), 'failed');
    assert.match(JSON.stringify(log.lines.at(-1)), /no such process/);
    writeFileSync(pidFile, 'mosquitto\n');
    assert.equal(await r.reload({ crlPath }), 'failed');
    assert.match(JSON.stringify(log.lines.at(-1)), /does not hold a process id/);
    writeFileSync(pidFile, '1\n');
    assert.equal(await r.reload({ crlPath }), 'failed', 'never init');
  });

  it('runs the command without a shell, with the CRL and without the ingest environment; a failure is reported with its status', async () => {
    const out = join(dir, 'command-env.txt');
    process.env['VS_SECRET_SOURCE_TEST'] = 'must not leak';
    try {
      const log = logger();
      const r = new BrokerCrlReloader({ config: { command: ['/bin/sh', '-c', 'env > "$0"', out] }, log });
      assert.equal(await r.reload({ crlPath, crlNumber: 9 }), 'reloaded');
      const env = readFileSync(out, 'utf8');
      assert.match(env, new RegExp(`^VITALSEAL_CRL_PATH=${crlPath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`, 'm'));
      assert.match(env, /^VITALSEAL_CRL_NUMBER=9$/m);
      assert.doesNotMatch(env, /VS_SECRET_SOURCE_TEST|must not leak/);
      const failing = new BrokerCrlReloader({ config: { command: ['/bin/sh', '-c', 'echo "broker not found" >&2; exit 3'] }, log });
      assert.equal(await failing.reload({ crlPath }), 'failed');
      assert.match(JSON.stringify(log.lines.at(-1)), /exit status 3 \(broker not found\)/);
      const slow = new BrokerCrlReloader({ config: { command: ['/bin/sleep', '5'] }, log, commandTimeoutMs: 200 });
      assert.equal(await slow.reload({ crlPath }), 'failed');
      assert.match(JSON.stringify(log.lines.at(-1)), /killed after 200 ms/);
    } finally {
      delete process.env['VS_SECRET_SOURCE_TEST'];
    }
  });

  it('never runs two reloads at once: changes during one queue exactly one more', async () => {
    const marks = join(dir, 'marks.txt');
    writeFileSync(marks, '');
    const r = new BrokerCrlReloader({ config: { command: ['/bin/sh', '-c', 'echo start >> "$0"; sleep 0.2; echo end >> "$0"', marks] }, log: logger() });
    const all = await Promise.all([r.reload({ crlPath }), r.reload({ crlPath }), r.reload({ crlPath }), r.reload({ crlPath })]);
    await r.idle();
    assert.deepEqual(all, ['reloaded', 'reloaded', 'reloaded', 'reloaded']);
    assert.equal(readFileSync(marks, 'utf8'), 'start\nend\nstart\nend\n', 'two runs, one after the other');
  });
});

describe('the listener handler and its alerts', () => {
  const service = (outcome: AcceptOutcome) => ({ accept: async () => outcome }) as unknown as IngestService;
  const msg = { deviceId: 'bed-1', topic: 'vitals/bed-1/v1', payload: new Uint8Array([0xd8, 0x60]), contentFormat: 'cose-encrypt' as const, userProperties: {}, redelivered: false };

  it('acknowledges stored and duplicate, refuses for good with the uplink reason, leaves unavailable unacknowledged', async () => {
    await acceptHandler(service({ status: 'accepted', deviceId: 'bed-1', seq: 1, readings: 3 }))(msg);
    await acceptHandler(service({ status: 'duplicate', deviceId: 'bed-1', seq: 1 }))(msg);
    await assert.rejects(acceptHandler(service({ status: 'rejected', reason: 'device-revoked', detail: 'x' }))(msg), (e: unknown) => e instanceof UplinkRejected && e.code === 'forbidden');
    await assert.rejects(acceptHandler(service({ status: 'rejected', reason: 'unknown-device', detail: 'x' }))(msg), (e: unknown) => e instanceof UplinkRejected && e.code === 'unauthorized');
    await assert.rejects(acceptHandler(service({ status: 'rejected', reason: 'malformed', detail: 'x' }))(msg), (e: unknown) => e instanceof UplinkRejected && e.code === 'bad-request');
    await assert.rejects(acceptHandler(service({ status: 'unavailable', detail: 'db down' }))(msg), (e: unknown) => e instanceof TransportError && !(e instanceof UplinkRejected));
  });

  it('counts a failed connection under the alert involved, and nothing that was not TLS', () => {
    assert.equal(handshakeAlert(new CertificateError('unknown-issuer', 'x')), 'unknown_ca');
    assert.equal(handshakeAlert(new CertificateError('name-mismatch', 'x')), 'bad_certificate');
    const revoked = Object.assign(new Error('alert'), { code: 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED' });
    assert.equal(handshakeAlert(mapConnectionError(revoked, 'broker')), 'certificate_revoked');
    const required = Object.assign(new Error('write EPROTO 40C7:error:0A00045C:SSL routines::tlsv13 alert certificate required:'), { code: 'EPROTO' });
    assert.equal(handshakeAlert(mapConnectionError(required, 'broker')), 'certificate_required');
    assert.equal(handshakeAlert(new PeerIncompatible('tls-negotiation', 'x')), 'handshake_failure');
    assert.equal(handshakeAlert(mapConnectionError(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }), 'broker')), undefined);
    assert.equal(handshakeAlert(new UplinkRejected('unauthorized', 'CONNACK 0x87')), undefined);
  });
});
