/**
 * The read API (JSON; readings as SenML JSON), the device operations, the live feed and the
 * Prometheus endpoint. Every route here is authenticated (auth.ts), and every read is written to the
 * audit log before any data is sent.
 *
 *   GET  /api/v1/devices                          registry with each device's posture
 *   GET  /api/v1/devices/{id}                     one device
 *   GET  /api/v1/devices/{id}/readings?from&to&limit   SenML JSON (application/senml+json)
 *   GET  /api/v1/devices/{id}/gaps                missing sequence numbers
 *   GET  /api/v1/posture                          the service's and every device's security posture
 *   GET  /api/v1/live                             server-sent events: readings as they are stored
 *   POST /api/v1/devices/{id}/suspend|resume|revoke   (admin)
 *   GET  /metrics                                 Prometheus text format
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiMisuse } from '../../util/errors.ts';
import { deviceLabel } from '../audit-trail.ts';
import type { IngestCore } from '../core.ts';
import { dataKeyId } from '../data-keys.ts';
import { batchToLive, readingsAsSenml } from '../readings.ts';
import { STATIC_KEY_ID } from '../static-key.ts';
import type { DeviceRecord, DeviceStatus } from '../storage/types.ts';
import type { Principal } from './auth.ts';
import { HttpError, send, sendJson } from './respond.ts';

export interface ApiContext {
  readonly core: IngestCore;
  /** What the HTTPS listener negotiates, for the posture view. */
  readonly tls: { readonly protocol: string; readonly hstsMaxAge: number; readonly mtlsOperators: number };
  readonly maxLiveStreams: number;
  readonly startedAt: number;
  /** Live viewers connected now. */
  readonly liveState: { streams: number };
}

const MAX_READINGS_MESSAGES = 2000;

/** Parses a time parameter: milliseconds since the epoch or an ISO 8601 date-time. */
function timeParam(v: string | null, name: string, fallback: number): number {
  if (v === null) return fallback;
  if (/^\d{1,15}$/.test(v)) return Number(v);
  if (v.length <= 40 && /^\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:\d{2})$/.test(v)) {
    const t = Date.parse(v);
    if (Number.isFinite(t)) return t;
  }
  throw new HttpError(400, 'bad-parameter', `${name}: milliseconds since the epoch or an ISO 8601 date-time`);
}

function intParam(v: string | null, name: string, fallback: number, max: number): number {
  if (v === null) return fallback;
  if (!/^\d{1,9}$/.test(v) || Number(v) < 1 || Number(v) > max) throw new HttpError(400, 'bad-parameter', `${name}: an integer from 1 to ${max}`);
  return Number(v);
}

function onlyParams(url: URL, allowed: readonly string[]): void {
  for (const k of url.searchParams.keys()) if (!allowed.includes(k)) throw new HttpError(400, 'bad-parameter', `unknown parameter ${k.slice(0, 40)}`);
  for (const k of allowed) if (url.searchParams.getAll(k).length > 1) throw new HttpError(400, 'bad-parameter', `${k} given twice`);
}

export async function auditRead(ctx: ApiContext, who: Principal, what: string): Promise<void> {
  try {
    await ctx.core.audit.append({ actor: who.actor, operation: 'read', result: 'ok', detail: what });
  } catch (e) {
    // No audit line, no data.
    ctx.core.log.error({ err: String(e) }, 'read refused: audit log not writable');
    throw new HttpError(503, 'audit-unavailable', 'the audit log cannot be written; reads are refused until it can');
  }
}

function devicePosture(d: DeviceRecord, now: number): Record<string, unknown> {
  return {
    deviceId: d.deviceId,
    status: d.status,
    statusChangedAt: d.statusChangedAt ?? null,
    credential: d.credential,
    enrolledAt: d.enrolledAt,
    transport: d.transport ?? null,
    suite: d.suite ?? null,
    lastSeenAt: d.lastSeenAt ?? null,
    sealingEpoch: d.sealingEpoch ?? null,
    epochAgeMs: d.epochStartedAt === undefined ? null : Math.max(0, now - d.epochStartedAt),
    certSerial: d.certSerial ?? null,
    certNotAfter: d.certNotAfter ?? null,
    certExpiresInDays: d.certNotAfter === undefined ? null : Math.floor((d.certNotAfter - now) / 86_400_000),
    rejections: d.rejections,
    lastRejectionAt: d.lastRejectionAt ?? null,
    lastRejectionReason: d.lastRejectionReason ?? null,
  };
}

