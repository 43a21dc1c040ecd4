/**
 * `vitalseal dtls client|server` through the real bin, over UDP loopback. Keys and certificates are
 * made at test time in a temporary directory that is removed afterwards.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { issueLeaf, makeCa } from '../dtls/support/pki.ts';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vitalseal-cli-dtls-'));
const children: ChildProcessWithoutNullStreams[] = [];
const PSK_HEX = '11'.repeat(32);

after(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

before(async () => {
  const ca = await makeCa('cli test CA');
  const server = await issueLeaf(ca, 'localhost', { eku: 'server', ip: '127.0.0.1' });
  const device = await issueLeaf(ca, 'device-cli', { eku: 'client' });
  const other = await makeCa('untrusted CA');
  writeFileSync(join(dir, 'ca.pem'), ca.pem);
  writeFileSync(join(dir, 'other-ca.pem'), other.pem);
  writeFileSync(join(dir, 'server.pem'), server.pem);
  writeFileSync(join(dir, 'server.key'), server.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
  writeFileSync(join(dir, 'device.pem'), device.pem);
  writeFileSync(join(dir, 'device.key'), device.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
});

interface Server {
  readonly port: number;
  readonly child: ChildProcessWithoutNullStreams;
  stderr(): string;
  stdout(): string;
}

async function startServer(args: string[]): Promise<Server> {
  const child = spawn(process.execPath, [bin, 'dtls', 'server', '--port', '0', ...args], { cwd: dir });
  children.push(child);
  let err = '';
  let out = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${err}`)), 15_000);
    const check = () => {
      const m = /listening on [^:]+:(\d+)/.exec(err);
      if (m !== null) {
        clearTimeout(timer);
        child.stderr.off('data', check);
        resolve(Number(m[1]));
      }
    };
    child.stderr.on('data', check);
    child.once('exit', (code) => reject(new Error(`server exited ${code}: ${err}`)));
  });
  return { port, child, stderr: () => err, stdout: () => out };
}

function client(args: string[], input: string) {
  const r = spawnSync(process.execPath, [bin, 'dtls', 'client', ...args], { input, cwd: dir, timeout: 30_000 });
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

async function stop(s: Server): Promise<void> {
  s.child.kill('SIGTERM');
  await new Promise((r) => s.child.once('exit', r));
}

describe('vitalseal dtls (through the real bin)', () => {
  it('mutual authentication: prints the session, sends stdin, prints what comes back', async () => {
    const s = await startServer(['--cert', 'server.pem', '--key', 'server.key', '--ca', 'ca.pem', '--require-client-cert', '--echo']);
    const r = client([`127.0.0.1:${s.port}`, '--ca', 'ca.pem', '--cert', 'device.pem', '--key', 'device.key'], 'SpO2 98\n');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /client: DTLS 1\.3 with 127\.0\.0\.1:\d+: TLS_AES_128_GCM_SHA256, x25519, auth mutual, peer CN=localhost/);
    assert.equal(r.stdout, 'SpO2 98\n', 'the echo came back');
    await new Promise((res) => setTimeout(res, 200));
    assert.match(s.stderr(), /server: DTLS 1\.3 with 127\.0\.0\.1:\d+: TLS_AES_128_GCM_SHA256, x25519, auth mutual, peer CN=device-cli/);
    assert.equal(s.stdout(), 'SpO2 98\n');
    await stop(s);
  });

  it('PSK with a chosen suite, group and CID', async () => {
    const psk = ['--psk-identity', 'pulse-ox-3', '--psk-hex', PSK_HEX];
    const s = await startServer([...psk, '--suites', 'chacha20', '--groups', 'secp256r1', '--cid', '6', '--echo']);
    const r = client([`127.0.0.1:${s.port}`, ...psk, '--suites', 'chacha20,aes128gcm', '--groups', 'secp256r1', '--cid', '4'], 'pulse 64\n');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /TLS_CHACHA20_POLY1305_SHA256, secp256r1, auth psk, PSK identity "pulse-ox-3", CID in [0-9a-f]{8} out [0-9a-f]{12}/);
    assert.equal(r.stdout, 'pulse 64\n');
    await stop(s);
  });

  it('--reconnect resumes with the session ticket of the first connection', async () => {
    const s = await startServer(['--cert', 'server.pem', '--key', 'server.key', '--echo']);
    const r = client([`127.0.0.1:${s.port}`, '--ca', 'ca.pem', '--reconnect'], 'after resumption\n');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /auth certificate, peer CN=localhost[\s\S]*auth resumption, peer CN=localhost/);
    assert.equal(r.stdout, 'after resumption\n');
    await stop(s);
  });

  it('fails non-zero naming the alert: untrusted server, missing client certificate, wrong PSK', async () => {
    const s = await startServer(['--cert', 'server.pem', '--key', 'server.key', '--ca', 'ca.pem', '--require-client-cert']);
    const untrusted = client([`127.0.0.1:${s.port}`, '--ca', 'other-ca.pem'], '');
    assert.equal(untrusted.code, 1);
    assert.match(untrusted.stderr, /handshake failed: .*\[unknown-issuer\] \(alert sent: unknown_ca\)/);
    const noCert = client([`127.0.0.1:${s.port}`, '--ca', 'ca.pem'], 'x');
    assert.equal(noCert.code, 1);
    assert.match(noCert.stderr, /\[certificate_required\]/);
    await stop(s);
    const p = await startServer(['--psk-identity', 'a', '--psk-hex', PSK_HEX]);
    const wrong = client([`127.0.0.1:${p.port}`, '--psk-identity', 'a', '--psk-hex', '22'.repeat(32)], '');
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /\[decrypt_error\]/);
    await stop(p);
  });

  it('usage errors exit 2 with the reason', () => {
    const r = client(['127.0.0.1:1', '--psk-identity', 'a', '--psk-hex', 'abcd'], '');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /32 bytes/);
    const s = spawnSync(process.execPath, [bin, 'dtls', 'server'], { cwd: dir });
    assert.equal(s.status, 2);
    assert.match(s.stderr.toString(), /--port/);
    const h = spawnSync(process.execPath, [bin, 'dtls', '--help'], { cwd: dir });
    assert.equal(h.status, 0);
    assert.match(h.stdout.toString(), /vitalseal dtls client HOST:PORT/);
  });
});
