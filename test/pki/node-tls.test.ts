/**
 * validateChain inside real TLS 1.3 connections on loopback (the MQTT-over-TLS path): the client
 * checks the server with checkServerIdentityWith, the server checks the device with validateTlsPeer.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import * as tls from 'node:tls';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import type { Certificate } from '../../src/pki/certificate.ts';
import { spkiSha256 } from '../../src/pki/certificate.ts';
import { createCrl, parseCrl, type Crl } from '../../src/pki/crl.ts';
import { checkServerIdentityWith, validateTlsPeer, type TlsValidationOptions } from '../../src/pki/node-tls.ts';
import { pemEncode } from '../../src/pki/pem.ts';
import { DAY_MS } from '../../src/pki/policy.ts';
import type { ValidatedPeer } from '../../src/pki/validate.ts';
import { ManualClock } from '../../src/util/clock.ts';
import { CertificateError } from '../../src/util/errors.ts';
import { makePki, type TestPki } from './fixtures.ts';

function p256(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
}
const keyPem = (k: KeyObject) => k.export({ format: 'pem', type: 'pkcs8' }).toString();

describe('node:tls with validateChain (TLS 1.3, mutual authentication, loopback)', () => {
  let pki: TestPki;
  const deviceKey = p256();
  const serverKey = p256();
  let device: Certificate;
  let revokedDevice: Certificate;
  const revokedKey = p256();
  let server: Certificate;
  let crl: Crl;
  let tlsServer: tls.Server;
  let port: number;
  const clock = new ManualClock(Date.now());
  const accepted: (ValidatedPeer | CertificateError)[] = [];

  before(async () => {
    // OpenSSL also checks validity against the machine's clock here, so the PKI starts now.
    pki = await makePki({ now: clock.now() });
    device = (await pki.device('bed-7', { signer: keyObjectSigner(deviceKey) })).cert;
    revokedDevice = (await pki.device('bed-13', { signer: keyObjectSigner(revokedKey) })).cert;
    server = (await pki.service({ dnsNames: ['ingest.example.org'], ipAddresses: ['127.0.0.1'] }, { signer: keyObjectSigner(serverKey) })).cert;
    crl = parseCrl(await createCrl({ ca: pki.ca, revoked: [{ serialHex: revokedDevice.serialHex, revokedAt: clock.now() }], crlNumber: 1, now: clock.now(), nextUpdate: clock.now() + DAY_MS }));
    const serverOpts: TlsValidationOptions = { roots: [pki.root], clock, revocation: { crls: [crl] } };
    tlsServer = tls.createServer({
      key: keyPem(serverKey),
      cert: pemEncode('CERTIFICATE', server.der) + pemEncode('CERTIFICATE', pki.issuing.der),
      ca: pemEncode('CERTIFICATE', pki.root.der),
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
    }, (socket) => {
      try {
        accepted.push(validateTlsPeer(socket, serverOpts));
        socket.end('welcome\n');
      } catch (e) {
        accepted.push(e as CertificateError);
        socket.destroy();
      }
    });
    tlsServer.listen(0, '127.0.0.1');
    await once(tlsServer, 'listening');
    port = (tlsServer.address() as AddressInfo).port;
  });

  after(() => new Promise<void>((resolve) => tlsServer.close(() => resolve())));

  function connect(key: KeyObject, cert: Certificate, check: Partial<TlsValidationOptions> & { clock?: ManualClock } = {}): Promise<{ data: string } | { error: Error }> {
    return new Promise((resolve) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port,
        minVersion: 'TLSv1.3',
        ca: pemEncode('CERTIFICATE', pki.root.der),
        key: keyPem(key),
        cert: pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', pki.issuing.der),
        checkServerIdentity: checkServerIdentityWith({ roots: [pki.root], clock, ...check }),
      });
      let data = '';
      socket.setEncoding('utf8');
      socket.on('data', (d: string) => (data += d));
      socket.on('error', (error) => resolve({ error }));
      socket.on('close', () => resolve({ data }));
    });
  }

  it('a device connects; the server learns its device id, the client checks the server name', async () => {
    const r = await connect(deviceKey, device, { spkiPins: [spkiSha256(server.spki.der)] });
    assert.deepEqual(r, { data: 'welcome\n' });
    const peer = accepted.at(-1) as ValidatedPeer;
    assert.equal(peer.deviceId, 'bed-7');
    assert.deepEqual(peer.spkiSha256, spkiSha256(device.spki.der));
  });

  it('the client refuses a server whose key is not pinned', async () => {
    const r = await connect(deviceKey, device, { spkiPins: [new Uint8Array(32)] });
    assert.ok('error' in r);
    assert.ok(r.error instanceof CertificateError);
    assert.equal(r.error.code, 'pin-mismatch');
  });

  it('the client judges expiry by its injected clock, not the machine clock', async () => {
    const future = new ManualClock(server.notAfter + 1000);
    const r = await connect(deviceKey, device, { clock: future });
    assert.ok('error' in r && r.error instanceof CertificateError);
    assert.equal((r.error as CertificateError).code, 'expired');
  });

  it('the server refuses a device listed on the CRL', async () => {
    const before = accepted.length;
    const r = await connect(revokedKey, revokedDevice);
    assert.ok(!('data' in r) || r.data === '');
    const verdict = accepted[before];
    assert.ok(verdict instanceof CertificateError);
    assert.equal(verdict.code, 'revoked');
  });
});
