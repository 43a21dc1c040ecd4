/**
 * The audit log: append, periodic signed checkpoints, reopen and torn-tail repair, and a verifier
 * that finds each kind of tampering and says where. Also: no secret-looking value is ever written.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { appendFileSync, chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { auditKeyEvents, openAuditLog, verifyAuditLog, type AuditEventInput, type AuditProblemKind } from '../../src/audit/index.ts';
import { hashLine } from '../../src/audit/entry.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { openSoftwareKeyStore } from '../../src/keystore/software/index.ts';
import { ManualClock } from '../../src/util/clock.ts';
import { ApiMisuse, StorageError } from '../../src/util/errors.ts';

const root = mkdtempSync(join(tmpdir(), 'vitalseal-audit-'));
after(() => rmSync(root, { recursive: true, force: true }));

const identity = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const publicPem = identity.publicKey.export({ format: 'pem', type: 'spki' }).toString();
const signer = keyObjectSigner(identity.privateKey);
const ops = ['create', 'sign', 'seal', 'unseal', 'wrap', 'unwrap'] as const;

function event(i: number): AuditEventInput {
  return { actor: 'agent', operation: ops[i % ops.length] as AuditEventInput['operation'], keyId: `key-${i}`, result: i % 4 === 3 ? 'error' : 'ok', ...(i % 4 === 3 ? { code: 'unwrap-failed' } : {}) };
}

/** A closed log of `n` events, checkpoints every 5, on a manual clock. Returns its path and lines. */
async function makeLog(n = 12): Promise<{ path: string; lines: string[] }> {
  const path = join(mkdtempSync(join(root, 'l-')), 'audit.log');
  const clock = new ManualClock(Date.UTC(2025, 0, 1));
  const log = await openAuditLog({ path, signer, clock, checkpointEvery: { entries: 5 } });
  for (let i = 0; i < n; i++) {
    clock.advance(1000);
    await log.append(event(i));
  }
  await log.close();
  return { path, lines: readFileSync(path, 'utf8').split('\n').slice(0, -1) };
}

function join1(lines: string[]): string {
  return `${lines.join('\n')}\n`;
}

function firstProblem(text: string, opts: Parameters<typeof verifyAuditLog>[1] = { publicKey: publicPem }): { line: number; kind: AuditProblemKind } | undefined {
  const p = verifyAuditLog(text, opts).problems[0];
  return p === undefined ? undefined : { line: p.line, kind: p.kind };
}

/** Recomputes every prev after an edit, as an attacker who knows the format would. */
function rechain(lines: string[]): string[] {
  const out: string[] = [];
  for (const l of lines) {
    const o = JSON.parse(l) as Record<string, unknown>;
    if (out.length > 0) o['prev'] = hashLine(out[out.length - 1] as string);
    out.push(JSON.stringify(o));
  }
  return out;
}

