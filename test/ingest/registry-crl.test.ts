/**
 * Revocation order in the device registry (src/ingest/registry.ts): the CRL lists the certificate
 * before the registry records the revocation. Another process (the running service, when the
 * command line revokes) reacts to the registry change by handing the CRL file to the broker; had
 * the registry changed first, it could copy the old CRL, and nothing would signal the broker again.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { DeviceRegistry } from '../../src/ingest/registry.ts';
import { SqliteStorage } from '../../src/ingest/storage/sqlite.ts';
import type { IngestStorage } from '../../src/ingest/storage/types.ts';
import { parseCrl } from '../../src/pki/crl.ts';
import { createCsr } from '../../src/pki/csr.ts';
import { initDevCa } from '../../src/pki/dev-ca.ts';
import { pemDecode } from '../../src/pki/pem.ts';
import { ManualClock } from '../../src/util/clock.ts';
import { p256Signer, T0 } from '../pki/fixtures.ts';

const dir = mkdtempSync(join(tmpdir(), 'vitalseal-registry-crl-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('device registry: revocation and the CRL', () => {
  it('writes the CRL before the registry records the revocation; another instance refreshing then finds the serial listed', async () => {
    const ca = await initDevCa({ dir: join(dir, 'ca'), organization: 'Example Fleet', now: T0, passphrase: Buffer.from('test passphrase') });
    const cert = await ca.issueDevice(await createCsr({ signer: p256Signer(), subject: { commonName: 'bed-7' } }), 'bed-7', T0);
    const listed = () => parseCrl((pemDecode(readFileSync(ca.paths.crl, 'utf8'), 'X509 CRL')[0] as { der: Uint8Array }).der).revoked.has(cert.serialHex);

    const path = join(dir, 'ingest.db');
    const storage = new SqliteStorage({ path });
    await storage.init();
    await storage.upsertDevice({ deviceId: 'bed-7', credential: 'certificate', credentialSha256: 'ab'.repeat(32), status: 'active', enrolledAt: T0, certSerial: cert.serialHex });
    // The real storage, watched: what the CRL says at the moment the status is committed.
    let listedAtCommit: boolean | undefined;
    const watched = new Proxy<IngestStorage>(storage, {
      get(target, key) {
        if (key === 'setDeviceStatus') {
          return async (...a: Parameters<IngestStorage['setDeviceStatus']>) => {
            listedAtCommit = listed();
            return target.setDeviceStatus(...a);
          };
        }
        const v: unknown = Reflect.get(target, key, target);
        return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(target) : v;
      },
    });
    const clock = new ManualClock(T0 + 1000);
    const here = new DeviceRegistry({ storage: watched, clock, crl: { revoke: (serial, now) => ca.revoke(serial, 'cessationOfOperation', now), crlPath: ca.paths.crl } });
    await here.load();
    const otherStorage = new SqliteStorage({ path });
    const elsewhere = new DeviceRegistry({ storage: otherStorage, clock, crl: { revoke: () => Promise.reject(new Error('not here')), crlPath: ca.paths.crl } });
    await elsewhere.load();
    const seen: boolean[] = [];
    elsewhere.onCrlChange(() => seen.push(listed()));
    const emitted: (number | undefined)[] = [];
    here.onCrlChange((info) => emitted.push(info.crlNumber));

    const r = await here.setStatus('bed-7', 'revoked', 'operator', 'stolen');
    assert.equal(listedAtCommit, true, 'the serial was in the CRL before the registry changed');
    assert.equal(r.device.status, 'revoked');
    assert.deepEqual(emitted, [r.crlNumber]);
    assert.equal(await elsewhere.refresh(), true);
    assert.deepEqual(seen, [true], 'the other instance, told of the change, finds the serial in the CRL');
    await storage.close();
    await otherStorage.close();
  });
});
