/**
 * The ingest path of one message, independent of the transport it came on (DESIGN.md, "The path of
 * one reading"):
 *
 *   size/format → peer → registry (credential, status) → COSE structure → identity binding →
 *   COSE open (static key, epoch cache) → epoch policy → SenML vitals → encrypt at rest → store once
 *
 * Cheap checks come first, and nothing is decrypted for a peer the registry refuses or for a
 * message that names another device. The identity binding is checked twice: the protected header's
 * device id before decryption (it is authenticated once decryption succeeds, being part of the AAD),
 * and the SenML base name after. Every refusal is typed (`RejectReason`), counted, audited (in bursts,
 * see anomaly.ts) and fed to the anomaly alerts; nothing in here throws at a listener:
 * unexpected failures become `unavailable` (not acknowledged, so the message comes again).
 *
 * @example
 *   const outcome = await service.accept({ payload, contentFormat: 96,
 *     peer: { kind: 'certificate', deviceId: peer.deviceId, spkiSha256: toHex(peer.spkiSha256), transport: 'coaps', suite } });
 *   respond(coapResponseCode(outcome));
 */
import { createHash } from 'node:crypto';
import { decodeVitalsPack, type VitalsBatch } from '../codec/vitals.ts';
import { openParsedCose, type OpenedCose } from '../cose/encrypt.ts';
import { EpochKeyCache } from '../cose/epoch-cache.ts';
import { decodeX25519CoseKey, Header, headerValue } from '../cose/headers.ts';
import { parseCoseEncrypt, type ParsedCoseEncrypt } from '../cose/message.ts';
import type { CryptoProvider } from '../crypto/provider.ts';
import { getProvider } from '../crypto/registry.ts';
import { toHex, zeroize } from '../util/bytes.ts';
import type { Clock } from '../util/clock.ts';
import { isDeviceId } from '../util/device-id.ts';
import { CryptoError, DecodeError, Unsupported, VitalsealError } from '../util/errors.ts';
import { AnomalyDetector, type Alert } from './anomaly.ts';
import { sealAtRest } from './at-rest.ts';
import { deviceLabel, type AuditTrail } from './audit-trail.ts';
import type { DeviceDataKeys } from './data-keys.ts';
import { EpochTracker, type EpochPolicy } from './epochs.ts';
import { GapTracker } from './gaps.ts';
import { GroupCommit } from './group-commit.ts';
import type { IngestMetrics } from './metrics.ts';
import type { AcceptInput, AcceptOutcome, PeerIdentity, RejectReason, TransportName } from './outcome.ts';
import type { DeviceRegistry } from './registry.ts';
import type { StaticKeys } from './static-key.ts';
import type { DeviceActivity, DeviceRecord, IngestStorage } from './storage/types.ts';

/** pino-compatible logging (objects first); never given key material or readings. */
export interface IngestLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export const silentLogger: IngestLogger = { info: () => undefined, warn: () => undefined, error: () => undefined };

export interface IngestLimits {
  /** Largest sealed message accepted (default 64 KiB: a second of vitals with ECG is ~2 KiB). */
  readonly maxMessageBytes?: number;
  /** SenML records per message (default 4096). */
  readonly maxRecords?: number;
  /** Sealing-epoch content keys cached per static key version (default 10 000; 64 bytes each). */
  readonly epochCacheEntries?: number;
}

export interface AnomalyThresholds {
  readonly windowMs?: number;
  readonly decryptFailures?: number;
  readonly rejections?: number;
  readonly auditBurst?: number;
}

export interface IngestServiceOptions {
  readonly storage: IngestStorage;
  readonly registry: DeviceRegistry;
  readonly dataKeys: DeviceDataKeys;
  readonly staticKeys: StaticKeys;
  readonly audit: AuditTrail;
  readonly metrics: IngestMetrics;
  readonly clock: Clock;
  readonly provider?: CryptoProvider;
  readonly limits?: IngestLimits;
  readonly epochPolicy?: EpochPolicy;
  readonly anomaly?: AnomalyThresholds;
  readonly log?: IngestLogger;
}