describe('audit log: writing', () => {
  it('writes a header, events and a checkpoint every 5 entries and on close; verifies clean with the key', async () => {
    const { path, lines } = await makeLog(12);
    const types = lines.map((l) => (JSON.parse(l) as { type: string }).type);
    assert.deepEqual(types, ['header', 'event', 'event', 'event', 'event', 'event', 'checkpoint', 'event', 'event', 'event', 'event', 'event', 'checkpoint', 'event', 'event', 'checkpoint']);
    assert.deepEqual(lines.map((l) => (JSON.parse(l) as { seq: number }).seq), lines.map((_, i) => i));
    const r = verifyAuditLog(readFileSync(path), { publicKey: publicPem, requireFinalCheckpoint: true });
    assert.deepEqual(r.problems, []);
    assert.equal(r.ok, true);
    assert.deepEqual([r.events, r.checkpoints, r.verifiedCheckpoints, r.uncheckpointedTail, r.signaturesChecked], [12, 3, 3, 0, true]);
    assert.match(JSON.parse(lines[1] as string).time, /^2025-01-01T00:00:01\.000Z$/);
  });

  it('without a public key the chain is checked but signatures are not, and says so', async () => {
    const { path } = await makeLog(3);
    const r = verifyAuditLog(readFileSync(path));
    assert.equal(r.ok, true);
    assert.equal(r.signaturesChecked, false);
    assert.equal(r.verifiedCheckpoints, 0);
  });

  it('checkpoints by clock time too', async () => {
    const path = join(mkdtempSync(join(root, 't-')), 'audit.log');
    const clock = new ManualClock(Date.UTC(2025, 0, 1));
    const log = await openAuditLog({ path, signer, clock, checkpointEvery: { entries: 1000, ms: 60_000 } });
    await log.append(event(0));
    clock.advance(59_000);
    await log.append(event(1));
    clock.advance(2_000);
    await log.append(event(2));
    const types = readFileSync(path, 'utf8').split('\n').slice(0, -1).map((l) => (JSON.parse(l) as { type: string }).type);
    assert.deepEqual(types, ['header', 'event', 'event', 'event', 'checkpoint']);
    await log.close();
  });

  it('reopens and continues the chain with the same log id; repairs a torn tail and records that it did', async () => {
    const { path } = await makeLog(4);
    const logId = (JSON.parse(readFileSync(path, 'utf8').split('\n')[0] as string) as { log: string }).log;
    const again = await openAuditLog({ path, signer, clock: new ManualClock(Date.UTC(2025, 1, 1)), checkpointEvery: { entries: 5 } });
    assert.equal(again.logId, logId);
    await again.append(event(7));
    await again.close();
    assert.equal(verifyAuditLog(readFileSync(path), { publicKey: publicPem, requireFinalCheckpoint: true }).ok, true);

    appendFileSync(path, '{"seq":99,"type":"event","ti');
    assert.equal(firstProblem(readFileSync(path, 'utf8'))?.kind, 'truncated');
    const repaired = await openAuditLog({ path, signer, clock: new ManualClock(Date.UTC(2025, 2, 1)) });
    await repaired.close();
    const text = readFileSync(path, 'utf8');
    const r = verifyAuditLog(text, { publicKey: publicPem, requireFinalCheckpoint: true });
    assert.deepEqual(r.problems, []);
    assert.match(text, /"op":"recover","key":"-","result":"error","code":"torn-tail","detail":"cut 28 bytes of an incomplete last line when opening"/);
  });

  it('refuses secret-looking or wrongly typed values, and writes nothing then', async () => {
    const path = join(mkdtempSync(join(root, 's-')), 'audit.log');
    const log = await openAuditLog({ path });
    const before = readFileSync(path);
    const hex = 'ab'.repeat(32);
    const bad: [unknown, string][] = [
      [{ ...event(0), detail: `key=${hex}` }, 'audit-secret'],
      [{ ...event(0), detail: '-----BEGIN PRIVATE KEY-----' }, 'audit-secret'],
      [{ ...event(0), detail: Buffer.alloc(40, 7).toString('base64') }, 'audit-secret'],
      [{ ...event(0), keyId: new Uint8Array(4) }, 'audit-field'],
      [{ ...event(0), keyId: 'has space' }, 'audit-field'],
      [{ ...event(0), secret: 'x' }, 'audit-field'],
      [{ ...event(0), operation: 'exfiltrate' }, 'audit-field'],
      [{ ...event(0), detail: 'line\nbreak' }, 'audit-field'],
      [{ ...event(0), code: 'Not A Code' }, 'audit-field'],
      [{ ...event(0), detail: 'x'.repeat(201) }, 'audit-field'],
    ];
    for (const [input, code] of bad) {
      await assert.rejects(log.append(input as AuditEventInput), (e: unknown) => e instanceof ApiMisuse && e.code === code, JSON.stringify(input).slice(0, 60));
    }
    await log.append({ ...event(0), detail: 'tpm store, 3 retries' });
    await log.close();
    assert.ok(readFileSync(path).subarray(0, before.length).equals(before));
    assert.equal(readFileSync(path, 'utf8').split('\n').length, 3);
  });

  it('refuses to open a log file that others can read or write', async () => {
    const { path } = await makeLog(1);
    chmodSync(path, 0o644);
    await assert.rejects(openAuditLog({ path }), (e: unknown) => e instanceof StorageError && e.code === 'insecure-permissions');
  });

  it('records key events from a key store through the sink adapter, never their secrets', async () => {
    const dir = mkdtempSync(join(root, 'k-'));
    const log = await openAuditLog({ path: join(dir, 'audit.log'), signer });
    const sink = auditKeyEvents(log, { actor: 'agent' });
    const store = await openSoftwareKeyStore({ path: join(dir, 'keys.vsks'), passphrase: 'pw', scrypt: { logN: 10 }, events: sink });
    const secret = Buffer.from('0123456789abcdef0123456789abcdef');
    await store.seal('psk', secret);
    await store.unseal('psk');
    await assert.rejects(store.unseal('nope'));
    await store.close();
    await sink.flush();
    await log.close();
    const text = readFileSync(join(dir, 'audit.log'), 'utf8');
    assert.ok(!text.includes(secret.toString()) && !text.includes(secret.toString('hex')));
    const evs = text.split('\n').slice(0, -1).map((l) => JSON.parse(l) as Record<string, string>).filter((o) => o['type'] === 'event');
    assert.deepEqual(evs.map((e) => `${e['op']} ${e['key']} ${e['result']}${e['code'] ? ` ${e['code']}` : ''} (${e['detail']})`), [
      'open - ok (software store)', 'seal psk ok (software store)', 'unseal psk ok (software store)', 'unseal nope error not-found (software store)',
    ]);
    assert.equal(verifyAuditLog(text, { publicKey: publicPem, requireFinalCheckpoint: true }).ok, true);
  });
});

