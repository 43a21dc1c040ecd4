/**
 * Automatic renewal of the device certificate: the I/O around `RenewalSchedule`. When the
 * certificate is within `renewDays` of its end, the agent re-enrols at the ingest service's
 * enrolment endpoint (`simplereenroll`, src/pki/est-client.ts) over mutual TLS with its *current*
 * certificate and the *same* identity key (DESIGN.md: the identity key is re-enrolled on renewal),
 * checks the new chain as the ingest would (pinned root, this device, this key, a later notAfter),
 * and replaces the chain files atomically (stage every file, fsync, then rename each over the old:
 * until then the old certificate stays in place). The transports present the new chain from their
 * next connection (uplink/device-tls.ts, `reloadingTls`).
 *
 * Where the request is signed follows the key: with a TPM key, the CSR by `tss2_sign` and the TLS
 * handshake by `openssl s_client` (tools-key.ts, openssl-tpm-tls.ts), each in a short-lived process,
 * so FAPI never loads into the agent; with the development software store, in this process
 * (uplink/device-tls.ts). A PKCS#11 token
 * key cannot sign a TLS handshake on Debian 12 (docs/transport-mqtts.md, "PKCS#11"): configuring
 * renewal for one is refused at start-up with `Unsupported('renewal-pkcs11-key')`.
 *
 * A failed attempt (the service unreachable, the device revoked, a disk that will not take the
 * file) is logged with its code, counted, and retried with exponential back-off; the current
 * certificate stays in use until it expires.
 *
 * @example
 *   const renewer = new CertificateRenewer({ deviceId, renewal: config.certificate.renew, certificateFile, chainFiles, clock, log, env });
 *   watcher.check();              // asks the renewer when the certificate is due
 *   await renewer.tick();         // or directly: renews if due, else says when
 *   renewer.status();
 *   await renewer.stop();
 */
import { readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { openKeyStore } from '../../keystore/open.ts';
import type { Signer } from '../../keystore/signer.ts';
import type { KeyStore } from '../../keystore/types.ts';
import { toolsSigner } from '../../keystore/tpm/tools-key.ts';
import type { Certificate } from '../../pki/certificate.ts';
import { chainPem, parseEstUrl, reenrol, type EstEndpoint, type IssuedChain } from '../../pki/est-client.ts';
import { pemDecode, pemEncode } from '../../pki/pem.ts';
import type { TlsConnector } from '../../transport/mqtts/connector.ts';
import { trustFromPem, type MqttsTrust } from '../../transport/mqtts/tls.ts';
import { stageFile, type StagedFile } from '../../util/atomic-file.ts';
import { equalBytes } from '../../util/bytes.ts';
import type { Clock } from '../../util/clock.ts';
import { EnrolmentError, KeyStoreError, Unsupported, VitalsealError } from '../../util/errors.ts';
import { ConfigError, type AgentConfig, type CertificateRenewalConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { MetricsRegistry } from '../metrics.ts';
import { deviceTlsFactory, leafOf, tpmDeviceTls } from '../uplink/device-tls.ts';
import type { Timers } from '../uplink/runner.ts';
import { RenewalSchedule, type RenewalDecision } from './schedule.ts';

export interface CertificateRenewerOptions {
  readonly deviceId: string;
  readonly renewal: CertificateRenewalConfig;
  /** `certificate.file`: rewritten in the form it has (one certificate, or a chain). */
  readonly certificateFile: string;
  /** The transports' `certFile`s: get the chain (leaf + intermediates). The current chain is read from the first. */
  readonly chainFiles: readonly string[];
  readonly clock: Clock;
  readonly log: Logger;
  /** Where `{ env: NAME }` secret sources of the key store are read. */
  readonly env: NodeJS.ProcessEnv;
  readonly timers?: Timers;
  readonly random?: () => number;
}

export type RenewalOutcome =
  | { readonly result: 'renewed'; readonly serial: string; readonly notAfter: number }
  | { readonly result: 'failed'; readonly code: string; readonly message: string; readonly retryAt: number }
  | { readonly result: 'not-due'; readonly dueAt: number }
  | { readonly result: 'busy' }
  | { readonly result: 'retry-later'; readonly retryAt: number }
  | { readonly result: 'unreadable'; readonly message: string };

/** What `agent status` shows about renewal. Holds no secret. */
export interface RenewalStatus {
  readonly url: string;
  readonly state: 'idle' | 'renewing' | 'backing-off';
  readonly renewDays: number;
  readonly dueAt: string | null;
  readonly attempts: number;
  readonly renewed: number;
  readonly consecutiveFailures: number;
  readonly retryAt: string | null;
  readonly lastError: { readonly code: string; readonly message: string; readonly at: string } | null;
  readonly lastRenewal: { readonly at: string; readonly serial: string; readonly notAfter: string } | null;
}

const realTimers: Timers = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** setTimeout's ceiling (2^31 - 1 ms); a later retry is re-armed when this fires. */
const MAX_TIMER_MS = 2_147_483_647;
const iso = (t: number | undefined): string | null => (t === undefined ? null : new Date(t).toISOString());

export class CertificateRenewer {
  readonly #o: CertificateRenewerOptions;
  readonly #endpoint: EstEndpoint;
  readonly #trust: MqttsTrust;
  readonly #schedule: RenewalSchedule;
  readonly #timers: Timers;
  readonly #chainSource: string;
  #timer: unknown;
  #running: Promise<RenewalOutcome> | undefined;
  #stopped = false;
  #dueAt: number | undefined;
  #attempts = 0;
  #renewed = 0;
  readonly #failures = new Map<string, number>();
  #lastRenewal: { at: number; serial: string; notAfter: number } | undefined;

  /** Throws `ConfigError` (unreadable CA file, bad URL) or `Unsupported` (a PKCS#11 key) at start-up. */
  constructor(o: CertificateRenewerOptions) {
    this.#o = o;
    const r = o.renewal;
    if (r.identity.keystore.kind === 'pkcs11') throw pkcs11Refusal();
    try {
      this.#endpoint = parseEstUrl(r.url);
    } catch (e) {
      throw new ConfigError([`certificate.renew.url: ${e instanceof Error ? e.message : 'not a URL'}`]);
    }
    try {
      this.#trust = trustFromPem(readFileSync(r.caFile, 'utf8'));
    } catch (e) {
      throw new ConfigError([`certificate.renew.caFile: ${r.caFile} holds no usable CA certificate (${e instanceof VitalsealError ? e.code : (e as NodeJS.ErrnoException).code ?? 'unreadable'})`]);
    }
    const source = o.chainFiles[0] ?? o.certificateFile;
    this.#chainSource = source;
    this.#schedule = new RenewalSchedule({ renewDays: r.renewDays, backoff: { initialMs: r.retryInitialSeconds * 1000, maxMs: r.retryMaxSeconds * 1000 } }, o.random ?? Math.random);
    this.#timers = o.timers ?? realTimers;
  }

  /**
   * Looks at the current certificate and renews if it is due (and no attempt is running or backing
   * off). Resolves with what happened; never rejects (failures are outcomes).
   */
  tick(): Promise<RenewalOutcome> {
    if (this.#running !== undefined) return Promise.resolve({ result: 'busy' });
    if (this.#stopped) return Promise.resolve({ result: 'busy' });
    let current: { pem: string; leaf: Certificate };
    try {
      current = readChain(this.#chainSource);
    } catch (e) {
      // Nothing to renew with (and nothing to present either): said at every check, not retried sooner.
      const message = `certificate renewal: the current chain ${this.#chainSource} cannot be read (${e instanceof VitalsealError ? e.code : (e as NodeJS.ErrnoException).code ?? 'not a certificate'})`;
      this.#o.log.error({ file: this.#chainSource }, message);
      return Promise.resolve({ result: 'unreadable', message });
    }
    const decision: RenewalDecision = this.#schedule.decide(current.leaf.notAfter, this.#o.clock.now());
    this.#dueAt = this.#schedule.dueAt(current.leaf.notAfter);
    switch (decision.kind) {
      case 'not-due':
        return Promise.resolve({ result: 'not-due', dueAt: decision.dueAt });
      case 'busy':
        return Promise.resolve({ result: 'busy' });
      case 'retry-later':
        this.#arm(decision.retryAt);
        return Promise.resolve({ result: 'retry-later', retryAt: decision.retryAt });
      case 'renew':
        return this.#begin(() => this.#renew(current));
      default: {
        const never: never = decision;
        throw new Error(`unreachable ${String(never)}`);
      }
    }
  }

  /** Resolves when no attempt is running (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.#running !== undefined) await this.#running;
  }

  /** Cancels the retry timer and waits for a running attempt to finish. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#timers.clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.settled();
  }

  status(): RenewalStatus {
    const s = this.#schedule.state;
    const failure = s.lastFailure;
    return {
      url: this.#endpoint.origin,
      state: s.kind,
      renewDays: this.#o.renewal.renewDays,
      dueAt: iso(this.#dueAt),
      attempts: this.#attempts,
      renewed: this.#renewed,
      consecutiveFailures: s.kind === 'idle' ? 0 : s.failures,
      retryAt: s.kind === 'backing-off' ? iso(s.retryAt) : null,
      lastError: failure === undefined ? null : { code: failure.code, message: failure.message, at: new Date(failure.at).toISOString() },
      lastRenewal: this.#lastRenewal === undefined ? null : { at: new Date(this.#lastRenewal.at).toISOString(), serial: this.#lastRenewal.serial, notAfter: new Date(this.#lastRenewal.notAfter).toISOString() },
    };
  }

  registerMetrics(m: MetricsRegistry): void {
    m.counter('vitalseal_agent_certificate_renewal_attempts_total', 'Certificate renewal attempts', () => this.#attempts);
    m.counter('vitalseal_agent_certificate_renewals_total', 'Certificates renewed and written', () => this.#renewed);
    m.counter('vitalseal_agent_certificate_renewal_failures_total', 'Failed renewal attempts, by error code', () => [...this.#failures].map(([code, value]) => ({ labels: { code }, value })));
    m.gauge('vitalseal_agent_certificate_renewal_consecutive_failures', 'Renewal attempts failed in a row (0 after a success)', () => {
      const s = this.#schedule.state;
      return s.kind === 'idle' ? 0 : s.failures;
    });
    m.gauge('vitalseal_agent_certificate_renewal_retry_timestamp_seconds', 'When the next renewal attempt may start, while backing off', () => {
      const s = this.#schedule.state;
      return s.kind === 'backing-off' ? s.retryAt / 1000 : undefined;
    });
  }

  #begin(work: () => Promise<RenewalOutcome>): Promise<RenewalOutcome> {
    const now = this.#o.clock.now();
    this.#schedule.started(now);
    this.#attempts++;
    const running = work().then(
      (outcome) => outcome,
      (e: unknown) => this.#failed(e),
    ).finally(() => {
      this.#running = undefined;
    });
    this.#running = running;
    return running;
  }

  async #renew(current: { pem: string; leaf: Certificate }): Promise<RenewalOutcome> {
    const { renewal, deviceId, clock, log } = this.#o;
    const label = renewal.identity.keyLabel;
    log.info({ serial: current.leaf.serialHex, notAfter: new Date(current.leaf.notAfter).toISOString(), url: this.#endpoint.origin }, 'renewing the device certificate');
    let store: KeyStore | undefined;
    let connector: TlsConnector | undefined;
    try {
      const keystore = renewal.identity.keystore;
      let signer: Signer;
      if (keystore.kind === 'tpm') {
        // As the MQTTS uplink: tpm2-tools and openssl s_client, so FAPI never loads into the agent.
        const tpm = await tpmDeviceTls(keystore, label, this.#trust, { clock, log, purpose: 'certificate renewal', env: this.#o.env });
        signer = toolsSigner(keystore, label, tpm.key.spki, { env: this.#o.env });
        connector = tpm.build(current.pem);
      } else {
        store = await openKeyStore(keystore, { env: this.#o.env, create: false, logger: { warn: (m) => log.warn({ keyStore: 'identity' }, m) } });
        signer = await store.openSigningKey(label);
        const build = await deviceTlsFactory(store, label, this.#trust, { clock, log, purpose: 'certificate renewal', refusal: pkcs11Refusal });
        connector = build(current.pem);
      }
      if (!equalBytes(await signer.publicKeySpki(), current.leaf.spki.der)) {
        throw new KeyStoreError('key-mismatch', `the current certificate (${this.#chainSource}) is not for key '${label}' of the configured key store`);
      }
      const issued = await reenrol({
        endpoint: this.#endpoint, connector, signer, deviceId, roots: this.#trust.roots, clock,
        currentNotAfter: current.leaf.notAfter, timeoutMs: renewal.timeoutSeconds * 1000,
      });
      await this.#write(issued);
      const now = clock.now();
      this.#schedule.succeeded(now, issued.leaf.notAfter);
      this.#renewed++;
      this.#lastRenewal = { at: now, serial: issued.leaf.serialHex, notAfter: issued.leaf.notAfter };
      this.#dueAt = this.#schedule.dueAt(issued.leaf.notAfter);
      log.info({ from: current.leaf.serialHex, to: issued.leaf.serialHex, notAfter: new Date(issued.leaf.notAfter).toISOString(), files: this.#files().map((f) => f.path) },
        'device certificate renewed; the transports present it from their next connection');
      return { result: 'renewed', serial: issued.leaf.serialHex, notAfter: issued.leaf.notAfter };
    } finally {
      await connector?.close().catch(() => undefined);
      await store?.close().catch(() => undefined);
    }
  }

  #failed(e: unknown): RenewalOutcome {
    const code = e instanceof VitalsealError ? e.code : (e as NodeJS.ErrnoException).code ?? 'error';
    const message = e instanceof Error ? e.message : String(e);
    const now = this.#o.clock.now();
    const retryAt = this.#schedule.failed(now, code, message);
    this.#failures.set(code, (this.#failures.get(code) ?? 0) + 1);
    const fields = { code, retryAt: new Date(retryAt).toISOString(), consecutiveFailures: this.status().consecutiveFailures };
    const text = `certificate renewal failed: ${message}; the current certificate stays in use; next attempt after ${fields.retryAt}`;
    if (e instanceof EnrolmentError && e.retryable) this.#o.log.warn(fields, text);
    else this.#o.log.error(fields, text);
    this.#arm(retryAt);
    return { result: 'failed', code, message, retryAt };
  }

  #arm(at: number): void {
    if (this.#stopped) return;
    if (this.#timer !== undefined) this.#timers.clearTimeout(this.#timer);
    const ms = Math.min(MAX_TIMER_MS, Math.max(0, at - this.#o.clock.now()));
    this.#timer = this.#timers.setTimeout(() => {
      this.#timer = undefined;
      void this.tick();
    }, ms);
  }

  /** Which file gets what: chain files the chain; certificate.file the form it has now. */
  #files(): { path: string; form: 'chain' | 'leaf' }[] {
    const chains = [...new Set(this.#o.chainFiles.map((f) => resolve(f)))];
    const cert = resolve(this.#o.certificateFile);
    if (chains.includes(cert)) return chains.map((path) => ({ path, form: 'chain' }));
    let form: 'chain' | 'leaf' = 'leaf';
    try {
      form = pemDecode(readFileSync(cert, 'utf8'), 'CERTIFICATE').length > 1 ? 'chain' : 'leaf';
    } catch {
      // Unreadable now: write the leaf, as `vitalseal provision` writes device.pem.
    }
    return [...chains.map((path) => ({ path, form: 'chain' as const })), { path: cert, form }];
  }

  /** Stages every file (old ones untouched), then renames each into place. */
  async #write(issued: IssuedChain): Promise<void> {
    const staged: StagedFile[] = [];
    try {
      for (const { path, form } of this.#files()) {
        const mode = await stat(path).then((st) => Number(st.mode) & 0o777, () => 0o644);
        staged.push(await stageFile(path, form === 'chain' ? chainPem(issued) : pemEncode('CERTIFICATE', issued.leaf.der), mode));
      }
    } catch (e) {
      await Promise.all(staged.map((s) => s.abort().catch(() => undefined)));
      throw new RenewalWriteError(`the new certificate could not be written (${(e as NodeJS.ErrnoException).code ?? 'error'}); the current files are unchanged`, e);
    }
    for (const s of staged) {
      try {
        await s.commit();
      } catch (e) {
        await Promise.all(staged.map((x) => x.abort().catch(() => undefined)));
        throw new RenewalWriteError(`the new certificate could not be moved into place at ${s.path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, e);
      }
    }
  }
}

/**
 * The renewer `certificate.renew` asks for, or undefined without it: `certificate.file` and the
 * transports' `certFile`s are the files it rewrites.
 */
export function renewerFromConfig(c: AgentConfig, deps: {
  readonly clock: Clock; readonly log: Logger; readonly env: NodeJS.ProcessEnv; readonly timers: Timers | undefined; readonly random: (() => number) | undefined;
}): CertificateRenewer | undefined {
  const renewal = c.certificate?.renew;
  if (c.certificate === undefined || renewal === undefined) return undefined;
  return new CertificateRenewer({
    deviceId: c.device.id, renewal, certificateFile: c.certificate.file, clock: deps.clock, log: deps.log, env: deps.env,
    chainFiles: [c.transport.primary.certFile, c.transport.failover?.certFile].filter((f): f is string => f !== undefined),
    ...(deps.timers === undefined ? {} : { timers: deps.timers }), ...(deps.random === undefined ? {} : { random: deps.random }),
  });
}

/** The renewed chain could not be written; the old files stay (as far as the rename got). */
class RenewalWriteError extends VitalsealError {
  readonly kind = 'renewal';
  constructor(message: string, cause: unknown) {
    super('write-failed', message, { cause });
  }
}

function readChain(file: string): { pem: string; leaf: Certificate } {
  const pem = readFileSync(file, 'utf8');
  return { pem, leaf: leafOf(pem) };
}

function pkcs11Refusal(): Unsupported {
  return new Unsupported('renewal-pkcs11-key', 'certificate.renew: renewal signs its TLS handshake with the identity key, and a PKCS#11 token key cannot do that on Debian 12 (no OpenSSL 3 pkcs11 provider; docs/transport-mqtts.md, "PKCS#11"). Remove certificate.renew and renew by provisioning again (vitalseal provision --enrol), or keep the identity key in a TPM');
}
