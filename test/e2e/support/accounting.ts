/**
 * The end-to-end suite's bookkeeping: what each device's agent put into its queue and had
 * acknowledged (its status socket), what the ingest service stored and deduplicated (its HTTPS API
 * and metrics), and the figures line each scenario prints and records in
 * bench-results/e2e/latest.json.
 *
 * Counting, per device, at a moment when the agent's queue is drained (depth 0, so every number
 * below `nextSeq` is acknowledged, dropped by the capacity policy, or moved aside):
 *
 *   sent          N = nextSeq − 1: messages that entered the durable queue (each one sealed batch)
 *   acknowledged  A − dropped − movedAside, A = ackedThrough (= N when drained): acknowledged by
 *                 the receiver (the broker for MQTTS, the ingest for CoAPS)
 *   stored        sequence numbers 1..N the ingest holds (the API's gaps answer); each (device, seq)
 *                 is one row (the primary key), so "stored" is "stored exactly once"
 *   lost          numbers in 1..A the ingest does not hold, less those the capacity policy dropped
 *                 or the receiver refused: acknowledged but not stored; must be 0
 *   duplicates removed   messages the ingest received again and acknowledged without storing
 *                 (`vitalseal_ingest_messages_duplicate_total`, summed over every ingest process
 *                 the scenario ran; sampled just before a kill, so a kill's last instant may be
 *                 missing from the sum)
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import type { Stack } from '../../../scripts/lib/stack.ts';

const root = fileURLToPath(new URL('../../..', import.meta.url));
export const LATEST = join(root, 'bench-results', 'e2e', 'latest.json');

export const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every `everyMs` until it returns a value other than undefined, or throws after `ms`. */
export async function waitFor<T>(what: string, ms: number, check: () => Promise<T | undefined> | T | undefined, everyMs = 500): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${last === undefined ? '' : ` (last error: ${(last as Error).message})`}`);
    await delay(everyMs);
  }
}

export interface Gaps {
  readonly deviceId: string;
  readonly highestSeq: number;
  readonly missing: number;
  readonly gaps: readonly { readonly from: number; readonly to: number }[];
}

/** Sequence numbers in 1..n the ingest does not hold. */
export function missingUpTo(g: Gaps, n: number): number {
  let missing = Math.max(0, n - g.highestSeq);
  for (const x of g.gaps) missing += Math.max(0, Math.min(x.to, n) - x.from + 1);
  return missing;
}

export interface DeviceFigures {
  readonly device: string;
  readonly transport: string;
  readonly sent: number;
  readonly acknowledged: number;
  readonly stored: number;
  readonly dropped: number;
  readonly movedAside: number;
  readonly lost: number;
  /** The ingest's gap list at the time (ranges of sequence numbers it does not hold). */
  readonly gaps: readonly { readonly from: number; readonly to: number }[];
}

/** One device's figures now (the agent must be running and answering its status socket). */
export async function deviceFigures(stack: Stack, id: string): Promise<DeviceFigures & { depth: number; ackedThrough: number }> {
  const st = await stack.device(id).status();
  const g = await stack.api<Gaps>(`/api/v1/devices/${id}/gaps`);
  const n = st.queue.nextSeq - 1;
  const { ackedThrough, dropped, movedAside } = st.queue;
  return {
    device: id, transport: stack.device(id).spec.transport,
    sent: n,
    acknowledged: ackedThrough - dropped - movedAside,
    stored: n - missingUpTo(g, n),
    dropped, movedAside,
    // Missing below the acknowledged position and not explained by the capacity policy or a refusal.
    lost: missingUpTo(g, ackedThrough) - dropped - movedAside,
    gaps: g.gaps, depth: st.queue.depth, ackedThrough,
  };
}

/** A device's figures and when its queue was (last) seen drained with the ingest holding everything. */
export interface Drained {
  readonly figures: DeviceFigures;
  /** `Date.now()` at the first poll (every 0.5 s) that found it drained and whole (or, losses counted, drained). */
  readonly drainedAt: number;
}

/**
 * Waits until the device's queue is drained and the ingest holds every acknowledged message, then
 * returns its figures. With `lossGraceMs`, a drained queue whose missing numbers have not been filled
 * within that time is accepted as it is (a scenario where losses are possible and counted). On
 * timeout it returns what it saw last (the caller's assertions then fail with the figures printed).
 */
export async function drained(stack: Stack, id: string, o: DrainOptions = {}): Promise<Drained> {
  const end = Date.now() + (o.ms ?? 90_000);
  let drainedSince: number | undefined;
  let last: (DeviceFigures & { depth: number; ackedThrough: number }) | undefined;
  for (;;) {
    const now = Date.now();
    try {
      last = await deviceFigures(stack, id);
      if (last.depth === 0 && last.sent > 0 && last.ackedThrough >= (o.ackedAtLeast ?? 0)) {
        drainedSince ??= now;
        if (last.lost === 0) return done(last, now);
        // Missing numbers not filled within the grace: losses, counted; drained since the streak began.
        if (o.lossGraceMs !== undefined && now - drainedSince >= o.lossGraceMs) return done(last, drainedSince);
      } else drainedSince = undefined;
    } catch {
      // the agent between runs, the ingest restarting
    }
    if (now > end) break;
    await delay(500);
  }
  if (last === undefined) throw new Error(`${id}: no figures (agent status or ingest API never answered)`);
  return done(last, Date.now());
}

function done(last: DeviceFigures & { depth: number; ackedThrough: number }, drainedAt: number): Drained {
  const { depth: _depth, ackedThrough: _acked, ...figures } = last;
  return { figures, drainedAt };
}

export interface DrainOptions {
  readonly ms?: number;
  readonly lossGraceMs?: number;
  /** Drained only once the agent's acknowledged position has reached this sequence number. */
  readonly ackedAtLeast?: number;
}

/**
 * Every device drained (watched at the same time), and the recovery time: from `since` (the end of
 * the scenario's last disturbance, described by `after`) until the last device had a message
 * sealed after this call acknowledged (delivery works again: an empty queue alone may only mean
 * the agent has not noticed yet) and was drained, with the ingest holding everything.
 */
export async function drainedAll(stack: Stack, ids: readonly string[], since: { at: number; after: string }, o: (id: string) => DrainOptions = () => ({})): Promise<{ figures: DeviceFigures[]; recovery: Recovery }> {
  const all = await Promise.all(ids.map(async (id) => {
    const next = await stack.device(id).status().then((st) => st.queue.nextSeq, () => undefined);
    return drained(stack, id, { ...(next === undefined ? {} : { ackedAtLeast: next }), ...o(id) });
  }));
  const last = Math.max(...all.map((d) => d.drainedAt));
  return { figures: all.map((d) => d.figures), recovery: { after: since.after, seconds: Math.max(0, last - since.at) / 1000 } };
}

/**
 * Asserts every device whole: nothing acknowledged is missing, every message that entered a queue
 * is stored (once: one row per sequence number), no gaps, nothing dropped by the capacity policy.
 */
export function assertWhole(figures: readonly DeviceFigures[]): void {
  for (const f of figures) {
    assert.equal(f.lost, 0, `${f.device}: acknowledged messages missing at the ingest: ${JSON.stringify(f.gaps)}`);
    assert.equal(f.stored, f.sent, `${f.device}: every message that entered the queue is stored (gaps ${JSON.stringify(f.gaps)})`);
    assert.equal(f.dropped, 0, `${f.device}: nothing dropped by the capacity policy`);
    assert.deepEqual(f.gaps, [], `${f.device}: no gaps`);
    assert.ok(f.sent > 0, `${f.device}: sent something`);
  }
}

/** The ingest's duplicate counter summed over every ingest process of the scenario. */
export class DuplicateTally {
  readonly #byPid = new Map<number, number>();
  constructor(private readonly stack: Stack) {}

  /** Reads the running ingest's counter (call just before killing it, and at the end). */
  async sample(): Promise<void> {
    const pid = this.stack.ingest.child.pid;
    if (pid === undefined || !this.stack.ingest.alive) return;
    const r = await this.stack.apiText('/metrics');
    const m = /^vitalseal_ingest_messages_duplicate_total (\d+)/m.exec(r.body);
    if (m !== null) this.#byPid.set(pid, Number(m[1]));
  }

  get total(): number {
    let n = 0;
    for (const v of this.#byPid.values()) n += v;
    return n;
  }
}

/** Stored rows of a device in the order the ingest inserted them (rowid), read-only. */
export function storedInOrder(dbPath: string, deviceId: string): { seq: number; receivedAt: number; firstTime: number; lastTime: number }[] {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT seq, received_at AS receivedAt, first_time AS firstTime, last_time AS lastTime FROM messages WHERE device_id = ? ORDER BY rowid')
      .all(deviceId) as { seq: number; receivedAt: number; firstTime: number; lastTime: number }[];
  } finally {
    db.close();
  }
}

/** How long the installation took to be whole again after a disturbance. */
export interface Recovery {
  /** The moment measured from (the end of the last disturbance). */
  readonly after: string;
  /** Until every device had a message sealed after it acknowledged, its queue drained and the ingest held every message (polled every 0.5 s). */
  readonly seconds: number;
}

export interface ScenarioFigures {
  /** Key in latest.json, e.g. `agent-kill`. */
  readonly scenario: string;
  readonly title: string;
  readonly devices: readonly DeviceFigures[];
  readonly duplicatesRemoved: number;
  /** Scenario specifics (kills, outage seconds, packets dropped, errors counted, ...). */
  readonly details: Readonly<Record<string, number | string | boolean>>;
  readonly recovery: Recovery;
  readonly seconds: number;
}

/** Totals over the scenario's devices. */
export function totals(f: ScenarioFigures): { sent: number; acknowledged: number; stored: number; dropped: number; lost: number } {
  const t = { sent: 0, acknowledged: 0, stored: 0, dropped: 0, lost: 0 };
  for (const d of f.devices) {
    t.sent += d.sent;
    t.acknowledged += d.acknowledged;
    t.stored += d.stored;
    t.dropped += d.dropped;
    t.lost += d.lost;
  }
  return t;
}

/** The figures line, printed by every scenario. */
export function figuresLine(f: ScenarioFigures): string {
  const t = totals(f);
  const details = Object.entries(f.details).map(([k, v]) => `${k} ${String(v)}`).join(', ');
  const per = f.devices.map((d) => `${d.device} (${d.transport}) ${d.sent}/${d.acknowledged}/${d.stored}${d.dropped > 0 ? ` dropped ${d.dropped}` : ''}${d.lost > 0 ? ` LOST ${d.lost}` : ''}`).join('; ');
  return `e2e ${f.scenario}: messages sent ${t.sent}, acknowledged ${t.acknowledged}, stored ${t.stored}, duplicates removed ${f.duplicatesRemoved}, ${t.dropped > 0 ? `dropped by capacity policy ${t.dropped}, ` : ''}lost ${t.lost}` +
    ` | recovered ${f.recovery.seconds.toFixed(1)} s after ${f.recovery.after}${details === '' ? '' : ` | ${details}`} | per device sent/acknowledged/stored: ${per} | ${f.seconds.toFixed(0)} s`;
}

/**
 * Prints the figures line and records the scenario in bench-results/e2e/latest.json (the latest
 * figures of every scenario) and, when run by `npm run test:e2e` (which sets VITALSEAL_E2E_RUN to
 * the run's timestamp), in bench-results/e2e/<timestamp>.json (this run's scenarios only).
 */
export function report(f: ScenarioFigures): void {
  console.log(figuresLine(f));
  mkdirSync(join(root, 'bench-results', 'e2e'), { recursive: true });
  const kernel = (() => {
    try {
      return execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  })();
  const entry = { ...f, totals: totals(f), at: new Date().toISOString() };
  const run = process.env['VITALSEAL_E2E_RUN'];
  for (const file of [LATEST, ...(run === undefined || !/^[0-9TZ-]+$/.test(run) ? [] : [join(root, 'bench-results', 'e2e', `${run}.json`)])]) {
    let doc: { scenarios?: Record<string, unknown> } = {};
    try {
      doc = JSON.parse(readFileSync(file, 'utf8')) as typeof doc;
    } catch {
      // first scenario of the run, or a torn file: start again
    }
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify({ ...doc, updatedAt: new Date().toISOString(), kernel, node: process.version, scenarios: { ...doc.scenarios, [f.scenario]: entry } }, null, 2)}\n`);
    renameSync(tmp, file);
  }
}
