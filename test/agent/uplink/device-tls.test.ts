/**
 * The device's TLS connector re-reads its chain file when it changed (uplink/device-tls.ts,
 * `reloadingTls`): against a real TLS 1.3 server on loopback that records the serial of every
 * client certificate it sees, the next connection after a replacement presents the new certificate;
 * a replacement for another key or an unreadable one is logged and the last good chain stays; a
 * replaced connector is closed once its last connection has ended. `deviceTlsFactory` refuses an
 * open TPM store (its TLS comes from `tpmDeviceTls`) and a PKCS#11 token key.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createServer, type Server, type TLSSocket } from 'node:tls';
import { startSoftHsm } from '../../../scripts/lib/softhsm.ts';
import { startSwtpm } from '../../../scripts/lib/swtpm.ts';
import { createLogger } from '../../../src/agent/log.ts';
import { deviceTlsFactory, reloadingTls, type DeviceTlsBuilder } from '../../../src/agent/uplink/device-tls.ts';
import { openKeyStore } from '../../../src/keystore/open.ts';
import { openSoftwareKeyStore, type SoftwareKeyStore } from '../../../src/keystore/software/store.ts';
import { keyObjectSigner } from '../../../src/keystore/signer.ts';
import { openTpmKeyStore } from '../../../src/keystore/tpm/index.ts';
import type { Signer } from '../../../src/keystore/signer.ts';
import { pemEncode } from '../../../src/pki/pem.ts';
import type { TlsConnector } from '../../../src/transport/mqtts/connector.ts';
import { writeFileAtomic } from '../../../src/util/atomic-file.ts';
import { ApiMisuse, Unsupported } from '../../../src/util/errors.ts';
import { makePki, type TestPki } from '../../pki/fixtures.ts';

const p256 = (): KeyObject => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

describe('reloadingTls: a replaced chain file is presented from the next connection on', () => {
  let pki: TestPki;
  let dir: string;
  let store: SoftwareKeyStore;
  let signer: Signer;
  let server: Server;
  let port: number;
  const seen: string[] = [];
  const lines: { level: string; msg: string }[] = [];
  const log = createLogger({ destination: { write: (s: string) => { const j = JSON.parse(s) as { level: string; msg: string }; lines.push(j); } } });

  before(async () => {
    pki = await makePki({ now: Date.now() - 3_600_000 });
    dir = mkdtempSync(join(tmpdir(), 'vitalseal-device-tls-'));
    store = await openSoftwareKeyStore({ path: join(dir, 'keys.vsks'), passphrase: 'device tls test', scrypt: { logN: 10 } });
    signer = await store.createSigningKey('device-identity');
    const serverKey = p256();
    const sc = (await pki.service({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] }, { signer: keyObjectSigner(serverKey) })).cert;
    server = createServer({
      cert: pemEncode('CERTIFICATE', sc.der) + pemEncode('CERTIFICATE', pki.issuing.der),
      key: serverKey.export({ format: 'pem', type: 'pkcs8' }),
      ca: pemEncode('CERTIFICATE', pki.root.der),
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
    }, (socket: TLSSocket) => {
      seen.push(socket.getPeerCertificate().serialNumber.toLowerCase());
      // Held open until the client closes: a connection outlives a replacement of the file.
      socket.write('seen\n');
      socket.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  after(async () => {
    server?.close();
    await store?.close();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  const chainFor = async (s: Signer, id = 'bed-7') => {
    const { cert } = await pki.device(id, { signer: s, now: Date.now() - 60_000 });
    return { serial: cert.serialHex, pem: pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', pki.issuing.der) };
  };

  /** Opens a connection and waits until the server has seen its certificate. */
  async function openSeen(tls: TlsConnector): Promise<ReturnType<TlsConnector['open']>> {
    const before = seen.length;
    const conn = tls.open({ host: '127.0.0.1', port, serverName: 'localhost' });
    await conn.secured;
    await new Promise<void>((r) => conn.stream.once('data', () => r()));
    assert.equal(seen.length, before + 1);
    return conn;
  }

  async function closeConn(conn: ReturnType<TlsConnector['open']>): Promise<void> {
    await new Promise<void>((r) => {
      conn.stream.once('close', () => r());
      conn.stream.destroy();
    });
  }

  /** One connection, closed again: resolves with the serial the server saw. */
  async function connectOnce(tls: TlsConnector): Promise<string> {
    await closeConn(await openSeen(tls));
    return seen[seen.length - 1] as string;
  }

  it('presents the new chain after the file is replaced; keeps the last good one otherwise', async () => {
    const file = join(dir, 'chain.pem');
    const first = await chainFor(signer);
    writeFileSync(file, first.pem, { mode: 0o644 });
    const keySpki = await signer.publicKeySpki();
    const built = await deviceTlsFactory(store, 'device-identity', { roots: [pki.root] }, {
      clock: { now: () => Date.now() }, log, purpose: 'test', refusal: () => new Unsupported('x', 'x'),
    });
    const closes: string[] = [];
    const build: DeviceTlsBuilder = (pem) => {
      const c = built(pem);
      return { get description() { return c.description; }, open: (t) => c.open(t), close: async () => { closes.push(pem); await c.close(); } };
    };
    const tls = reloadingTls({ file, field: 'transport.primary.certFile', pem: first.pem, keySpki, build, log });
    assert.equal(await connectOnce(tls), first.serial);
    assert.equal(await connectOnce(tls), first.serial, 'unchanged file: the same chain');

    // Renewal writes a new chain for the same key, atomically.
    const second = await chainFor(signer);
    await writeFileAtomic(file, second.pem, 0o644);
    assert.equal(await connectOnce(tls), second.serial, 'the next connection presents the new certificate');
    assert.deepEqual(closes, [first.pem], 'the replaced connector is closed (its connection had ended)');
    assert.ok(lines.some((l) => l.level === 'info' && /presenting the new device certificate/.test(l.msg)));

    // A chain for another key: refused, logged, the last good chain stays.
    const foreign = await chainFor(keyObjectSigner(p256()));
    await writeFileAtomic(file, foreign.pem, 0o644);
    assert.equal(await connectOnce(tls), second.serial);
    assert.ok(lines.some((l) => /for another key than the configured identity key; still presenting serial/.test(l.msg)));
    await writeFileAtomic(file, 'not a certificate', 0o644);
    assert.equal(await connectOnce(tls), second.serial);
    assert.ok(lines.some((l) => /changed but cannot be used/.test(l.msg)));
    rmSync(file);
    assert.equal(await connectOnce(tls), second.serial, 'a missing file changes nothing');

    // A connection open across a replacement keeps its connector until it ends.
    const third = await chainFor(signer);
    writeFileSync(file, third.pem);
    const held = await openSeen(tls);
    const fourth = await chainFor(signer);
    await writeFileAtomic(file, fourth.pem, 0o644);
    assert.equal(await connectOnce(tls), fourth.serial);
    assert.ok(!closes.includes(third.pem), 'still carrying a connection');
    await closeConn(held);
    assert.ok(closes.includes(third.pem), 'closed once its connection ended');
    assert.deepEqual(seen.slice(-2), [third.serial, fourth.serial]);
    await tls.close();
  });

  it('an open TPM store is refused with ApiMisuse: a TPM key\'s TLS comes from tpmDeviceTls, without FAPI in the agent', async () => {
    const tpm = await startSwtpm({ resourceManager: false });
    const tpmDir = mkdtempSync(join(tmpdir(), 'vitalseal-device-tls-tpm-'));
    try {
      const store = await openTpmKeyStore({ kind: 'tpm', tcti: tpm.directTcti, dir: tpmDir });
      try {
        await store.createSigningKey('device-identity');
        await assert.rejects(deviceTlsFactory(store, 'device-identity', { roots: [pki.root] }, { clock: { now: () => 0 }, log, purpose: 'test', refusal: () => new Unsupported('nope', 'refused') }),
          (e: unknown) => e instanceof ApiMisuse && e.code === 'tpm-key-store' && /tpmDeviceTls/.test(e.message));
      } finally {
        await store.close();
      }
    } finally {
      await tpm.stop();
      rmSync(tpmDir, { recursive: true, force: true });
    }
  });

  it('a PKCS#11 token key (SoftHSM2) gets the caller\'s refusal: OpenSSL cannot sign with it here', async () => {
    const hsm = await startSoftHsm();
    try {
      const token = await hsm.addToken('device-tls');
      const p11 = await openKeyStore({ kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } });
      try {
        await p11.createSigningKey('device-identity');
        await assert.rejects(deviceTlsFactory(p11, 'device-identity', { roots: [pki.root] }, { clock: { now: () => 0 }, log, purpose: 'test', refusal: () => new Unsupported('nope', 'refused') }),
          (e: unknown) => e instanceof Unsupported && e.code === 'nope');
      } finally {
        await p11.close();
      }
    } finally {
      await hsm.stop();
    }
  });
});
