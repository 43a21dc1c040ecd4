/**
 * The small parts of the ingest path on their own, under a manual clock: anomaly windows and audit
 * bursts, gap tracking, the epoch policy, the Prometheus exposition, outcome mappings, tokens.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AnomalyDetector, type Alert, type Suppressed } from '../../src/ingest/anomaly.ts';
import { EpochTracker } from '../../src/ingest/epochs.ts';
import { GapTracker } from '../../src/ingest/gaps.ts';
import { Counter, Gauge, Histogram, MetricsRegistry } from '../../src/ingest/metrics.ts';
import { coapResponseCode, mqttShouldAck, REJECT_REASONS, uplinkRejectReason } from '../../src/ingest/outcome.ts';
import { API_TOKEN_PREFIX, ENROL_TOKEN_PREFIX, parseToken, tokenSha256 } from '../../src/ingest/tokens.ts';
import { ManualClock } from '../../src/util/clock.ts';

describe('anomaly alerts', () => {
  const make = (over: Partial<ConstructorParameters<typeof AnomalyDetector>[0]> = {}) => {
    const clock = new ManualClock(0);
    const alerts: Alert[] = [];
    const suppressed: Suppressed[] = [];
    const a = new AnomalyDetector({ clock, windowMs: 1000, decryptFailures: 3, rejections: 5, auditBurst: 2, onAlert: (x) => alerts.push(x), onSuppressed: (s) => suppressed.push(s), ...over });
    return { clock, alerts, suppressed, a };
  };

  it('raises decrypt-failure and rejection spikes once per device and window', () => {
    const { clock, alerts, a } = make();
    for (let i = 0; i < 6; i++) a.observe('bed-1', 'decrypt-failed');
    assert.deepEqual(alerts.map((x) => [x.kind, x.deviceId, x.count]), [['decrypt-failures', 'bed-1', 3], ['rejections', 'bed-1', 5]]);
    a.observe('bed-2', 'decrypt-failed');
    assert.equal(alerts.length, 2, 'per device');
    clock.advance(1000);
    for (let i = 0; i < 3; i++) a.observe('bed-1', 'decrypt-failed');
    assert.equal(alerts.length, 3, 'a new window alerts again');
  });

  it('alerts on the first attempt of a revoked or suspended device, a mismatch, an epoch misuse, an unknown identity', () => {
    const { alerts, a } = make({ rejections: 100 });
    for (const r of ['device-revoked', 'device-revoked', 'device-suspended', 'identity-mismatch', 'epoch-misuse', 'unknown-device'] as const) a.observe('bed-9', r);
    assert.deepEqual(alerts.map((x) => x.kind), ['revoked-device', 'suspended-device', 'identity-mismatch', 'epoch-misuse', 'unknown-device']);
    a.observe('bed-9', 'malformed');
    assert.equal(alerts.length, 5, 'a malformed message alone is not an alert');
  });

  it('audits a burst per reason, folds the rest into one line at the window end, and stays bounded', () => {
    const { clock, suppressed, a } = make({ rejections: 1000, decryptFailures: 1000 });
    const audited = Array.from({ length: 7 }, () => a.observe('bed-1', 'malformed').audit);
    assert.deepEqual(audited, [true, true, false, false, false, false, false]);
    clock.advance(1000);
    a.sweep();
    assert.deepEqual(suppressed, [{ deviceId: 'bed-1', reason: 'malformed', count: 5, windowStart: 0 }]);
    const small = make({ maxTracked: 3 });
    for (let i = 0; i < 50; i++) small.a.observe(`dev-${i}`, 'malformed');
    assert.ok(small.a.tracked <= 3);
  });
});

describe('gap tracking', () => {
  it('opens ranges on jumps, fills them from late arrivals, and counts what is missing', () => {
    const g = new GapTracker();
    assert.deepEqual(g.observe('d', 5), { opened: 0, filled: false }, 'the first message here opens no gap');
    assert.deepEqual(g.observe('d', 9), { opened: 3, filled: false });
    assert.deepEqual(g.observe('d', 10), { opened: 0, filled: false });
    assert.equal(g.missing, 3);
    assert.deepEqual(g.observe('d', 7), { opened: 0, filled: true });
    assert.deepEqual(g.missingFor('d'), [[6, 6], [8, 8]]);
    g.observe('d', 6);
    g.observe('d', 8);
    assert.equal(g.missing, 0);
    assert.deepEqual(g.observe('d', 3), { opened: 0, filled: false }, 'below what this instance saw: not tracked');
  });

  it('is bounded in devices and ranges, and the count follows what it drops', () => {
    const g = new GapTracker({ maxDevices: 2, maxRanges: 2 });
    g.observe('a', 1);
    for (const s of [3, 5, 7, 9]) g.observe('a', s);
    assert.deepEqual(g.missingFor('a'), [[6, 6], [8, 8]]);
    assert.equal(g.missing, 2);
    g.observe('b', 1);
    g.observe('c', 1);
    assert.equal(g.missing, 0, 'a was dropped with its ranges');
  });
});

describe('sealing-epoch policy', () => {
  it('refuses an epoch shared by two devices; flags one kept too long or for too many messages', () => {
    const e = new EpochTracker({ maxAgeMs: 1000, maxMessages: 3 });
    assert.equal(e.check('ep1', 'a', 0), 'ok');
    assert.equal(e.record('ep1', 'a', 0), 0);
    assert.equal(e.check('ep1', 'b', 10), 'shared');
    e.record('ep1', 'a', 10);
    e.record('ep1', 'a', 20);
    assert.equal(e.check('ep1', 'a', 30), 'stale', 'a fourth message');
    const f = new EpochTracker({ maxAgeMs: 1000, maxMessages: 100 });
    f.record('ep2', 'a', 0, -5000);
    assert.equal(f.check('ep2', 'a', 10), 'stale', 'the registry says it started long ago');
    assert.equal(f.startOf('ep2'), -5000);
    const g = new EpochTracker({ maxEntries: 2 });
    for (const x of ['x', 'y', 'z']) g.record(x, 'a', 0);
    assert.equal(g.size, 2);
    assert.equal(g.startOf('x'), undefined);
  });
});

describe('Prometheus exposition', () => {
  it('renders counters, gauges and histograms in the text format, escaping label values', () => {
    const r = new MetricsRegistry();
    const c = r.register(new Counter('x_total', 'Things.', ['reason']));
    c.inc({ reason: 'a"b\\c\nd' });
    c.inc({ reason: 'plain' }, 2);
    const g = r.register(new Gauge('y', 'Level.'));
    g.set(1.5);
    const h = r.register(new Histogram('z_seconds', 'Time.', [0.1, 1]));
    h.observe(0.05);
    h.observe(0.5);
    h.observe(5);
    const text = r.render();
    assert.match(text, /^# HELP x_total Things\.\n# TYPE x_total counter\n/);
    assert.ok(text.includes('x_total{reason="a\\"b\\\\c\\nd"} 1'));
    assert.ok(text.includes('x_total{reason="plain"} 2'));
    assert.ok(text.includes('y 1.50000'));
    for (const line of ['z_seconds_bucket{le="0.100000"} 1', 'z_seconds_bucket{le="1"} 2', 'z_seconds_bucket{le="+Inf"} 3', 'z_seconds_count 3']) assert.ok(text.includes(line), line);
    assert.throws(() => c.inc({}, -1), RangeError);
    assert.throws(() => r.register(new Counter('x_total', 'again')), RangeError);
  });
});

describe('outcome mapping', () => {
  it('every refusal has a CoAP 4.xx code, is acknowledged on MQTT, and maps to an Uplink reason', () => {
    for (const reason of REJECT_REASONS) {
      const o = { status: 'rejected' as const, reason, detail: '' };
      assert.match(coapResponseCode(o), /^4\.(00|01|03|13|15)$/, reason);
      assert.equal(mqttShouldAck(o), true);
      assert.ok(['bad-request', 'unauthorized', 'forbidden', 'too-large', 'unsupported-format'].includes(uplinkRejectReason(reason)));
    }
    assert.equal(coapResponseCode({ status: 'unavailable', detail: '' }), '5.03');
    assert.equal(mqttShouldAck({ status: 'unavailable', detail: '' }), false);
  });
});

describe('tokens', () => {
  it('accept only well-formed tokens of the right kind, by hash', () => {
    const t = `${API_TOKEN_PREFIX}${'A'.repeat(43)}`;
    assert.equal(parseToken(t, API_TOKEN_PREFIX), tokenSha256(t));
    assert.equal(parseToken(t, ENROL_TOKEN_PREFIX), undefined);
    for (const bad of ['', t.slice(0, -1), `${t}A`, t.replace('A', '+'), `vsx_${'A'.repeat(43)}`]) assert.equal(parseToken(bad, API_TOKEN_PREFIX), undefined, bad);
  });
});