async function deviceOr404(ctx: ApiContext, id: string): Promise<DeviceRecord> {
  const d = await ctx.core.storage.getDevice(id);
  if (d === undefined) throw new HttpError(404, 'no-such-device', `no device ${id}`);
  return d;
}

export async function listDevices(ctx: ApiContext, who: Principal, res: ServerResponse): Promise<void> {
  await auditRead(ctx, who, 'devices list');
  const now = ctx.core.clock.now();
  sendJson(res, 200, { now, devices: (await ctx.core.storage.listDevices()).map((d) => devicePosture(d, now)) });
}

export async function getDevice(ctx: ApiContext, who: Principal, res: ServerResponse, id: string): Promise<void> {
  await auditRead(ctx, who, `device ${deviceLabel(id)}`);
  const d = await deviceOr404(ctx, id);
  const now = ctx.core.clock.now();
  const keys = await ctx.core.storage.keyRecords().list(dataKeyId(id));
  sendJson(res, 200, { now, device: { ...devicePosture(d, now), dataKeyVersions: keys.map((k) => ({ version: k.version, createdAt: k.createdAt })), messages: await ctx.core.storage.countMessages(id) } });
}

export async function readings(ctx: ApiContext, who: Principal, res: ServerResponse, id: string, url: URL): Promise<void> {
  onlyParams(url, ['from', 'to', 'limit']);
  const now = ctx.core.clock.now();
  const to = timeParam(url.searchParams.get('to'), 'to', now);
  const from = timeParam(url.searchParams.get('from'), 'from', to - 3_600_000);
  if (from > to) throw new HttpError(400, 'bad-parameter', 'from is after to');
  const limit = intParam(url.searchParams.get('limit'), 'limit', 500, MAX_READINGS_MESSAGES);
  await deviceOr404(ctx, id);
  await auditRead(ctx, who, `readings ${deviceLabel(id)} ${new Date(from).toISOString()}..${new Date(to).toISOString()}`);
  const page = await readingsAsSenml(ctx.core, id, from, to, limit);
  send(res, 200, 'application/senml+json', JSON.stringify(page.records), {
    'x-vitalseal-messages': String(page.messages), 'x-vitalseal-truncated': String(page.truncated),
  });
}

export async function gaps(ctx: ApiContext, who: Principal, res: ServerResponse, id: string): Promise<void> {
  await deviceOr404(ctx, id);
  await auditRead(ctx, who, `gaps ${deviceLabel(id)}`);
  const g = await ctx.core.storage.gaps(id);
  sendJson(res, 200, { deviceId: id, highestSeq: await ctx.core.storage.highestSeq(id), missing: g.reduce((n, x) => n + x.to - x.from + 1, 0), gaps: g });
}