/** A stored message, as the live dashboard feed sees it. */
export interface AcceptedEvent {
  readonly deviceId: string;
  readonly seq: number;
  readonly receivedAt: number;
  readonly transport: TransportName;
  readonly batch: VitalsBatch;
}

class Refused extends Error {
  constructor(readonly reason: RejectReason, readonly detail: string, readonly deviceId?: string, readonly seq?: number) {
    super(detail);
  }
}

const MAX_PENDING_TALLIES = 10_000;
/** A device's activity row is rewritten at most this often while only its last-seen time moves. */
export const ACTIVITY_RESOLUTION_MS = 1000;
/** Devices whose last written activity is remembered (least recently written forgotten first). */
const MAX_REMEMBERED_ACTIVITY = 100_000;

export class IngestService {
  readonly metrics: IngestMetrics;
  readonly #o: IngestServiceOptions;
  readonly #provider: CryptoProvider;
  readonly #maxBytes: number;
  readonly #maxRecords: number;
  readonly #caches = new Map<number, EpochKeyCache>();
  readonly #epochVersion = new Map<string, number>();
  readonly #epochs: EpochTracker;
  readonly #gaps = new GapTracker();
  readonly #anomaly: AnomalyDetector;
  readonly #log: IngestLogger;
  readonly #listeners = new Set<(e: AcceptedEvent) => void>();
  readonly #tallies = new Map<string, { count: number; at: number; reason: RejectReason }>();
  /** The activity last handed to storage per device (`#activityDue`). */
  readonly #activity = new Map<string, DeviceActivity>();
  readonly #commits: GroupCommit;
  #inflight = 0;
  #idle: (() => void) | undefined;
  #draining = false;

