/**
 * Restore and the restore drill. `restoreBackup` verifies the whole archive first (archive.ts), then
 * writes it into an empty database; with `verify`, it then proves the restored database is usable:
 * the counts match the signed manifest, every message decrypts under its restored data key (through
 * the key store's KEK) and decodes as a vitals pack, and the static key opens. The drill report says
 * all of it, with times.
 *
 * @example
 *   const report = await restoreBackup({ path, storage: emptyDb, keyStore, clock, verify: true });
 *   process.stdout.write(formatDrillReport(report));
 */
import { decodeVitalsPack } from '../../codec/vitals.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { getProvider } from '../../crypto/registry.ts';
import { KeyHierarchy } from '../../keystore/hierarchy/envelope.ts';
import type { KeyStore } from '../../keystore/types.ts';
import { toHex, zeroize } from '../../util/bytes.ts';
import type { Clock } from '../../util/clock.ts';
import { ApiMisuse, VitalsealError } from '../../util/errors.ts';
import { openAtRest } from '../at-rest.ts';
import { DeviceDataKeys } from '../data-keys.ts';
import { loadStaticKeys } from '../static-key.ts';
import type { DeviceRecord, IngestStorage, StoredMessage } from '../storage/types.ts';
import { verifyBackup, type BackupCounts, type VerifiedArchive } from './archive.ts';

export interface RestoreOptions {
  readonly path: string;
  /** An initialised, empty database. */
  readonly storage: IngestStorage;
  readonly keyStore: KeyStore;
  readonly clock: Clock;
  /** Run the drill after restoring. */
  readonly verify: boolean;
  readonly trustedSignerPem?: string;
  readonly provider?: CryptoProvider;
}

export interface DrillReport {
  readonly archive: { readonly path: string; readonly id: string; readonly bytes: number; readonly createdAt: number; readonly source: string; readonly signer: string; readonly merkleRoot: string; readonly chunks: number };
  readonly restored: Readonly<BackupCounts>;
  readonly timings: { readonly verifyMs: number; readonly restoreMs: number; readonly drillMs?: number };
  readonly drill?: {
    readonly countsMatch: boolean;
    readonly messagesDecrypted: number;
    readonly messagesFailed: number;
    /** Up to 10 rows that did not decrypt or decode. */
    readonly failures: readonly string[];
    readonly readings: number;
    readonly ecgStrips: number;
    readonly devices: number;
    readonly firstReading?: number;
    readonly lastReading?: number;
    readonly staticKeyVersions: number;
    readonly ok: boolean;
  };
}

const BATCH = 500;

export async function restoreBackup(o: RestoreOptions): Promise<DrillReport> {
  const provider = o.provider ?? getProvider();
  const t0 = performance.now();
  const archive: VerifiedArchive = await verifyBackup(o.path, { keyStore: o.keyStore, provider, ...(o.trustedSignerPem === undefined ? {} : { trustedSignerPem: o.trustedSignerPem }) });
  const t1 = performance.now();
  if (!(await o.storage.isEmpty())) {
    archive.close();
    throw new ApiMisuse('restore-target-not-empty', 'the target database is not empty; restore only into a fresh database');
  }
  const restored: BackupCounts = { devices: 0, keys: 0, tokens: 0, messages: 0 };
  let devices: DeviceRecord[] = [];
  let messages: StoredMessage[] = [];
  const keys = o.storage.keyRecords();
  const flushDevices = async () => {
    if (devices.length > 0) await o.storage.importDevices(devices);
    restored.devices += devices.length;
    devices = [];
  };
  const flushMessages = async () => {
    if (messages.length > 0) await o.storage.importMessages(messages);
    restored.messages += messages.length;
    messages = [];
  };
  for await (const r of archive.records()) {
    switch (r.type) {
      case 'device':
        devices.push(r.device);
        if (devices.length >= BATCH) await flushDevices();
        break;
      case 'key':
        await keys.insert(r.key);
        restored.keys++;
        break;
      case 'token':
        await o.storage.putApiToken(r.token);
        restored.tokens++;
        break;
      case 'message':
        await flushDevices();
        messages.push(r.message);
        if (messages.length >= BATCH) await flushMessages();
        break;
      default: {
        const never: never = r;
        throw new TypeError(`unknown record ${String(never)}`);
      }
    }
  }
  await flushDevices();
  await flushMessages();
  const t2 = performance.now();

  const base = {
    archive: {
      path: o.path, id: toHex(archive.header.archiveId), bytes: archive.size, createdAt: archive.header.createdAt, source: archive.header.source,
      signer: archive.header.signerName, merkleRoot: toHex(archive.manifest.merkleRoot), chunks: archive.manifest.chunks.length,
    },
    restored,
  };
  if (!o.verify) return { ...base, timings: { verifyMs: t1 - t0, restoreMs: t2 - t1 } };
  const drill = await runDrill(o, archive, provider);
  return { ...base, timings: { verifyMs: t1 - t0, restoreMs: t2 - t1, drillMs: performance.now() - t2 }, drill };
}

