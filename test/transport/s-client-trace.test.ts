/**
 * The `openssl s_client -msg` reader (s-client-trace.ts) on a real handshake captured at test time
 * (s_server and s_client with keys made now, mutual TLS 1.3, X25519), in any chunking; then every
 * prefix, corrupted bytes and oversized input. Also the arguments the TPM connector gives s_client,
 * the mapping of s_client's failure output to typed errors, and FAPI return codes in tpm2-tools'
 * output.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../../scripts/lib/ports.ts';
import { createTestFleet } from '../../scripts/lib/test-fleet.ts';
import { rcFromToolOutput } from '../../src/keystore/tpm/tools-key.ts';
import { pemDecode } from '../../src/pki/pem.ts';
import { errorFromSClient, sClientArgs } from '../../src/transport/mqtts/openssl-tpm-tls.ts';
import { parseCertificateBody, parseServerHello, SClientTrace } from '../../src/transport/mqtts/s-client-trace.ts';
import { CertificateError, DecodeError, KeyStoreError, PeerIncompatible, TransportError, UplinkRejected } from '../../src/util/errors.ts';

const until = async (cond: () => boolean, ms: number) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe('s_client handshake trace', () => {
  let dir: string;
  let trace: string;
  let serverChain: Uint8Array[];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vitalseal-trace-'));
    const fleet = await createTestFleet('Trace');
    const srv = await fleet.service({ dnsNames: ['localhost'] });
    const dev = await fleet.device('bed-trace');
    // s_server completes its chain from its CA file, so it sends the root as well.
    serverChain = [...pemDecode(srv.certChainPem, 'CERTIFICATE'), ...pemDecode(fleet.rootPem, 'CERTIFICATE')].map((b) => b.der);
    const w = (n: string, t: string) => {
      writeFileSync(join(dir, n), t, { mode: 0o600 });
      return join(dir, n);
    };
    const port = await freePort();
    const server = spawn('openssl', ['s_server', '-accept', `127.0.0.1:${port}`, '-cert', w('s.pem', srv.certChainPem), '-key', w('sk.pem', srv.keyPem as string),
      '-CAfile', w('ca.pem', fleet.caChainPem), '-Verify', '3', '-quiet', '-groups', 'X25519'], { stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      await new Promise((r) => setTimeout(r, 500));
      const msg = join(dir, 'msg.txt');
      const client = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', '-tls1_3', '-quiet', '-no_ign_eof',
        '-cert', w('d.pem', dev.certChainPem), '-key', w('dk.pem', dev.keyPem as string), '-CAfile', w('r.pem', fleet.rootPem), '-msg', '-msgfile', msg], { stdio: ['pipe', 'ignore', 'ignore'] });
      await until(() => {
        try {
          return />>> TLS 1\.3, Handshake \[length [0-9a-f]+\], Finished\n(?: {4}.*\n)+/.test(readFileSync(msg, 'latin1'));
        } catch {
          return false;
        }
      }, 20_000);
      client.stdin.end();
      client.kill();
      trace = readFileSync(msg, 'latin1');
    } finally {
      server.kill();
    }
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the broker chain and the negotiated session, in one piece and in small random chunks', () => {
    for (const chunk of [trace.length, 1, 7, 64]) {
      const t = new SClientTrace();
      for (let at = 0; at < trace.length; at += chunk) t.push(trace.slice(at, at + chunk));
      assert.ok(t.finished);
      assert.deepEqual(t.chain.map((c) => Buffer.from(c)), serverChain.map((c) => Buffer.from(c)));
      assert.equal(t.session.protocol, 'TLSv1.3');
      assert.equal(t.session.group, 'x25519');
      assert.match(t.session.suite, /^TLS_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$/);
    }
  });

  it('every prefix: either not finished yet or a DecodeError, never a wrong chain', () => {
    const end = trace.indexOf('Finished\n', trace.indexOf('>>> TLS 1.3, Handshake'));
    for (let n = 0; n < end; n += 3) {
      const t = new SClientTrace();
      try {
        t.push(trace.slice(0, n));
      } catch (e) {
        assert.ok(e instanceof DecodeError, String(e));
        continue;
      }
      assert.equal(t.finished, false, `finished after ${n} characters`);
    }
  });

  it('refuses a message whose bytes disagree with its length, a corrupted hex line, an oversized message or line', () => {
    const wrongLength = trace.replace(/(<<< TLS 1\.3, Handshake \[length )([0-9a-f]+)(\], Certificate)/, (_m, a: string, l: string, b: string) => `${a}${(Number.parseInt(l, 16) - 1).toString(16).padStart(4, '0')}${b}`);
    const corrupt = trace.replace(/(<<< TLS 1\.3, Handshake \[length [0-9a-f]+\], Certificate\n {4})[0-9a-f]{2}/, '$1zz');
    const huge = '<<< TLS 1.3, Handshake [length 100000], Certificate\n';
    for (const bad of [wrongLength, corrupt, huge, `${'x'.repeat(600)}\n`, 'x'.repeat(600)]) {
      assert.throws(() => new SClientTrace().push(bad), DecodeError);
    }
  });

  it('ServerHello and Certificate decoders refuse every truncation', () => {
    const t = new SClientTrace();
    t.push(trace);
    const sh = /<<< TLS 1\.3, Handshake \[length [0-9a-f]+\], ServerHello\n((?: {4}.*\n)+)/.exec(trace);
    const cert = /<<< TLS 1\.3, Handshake \[length [0-9a-f]+\], Certificate\n((?: {4}.*\n)+)/.exec(trace);
    const bytes = (m: RegExpExecArray | null) => Uint8Array.from(((m as RegExpExecArray)[1] as string).trim().split(/\s+/).map((h) => Number.parseInt(h, 16))).subarray(4);
    const shBody = bytes(sh);
    const certBody = bytes(cert);
    assert.equal(parseServerHello(shBody).protocol, 'TLSv1.3');
    assert.equal(parseCertificateBody(certBody).length, serverChain.length);
    for (let n = 0; n < shBody.length; n++) assert.throws(() => parseServerHello(shBody.subarray(0, n)), DecodeError);
    for (let n = 0; n < certBody.length; n++) assert.throws(() => parseCertificateBody(certBody.subarray(0, n)), DecodeError);
  });
});

describe('s_client arguments', () => {
  const settings = {
    files: { dir: '/d', key: '/d/key.pem', cert: '/d/cert.pem', chain: '/d/chain.pem', roots: '/d/roots.pem' },
    providerPath: '/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so',
  } as unknown as Parameters<typeof sClientArgs>[0];
  const value = (args: string[], flag: string) => args[args.indexOf(flag) + 1];

  it('a DNS name: SNI and hostname verification; an IP literal: no SNI (RFC 6066 §3) and IP verification; IPv6 bracketed', () => {
    const dns = sClientArgs(settings, { host: '10.0.0.5', port: 8883, serverName: 'broker.ward7' }, '/d/trace-1');
    assert.equal(value(dns, '-connect'), '10.0.0.5:8883');
    assert.equal(value(dns, '-servername'), 'broker.ward7');
    assert.equal(value(dns, '-verify_hostname'), 'broker.ward7');
    assert.ok(!dns.includes('-verify_ip') && !dns.includes('-noservername'));
    const ip = sClientArgs(settings, { host: '::1', port: 8883, serverName: '::1' }, '/d/trace-2');
    assert.equal(value(ip, '-connect'), '[::1]:8883');
    assert.ok(ip.includes('-noservername') && !ip.includes('-servername'));
    assert.equal(value(ip, '-verify_ip'), '::1');
  });

  it('TLS 1.3 and X25519 only, verification failures fatal, no command letters, the end of input closes, the tpm2 provider preferred', () => {
    const a = sClientArgs(settings, { host: '127.0.0.1', port: 1, serverName: 'localhost' }, '/d/trace-3');
    for (const flag of ['-tls1_3', '-quiet', '-no_ign_eof', '-nocommands', '-verify_return_error']) assert.ok(a.includes(flag), flag);
    // -quiet turns ign_eof on; -no_ign_eof must come after it to turn it off again.
    assert.ok(a.indexOf('-no_ign_eof') > a.indexOf('-quiet'));
    assert.equal(value(a, '-groups'), 'X25519');
    assert.equal(value(a, '-CAfile'), '/d/roots.pem');
    assert.equal(value(a, '-key'), '/d/key.pem');
    assert.equal(value(a, '-msgfile'), '/d/trace-3');
    assert.equal(value(a, '-provider-path'), '/usr/lib/x86_64-linux-gnu/ossl-modules');
    assert.match(value(a, '-propquery') as string, /^\?provider=tpm2,/);
  });
});

describe('s_client failures as typed errors', () => {
  const where = '127.0.0.1:8883';
  it('maps verify errors, alerts, connection errors, version mismatches and TPM key failures', () => {
    const verify = errorFromSClient('verify error:num=10:certificate has expired\n40E7:error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed:../ssl/statem/statem_clnt.c:1889:\n', where, '');
    assert.ok(verify instanceof CertificateError && verify.code === 'expired', String(verify));
    const name = errorFromSClient('verify error:num=62:hostname mismatch\n', where, '');
    assert.ok(name instanceof CertificateError && name.code === 'name-mismatch');
    const revoked = errorFromSClient('40E7:error:0A000414:SSL routines:ssl3_read_bytes:sslv3 alert certificate revoked:../ssl/record/rec_layer_s3.c:1584:SSL alert number 44\n', where, '');
    assert.ok(revoked instanceof UplinkRejected && revoked.code === 'unauthorized', String(revoked));
    const refused = errorFromSClient('connect:errno=111\n', where, '');
    assert.ok(refused instanceof TransportError && refused.code === 'connection-refused', String(refused));
    const version = errorFromSClient('40E7:error:0A000102:SSL routines:ssl_choose_client_version:unsupported protocol:../ssl/statem/statem_lib.c:1985:\n', where, '');
    assert.ok(version instanceof PeerIncompatible, String(version));
    const key = errorFromSClient('Could not read client certificate private key from /tmp/x/key.pem\n', where, 'device:/dev/tpmrm0');
    assert.ok(key instanceof KeyStoreError && key.code === 'tpm-tls-unavailable' && /tabrmd/.test(key.message), String(key));
    // A TPM out of object slots while verifying the broker's chain in the TPM: the cause is the TPM.
    const slots = errorFromSClient('verify error:num=7:certificate signature failure\n80DB:error:4000000E:tpm2::cannot hash::-1:388 tpm:handle(1):value is out of range\n', where, '');
    assert.ok(slots instanceof KeyStoreError && slots.code === 'tpm-tls-unavailable' && /cannot hash/.test(slots.message), String(slots));
    const other = errorFromSClient('something else\n', where, '');
    assert.ok(other instanceof TransportError && other.code === 'connection-failed');
  });

  it('reads FAPI return codes as tpm2-tools and the TSS log print them', () => {
    assert.equal(rcFromToolOutput('ERROR: Fapi_GetTpmBlobs(0x60020) - fapi:The key was not found\n'), 0x60020);
    assert.equal(rcFromToolOutput('ERROR:fapi:src/tss2-fapi/api/Fapi_Initialize.c:123:Fapi_Initialize_Finish() ErrorCode (0x000a000a) Initialize\n'), 0xa000a);
    assert.equal(rcFromToolOutput('no code here'), undefined);
  });
});
