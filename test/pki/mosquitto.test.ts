/**
 * Peer check with the real broker: mosquitto 2 loads the dev CA's ca-chain.pem as `cafile` and its
 * crl.pem as `crlfile`, accepts a device certificate we issued (TLS 1.3, client certificate, CN as
 * the MQTT username) and refuses it once `DevCa.revoke` has written the new CRL.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../../scripts/lib/ports.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa, type DevCa } from '../../src/pki/dev-ca.ts';
import { pemEncode } from '../../src/pki/pem.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-pki-mosquitto-'));

async function waitForPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`mosquitto did not listen on ${port}: ${log()}`);
}

/** Lets the event loop deliver the broker's stderr (publish blocks it), up to a few seconds. */
async function logMatches(log: () => string, re: RegExp): Promise<boolean> {
  for (let i = 0; i < 100 && !re.test(log()); i++) await new Promise((r) => setTimeout(r, 30));
  return re.test(log());
}

describe('mosquitto with the dev CA (cafile, crlfile, require_certificate)', () => {
  let ca: DevCa;
  let broker: ChildProcess | undefined;
  let port: number;
  let brokerLog = '';
  let deviceSerial = '';

  async function startBroker(): Promise<void> {
    port = await freePort();
    const conf = join(dir, 'mosquitto.conf');
    writeFileSync(conf, [
      'per_listener_settings false',
      `listener ${port} 127.0.0.1`,
      `cafile ${ca.paths.chain}`,
      `certfile ${join(dir, 'broker.pem')}`,
      `keyfile ${join(dir, 'broker.key')}`,
      `crlfile ${ca.paths.crl}`,
      'require_certificate true',
      'use_identity_as_username true',
      'tls_version tlsv1.3',
      'allow_anonymous false',
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      '',
    ].join('\n'));
    brokerLog = '';
    broker = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    broker.stderr?.setEncoding('utf8').on('data', (d: string) => (brokerLog += d));
    await waitForPort(port, broker, () => brokerLog);
  }

  async function stopBroker(): Promise<void> {
    if (broker !== undefined && broker.exitCode === null) {
      broker.kill('SIGTERM');
      await once(broker, 'exit');
    }
    broker = undefined;
  }

  function publish(name: string): { code: number | null; out: string } {
    const r = spawnSync('mosquitto_pub', [
      '-h', '127.0.0.1', '-p', String(port), '--cafile', ca.paths.root, '--cert', join(dir, `${name}.pem`), '--key', join(dir, `${name}.key`),
      '--tls-version', 'tlsv1.3', '-t', 'devices/bed-7/vitals', '-m', 'sealed', '-q', '1', '-i', `t-${name}`,
    ], { encoding: 'utf8', timeout: 20_000 });
    return { code: r.status, out: `${r.stdout}${r.stderr}` };
  }

  before(async () => {
    // mosquitto checks validity against the machine clock, so this CA starts now.
    const now = Date.now();
    ca = await initDevCa({ dir: join(dir, 'ca'), organization: 'Broker Test Fleet', now });
    const brokerKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const broker = await ca.issueService(await createCsr({ signer: keyObjectSigner(brokerKey), subject: {} }), { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] }, now);
    writeFileSync(join(dir, 'broker.pem'), pemEncode('CERTIFICATE', broker.der) + pemEncode('CERTIFICATE', ca.issuing.der));
    // Readable by the broker's own user (see below); nothing else can traverse to it.
    writeFileSync(join(dir, 'broker.key'), brokerKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o644 });
    const deviceKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const device = await ca.issueDevice(await createCsr({ signer: keyObjectSigner(deviceKey), subject: { commonName: 'bed-7' } }), 'bed-7', now);
    writeFileSync(join(dir, 'bed-7.pem'), pemEncode('CERTIFICATE', device.der) + pemEncode('CERTIFICATE', ca.issuing.der));
    writeFileSync(join(dir, 'bed-7.key'), deviceKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    deviceSerial = device.serialHex;
    // mosquitto started as root drops to the "mosquitto" user before it reads these files: let it
    // traverse (not list) the private directories. The CA keys stay 0600.
    chmodSync(dir, 0o711);
    chmodSync(join(dir, 'ca'), 0o711);
  });

  after(async () => {
    await stopBroker();
    rmSync(dir, { recursive: true, force: true });
  });

  it('accepts the device, then refuses it after revocation (new crl.pem, broker restarted)', async () => {
    await startBroker();
    const ok = publish('bed-7');
    assert.equal(ok.code, 0, `${ok.out}\n${brokerLog}`);
    assert.ok(await logMatches(() => brokerLog, /New client connected .* as t-bed-7 .*u'bed-7'/), brokerLog);
    await stopBroker();

    await ca.revoke(deviceSerial, 'keyCompromise', Date.now());
    await startBroker();
    const refused = publish('bed-7');
    assert.notEqual(refused.code, 0, refused.out);
    // mosquitto logs only "certificate verify failed"; the CRL is the one thing that changed, and
    // OpenSSL, given the same files, names the reason.
    assert.ok(await logMatches(() => brokerLog, /certificate verify failed/), brokerLog);
    const why = spawnSync('openssl', ['verify', '-crl_check', '-CAfile', ca.paths.chain, '-CRLfile', ca.paths.crl, join(dir, 'bed-7.pem')], { encoding: 'utf8' });
    assert.match(`${why.stdout}${why.stderr}`, /certificate revoked/);
  });
});
