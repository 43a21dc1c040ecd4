/**
 * The start-up self-test the ingest service runs before it opens any key: the same power-on
 * known-answer tests as the device agent (`src/crypto/selftest.ts`, `runSelfTest`), for the
 * primitives the service is about to use. A failure stops the start.
 *
 * The service depends only on this small interface. `loadCryptoSelfTest` binds it to
 * `src/crypto/selftest.ts`; in a build that does not contain that module it refuses with
 * `Unsupported('self-test-unavailable')`, so the service never starts without its self-test.
 *
 * @example
 *   const selfTest = await loadCryptoSelfTest(['chacha20-poly1305', 'aes-128-ccm-8', 'aes-256-gcm']);
 *   const report = await selfTest();    // throws SelfTestFailure (a CryptoError) on a mismatch
 */
import type { AeadId } from '../crypto/suites.ts';
import { Unsupported } from '../util/errors.ts';

export interface SelfTestSummary {
  readonly results: readonly { readonly primitive: string; readonly provider: string }[];
  readonly durationMs: number;
}

/** Runs the known-answer tests; throws on any mismatch. */
export type StartupSelfTest = () => SelfTestSummary | Promise<SelfTestSummary>;

/** Every AEAD the ingest uses: the COSE content algorithms devices may choose, and AES-256-GCM at rest. */
export const INGEST_AEADS: readonly AeadId[] = ['chacha20-poly1305', 'aes-128-ccm-8', 'aes-128-ccm-16', 'aes-128-gcm', 'aes-256-gcm'];

// Held in a variable: the module is bound at run time, so this file compiles with or without it.
const CRYPTO_SELFTEST_MODULE = '../crypto/selftest.ts';

function isSummary(v: unknown): v is SelfTestSummary {
  return typeof v === 'object' && v !== null && Array.isArray((v as { results?: unknown }).results) && typeof (v as { durationMs?: unknown }).durationMs === 'number';
}

/** `runSelfTest` from src/crypto/selftest.ts for `aeads`, X25519, HKDF, SHA-256 and ECDSA P-256. */
export async function loadCryptoSelfTest(aeads: readonly AeadId[] = INGEST_AEADS): Promise<StartupSelfTest> {
  let mod: unknown;
  try {
    mod = await import(CRYPTO_SELFTEST_MODULE);
  } catch (e) {
    if ((e as { code?: unknown }).code === 'ERR_MODULE_NOT_FOUND') {
      throw new Unsupported('self-test-unavailable', 'the power-on self-test (src/crypto/selftest.ts) is not part of this build; the ingest service does not open keys without it');
    }
    throw e;
  }
  const run = (mod as { runSelfTest?: unknown }).runSelfTest;
  if (typeof run !== 'function') throw new Unsupported('self-test-unavailable', 'src/crypto/selftest.ts exports no runSelfTest');
  return () => {
    const report: unknown = (run as (o: { aeads: readonly AeadId[] }) => unknown)({ aeads });
    if (!isSummary(report)) throw new Unsupported('self-test-unavailable', 'runSelfTest returned no report');
    return report;
  };
}