export async function posture(ctx: ApiContext, who: Principal, res: ServerResponse): Promise<void> {
  await auditRead(ctx, who, 'posture');
  const { core } = ctx;
  const now = core.clock.now();
  const store = core.keyStore.describe();
  const staticRecords = await core.storage.keyRecords().list(STATIC_KEY_ID);
  const current = core.staticKeys?.current;
  const currentRecord = staticRecords.find((r) => r.version === current?.version);
  const devices = await core.storage.listDevices();
  const byStatus: Record<DeviceStatus, number> = { active: 0, suspended: 0, revoked: 0 };
  for (const d of devices) byStatus[d.status]++;
  sendJson(res, 200, {
    now,
    service: {
      startedAt: ctx.startedAt,
      storage: core.storage.kind,
      keyStore: { kind: store.kind, hardwareBound: store.hardwareBound, assurance: store.assurance },
      kek: core.kekName,
      staticKey: current === undefined ? null : {
        version: current.version, kid: Buffer.from(current.kid).toString('hex'), versionsHeld: core.staticKeys?.versions.length ?? 0,
        createdAt: currentRecord?.createdAt ?? null, ageDays: currentRecord === undefined ? null : Math.floor((now - currentRecord.createdAt) / 86_400_000),
      },
      selfTest: { checks: core.selfTest.results.length, durationMs: Math.round(core.selfTest.durationMs) },
      https: { protocol: ctx.tls.protocol, hstsMaxAge: ctx.tls.hstsMaxAge, mtlsOperators: ctx.tls.mtlsOperators },
      devices: byStatus,
      alerts: core.metrics.alerts.total(),
      rejected: core.metrics.rejected.total(),
    },
    devices: devices.map((d) => devicePosture(d, now)),
  });
}

export async function setStatus(ctx: ApiContext, who: Principal, res: ServerResponse, id: string, action: 'suspend' | 'resume' | 'revoke'): Promise<void> {
  const status: DeviceStatus = action === 'suspend' ? 'suspended' : action === 'resume' ? 'active' : 'revoked';
  try {
    const r = await ctx.core.registry.setStatus(id, status, who.actor);
    sendJson(res, 200, { device: devicePosture(r.device, ctx.core.clock.now()), ...(r.crlNumber === undefined ? {} : { crlNumber: r.crlNumber }) });
  } catch (e) {
    if (e instanceof ApiMisuse && e.code === 'not-found') throw new HttpError(404, 'no-such-device', e.message);
    if (e instanceof ApiMisuse && e.code === 'device-revoked') throw new HttpError(409, 'device-revoked', e.message);
    throw e;
  }
}

export async function metrics(ctx: ApiContext, who: Principal, res: ServerResponse): Promise<void> {
  await auditRead(ctx, who, 'metrics');
  const { core } = ctx;
  const counts: Record<DeviceStatus, number> = { active: 0, suspended: 0, revoked: 0 };
  for (const d of core.registry.list()) counts[d.status]++;
  for (const [status, n] of Object.entries(counts)) core.metrics.devices.set(n, { status });
  core.metrics.epochCache.set(core.service?.epochCacheEntries ?? 0);
  send(res, 200, 'text/plain; version=0.0.4; charset=utf-8', core.metrics.registry.render());
}

/**
 * Server-sent events (text/event-stream): one `reading` event per stored message, in clinical units.
 * A viewer that cannot keep up (1 MiB unsent) is disconnected rather than buffered without bound.
 */
export async function live(ctx: ApiContext, who: Principal, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  onlyParams(url, ['device']);
  const only = url.searchParams.get('device');
  const service = ctx.core.service;
  if (service === undefined) throw new HttpError(503, 'not-ready', 'the service has no static key yet');
  if (ctx.liveState.streams >= ctx.maxLiveStreams) throw new HttpError(503, 'too-many-streams', 'too many live viewers; try again later');
  await auditRead(ctx, who, `live stream${only === null ? '' : ` ${deviceLabel(only)}`}`);
  ctx.liveState.streams++;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive' });
  res.write(`: vitalseal live feed\nevent: hello\ndata: ${JSON.stringify({ now: ctx.core.clock.now() })}\n\n`);
  const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
  heartbeat.unref();
  let closed = false;
  const stop = () => {
    if (closed) return;
    closed = true;
    ctx.liveState.streams--;
    clearInterval(heartbeat);
    unsubscribe();
  };
  const unsubscribe = service.onAccepted((e) => {
    if (closed || (only !== null && e.deviceId !== only)) return;
    if (res.writableLength > 1024 * 1024) {
      stop();
      res.destroy();
      return;
    }
    res.write(`event: reading\ndata: ${JSON.stringify({ deviceId: e.deviceId, seq: e.seq, receivedAt: e.receivedAt, transport: e.transport, ...batchToLive(e.batch) })}\n\n`);
  });
  req.on('close', stop);
  res.on('close', stop);
}