async function runDrill(o: RestoreOptions, archive: VerifiedArchive, provider: CryptoProvider): Promise<NonNullable<DrillReport['drill']>> {
  const m = archive.manifest.counts;
  const dbDevices = await o.storage.listDevices();
  const dbKeys = await o.storage.keyRecords().list();
  const dbTokens = await o.storage.listApiTokens();
  const countsMatch = dbDevices.length === m.devices && dbKeys.length === m.keys && dbTokens.length === m.tokens && (await o.storage.countMessages()) === m.messages;
  const hierarchy = new KeyHierarchy({ store: o.keyStore, kekName: archive.header.kekName, records: o.storage.keyRecords(), clock: o.clock, provider });
  const dataKeys = new DeviceDataKeys({ hierarchy, clock: o.clock, maxCached: 1024 });
  let decrypted = 0;
  let failed = 0;
  let readings = 0;
  let ecg = 0;
  let first: number | undefined;
  let last: number | undefined;
  const failures: string[] = [];
  try {
    let cursor: { deviceId: string; seq: number } | undefined;
    for (;;) {
      const page = await o.storage.listMessages(cursor, BATCH);
      if (page.length === 0) break;
      for (const row of page) {
        try {
          const dek = await dataKeys.version(row.deviceId, row.keyVersion);
          const pack = openAtRest(provider, dek, row);
          try {
            const b = decodeVitalsPack(pack, { maxBytes: pack.length, maxStringBytes: pack.length });
            if (b.deviceId !== row.deviceId) throw new ApiMisuse('drill-mismatch', 'the pack names another device');
            readings += b.readings.length;
            ecg += b.ecg.length;
          } finally {
            zeroize(pack);
          }
          decrypted++;
          first = Math.min(first ?? row.firstTime, row.firstTime);
          last = Math.max(last ?? row.lastTime, row.lastTime);
        } catch (e) {
          failed++;
          if (failures.length < 10) failures.push(`${row.deviceId}#${row.seq}: ${e instanceof VitalsealError ? e.code : 'error'}`);
        }
      }
      const end = page[page.length - 1] as StoredMessage;
      cursor = { deviceId: end.deviceId, seq: end.seq };
    }
  } finally {
    dataKeys.clear();
  }
  let staticKeyVersions = 0;
  try {
    const sk = await loadStaticKeys(hierarchy, provider);
    staticKeyVersions = sk.versions.length;
    sk.destroy();
  } catch (e) {
    failures.push(`static key: ${e instanceof VitalsealError ? e.code : 'error'}`);
  }
  return {
    countsMatch, messagesDecrypted: decrypted, messagesFailed: failed, failures, readings, ecgStrips: ecg, devices: dbDevices.length,
    ...(first === undefined ? {} : { firstReading: first }), ...(last === undefined ? {} : { lastReading: last }),
    staticKeyVersions, ok: countsMatch && failed === 0 && staticKeyVersions > 0,
  };
}

/** The drill report as text for an operator (and a change-management ticket). */
export function formatDrillReport(r: DrillReport): string {
  const iso = (t: number | undefined) => (t === undefined ? '-' : new Date(t).toISOString());
  const lines = [
    'vitalseal ingest restore drill',
    `  archive        ${r.archive.path} (${r.archive.bytes} bytes, ${r.archive.chunks} chunks)`,
    `  archive id     ${r.archive.id}, made ${iso(r.archive.createdAt)} from ${r.archive.source}`,
    `  signature      valid (key-store key '${r.archive.signer}')`,
    `  merkle root    ${r.archive.merkleRoot} (RFC 6962, every record) matches the signed manifest`,
    `  restored       ${r.restored.devices} devices, ${r.restored.keys} wrapped keys, ${r.restored.tokens} API tokens, ${r.restored.messages} messages`,
    `  times          verify ${Math.round(r.timings.verifyMs)} ms, restore ${Math.round(r.timings.restoreMs)} ms${r.timings.drillMs === undefined ? '' : `, drill ${Math.round(r.timings.drillMs)} ms`}`,
  ];
  const d = r.drill;
  if (d === undefined) lines.push('  drill          not run (add --verify)');
  else {
    lines.push(
      `  counts         ${d.countsMatch ? 'database matches the manifest' : 'MISMATCH between database and manifest'}`,
      `  decryptable    ${d.messagesDecrypted} of ${d.messagesDecrypted + d.messagesFailed} messages decrypted and decoded (${d.readings} readings, ${d.ecgStrips} ECG strips, ${d.devices} devices)`,
      `  time range     ${iso(d.firstReading)} .. ${iso(d.lastReading)}`,
      `  static key     ${d.staticKeyVersions > 0 ? `${d.staticKeyVersions} version(s) unwrap` : 'MISSING'}`,
      ...d.failures.map((f) => `  failed         ${f}`),
      `  result         ${d.ok ? 'PASS' : 'FAIL'}`,
    );
  }
  return `${lines.join('\n')}\n`;
}
