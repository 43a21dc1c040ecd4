/**
 * An ingest service for tests, made of the real parts: a software key store (low scrypt cost) in a
 * temp directory, SQLite or PostgreSQL, the hash-chained audit log, the test fleet PKI, and devices
 * that seal exactly as the agent does (SealingSession, device id and sequence number in the
 * protected header, the vitals SenML profile).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PostgresServer } from '../../../scripts/lib/postgres-server.ts';
import { encodeVitalsPack, type VitalsBatch } from '../../../src/codec/vitals.ts';
import { Header } from '../../../src/cose/headers.ts';
import { SealingSession } from '../../../src/cose/sealing-session.ts';
import type { CoseAlgName } from '../../../src/cose/algorithms.ts';
import { openIngestCore, type IngestCore, type IngestCoreOptions } from '../../../src/ingest/core.ts';
import type { CertificatePeer } from '../../../src/ingest/outcome.ts';
import { rotateStaticKey } from '../../../src/ingest/static-key.ts';
import type { IngestStorage } from '../../../src/ingest/storage/types.ts';
import { openSoftwareKeyStore } from '../../../src/keystore/software/store.ts';
import type { Signer } from '../../../src/keystore/signer.ts';
import { spkiSha256, type Certificate } from '../../../src/pki/certificate.ts';
import { toHex } from '../../../src/util/bytes.ts';
import { ManualClock } from '../../../src/util/clock.ts';
import { makePki, T0, type TestPki } from '../../pki/fixtures.ts';
import { freshDatabase, type Backend } from './databases.ts';
import { cryptoSelfTest } from '../../../src/ingest/selftest.ts';

export const PASSPHRASE = 'ingest test passphrase, generated per run';
export const SUITE = 'DTLSv1.3 TLS_AES_128_CCM_8_SHA256';

export interface TestDevice {
  readonly id: string;
  readonly cert: Certificate;
  readonly signer: Signer;
  readonly session: SealingSession;
  readonly peer: CertificatePeer;
  /** Seals a batch as message `seq`, as the agent's pipeline does. */
  seal(seq: number, batch?: VitalsBatch, extras?: Map<number, unknown>): Uint8Array;
}

export interface Harness {
  readonly dir: string;
  readonly clock: ManualClock;
  readonly pki: TestPki;
  readonly backend: Backend;
  core: IngestCore;
  /** Opens a second core on the same database and key store (another instance, or a restart). */
  openCore(extra?: Partial<IngestCoreOptions>): Promise<IngestCore>;
  /** Issues a certificate and registers the device, active. */
  enrol(id: string, opts?: { alg?: CoseAlgName; maxMessages?: number }): Promise<TestDevice>;
  close(): Promise<void>;
}

/** A batch of readings for message `seq`: one reading per second of `seq`, an ECG strip every third. */
export function batchFor(deviceId: string, seq: number, base = T0): VitalsBatch {
  const t = base + seq * 1000;
  return {
    deviceId,
    readings: [
      { kind: 'heart-rate', time: t, value: 60 + (seq % 40) },
      { kind: 'spo2', time: t, value: 95 + (seq % 5) },
      { kind: 'respiration-rate', time: t + 500, value: 14 },
    ],
    ecg: seq % 3 === 0 ? [{ start: t, intervalMs: 4, samplesMv: Float32Array.from({ length: 250 }, (_, i) => Math.round(Math.sin(i / 10) * 1000) / 1000) }] : [],
  };
}

/**
 * `realTime`: the clock and the PKI start at the machine's time (for tests where OpenSSL checks
 * certificate validity against the real clock: TLS clients, Chromium); otherwise at T0 (2030) + 1 h.
 */
export async function startHarness(backend: Backend, server: PostgresServer | undefined, extra: Partial<IngestCoreOptions> = {}, opts: { realTime?: boolean } = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-ingest-'));
  const start = opts.realTime === true ? Date.now() : T0 + 3_600_000;
  const clock = new ManualClock(start);
  const pki = await makePki({ now: start - 3_600_000 });
  const db = await freshDatabase(backend, dir, server);
  const keyPath = join(dir, 'ingest-keys.vsks');
  const open = async (o: Partial<IngestCoreOptions> = {}, storage?: IngestStorage): Promise<IngestCore> => openIngestCore({
    selfTest: cryptoSelfTest(),
    openKeyStore: (events) => openSoftwareKeyStore({ path: keyPath, passphrase: PASSPHRASE, scrypt: { logN: 10 }, events }),
    storage: storage ?? await db.open(),
    auditPath: join(dir, 'audit.log'),
    auditSigningKey: 'ingest-audit',
    kekName: 'ingest-kek',
    clock,
    ...extra,
    ...o,
  });
  // `vitalseal ingest keygen`, then the service.
  const setup = await open({ allowNoStaticKey: true });
  await rotateStaticKey(setup.hierarchy, setup.provider);
  await setup.close();
  const h: Harness = {
    dir, clock, pki, backend,
    core: await open(),
    openCore: (o) => open(o),
    async enrol(id, opts = {}) {
      const { cert, signer } = await pki.device(id);
      const spki = toHex(spkiSha256(cert.spki.der));
      await h.core.registry.register({ deviceId: id, credential: 'certificate', credentialSha256: spki, status: 'active', enrolledAt: clock.now(), certSerial: cert.serialHex, certNotAfter: cert.notAfter });
      const staticKeys = h.core.staticKeys;
      if (staticKeys === undefined) throw new Error('no static key');
      const session = new SealingSession({ alg: opts.alg ?? 'chacha20-poly1305', recipientPublicKey: staticKeys.current.publicKey, clock, ...(opts.maxMessages === undefined ? {} : { maxMessages: opts.maxMessages }) });
      return {
        id, cert, signer, session,
        peer: { kind: 'certificate', deviceId: id, spkiSha256: spki, certNotAfter: cert.notAfter, transport: 'coaps', suite: SUITE },
        seal(seq, batch = batchFor(id, seq), extras) {
          const protectedExtras = new Map<number, unknown>([[Header.DEVICE_ID, id], [Header.SEQUENCE, seq], ...(extras ?? [])]);
          return session.seal(encodeVitalsPack(batch), { protectedExtras });
        },
      };
    },
    async close() {
      await h.core.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return h;
}
