/**
 * Prometheus metrics in the text exposition format (version 0.0.4): counters, gauges and
 * histograms with a fixed label set each. Label values are bounded enumerations (reasons,
 * transports, alert names), never device ids, so the series count stays small with any fleet size.
 *
 * @example
 *   const m = new IngestMetrics();
 *   m.rejected.inc({ reason: 'identity-mismatch' });
 *   res.end(m.registry.render());
 */

type Labels = Readonly<Record<string, string>>;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labelText(names: readonly string[], values: Labels, extra?: [string, string]): string {
  const parts = names.map((n) => `${n}="${escapeLabel(values[n] ?? '')}"`);
  if (extra !== undefined) parts.push(`${extra[0]}="${escapeLabel(extra[1])}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

function key(names: readonly string[], values: Labels): string {
  return names.map((n) => values[n] ?? '').join('\u0000');
}

function fmt(n: number): string {
  if (n === Number.POSITIVE_INFINITY) return '+Inf';
  return Number.isInteger(n) ? String(n) : n.toPrecision(6);
}

interface Metric {
  readonly name: string;
  render(): string;
}

export class Counter implements Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string, readonly labelNames: readonly string[] = []) {}

  inc(labels: Labels = {}, by = 1): void {
    if (!(by >= 0)) throw new RangeError(`${this.name}: a counter only goes up`);
    const k = key(this.labelNames, labels);
    const e = this.#values.get(k);
    if (e === undefined) this.#values.set(k, { labels: { ...labels }, value: by });
    else e.value += by;
  }

  get(labels: Labels = {}): number {
    return this.#values.get(key(this.labelNames, labels))?.value ?? 0;
  }

  /** Sum over every label combination. */
  total(): number {
    let t = 0;
    for (const e of this.#values.values()) t += e.value;
    return t;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    if (this.#values.size === 0 && this.labelNames.length === 0) lines.push(`${this.name} 0`);
    for (const e of this.#values.values()) lines.push(`${this.name}${labelText(this.labelNames, e.labels)} ${fmt(e.value)}`);
    return lines.join('\n');
  }
}

export class Gauge implements Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string, readonly labelNames: readonly string[] = [], readonly collect?: (g: Gauge) => void) {}

  set(value: number, labels: Labels = {}): void {
    this.#values.set(key(this.labelNames, labels), { labels: { ...labels }, value });
  }

  add(by: number, labels: Labels = {}): void {
    const k = key(this.labelNames, labels);
    const e = this.#values.get(k);
    if (e === undefined) this.#values.set(k, { labels: { ...labels }, value: by });
    else e.value += by;
  }

  get(labels: Labels = {}): number {
    return this.#values.get(key(this.labelNames, labels))?.value ?? 0;
  }

  render(): string {
    this.collect?.(this);
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`];
    if (this.#values.size === 0 && this.labelNames.length === 0) lines.push(`${this.name} 0`);
    for (const e of this.#values.values()) lines.push(`${this.name}${labelText(this.labelNames, e.labels)} ${fmt(e.value)}`);
    return lines.join('\n');
  }
}

export class Histogram implements Metric {
  readonly #series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  readonly buckets: readonly number[];
  constructor(readonly name: string, readonly help: string, buckets: readonly number[], readonly labelNames: readonly string[] = []) {
    this.buckets = [...buckets].sort((a, b) => a - b);
  }

  observe(value: number, labels: Labels = {}): void {
    const k = key(this.labelNames, labels);
    let s = this.#series.get(k);
    if (s === undefined) {
      s = { labels: { ...labels }, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.#series.set(k, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= (this.buckets[i] as number)) s.counts[i] = (s.counts[i] as number) + 1;
    s.sum += value;
    s.count++;
  }

  count(labels: Labels = {}): number {
    return this.#series.get(key(this.labelNames, labels))?.count ?? 0;
  }

  /** The sum of the values observed (e.g. messages over every storage transaction). */
  sum(labels: Labels = {}): number {
    return this.#series.get(key(this.labelNames, labels))?.sum ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const s of this.#series.values()) {
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket${labelText(this.labelNames, s.labels, ['le', fmt(b)])} ${s.counts[i] ?? 0}`));
      lines.push(`${this.name}_bucket${labelText(this.labelNames, s.labels, ['le', '+Inf'])} ${s.count}`);
      lines.push(`${this.name}_sum${labelText(this.labelNames, s.labels)} ${fmt(s.sum)}`);
      lines.push(`${this.name}_count${labelText(this.labelNames, s.labels)} ${s.count}`);
    }
    return lines.join('\n');
  }
}

export class MetricsRegistry {
  readonly #metrics: Metric[] = [];

  register<M extends Metric>(m: M): M {
    if (this.#metrics.some((x) => x.name === m.name)) throw new RangeError(`metric ${m.name} registered twice`);
    this.#metrics.push(m);
    return m;
  }

  /** The exposition text (Content-Type: text/plain; version=0.0.4). */
  render(): string {
    return `${this.#metrics.map((m) => m.render()).join('\n')}\n`;
  }
}

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** Every metric the ingest service exports. */
export class IngestMetrics {
  readonly registry = new MetricsRegistry();
  readonly received = this.registry.register(new Counter('vitalseal_ingest_messages_received_total', 'Sealed messages handed to the ingest service, by transport.', ['transport']));
  readonly accepted = this.registry.register(new Counter('vitalseal_ingest_messages_accepted_total', 'Messages opened and stored for the first time, by transport.', ['transport']));
  readonly readings = this.registry.register(new Counter('vitalseal_ingest_readings_stored_total', 'Vital-sign readings and ECG strips in stored messages.'));
  readonly rejected = this.registry.register(new Counter('vitalseal_ingest_messages_rejected_total', 'Messages refused for good, by reason.', ['reason']));
  readonly duplicates = this.registry.register(new Counter('vitalseal_ingest_messages_duplicate_total', 'Messages already stored: acknowledged again, stored once.'));
  readonly unavailable = this.registry.register(new Counter('vitalseal_ingest_messages_unavailable_total', 'Messages not taken because of a transient failure (not acknowledged; sent again).', ['cause']));
  readonly gapsOpened = this.registry.register(new Counter('vitalseal_ingest_sequence_gaps_total', 'Times a device\'s sequence jumped ahead, leaving missing numbers (as seen by this instance).'));
  readonly missing = this.registry.register(new Gauge('vitalseal_ingest_missing_sequences', 'Sequence numbers this instance saw skipped and not yet filled, over all devices.'));
  readonly handshakeFailures = this.registry.register(new Counter('vitalseal_ingest_handshake_failures_total', 'Transport handshakes that failed, by transport and the alert sent.', ['transport', 'alert']));
  readonly storageLatency = this.registry.register(new Histogram('vitalseal_ingest_storage_latency_seconds', 'Time of storage operations, by operation.', LATENCY_BUCKETS, ['op']));
  readonly storeBatch = this.registry.register(new Histogram('vitalseal_ingest_store_batch_messages', 'Messages per storage transaction (group commit).', [1, 2, 4, 8, 16, 32, 64, 128]));
  readonly acceptLatency = this.registry.register(new Histogram('vitalseal_ingest_accept_latency_seconds', 'Time from handing a message to the service to its outcome.', LATENCY_BUCKETS));
  readonly alerts = this.registry.register(new Counter('vitalseal_ingest_alerts_total', 'Anomaly alerts raised (also written to the audit log), by kind.', ['kind']));
  readonly epochCache = this.registry.register(new Gauge('vitalseal_ingest_epoch_cache_entries', 'Sealing-epoch content keys held in memory.'));
  readonly epochCacheLookups = this.registry.register(new Counter('vitalseal_ingest_epoch_cache_lookups_total', 'Epoch key cache lookups, by result.', ['result']));
  readonly devices = this.registry.register(new Gauge('vitalseal_ingest_devices', 'Registered devices, by status.', ['status']));
  readonly auditSuppressed = this.registry.register(new Counter('vitalseal_ingest_audit_events_suppressed_total', 'Repeated rejection events folded into an alert instead of one audit line each.'));
  readonly apiRequests = this.registry.register(new Counter('vitalseal_ingest_api_requests_total', 'HTTPS requests, by route and status code.', ['route', 'code']));
  readonly enrolments = this.registry.register(new Counter('vitalseal_ingest_enrolments_total', 'Enrolment and renewal requests, by result.', ['result']));
  readonly rekeyed = this.registry.register(new Counter('vitalseal_ingest_rekeyed_messages_total', 'Stored messages re-encrypted under a newer data key.'));
  readonly dekRotations = this.registry.register(new Counter('vitalseal_ingest_dek_rotations_total', 'Device data keys rotated.'));
  readonly mqttSubscribed = this.registry.register(new Gauge('vitalseal_ingest_mqtt_subscribed', '1 while the MQTT listener holds its shared subscription, else 0.'));
  readonly mqttDisconnects = this.registry.register(new Counter('vitalseal_ingest_mqtt_disconnects_total', 'MQTT listener connections lost (each is re-made after a back-off).'));
  readonly brokerCrlReloads = this.registry.register(new Counter('vitalseal_ingest_broker_crl_reloads_total', 'Times the MQTT listener had the broker reload the CRL, by result.', ['result']));
}
