/**
 * The Raspberry Pi profile's system files, checked by systemd's own tools on this host:
 * `systemd-analyze verify` and `security --offline` for the agent's unit (in a temporary root that
 * holds the host's systemd units, node and the agent bundle where install.sh puts them), and
 * `systemd-sysusers --root` for the user. Plus the hardening directives, one by one, and the shell
 * scripts' syntax.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const pi = join(repo, 'hardware', 'raspberry-pi');
const unitText = readFileSync(join(pi, 'vitalseal-agent.service'), 'utf8');

/** The unit's directives per section; a key given twice keeps every value in order. */
function directives(text: string): Map<string, Map<string, string[]>> {
  const out = new Map<string, Map<string, string[]>>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s !== null) {
      section = s[1] as string;
      out.set(section, out.get(section) ?? new Map());
      continue;
    }
    const eq = line.indexOf('=');
    assert.ok(eq > 0, `not a directive: ${line}`);
    const m = out.get(section) as Map<string, string[]>;
    const key = line.slice(0, eq);
    m.set(key, [...(m.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

let root: string;
before(() => {
  // A root for systemd-analyze: the host's units (sysinit.target, ...) and the command install.sh links.
  root = mkdtempSync(join(tmpdir(), 'vitalseal-unit-root-'));
  mkdirSync(join(root, 'usr', 'lib', 'systemd'), { recursive: true });
  cpSync('/usr/lib/systemd/system', join(root, 'usr', 'lib', 'systemd', 'system'), { recursive: true, verbatimSymlinks: true });
  mkdirSync(join(root, 'usr', 'local', 'bin'), { recursive: true });
  copyFileSync(join(repo, 'scripts', 'bin', 'vitalseal.mjs'), join(root, 'usr', 'local', 'bin', 'vitalseal'));
  chmodSync(join(root, 'usr', 'local', 'bin', 'vitalseal'), 0o755);
  // verify only needs an executable at ExecStart's path; the real node runs the bundle in test/cli/agent-bundle.test.ts.
  writeFileSync(join(root, 'usr', 'local', 'bin', 'node'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  mkdirSync(join(root, 'usr', 'local', 'lib', 'vitalseal'), { recursive: true });
  writeFileSync(join(root, 'usr', 'local', 'lib', 'vitalseal', 'vitalseal-agent.mjs'), '');
  mkdirSync(join(root, 'etc', 'systemd', 'system'), { recursive: true });
});
after(() => rmSync(root, { recursive: true, force: true }));

function analyze(args: string[]): { status: number | null; output: string } {
  const r = spawnSync('systemd-analyze', args, { encoding: 'utf8', env: { ...process.env, SYSTEMD_LOG_COLOR: '0', SYSTEMD_PAGER: '' } });
  assert.ok(r.error === undefined, `systemd-analyze: ${String(r.error)} (Debian package systemd)`);
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

function verify(name: string, text: string): { status: number | null; output: string } {
  writeFileSync(join(root, 'etc', 'systemd', 'system', name), text);
  return analyze(['verify', `--root=${root}`, name]);
}

describe('vitalseal-agent.service', () => {
  it('passes systemd-analyze verify with no warning at all', () => {
    const r = verify('vitalseal-agent.service', unitText);
    assert.equal(r.status, 0, r.output);
    assert.equal(r.output, '', 'systemd-analyze verify printed warnings');
  });

  it('the verify check does fail: a bad value, a missing command, an unknown directive', () => {
    // systemd-analyze verify exits 0 on many warnings; the test above relies on its output being empty.
    const bad = verify('bad-value.service', unitText.replace('ProtectSystem=strict', 'ProtectSystem=very'));
    assert.match(bad.output, /ProtectSystem|protect system/i);
    const missing = verify('bad-exec.service', unitText.replace('/usr/local/bin/node ', '/usr/local/bin/node-nowhere '));
    assert.notEqual(missing.status, 0);
    assert.match(missing.output, /not executable|No such file/);
    const unknown = verify('bad-key.service', unitText.replace('NoNewPrivileges=yes', 'NoNewPrivileges=yes\nProtectEverything=yes'));
    assert.match(unknown.output, /Unknown key name 'ProtectEverything'|ProtectEverything/);
  });

  it('has the hardening directives, with the values the profile documents', () => {
    const d = directives(unitText);
    const service = d.get('Service');
    const unit = d.get('Unit');
    assert.ok(service !== undefined && unit !== undefined);
    const one = (k: string) => {
      const v = service.get(k);
      assert.ok(v !== undefined, `[Service] ${k}= missing`);
      assert.equal(v.length, 1, `${k}= given ${v.length} times`);
      return v[0] as string;
    };
    assert.equal(one('ExecStart'), '/usr/local/bin/node --max-semi-space-size=1 --single-threaded /usr/local/lib/vitalseal/vitalseal-agent.mjs agent run --config /etc/vitalseal/agent.yaml');
    assert.equal(one('User'), 'vitalseal');
    assert.equal(one('Group'), 'vitalseal');
    assert.equal(one('SupplementaryGroups'), 'tss');
    assert.equal(one('ProtectSystem'), 'strict');
    assert.equal(one('ProtectHome'), 'yes');
    assert.equal(one('PrivateTmp'), 'yes');
    assert.equal(one('StateDirectory'), 'vitalseal');
    assert.equal(one('StateDirectoryMode'), '0700');
    assert.equal(one('NoNewPrivileges'), 'yes');
    assert.equal(one('CapabilityBoundingSet'), '', 'the capability bounding set must be empty');
    assert.equal(one('AmbientCapabilities'), '');
    assert.deepEqual(one('RestrictAddressFamilies').split(/\s+/).sort(), ['AF_INET', 'AF_INET6', 'AF_UNIX']);
    assert.equal(one('DevicePolicy'), 'closed');
    assert.equal(one('DeviceAllow'), '/dev/tpmrm0 rw');
    assert.equal(one('UMask'), '0077');
    assert.equal(one('LimitCORE'), '0');
    for (const k of ['RestrictSUIDSGID', 'LockPersonality', 'RestrictRealtime', 'RestrictNamespaces', 'ProtectKernelTunables',
      'ProtectKernelModules', 'ProtectKernelLogs', 'ProtectControlGroups', 'ProtectClock', 'ProtectHostname', 'PrivateMounts', 'RemoveIPC']) {
      assert.equal(one(k), 'yes', `${k}=yes`);
    }
    assert.equal(one('SystemCallArchitectures'), 'native');
    assert.deepEqual(service.get('SystemCallFilter')?.[0], '@system-service');
    assert.match(service.get('SystemCallFilter')?.[1] ?? '', /^~@privileged .*@mount/);
    assert.equal(one('SystemCallErrorNumber'), 'EPERM');
    // Not there on purpose: V8 needs W+X pages, and user namespacing would drop group tss.
    assert.equal(service.get('MemoryDenyWriteExecute'), undefined);
    assert.equal(service.get('PrivateUsers'), undefined);
    // PrivateDevices=yes would hide /dev/tpmrm0; DevicePolicy=closed does the job instead.
    assert.equal(service.get('PrivateDevices'), undefined);
    assert.deepEqual(unit.get('Requires'), ['dev-tpmrm0.device']);
    // tpm2-abrmd (the TCTI the profile configures) is up first, but an agent on the device TCTI
    // does not depend on it.
    assert.ok(unit.get('Wants')?.includes('tpm2-abrmd.service'), String(unit.get('Wants')));
    assert.ok(unit.get('After')?.includes('tpm2-abrmd.service'), String(unit.get('After')));
    assert.deepEqual(unit.get('ConditionPathExists'), ['/etc/vitalseal/agent.yaml']);
    assert.deepEqual(d.get('Install')?.get('WantedBy'), ['multi-user.target']);
  });

  it('systemd-analyze security rates its exposure 2.0 or lower', () => {
    writeFileSync(join(root, 'etc', 'systemd', 'system', 'vitalseal-agent.service'), unitText);
    const r = analyze(['security', '--offline=yes', `--root=${root}`, '--no-pager', 'vitalseal-agent.service']);
    const m = /Overall exposure level for vitalseal-agent\.service: (\d+\.\d)/.exec(r.output);
    assert.ok(m !== null, r.output);
    assert.ok(Number(m[1]) <= 2.0, `exposure ${m[1]}:\n${r.output}`);
  });
});

describe('vitalseal.sysusers', () => {
  function sysusers(preset: { group?: string } = {}): { passwd: string; group: string } {
    const dir = mkdtempSync(join(tmpdir(), 'vitalseal-sysusers-'));
    try {
      mkdirSync(join(dir, 'etc'), { recursive: true });
      writeFileSync(join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
      writeFileSync(join(dir, 'etc', 'group'), `root:x:0:\n${preset.group ?? ''}`);
      const r = spawnSync('systemd-sysusers', [`--root=${dir}`, join(pi, 'vitalseal.sysusers')], { encoding: 'utf8' });
      assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
      return { passwd: readFileSync(join(dir, 'etc', 'passwd'), 'utf8'), group: readFileSync(join(dir, 'etc', 'group'), 'utf8') };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('makes a system user vitalseal with no login, home /var/lib/vitalseal, in group tss', () => {
    const { passwd, group } = sysusers();
    const user = passwd.split('\n').find((l) => l.startsWith('vitalseal:'));
    assert.ok(user !== undefined, passwd);
    const [, , uid, , gecos, home, shell] = user.split(':');
    assert.ok(Number(uid) > 0 && Number(uid) < 1000, `a system uid, got ${uid}`);
    assert.equal(gecos, 'vitalseal device agent');
    assert.equal(home, '/var/lib/vitalseal');
    assert.equal(shell, '/usr/sbin/nologin');
    const tss = group.split('\n').find((l) => l.startsWith('tss:'));
    assert.ok(tss !== undefined, group);
    assert.deepEqual(tss.split(':')[3]?.split(','), ['vitalseal']);
  });

  it('joins the tss group Debian\'s tpm-udev made, without making a second one', () => {
    const { group } = sysusers({ group: 'tss:x:106:\n' });
    const tss = group.split('\n').filter((l) => l.startsWith('tss:'));
    assert.deepEqual(tss, ['tss:x:106:vitalseal']);
  });
});

describe('60-vitalseal-tpm.rules', () => {
  const rules = readFileSync(join(pi, '60-vitalseal-tpm.rules'), 'utf8').split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#'));

  it('gives /dev/tpmrm0 to group tss (0660) and a systemd device unit; /dev/tpm0 to user tss only', () => {
    const rm = rules.find((l) => l.includes('KERNEL=="tpmrm[0-9]*"'));
    const raw = rules.find((l) => l.includes('KERNEL=="tpm[0-9]*"'));
    assert.ok(rm !== undefined && raw !== undefined);
    assert.match(rm, /SUBSYSTEM=="tpmrm"/);
    assert.match(rm, /GROUP="tss"/);
    assert.match(rm, /MODE="0660"/);
    assert.match(rm, /TAG\+="systemd"/);
    assert.match(raw, /OWNER="tss"/);
    assert.match(raw, /MODE="0600"/);
    assert.doesNotMatch(raw, /GROUP="tss"/);
  });

  it('every rule is KEY=="match" / KEY="value" / KEY+="value" pairs, comma-separated', () => {
    for (const line of rules) {
      for (const part of line.split(/,\s*/)) assert.match(part.trim(), /^[A-Z]+(\{[a-z_]+\})?(==|!=|=|\+=|:=)"[^"]*"$/, `malformed: ${part} in ${line}`);
    }
  });
});

describe('shell scripts', () => {
  for (const f of ['hardware/raspberry-pi/install.sh', 'hardware/raspberry-pi/check-tpm.sh', 'hardware/qemu/guest/provision.sh', 'hardware/qemu/initramfs/init']) {
    it(`${f} parses (sh -n) and is executable`, () => {
      const r = spawnSync('sh', ['-n', join(repo, f)], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const mode = spawnSync('git', ['-C', repo, 'ls-files', '-s', f], { encoding: 'utf8' }).stdout.split(' ')[0];
      if (mode !== '' && mode !== undefined) assert.equal(mode, '100755', `${f} must be committed executable`);
    });
  }
});