describe('audit verify: each kind of tampering, and where', () => {
  it('an edited entry', async () => {
    const { lines } = await makeLog();
    const edited = [...lines];
    edited[3] = (edited[3] as string).replace('"actor":"agent"', '"actor":"agenx"');
    assert.deepEqual(firstProblem(join1(edited)), { line: 4, kind: 'edited' });
    const broken = [...lines];
    broken[3] = (broken[3] as string).replace(/"result":"[a-z]+"/, '"result":"fine"');
    assert.deepEqual(firstProblem(join1(broken)), { line: 4, kind: 'malformed' });
    const header = [...lines];
    header[0] = (header[0] as string).replace('"v":1', '"v":1 ');
    assert.deepEqual(firstProblem(join1(header)), { line: 1, kind: 'edited' });
  });

  it('a deleted entry', async () => {
    const { lines } = await makeLog();
    const cut = lines.filter((_, i) => i !== 3);
    const r = verifyAuditLog(join1(cut), { publicKey: publicPem });
    assert.deepEqual(r.problems.map((p) => [p.line, p.kind]), [[4, 'deleted']]);
    assert.match(r.problems[0]?.message ?? '', /seq 3 missing between line 3 and line 4/);
  });

  it('an inserted entry: a forged line, and a replayed one', async () => {
    const { lines } = await makeLog();
    const forged = JSON.stringify({ ...(JSON.parse(lines[3] as string) as object), key: 'forged' });
    const inserted = [...lines.slice(0, 4), forged, ...lines.slice(4)];
    assert.deepEqual(firstProblem(join1(inserted))?.kind, 'inserted');
    const replayed = [...lines.slice(0, 4), lines[3] as string, ...lines.slice(4)];
    const r = verifyAuditLog(join1(replayed), { publicKey: publicPem });
    assert.deepEqual([r.problems[0]?.line, r.problems[0]?.kind], [5, 'inserted']);
    assert.match(r.problems[0]?.message ?? '', /repeats line 4/);
  });

  it('reordered entries', async () => {
    const { lines } = await makeLog();
    const swapped = [...lines];
    [swapped[2], swapped[3]] = [swapped[3] as string, swapped[2] as string];
    const r = verifyAuditLog(join1(swapped), { publicKey: publicPem });
    assert.deepEqual([r.problems[0]?.line, r.problems[0]?.kind], [3, 'reordered']);
    assert.ok(r.problems.every((p) => p.kind === 'reordered'));
  });

  it('a truncated tail: cut inside a line; whole lines cut after the last checkpoint (final-checkpoint rule, anchor)', async () => {
    const { path, lines } = await makeLog();
    const text = readFileSync(path, 'utf8');
    assert.deepEqual(firstProblem(text.slice(0, text.length - 10)), { line: lines.length, kind: 'truncated' });
    const head = verifyAuditLog(text).head;
    assert.ok(head);
    const shorter = join1(lines.slice(0, -1));
    assert.equal(verifyAuditLog(shorter, { publicKey: publicPem }).ok, true, 'a clean cut at a line boundary is invisible without more information');
    assert.equal(verifyAuditLog(shorter, { publicKey: publicPem }).uncheckpointedTail, 2);
    assert.deepEqual(firstProblem(shorter, { publicKey: publicPem, requireFinalCheckpoint: true })?.kind, 'unsealed-tail');
    assert.deepEqual(firstProblem(shorter, { publicKey: publicPem, anchor: head })?.kind, 'truncated');
    assert.equal(verifyAuditLog(text, { publicKey: publicPem, anchor: head }).ok, true);
  });

  it('a bad checkpoint signature, and a checkpoint from another key', async () => {
    const { lines } = await makeLog();
    const bad = [...lines];
    const cp = JSON.parse(bad[6] as string) as { sig: string };
    const sig = Buffer.from(cp.sig, 'base64');
    sig[sig.length - 1] = (sig[sig.length - 1] as number) ^ 1;
    bad[6] = JSON.stringify({ ...cp, sig: sig.toString('base64') });
    bad.splice(0, bad.length, ...rechain(bad));
    assert.deepEqual(firstProblem(join1(bad)), { line: 7, kind: 'bad-signature' });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
    const r = verifyAuditLog(join1(lines), { publicKey: other });
    assert.deepEqual(r.problems.map((p) => p.kind), ['wrong-signer', 'wrong-signer', 'wrong-signer']);
  });

  it('an edit with the whole chain recomputed is caught by the next checkpoint', async () => {
    const { lines } = await makeLog();
    const forged = [...lines];
    forged[2] = JSON.stringify({ ...(JSON.parse(forged[2] as string) as object), result: 'denied' });
    const rechained = rechain(forged);
    const r = verifyAuditLog(join1(rechained), { publicKey: publicPem });
    assert.deepEqual(r.problems.map((p) => [p.line, p.kind]), [[7, 'bad-signature'], [13, 'bad-signature'], [16, 'bad-signature']]);
    assert.equal(verifyAuditLog(join1(rechained)).ok, true, 'without the key a re-chained log looks intact: always verify with --pubkey');
  });

  it('a secret-looking value written into the file is reported', async () => {
    const { lines } = await makeLog(2);
    const withSecret = rechain([...lines.slice(0, 2), JSON.stringify({ ...(JSON.parse(lines[2] as string) as object), detail: 'cd'.repeat(20) }), ...lines.slice(3)]);
    assert.equal(verifyAuditLog(join1(withSecret)).problems[0]?.kind, 'secret-suspect');
  });

  it('every prefix of a log: never throws; a cut inside a line is truncated; with the anchor every cut is caught', async () => {
    const { path } = await makeLog(6);
    const bytes = readFileSync(path);
    const head = verifyAuditLog(bytes).head;
    for (let n = 0; n < bytes.length; n++) {
      const prefix = bytes.subarray(0, n);
      const r = verifyAuditLog(prefix, { publicKey: publicPem, ...(head ? { anchor: head } : {}) });
      assert.equal(r.ok, false, `prefix ${n}`);
      if (n > 0 && bytes[n - 1] !== 0x0a) assert.ok(r.problems.some((p) => p.kind === 'truncated'), `prefix ${n}`);
    }
  });

  it('any byte changed anywhere is detected when verified with the key and the last anchor (fast-check)', async () => {
    const { path } = await makeLog(8);
    const bytes = readFileSync(path);
    const head = verifyAuditLog(bytes).head;
    assert.ok(head);
    fc.assert(fc.property(fc.nat(bytes.length - 1), fc.integer({ min: 1, max: 255 }), (pos, xor) => {
      const bad = Buffer.from(bytes);
      bad[pos] = (bad[pos] as number) ^ xor;
      const r = verifyAuditLog(bad, { publicKey: publicPem, anchor: head, requireFinalCheckpoint: true });
      assert.equal(r.ok, false, `byte ${pos} ^ ${xor}`);
    }), { numRuns: 400 });
  });

  it('refuses a file with no header, an empty file, and garbage, without throwing', () => {
    assert.equal(firstProblem('')?.kind, 'missing-header');
    assert.equal(firstProblem('not json\n')?.kind, 'malformed');
    assert.equal(verifyAuditLog(new Uint8Array([0xff, 0xfe, 0x0a])).ok, false);
  });
});
