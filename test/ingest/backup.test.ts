/**
 * Backups: the RFC 6962 Merkle tree against the Certificate Transparency reference heads; an archive
 * written from one backend and restored into the other with the drill passing; a flipped byte at
 * hundreds of positions detected and named by region; truncation, extension, another signer,
 * another key store, a non-empty target.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startPostgres, type PostgresServer } from '../../scripts/lib/postgres-server.ts';
import { ArchiveDamaged, regionAt, verifyBackup, writeBackup, type ArchiveRegion } from '../../src/ingest/backup/archive.ts';
import { leafHash, merkleRootOfLeaves, MerkleTree } from '../../src/ingest/backup/merkle.ts';
import { formatDrillReport, restoreBackup } from '../../src/ingest/backup/restore.ts';
import { readingsAsSenml } from '../../src/ingest/readings.ts';
import { createApiToken } from '../../src/ingest/tokens.ts';
import { openSoftwareKeyStore } from '../../src/keystore/software/store.ts';
import type { KeyStore } from '../../src/keystore/types.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { KeyStoreError } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';
import { freshStorage } from './support/databases.ts';
import { PASSPHRASE, startHarness, type Harness } from './support/harness.ts';

let pg: PostgresServer | undefined;
before(async () => {
  pg = await startPostgres();
});
after(async () => {
  await pg?.stop();
});

describe('Merkle tree hash (RFC 6962 §2.1)', () => {
  it('matches the Certificate Transparency reference tree heads for 0..8 leaves', () => {
    const v = loadVectors<{ leaves: string[]; roots: string[] }>('merkle-rfc6962.json').vectors[0];
    assert.ok(v);
    for (let n = 0; n <= v.leaves.length; n++) {
      const leaves: Uint8Array[] = v.leaves.slice(0, n).map((x: string) => fromHex(x));
      const t = new MerkleTree();
      for (const l of leaves) t.add(l);
      assert.equal(toHex(t.root()), v.roots[n], `incremental, ${n} leaves`);
      assert.equal(toHex(merkleRootOfLeaves(leaves.map(leafHash))), v.roots[n], `recursive, ${n} leaves`);
    }
  });

  it('incremental and recursive agree for every size up to 100; any change moves the root', () => {
    const data: Uint8Array[] = Array.from({ length: 100 }, (_, i) => Uint8Array.of(i, i >> 3));
    const t = new MerkleTree();
    for (let n = 1; n <= data.length; n++) {
      t.add(data[n - 1] as Uint8Array);
      assert.deepEqual(t.root(), merkleRootOfLeaves(data.slice(0, n).map(leafHash)), `size ${n}`);
    }
    const swapped: Uint8Array[] = [...data];
    [swapped[3], swapped[4]] = [swapped[4] as Uint8Array, swapped[3] as Uint8Array];
    assert.notDeepEqual(merkleRootOfLeaves(swapped.map(leafHash)), t.root(), 'order matters');
  });
});

for (const [from, to] of [['sqlite', 'postgres'], ['postgres', 'sqlite']] as const) {
  describe(`backup from ${from}, restore into ${to}`, () => {
    let h: Harness;
    let archive: string;
    let keyStore: KeyStore;
    before(async () => {
      h = await startHarness(from, pg);
      for (const id of ['bk-1', 'bk-2', 'bk-3']) {
        const d = await h.enrol(id);
        for (let seq = 1; seq <= 110; seq++) if (seq !== 50) await h.core.service?.accept({ payload: d.seal(seq), contentFormat: 96, peer: d.peer });
      }
      await h.core.rekey.rotate('bk-2');
      const d2 = await h.enrol('bk-4');
      await h.core.service?.accept({ payload: d2.seal(1), contentFormat: 96, peer: d2.peer });
      await h.core.registry.setStatus('bk-4', 'suspended', 'test');
      await createApiToken(h.core.storage, { name: 'night-shift', role: 'reader', now: h.clock.now() });
      archive = join(h.dir, 'ingest.vsbackup');
      keyStore = h.core.keyStore;
    });
    after(async () => {
      await h?.close();
    });

    it('writes an archive no one can read without the key store, and refuses to overwrite one', async () => {
      const r = await writeBackup({ storage: h.core.storage, keyStore, kekName: h.core.kekName, signerName: 'ingest-backup', clock: h.clock, out: archive });
      assert.deepEqual(r.counts, { devices: 4, keys: 5 + 1, tokens: 1, messages: 3 * 109 + 1 }, 'keys: 4 devices (bk-2 has two versions) + the static key');
      assert.ok(r.chunks >= 2);
      const bytes = readFileSync(archive);
      assert.equal(bytes.subarray(0, 8).toString(), 'VSBACKUP');
      assert.ok(!bytes.includes(Buffer.from('night-shift')), 'token names are inside the encryption');
      assert.ok(!bytes.includes(Buffer.from('bk-1')), 'so are device ids');
      await assert.rejects(writeBackup({ storage: h.core.storage, keyStore, kekName: h.core.kekName, signerName: 'ingest-backup', clock: h.clock, out: archive }), (e: unknown) => (e as { code?: string }).code === 'exists');
    });

    it('restores into a fresh database and the drill proves integrity and decryptability', async () => {
      const target = await freshStorage(to, h.dir, pg);
      try {
        const report = await restoreBackup({ path: archive, storage: target, keyStore, clock: h.clock, verify: true });
        assert.equal(report.drill?.ok, true, formatDrillReport(report));
        assert.equal(report.drill?.messagesDecrypted, 328);
        assert.equal(report.drill?.messagesFailed, 0);
        assert.equal(report.drill?.countsMatch, true);
        assert.equal(report.drill?.staticKeyVersions, 1);
        assert.match(formatDrillReport(report), /result\s+PASS/);
        assert.deepEqual(await target.gaps('bk-1'), [{ from: 50, to: 50 }]);
        assert.equal((await target.getDevice('bk-4'))?.status, 'suspended');
        assert.equal((await target.getDevice('bk-1'))?.transport, 'coaps', 'activity fields come back too');
        assert.equal((await target.listApiTokens())[0]?.name, 'night-shift');
        // The same readings come out of both databases.
        const a = await readingsAsSenml(h.core, 'bk-2', 0, Number.MAX_SAFE_INTEGER, 1000);
        const { DeviceDataKeys } = await import('../../src/ingest/data-keys.ts');
        const { KeyHierarchy } = await import('../../src/keystore/hierarchy/envelope.ts');
        const dataKeys = new DeviceDataKeys({ hierarchy: new KeyHierarchy({ store: keyStore, kekName: h.core.kekName, records: target.keyRecords(), clock: h.clock }), clock: h.clock });
        const b = await readingsAsSenml({ storage: target, dataKeys, provider: h.core.provider }, 'bk-2', 0, Number.MAX_SAFE_INTEGER, 1000);
        assert.deepEqual(b.records, a.records);
        dataKeys.clear();
        await assert.rejects(restoreBackup({ path: archive, storage: target, keyStore, clock: h.clock, verify: false }), (e: unknown) => (e as { code?: string }).code === 'restore-target-not-empty');
      } finally {
        await target.close();
      }
    });

    it('a flipped byte anywhere is detected and its region named (hundreds of positions)', async () => {
      const good = readFileSync(archive);
      const verified = await verifyBackup(archive, { keyStore });
      const regions: readonly ArchiveRegion[] = verified.regions;
      verified.close();
      // Every byte belongs to exactly one region, in order, with no hole.
      assert.equal(regions[0]?.start, 0);
      for (let i = 1; i < regions.length; i++) assert.equal(regions[i]?.start, regions[i - 1]?.end);
      assert.equal(regions[regions.length - 1]?.end, good.length);
      const positions = new Set<number>();
      for (const r of regions) for (const p of [r.start, r.start + 1, (r.start + r.end) >> 1, r.end - 2, r.end - 1]) if (p >= r.start && p < r.end) positions.add(p);
      for (let i = 0; i < 240; i++) positions.add(Math.floor(((i + 0.5) / 240) * good.length));
      const damaged = join(h.dir, 'damaged.vsbackup');
      const seen = new Set<string>();
      for (const pos of [...positions].sort((x, y) => x - y)) {
        const copy = Buffer.from(good);
        copy[pos] = (copy[pos] as number) ^ (1 << (pos % 8));
        writeFileSync(damaged, copy);
        const expected = regionAt(regions, pos);
        await assert.rejects(verifyBackup(damaged, { keyStore }), (e: unknown) => {
          assert.ok(e instanceof ArchiveDamaged, `byte ${pos}: ${String(e)}`);
          assert.equal(e.region, expected, `byte ${pos} is in ${expected}, reported in ${e.region}`);
          return true;
        });
        seen.add(expected as string);
      }
      assert.ok(positions.size > 250, `${positions.size} positions`);
      for (const name of ['magic', 'format version', 'header length field', 'header', 'manifest', 'signature', 'trailer']) assert.ok(seen.has(name), name);
      assert.ok([...seen].filter((n) => n.startsWith('chunk ')).length >= 2);
    });

    it('truncation, extra bytes, another signer and another key store are refused', async () => {
      const good = readFileSync(archive);
      const cut = join(h.dir, 'cut.vsbackup');
      for (const n of [0, 10, 16, 79, 80, good.length >> 1, good.length - 65, good.length - 64, good.length - 1]) {
        writeFileSync(cut, good.subarray(0, n));
        await assert.rejects(verifyBackup(cut, { keyStore }), ArchiveDamaged, `truncated to ${n}`);
      }
      writeFileSync(cut, good);
      appendFileSync(cut, Buffer.of(0));
      await assert.rejects(verifyBackup(cut, { keyStore }), (e: unknown) => e instanceof ArchiveDamaged && e.region === 'trailer');
      const stranger = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'pem', type: 'spki' }).toString();
      await assert.rejects(verifyBackup(archive, { keyStore, trustedSignerPem: stranger }), (e: unknown) => e instanceof ArchiveDamaged && e.region === 'signature');
      const otherStore = await openSoftwareKeyStore({ path: join(h.dir, 'other.vsks'), passphrase: `${PASSPHRASE} (another)`, scrypt: { logN: 10 } });
      try {
        await assert.rejects(verifyBackup(archive, { keyStore: otherStore }), (e: unknown) => e instanceof KeyStoreError && e.code === 'not-found', 'no signing key: nothing is trusted');
        const signerPem = await keyStore.publicKeyPem('ingest-backup');
        await assert.rejects(verifyBackup(archive, { keyStore: otherStore, trustedSignerPem: signerPem }), (e: unknown) => e instanceof KeyStoreError, 'another KEK cannot unwrap the archive key');
      } finally {
        await otherStore.close();
      }
    });
  });
}
