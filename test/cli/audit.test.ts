import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { openAuditLog } from '../../src/audit/index.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { ManualClock } from '../../src/util/clock.ts';

const bin = fileURLToPath(new URL('../../scripts/bin/vitalseal.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vitalseal-cli-audit-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function vitalseal(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: dir, maxBuffer: 1 << 24 });
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

describe('vitalseal audit verify (through the real bin)', () => {
  const log = join(dir, 'audit.log');
  const pub = join(dir, 'identity.pub');
  before(async () => {
    const id = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(pub, id.publicKey.export({ format: 'pem', type: 'spki' }));
    const clock = new ManualClock(Date.UTC(2025, 5, 1));
    const l = await openAuditLog({ path: log, signer: keyObjectSigner(id.privateKey), clock, checkpointEvery: { entries: 4 } });
    for (let i = 0; i < 9; i++) {
      clock.advance(500);
      await l.append({ actor: 'agent', operation: 'sign', keyId: 'device-identity', result: 'ok' });
    }
    await l.close();
  });

  it('reports an intact log with its head, exit 0', () => {
    const r = vitalseal(['audit', 'verify', log, '--pubkey', pub, '--require-final-checkpoint']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /intact; 13 lines, 9 events, 3 of 3 checkpoint signatures verified; 0 events after the last checkpoint/);
    assert.match(r.stdout, /^head 12:[0-9a-f]{64}$/m);
  });

  it('says where a line was deleted, exit 1; warns when signatures are not checked', () => {
    const lines = readFileSync(log, 'utf8').split('\n');
    lines.splice(3, 1);
    writeFileSync(join(dir, 'cut.log'), lines.join('\n'));
    const r = vitalseal(['audit', 'verify', join(dir, 'cut.log')]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /^line 4: deleted: seq 3 missing between line 3 and line 4/m);
    assert.match(r.stderr, /signatures were not checked/);
  });

  it('with --anchor, catches whole lines cut from the end', () => {
    const head = /^head (\S+)$/m.exec(vitalseal(['audit', 'verify', log]).stdout)?.[1] as string;
    const lines = readFileSync(log, 'utf8').split('\n');
    writeFileSync(join(dir, 'short.log'), `${lines.slice(0, -3).join('\n')}\n`);
    const r = vitalseal(['audit', 'verify', join(dir, 'short.log'), '--pubkey', pub, '--anchor', head]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /truncated: the log ends at seq 10, but the anchor names seq 12/);
    assert.equal(vitalseal(['audit', 'verify', log, '--anchor', 'twelve']).code, 2);
    assert.equal(vitalseal(['audit', 'verify', join(dir, 'absent.log')]).code, 2);
  });
});
