/**
 * The start-up self-test the ingest service runs before it opens any key: the same power-on
 * known-answer tests as the device agent (`runSelfTest` in src/crypto/selftest.ts), for the
 * primitives the service is about to use. A failure (`SelfTestFailure`) stops the start.
 *
 * The service takes it as a function, so a test can show that a failing self-test stops it.
 *
 * @example
 *   const running = await startIngest(config, { env: process.env, selfTest: cryptoSelfTest(), log });
 */
import { runSelfTest } from '../crypto/selftest.ts';
import type { AeadId } from '../crypto/suites.ts';

export interface SelfTestSummary {
  readonly results: readonly { readonly primitive: string; readonly provider: string }[];
  readonly durationMs: number;
}

/** Runs the known-answer tests; throws on any mismatch. */
export type StartupSelfTest = () => SelfTestSummary | Promise<SelfTestSummary>;

/** Every AEAD the ingest uses: the COSE content algorithms devices may choose, and AES-256-GCM at rest. */
export const INGEST_AEADS: readonly AeadId[] = ['chacha20-poly1305', 'aes-128-ccm-8', 'aes-128-ccm-16', 'aes-128-gcm', 'aes-256-gcm'];

/** `runSelfTest` for `aeads`, X25519, HKDF, SHA-256 and ECDSA P-256. */
export function cryptoSelfTest(aeads: readonly AeadId[] = INGEST_AEADS): StartupSelfTest {
  return () => runSelfTest({ aeads });
}