  constructor(o: IngestServiceOptions) {
    this.#o = o;
    this.metrics = o.metrics;
    this.#provider = o.provider ?? getProvider();
    this.#maxBytes = o.limits?.maxMessageBytes ?? 64 * 1024;
    this.#maxRecords = o.limits?.maxRecords ?? 4096;
    const cacheEntries = o.limits?.epochCacheEntries ?? 10_000;
    for (const v of o.staticKeys.versions) this.#caches.set(v.version, new EpochKeyCache(cacheEntries));
    this.#epochs = new EpochTracker(o.epochPolicy);
    this.#commits = new GroupCommit(o.storage, {
      onBatch: (n, seconds) => {
        o.metrics.storageLatency.observe(seconds, { op: 'store' });
        o.metrics.storeBatch.observe(n);
      },
    });
    this.#log = o.log ?? silentLogger;
    this.#anomaly = new AnomalyDetector({
      clock: o.clock, ...o.anomaly,
      onAlert: (a) => this.#alert(a),
      onSuppressed: (s) => {
        o.metrics.auditSuppressed.inc({}, s.count);
        o.audit.record({ operation: 'reject', result: 'denied', code: s.reason, detail: `device ${deviceLabel(s.deviceId)}: ${s.count} more refusals in the window from ${new Date(s.windowStart).toISOString()}` });
      },
    });
  }

  /** The largest sealed message taken (`ingest.maxMessageBytes`): listeners refuse larger ones early. */
  get maxMessageBytes(): number {
    return this.#maxBytes;
  }

  /** Sealed messages being processed right now. */
  get inflight(): number {
    return this.#inflight;
  }

  /** Takes one sealed message; see the module comment. Never throws. */
  async accept(input: AcceptInput): Promise<AcceptOutcome> {
    const started = performance.now();
    const transport = input.peer.transport;
    this.metrics.received.inc({ transport });
    if (this.#draining) {
      this.metrics.unavailable.inc({ cause: 'shutting-down' });
      return { status: 'unavailable', detail: 'the ingest service is shutting down' };
    }
    this.#inflight++;
    try {
      const outcome = await this.#accept(input);
      if (outcome.status === 'accepted') this.metrics.accepted.inc({ transport });
      return outcome;
    } catch (e) {
      if (e instanceof Refused) return this.#refuse(e, input.peer);
      const cause = e instanceof VitalsealError ? e.kind : 'internal';
      this.metrics.unavailable.inc({ cause });
      this.#log.error({ cause, code: e instanceof VitalsealError ? e.code : undefined, transport }, 'message not taken: transient failure');
      return { status: 'unavailable', detail: `not taken (${cause}); send it again` };
    } finally {
      this.metrics.acceptLatency.observe((performance.now() - started) / 1000);
      this.#inflight--;
      if (this.#inflight === 0) this.#idle?.();
    }
  }

  async #accept(input: AcceptInput): Promise<AcceptOutcome> {
    const now = input.receivedAt ?? this.#o.clock.now();
    const { payload, peer } = input;
    if (!(payload instanceof Uint8Array)) throw new Refused('malformed', 'payload is not bytes');
    if (payload.length > this.#maxBytes) throw new Refused('too-large', `${payload.length} bytes exceeds the limit of ${this.#maxBytes}`);
    const cf = input.contentFormat;
    // RFC 9052 §9 / CoAP Content-Formats: 96 is application/cose; cose-type="cose-encrypt".
    if (cf !== undefined && cf !== 96 && cf !== 'cose-encrypt') throw new Refused('unsupported-format', `content format ${String(cf)} is not cose-encrypt (96)`);

    const id = peerDeviceId(peer);
    // The registry is in memory: only a device enrolled by another instance since the last refresh costs a query.
    const device = this.#authorise(peer, id, this.#o.registry.get(id) ?? await this.#o.registry.lookup(id));
    const deviceId = device.deviceId;

    let parsed: ParsedCoseEncrypt;
    try {
      parsed = parseCoseEncrypt(payload, this.#maxBytes);
    } catch (e) {
      throw asRefusal(e, deviceId);
    }
    if (parsed.kind !== 'encrypt') throw new Refused('unsupported-format', 'COSE_Encrypt0 is not used on the uplink: expected COSE_Encrypt with an ECDH-ES recipient', deviceId);
    const claimed = parsed.protected.get(Header.DEVICE_ID);
    const seq = parsed.protected.get(Header.SEQUENCE);
    if (typeof claimed !== 'string' || !isDeviceId(claimed)) throw new Refused('malformed', 'no valid device id in the protected header', deviceId);
    if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) throw new Refused('malformed', 'no valid sequence number (integer >= 1) in the protected header', deviceId);
    if (claimed !== deviceId) {
      throw new Refused('identity-mismatch', `the sealed message names device ${deviceLabel(claimed)} but the transport authenticated ${deviceLabel(deviceId)}`, deviceId, seq);
    }

    const opened = this.#open(parsed, deviceId, seq);
    const epoch = opened.epoch as string;
    let plaintext: Uint8Array | undefined = opened.plaintext;
    try {
      const verdict = this.#epochs.check(epoch, deviceId, now);
      if (verdict === 'shared') throw new Refused('epoch-misuse', 'this sealing epoch was first used by another device', deviceId, seq);
      if (verdict === 'stale') {
        this.#anomaly.observeEpochPolicy(deviceId);
        this.#o.audit.record({ operation: 'policy-violation', result: 'error', code: 'epoch-stale', detail: `device ${deviceLabel(deviceId)} keeps a sealing epoch beyond the policy (message ${seq} stored)` });
      }

      let batch: VitalsBatch;
      try {
        batch = decodeVitalsPack(plaintext, { maxBytes: this.#maxBytes, maxStringBytes: this.#maxBytes, maxRecords: this.#maxRecords });
      } catch (e) {
        throw asRefusal(e, deviceId, seq);
      }
      if (batch.deviceId !== deviceId) throw new Refused('identity-mismatch', `the SenML base name names device ${deviceLabel(batch.deviceId)}, not ${deviceLabel(deviceId)}`, deviceId, seq);
      const span = timeSpan(batch);
      if (span === undefined) throw new Refused('malformed', 'the SenML pack holds no reading', deviceId, seq);

      const dek = this.#o.dataKeys.cachedCurrent(deviceId) ?? await this.#o.dataKeys.current(deviceId);
      const sealed = sealAtRest(this.#provider, dek, deviceId, seq, plaintext);
      const keyVersion = dek.version;
      zeroize(plaintext);
      plaintext = undefined;

      const epochStartedAt = this.#epochs.startOf(epoch) ?? (device.sealingEpoch === epoch ? device.epochStartedAt : undefined) ?? now;
      const message = { deviceId, seq, receivedAt: now, firstTime: span.first, lastTime: span.last, keyVersion, nonce: sealed.nonce, ciphertext: sealed.ciphertext };
      const activity = { seenAt: now, transport: peer.transport, suite: `${peer.suite} / ${opened.alg.name}`, sealingEpoch: epoch, epochStartedAt };
      const result = await this.#commits.store(this.#activityDue(deviceId, activity) ? { message, activity } : { message });
      this.#epochs.record(epoch, deviceId, now, epochStartedAt);
      if (result === 'duplicate') {
        this.metrics.duplicates.inc();
        return { status: 'duplicate', deviceId, seq };
      }
      const readings = batch.readings.length + batch.ecg.length;
      this.metrics.readings.inc({}, readings);
      const g = this.#gaps.observe(deviceId, seq);
      if (g.opened > 0) this.metrics.gapsOpened.inc();
      this.metrics.missing.set(this.#gaps.missing);
      this.#publish({ deviceId, seq, receivedAt: now, transport: peer.transport, batch });
      return { status: 'accepted', deviceId, seq, readings };
    } finally {
      zeroize(plaintext);
    }
  }

  /**
   * Whether this message's activity (last seen, transport, suite, sealing epoch) goes to the
   * database with it. A device's row is written at most once per `ACTIVITY_RESOLUTION_MS` while
   * nothing but the time changes: last-seen is kept to the second (docs/ingest.md), and a device
   * streaming faster than once a second does not cost a row update per message. A new transport,
   * suite or sealing epoch is written at once.
   */
  #activityDue(deviceId: string, a: DeviceActivity): boolean {
    const last = this.#activity.get(deviceId);
    if (last !== undefined && a.seenAt >= last.seenAt && a.seenAt - last.seenAt < ACTIVITY_RESOLUTION_MS
      && a.transport === last.transport && a.suite === last.suite && a.sealingEpoch === last.sealingEpoch) return false;
    // Re-inserted so the map's order is least recently written first (the first to go when full).
    this.#activity.delete(deviceId);
    this.#activity.set(deviceId, a);
    if (this.#activity.size > MAX_REMEMBERED_ACTIVITY) this.#activity.delete(this.#activity.keys().next().value as string);
    return true;
  }

  /** The registered device the authenticated peer `id` (peerDeviceId) is, if it is active and its credential is the registered one; or refuses. */
  #authorise(peer: PeerIdentity, id: string, d: DeviceRecord | undefined): DeviceRecord {
    if (d === undefined) throw new Refused('unknown-device', `device ${deviceLabel(id)} is not registered`, id);
    switch (peer.kind) {
      case 'certificate':
        // The certificate's key must be the one enrolled: a certificate the CA issued for an old key
        // (renewed since) no longer speaks for the device.
        if (d.credential !== 'certificate' || d.credentialSha256 !== peer.spkiSha256.toLowerCase()) {
          throw new Refused('credential-mismatch', `device ${deviceLabel(id)} presented a key that is not its registered one`, id);
        }
        break;
      case 'psk':
        if (d.credential !== 'psk' || d.credentialSha256 !== createHash('sha256').update(peer.pskIdentity).digest('hex')) {
          throw new Refused('credential-mismatch', `device ${deviceLabel(id)} is not registered for PSK`, id);
        }
        break;
      case 'broker':
        // The broker authenticated it by certificate (require_certificate, use_identity_as_username).
        if (d.credential !== 'certificate') throw new Refused('credential-mismatch', `device ${deviceLabel(id)} is a PSK device; MQTT needs a certificate`, id);
        break;
    }
    if (d.status === 'revoked') throw new Refused('device-revoked', `device ${deviceLabel(id)} is revoked`, id);
    if (d.status === 'suspended') throw new Refused('device-suspended', `device ${deviceLabel(id)} is suspended`, id);
    return d;
  }

  #open(parsed: ParsedCoseEncrypt, deviceId: string, seq: number): OpenedCose {
    const r0 = parsed.kind === 'encrypt' ? parsed.recipients[0] : undefined;
    let kid: Uint8Array | undefined;
    let epochHint: string | undefined;
    if (r0 !== undefined) {
      const k = headerValue(r0.protected, r0.unprotected, Header.KID);
      if (k instanceof Uint8Array) kid = k;
      if (this.#caches.size > 1) {
        try {
          epochHint = toHex(decodeX25519CoseKey(headerValue(r0.protected, r0.unprotected, Header.EPHEMERAL_KEY)));
        } catch {
          // malformed keys are reported by openParsedCose below
        }
      }
    }
    let order = this.#o.staticKeys.candidates(kid);
    const hinted = epochHint === undefined ? undefined : this.#epochVersion.get(epochHint);
    if (hinted !== undefined) order = [...order.filter((c) => c.version === hinted), ...order.filter((c) => c.version !== hinted)];
    for (const c of order) {
      const cache = this.#caches.get(c.version) as EpochKeyCache;
      const before = cache.stats.misses;
      try {
        // Parsed once, above (bounded by maxMessageBytes), and opened from that.
        const opened = openParsedCose(parsed, { recipient: c.recipient, cache, provider: this.#provider });
        this.metrics.epochCacheLookups.inc({ result: cache.stats.misses === before ? 'hit' : 'miss' });
        if (this.#caches.size > 1 && opened.epoch !== undefined) this.#rememberEpoch(opened.epoch, c.version);
        return opened;
      } catch (e) {
        if (e instanceof CryptoError) continue;
        throw asRefusal(e, deviceId, seq);
      }
    }
    throw new Refused('decrypt-failed', 'the message does not decrypt with the ingest key (wrong key, or tampered)', deviceId, seq);
  }

  #rememberEpoch(epoch: string, version: number): void {
    if (this.#epochVersion.size >= 10_000) this.#epochVersion.delete(this.#epochVersion.keys().next().value as string);
    this.#epochVersion.set(epoch, version);
  }

  #refuse(r: Refused, peer: PeerIdentity): AcceptOutcome {
    this.metrics.rejected.inc({ reason: r.reason });
    const who = r.deviceId ?? claimedIdentity(peer);
    const { audit } = this.#anomaly.observe(who, r.reason);
    if (audit) {
      this.#o.audit.record({
        operation: 'reject', result: 'denied', code: r.reason,
        detail: `device ${deviceLabel(who)} via ${peer.transport}${r.seq === undefined ? '' : ` seq ${r.seq}`}: ${r.detail}`,
      });
    } else {
      this.metrics.auditSuppressed.inc();
    }
    if (r.deviceId !== undefined && this.#o.registry.get(r.deviceId) !== undefined) this.#tally(r.deviceId, r.reason);
    return {
      status: 'rejected', reason: r.reason, detail: r.detail,
      ...(r.deviceId === undefined ? {} : { deviceId: r.deviceId }), ...(r.seq === undefined ? {} : { seq: r.seq }),
    };
  }

  #alert(a: Alert): void {
    this.metrics.alerts.inc({ kind: a.kind });
    this.#o.audit.record({ operation: 'alert', result: 'error', code: a.kind, detail: `device ${deviceLabel(a.deviceId)}: ${a.count} in the window from ${new Date(a.windowStart).toISOString()}` });
    this.#log.warn({ alert: a.kind, device: deviceLabel(a.deviceId), count: a.count }, 'ingest anomaly alert');
  }

  #tally(deviceId: string, reason: RejectReason): void {
    const t = this.#tallies.get(deviceId);
    const at = this.#o.clock.now();
    if (t === undefined) this.#tallies.set(deviceId, { count: 1, at, reason });
    else {
      t.count++;
      t.at = at;
      t.reason = reason;
    }
    if (this.#tallies.size >= MAX_PENDING_TALLIES) void this.flushRejections().catch(() => undefined);
  }

  /** Writes the per-device refusal counts gathered since the last call (the runtime calls it every few seconds). */
  async flushRejections(): Promise<void> {
    const pending = [...this.#tallies];
    this.#tallies.clear();
    for (const [deviceId, t] of pending) await this.#o.storage.addRejections(deviceId, t.count, t.at, t.reason);
  }

  /** Closes anomaly windows that ended (their suppressed refusals get one audit line). */
  sweepAnomalies(): void {
    this.#anomaly.sweep();
  }

  /** Counts a failed transport handshake (the listeners call it with the alert they sent). */
  recordHandshakeFailure(transport: TransportName, alert: string): void {
    this.metrics.handshakeFailures.inc({ transport, alert });
  }

  /** Epoch cache size over every static key version (a gauge). */
  get epochCacheEntries(): number {
    let n = 0;
    for (const c of this.#caches.values()) n += c.size;
    return n;
  }

  /** Missing sequence numbers for a device as this instance saw them (the API's `gaps` reads the database). */
  liveGaps(deviceId: string): readonly (readonly [number, number])[] {
    return this.#gaps.missingFor(deviceId);
  }

  onAccepted(listener: (e: AcceptedEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #publish(e: AcceptedEvent): void {
    for (const l of this.#listeners) {
      try {
        l(e);
      } catch {
        // a slow or broken viewer never affects storage
      }
    }
  }

  /** Stops taking messages (new ones get `unavailable`) and waits for those in flight. */
  async drain(): Promise<void> {
    this.#draining = true;
    if (this.#inflight > 0) await new Promise<void>((resolve) => { this.#idle = resolve; });
    await this.flushRejections().catch(() => undefined);
  }

  /** Forgets the epoch keys (shutdown). */
  destroy(): void {
    for (const c of this.#caches.values()) c.clear();
  }
}

/** The device id the transport authenticated (a certificate's or the broker's device, a PSK identity), or a refusal. */
function peerDeviceId(peer: PeerIdentity): string {
  let id: string;
  switch (peer.kind) {
    case 'certificate':
    case 'broker':
      id = peer.deviceId;
      break;
    case 'psk':
      id = peer.pskIdentity;
      break;
    default: {
      const never: never = peer;
      throw new Refused('unknown-device', `unknown peer kind ${String((never as { kind?: unknown }).kind)}`);
    }
  }
  if (!isDeviceId(id)) throw new Refused('unknown-device', 'the transport identity is not a valid device id');
  return id;
}

function claimedIdentity(peer: PeerIdentity): string {
  const id = peer.kind === 'psk' ? peer.pskIdentity : peer.deviceId;
  return isDeviceId(id) ? id : 'invalid-identity';
}

function asRefusal(e: unknown, deviceId: string, seq?: number): Refused {
  if (e instanceof DecodeError || e instanceof Unsupported) return new Refused('malformed', `${e.message} [${e.code}]`, deviceId, seq);
  if (e instanceof RangeError || e instanceof TypeError) return new Refused('malformed', e.message, deviceId, seq);
  throw e;
}

/** Earliest and latest reading time of a batch (an ECG strip spans its samples). */
export function timeSpan(b: VitalsBatch): { first: number; last: number } | undefined {
  let first = Number.POSITIVE_INFINITY;
  let last = Number.NEGATIVE_INFINITY;
  for (const r of b.readings) {
    first = Math.min(first, r.time);
    last = Math.max(last, r.time);
  }
  for (const e of b.ecg) {
    first = Math.min(first, e.start);
    last = Math.max(last, Math.round(e.start + (e.samplesMv.length - 1) * e.intervalMs));
  }
  return Number.isFinite(first) ? { first, last } : undefined;
}
