/**
 * Follows the ingest's live feed (`GET /api/v1/live`, server-sent events of stored messages) and
 * keeps per-device tallies for the demo's summary: messages and readings in the last window, the
 * latest heart rate and SpO2, the transport. The feed is authorised with a reader token and every
 * read of it is audited by the service, like any API read.
 *
 * @example
 *   const feed = followLive({ url: stack.httpsUrl, ca: rootPem, token });
 *   setInterval(() => print(feed.snapshot(5000)), 2000);
 *   feed.close();
 */
import type { ClientRequest } from 'node:http';
import { request } from 'node:https';

export interface DeviceTally {
  readonly deviceId: string;
  readonly transport: string;
  /** Messages and readings (vital readings + ECG samples) stored within the window. */
  readonly messages: number;
  readonly readings: number;
  readonly ecgSamples: number;
  readonly total: number;
  readonly heartRate: number | undefined;
  readonly spo2: number | undefined;
  readonly lastAt: number;
}

interface Event {
  readonly at: number;
  readonly readings: number;
  readonly ecg: number;
}

interface LiveMessage {
  deviceId: string;
  transport: string;
  readings: { kind: string; value: number }[];
  ecg: { samplesMv: number[] }[];
}

export interface LiveFeed {
  /** Per device, what arrived in the last `windowMs`. */
  snapshot(windowMs: number): DeviceTally[];
  /** Set when the feed failed (the summary says so rather than showing zeros). */
  readonly error: string | undefined;
  close(): void;
}

export function followLive(o: { url: string; ca: string; token: string }): LiveFeed {
  const devices = new Map<string, { transport: string; events: Event[]; total: number; hr?: number; spo2?: number; lastAt: number }>();
  let error: string | undefined;
  let req: ClientRequest | undefined;
  let closed = false;

  const onMessage = (m: LiveMessage) => {
    const now = Date.now();
    let d = devices.get(m.deviceId);
    if (d === undefined) {
      d = { transport: m.transport, events: [], total: 0, lastAt: now };
      devices.set(m.deviceId, d);
    }
    d.transport = m.transport;
    d.lastAt = now;
    d.total += 1;
    const ecg = m.ecg.reduce((n, s) => n + s.samplesMv.length, 0);
    d.events.push({ at: now, readings: m.readings.length, ecg });
    for (const r of m.readings) {
      if (r.kind === 'heart-rate') d.hr = r.value;
      if (r.kind === 'spo2') d.spo2 = r.value;
    }
    // Keep a minute at most.
    while (d.events.length > 0 && (d.events[0] as Event).at < now - 60_000) d.events.shift();
  };

  const connect = () => {
    if (closed) return;
    req = request(new URL('api/v1/live', o.url), { ca: o.ca, headers: { authorization: `Bearer ${o.token}`, accept: 'text/event-stream' } }, (res) => {
      if (res.statusCode !== 200) {
        error = `live feed: HTTP ${String(res.statusCode)}`;
        res.resume();
        return;
      }
      error = undefined;
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (chunk: string) => {
        buf += chunk;
        for (;;) {
          const end = buf.indexOf('\n\n');
          if (end < 0) break;
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (!/^event: reading$/m.test(block)) continue;
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (data === undefined) continue;
          try {
            onMessage(JSON.parse(data) as LiveMessage);
          } catch {
            // a line we do not understand is skipped, not fatal
          }
        }
        if (buf.length > 1 << 20) buf = '';
      });
      res.on('end', () => setTimeout(connect, 1000));
    });
    req.on('error', (e: Error) => {
      error = `live feed: ${e.message}`;
      setTimeout(connect, 1000);
    });
    req.end();
  };
  connect();

  return {
    get error() {
      return error;
    },
    snapshot(windowMs) {
      const since = Date.now() - windowMs;
      return [...devices.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([deviceId, d]) => {
        const recent = d.events.filter((e) => e.at >= since);
        return {
          deviceId, transport: d.transport, total: d.total, lastAt: d.lastAt, heartRate: d.hr, spo2: d.spo2,
          messages: recent.length,
          readings: recent.reduce((n, e) => n + e.readings, 0),
          ecgSamples: recent.reduce((n, e) => n + e.ecg, 0),
        };
      });
    },
    close() {
      closed = true;
      req?.destroy();
    },
  };
}
