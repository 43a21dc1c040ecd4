/**
 * The aarch64 rig's host-side parts that need no virtual machine: the QEMU command line, the
 * initramfs module order, the guest report's parser (truncation and mutation), the job server over
 * real HTTP, the sandboxed one-shot unit (checked by systemd-analyze), swtpm on a UNIX socket as a
 * VM's TPM, and the host's OpenSSL verification. The VM itself runs in `npm run test:rig`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { startSwtpmForVm } from '../../scripts/lib/swtpm.ts';
import { GUEST_PACKAGES } from '../../scripts/rig/config.ts';
import { RigError } from '../../scripts/rig/errors.ts';
import { moduleLoadOrder } from '../../scripts/rig/image.ts';
import { loadAgentConfig } from '../../src/agent/config.ts';
import { guestAgentConfig, PhaseTracker } from '../../scripts/rig/host-ingest.ts';
import { startJobServer } from '../../scripts/rig/job-server.ts';
import { parsePhaseAnswer, parseProgress, parseResult, parseRigParam, ProtocolError, TOKEN_HEADER, type RigJob, type RigResult } from '../../scripts/rig/protocol.ts';
import { qemuArgs, type VmSpec } from '../../scripts/rig/qemu.ts';
import { opensslVerify } from '../../scripts/rig/run.ts';
import { sandboxedOneShot } from '../../scripts/rig/sandbox-unit.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));

describe('qemuArgs', () => {
  const spec: VmSpec = {
    kernel: '/k/vmlinuz',
    initrd: '/k/initrd.img',
    append: ['vitalseal.rig=10.0.2.2:4000:abcdefghijklmnop', 'quiet'],
    disks: [{ file: '/c/rootfs.img', snapshot: true }, { file: '/c/app.img', readOnly: true }],
    tpmSocket: '/tmp/x/ctrl.sock',
    network: true,
    console: 'pipe',
  };
  const argPairs = (args: string[], flag: string) => args.flatMap((a, i) => (a === flag ? [args[i + 1] as string] : []));

  it('wires swtpm as a tpm-tis-device on the virt board, disks in order, user networking', () => {
    const args = qemuArgs(spec);
    assert.deepEqual(argPairs(args, '-machine'), ['virt']);
    assert.deepEqual(argPairs(args, '-cpu'), ['cortex-a72']);
    assert.deepEqual(argPairs(args, '-chardev'), ['socket,id=chrtpm,path=/tmp/x/ctrl.sock']);
    assert.deepEqual(argPairs(args, '-tpmdev'), ['emulator,id=tpm0,chardev=chrtpm']);
    const devices = argPairs(args, '-device');
    assert.ok(devices.includes('tpm-tis-device,tpmdev=tpm0'));
    assert.deepEqual(argPairs(args, '-drive'), [
      'if=none,id=disk0,file=/c/rootfs.img,format=raw,snapshot=on',
      'if=none,id=disk1,file=/c/app.img,format=raw,readonly=on',
    ]);
    assert.deepEqual(devices.filter((d) => d.startsWith('virtio-blk-pci')), ['virtio-blk-pci,drive=disk0', 'virtio-blk-pci,drive=disk1']);
    assert.deepEqual(argPairs(args, '-netdev'), ['user,id=net0']);
    assert.equal(argPairs(args, '-append')[0], 'console=ttyAMA0 panic=-1 vitalseal.rig=10.0.2.2:4000:abcdefghijklmnop quiet');
    assert.deepEqual(argPairs(args, '-serial'), ['stdio']);
  });

  it('leaves out the TPM and the network when not asked for; gives the console to the terminal in interactive mode', () => {
    const args = qemuArgs({ ...spec, network: false, console: 'interactive', tpmSocket: undefined as unknown as string });
    assert.ok(!args.includes('-tpmdev') && !args.includes('-netdev'));
    assert.deepEqual(argPairs(args, '-serial'), ['mon:stdio']);
  });

  it('refuses a kernel command line word with a space (it would split into two)', () => {
    assert.throws(() => qemuArgs({ ...spec, append: ['a b'] }), (e: unknown) => e instanceof RigError && e.code === 'usage');
    assert.throws(() => qemuArgs({ ...spec, append: [''] }), RigError);
  });
});

describe('moduleLoadOrder', () => {
  // From the cloud kernel's modules.dep (6.1.0-56-cloud-arm64).
  const dep = [
    'kernel/drivers/virtio/virtio.ko:',
    'kernel/drivers/virtio/virtio_ring.ko:',
    'kernel/drivers/virtio/virtio_pci_modern_dev.ko:',
    'kernel/drivers/virtio/virtio_pci_legacy_dev.ko:',
    'kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
    'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
    'kernel/drivers/char/tpm/tpm_tis.ko: kernel/drivers/char/tpm/tpm_tis_core.ko',
    '',
  ].join('\n');

  it('loads each module after its dependencies (modprobe order: the list from its end), each once', () => {
    assert.deepEqual(moduleLoadOrder(dep, ['virtio_pci', 'virtio_blk']), [
      'kernel/drivers/virtio/virtio_ring.ko',
      'kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
      'kernel/drivers/virtio/virtio_pci_legacy_dev.ko',
      'kernel/drivers/virtio/virtio_pci.ko',
      'kernel/drivers/block/virtio_blk.ko',
    ]);
    assert.deepEqual(moduleLoadOrder(dep, ['tpm-tis']), ['kernel/drivers/char/tpm/tpm_tis_core.ko', 'kernel/drivers/char/tpm/tpm_tis.ko']);
  });

  it('names a module that is not there', () => {
    assert.throws(() => moduleLoadOrder(dep, ['virtio_net']), /virtio_net is not in modules.dep/);
  });
});

function sampleResult(): RigResult {
  return {
    system: { arch: 'arm64', kernel: '6.1.0-56-cloud-arm64', node: 'v20.20.2', checkout: 'abc 123', bootTime: 'Startup finished in 5s' },
    tpm: { device: '/dev/tpmrm0', access: 'c0660 tss:tss', driver: 'tpm_tis', versionMajor: '2', check: { exitCode: 2, output: 'verdict: simulator' } },
    keys: {
      create: { exitCode: 0, output: '' },
      sign: { exitCode: 0, output: '' },
      publicKeyPem: '-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n',
      signature: 'MEUCIQ==',
    },
    exposure: '→ Overall exposure level for vitalseal-agent.service: 1.6 OK',
    device: {
      provision: { exitCode: 0, output: 'device rig-arm64 provisioned' },
      tokenFile: { mode: '0600', owner: 'vitalseal:vitalseal', removed: true },
      identityFiles: '0700 vitalseal:vitalseal /var/lib/vitalseal/identity',
      chainPem: '-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n',
      keysList: { exitCode: 0, output: 'signing  device-identity\nsigning  rig-identity\n' },
      identitySignature: { exitCode: 0, output: '', signature: 'MEUCIQ==' },
      phases: [{ transport: 'coaps', state: 'ActiveState=active', process: 'user=vitalseal', status: '{}', journal: 'agent running', seconds: 61.5 }],
    },
    timings: { jobStartUptime: 40.5, signatureUptime: 80.25, nodeStartMs: [900, 850, 860], cliStartMs: [9000, 4000], keysCreateMs: 12000, keysSignMs: 8000, keysSignCachedMs: [8000, 3000] },
  };
}

describe('parseResult', () => {
  it('accepts a well-formed report and keeps every field', () => {
    const r = sampleResult();
    assert.deepEqual(parseResult(JSON.stringify(r)), r);
    const { device: _device, ...noDevice } = r;
    assert.deepEqual(parseResult(JSON.stringify(noDevice)), noDevice);
  });

  it('rejects every truncation of a report', () => {
    const text = JSON.stringify(sampleResult());
    for (let n = 0; n < text.length; n++) assert.throws(() => parseResult(text.slice(0, n)), ProtocolError, `prefix ${n}`);
  });

  it('names the field that has the wrong type or size', () => {
    const bad = (mutate: (r: Record<string, any>) => void, field: RegExp) => {
      const r = JSON.parse(JSON.stringify(sampleResult())) as Record<string, any>;
      mutate(r);
      assert.throws(() => parseResult(JSON.stringify(r)), (e: unknown) => e instanceof ProtocolError && field.test(e.message));
    };
    bad((r) => { r['system'].arch = 64; }, /system\.arch/);
    bad((r) => { r['keys'].signature = 'x'.repeat(513); }, /keys\.signature/);
    bad((r) => { r['keys'].sign.exitCode = 1.5; }, /keys\.sign\.exitCode/);
    bad((r) => { r['timings'].nodeStartMs = [1, -2]; }, /timings\.nodeStartMs/);
    bad((r) => { r['timings'].cliStartMs = Array(17).fill(1); }, /timings\.cliStartMs/);
    bad((r) => { delete r['tpm']; }, /^tpm: expected an object/);
    bad((r) => { r['device'] = 'failed'; }, /^device/);
    bad((r) => { r['device'].tokenFile.removed = 'yes'; }, /device\.tokenFile\.removed/);
    bad((r) => { r['device'].phases = Array(5).fill(r['device'].phases[0]); }, /device\.phases/);
    bad((r) => { r['device'].phases[0].seconds = -1; }, /device\.phases\.0\.seconds/);
    bad((r) => { r['device'].identitySignature.signature = 7; }, /device\.identitySignature\.signature/);
    assert.throws(() => parseResult('[]'), /result: expected an object/);
    assert.throws(() => parseResult('x'.repeat(300_000)), /larger than/);
  });

  it('random byte flips either parse or fail with ProtocolError, never anything else', () => {
    const text = JSON.stringify(sampleResult());
    fc.assert(fc.property(fc.array(fc.tuple(fc.nat(text.length - 1), fc.integer({ min: 0, max: 127 })), { minLength: 1, maxLength: 8 }), (flips) => {
      const chars = [...text];
      for (const [i, c] of flips) chars[i] = String.fromCharCode(c);
      try {
        parseResult(chars.join(''));
      } catch (e) {
        assert.ok(e instanceof ProtocolError, String(e));
      }
    }), { numRuns: 300 });
  });

  it('parses progress and the kernel command line parameter strictly', () => {
    assert.deepEqual(parseProgress('{"step":"keys create","ms":12}'), { step: 'keys create', ms: 12 });
    assert.throws(() => parseProgress('{"step":"x","ms":-1}'), ProtocolError);
    assert.deepEqual(parseRigParam('console=ttyAMA0 vitalseal.rig=10.0.2.2:40123:abcdefghijklmnop_-12 quiet'), { host: '10.0.2.2', port: 40123, token: 'abcdefghijklmnop_-12' });
    assert.equal(parseRigParam('console=ttyAMA0 quiet'), undefined);
    assert.throws(() => parseRigParam('vitalseal.rig=10.0.2.2:99999:abcdefghijklmnop'), ProtocolError);
    assert.throws(() => parseRigParam('vitalseal.rig=host:1:abcdefghijklmnop'), ProtocolError);
    assert.throws(() => parseRigParam('vitalseal.rig=10.0.2.2:1:short'), ProtocolError);
  });
});

describe('job server', () => {
  const job: RigJob = { challenge: randomBytes(32).toString('base64'), keyName: 'rig-identity', poweroff: true };

  it('serves the job to the token holder only, and resolves with the checked result', async () => {
    const steps: string[] = [];
    const server = await startJobServer(job, { onProgress: (s) => steps.push(s) });
    try {
      const url = `http://127.0.0.1:${server.port}`;
      assert.equal((await fetch(`${url}/job`)).status, 403);
      assert.equal((await fetch(`${url}/job`, { headers: { [TOKEN_HEADER]: 'not-the-token' } })).status, 403);
      const got = await fetch(`${url}/job`, { headers: { [TOKEN_HEADER]: server.token } });
      assert.deepEqual(await got.json(), job);
      const post = (path: string, body: string) => fetch(`${url}${path}`, { method: 'POST', body, headers: { [TOKEN_HEADER]: server.token } });
      assert.equal((await post('/progress', '{"step":"booted","ms":1}')).status, 200);
      assert.deepEqual(steps, ['booted']);
      assert.equal((await post('/nowhere', '{}')).status, 404);
      assert.equal((await post('/result', JSON.stringify(sampleResult()))).status, 200);
      assert.deepEqual(await server.result, sampleResult());
    } finally {
      await server.close();
    }
  });

  it('rejects the wait on a malformed result, and on a guest that reports failure', async () => {
    const a = await startJobServer(job);
    try {
      const res = await fetch(`http://127.0.0.1:${a.port}/result`, { method: 'POST', body: '{"system":1}', headers: { [TOKEN_HEADER]: a.token } });
      assert.equal(res.status, 400);
      await assert.rejects(a.result, ProtocolError);
    } finally {
      await a.close();
    }
    const b = await startJobServer(job, { failOnGuestError: true });
    try {
      await fetch(`http://127.0.0.1:${b.port}/progress`, { method: 'POST', body: '{"step":"guest-job failed: no TPM","ms":0}', headers: { [TOKEN_HEADER]: b.token } });
      await assert.rejects(b.result, /guest-job failed: no TPM/);
    } finally {
      await b.close();
    }
  });
});

describe('job server: enrolment token and agent phases', () => {
  const job: RigJob = { challenge: randomBytes(32).toString('base64'), keyName: 'rig-identity', poweroff: true };

  it('hands the enrolment token out once, to the token holder only, and never in the job', async () => {
    let issued = 0;
    const secret = `vse_${randomBytes(32).toString('base64url')}`;
    const server = await startJobServer(job, { enrolToken: async () => { issued++; return secret; } });
    try {
      const url = `http://127.0.0.1:${server.port}`;
      assert.equal((await fetch(`${url}/enrol-token`)).status, 403);
      assert.equal(issued, 0, 'no token issued for a request without the run token');
      const first = await fetch(`${url}/enrol-token`, { headers: { [TOKEN_HEADER]: server.token } });
      assert.equal(first.status, 200);
      assert.equal(first.headers.get('cache-control'), 'no-store');
      assert.equal(await first.text(), secret);
      const second = await fetch(`${url}/enrol-token`, { headers: { [TOKEN_HEADER]: server.token } });
      assert.equal(second.status, 410);
      assert.ok(!(await second.text()).includes(secret));
      assert.equal(issued, 1);
      const jobText = await (await fetch(`${url}/job`, { headers: { [TOKEN_HEADER]: server.token } })).text();
      assert.ok(!jobText.includes(secret));
    } finally {
      await server.close();
    }
  });

  it('does not repeat the host\'s error when the token cannot be issued; without a device there is no token endpoint', async () => {
    const failing = await startJobServer(job, { enrolToken: () => Promise.reject(new Error('vitalseal ingest enrol-token failed: secret detail')) });
    try {
      const res = await fetch(`http://127.0.0.1:${failing.port}/enrol-token`, { headers: { [TOKEN_HEADER]: failing.token } });
      assert.equal(res.status, 500);
      assert.doesNotMatch(await res.text(), /secret detail/);
    } finally {
      await failing.close();
    }
    const plain = await startJobServer(job);
    try {
      assert.equal((await fetch(`http://127.0.0.1:${plain.port}/enrol-token`, { headers: { [TOKEN_HEADER]: plain.token } })).status, 404);
    } finally {
      await plain.close();
    }
  });

  it('answers phase polls from the host\'s tracker', async () => {
    const asked: number[] = [];
    const server = await startJobServer(job, { phaseDone: async (i) => { asked.push(i); return i === 0; } });
    try {
      const get = (path: string) => fetch(`http://127.0.0.1:${server.port}${path}`, { headers: { [TOKEN_HEADER]: server.token } });
      assert.deepEqual(parsePhaseAnswer(await (await get('/phase/0')).text()), { done: true });
      assert.deepEqual(parsePhaseAnswer(await (await get('/phase/1')).text()), { done: false });
      assert.equal((await get('/phase/x')).status, 404);
      assert.equal((await get('/phase/123')).status, 404);
      assert.deepEqual(asked, [0, 1]);
    } finally {
      await server.close();
    }
    assert.throws(() => parsePhaseAnswer('{"done":"yes"}'), ProtocolError);
    assert.throws(() => parsePhaseAnswer('{"done":tru'), ProtocolError);
  });
});

describe('PhaseTracker', () => {
  it('ends a phase once the ingest shows its transport and enough new messages; keeps the baseline of its first look', () => {
    const t = new PhaseTracker(['coaps', 'mqtts'], 3, 60_000);
    assert.equal(t.observe(0, { transport: null, suite: null, messages: 0 }, 0), false);
    assert.equal(t.observe(0, { transport: 'coaps', suite: 'DTLSv1.3 TLS_AES_128_GCM_SHA256', messages: 2 }, 1000), false);
    assert.equal(t.observe(0, { transport: 'coaps', suite: 'DTLSv1.3 TLS_AES_128_GCM_SHA256', messages: 3 }, 2000), true);
    assert.equal(t.observe(0, { transport: 'mqtts', suite: 'x', messages: 99 }, 3000), true, 'a finished phase stays finished');
    // The next phase counts from its own first look; messages over the old transport do not count.
    assert.equal(t.observe(1, { transport: 'coaps', suite: 'x', messages: 10 }, 5000), false);
    assert.equal(t.observe(1, { transport: 'coaps', suite: 'x', messages: 20 }, 6000), false);
    assert.equal(t.observe(1, { transport: 'mqtts', suite: 'TLSv1.3 via broker', messages: 12 }, 7000), false);
    assert.equal(t.observe(1, { transport: 'mqtts', suite: 'TLSv1.3 via broker', messages: 13 }, 9000), true);
    assert.deepEqual(t.phases, [
      { transport: 'coaps', messagesBefore: 0, messagesAfter: 3, seenTransport: 'coaps', seenSuite: 'DTLSv1.3 TLS_AES_128_GCM_SHA256', seconds: 2, arrived: true },
      { transport: 'mqtts', messagesBefore: 10, messagesAfter: 13, seenTransport: 'mqtts', seenSuite: 'TLSv1.3 via broker', seconds: 4, arrived: true },
    ]);
  });

  it('ends a phase unarrived when its time is up, and refuses a phase that does not exist', () => {
    const t = new PhaseTracker(['mqtts'], 3, 10_000);
    assert.equal(t.observe(0, { transport: null, suite: null, messages: 0 }, 0), false);
    assert.equal(t.observe(0, { transport: 'mqtts', suite: 's', messages: 2 }, 10_000), true);
    assert.equal(t.phase(0)?.arrived, false);
    assert.throws(() => t.observe(1, { transport: null, suite: null, messages: 0 }, 0), RangeError);
  });
});

describe('guestAgentConfig', () => {
  it('is a configuration the agent accepts: TPM identity, certificate files under the state directory, renewal at the host\'s ingest', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vitalseal-rig-config-'));
    try {
      for (const transport of ['coaps', 'mqtts'] as const) {
        const file = join(dir, `${transport}.yaml`);
        writeFileSync(file, guestAgentConfig({ deviceId: 'rig-arm64', transport, port: 40000, enrolUrl: 'https://10.0.2.2:8443' }));
        const c = loadAgentConfig(file);
        assert.equal(c.device.id, 'rig-arm64');
        assert.equal(c.transport.primary.kind, transport);
        assert.equal(c.transport.primary.host, '10.0.2.2');
        assert.equal(c.transport.primary.port, 40000);
        assert.match(JSON.stringify(c.transport.primary), /"kind":"tpm".*"tcti":"tabrmd:bus_type=system"/);
        assert.equal(c.certificate?.renew?.url, 'https://10.0.2.2:8443');
        assert.ok(c.certificate?.file.startsWith('/var/lib/vitalseal/'), 'renewal rewrites the files: they live in the StateDirectory');
        assert.equal(c.queue.dir, '/var/lib/vitalseal/queue');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('GUEST_PACKAGES', () => {
  it('holds every package the Raspberry Pi profile installs (the rig runs install.sh with --no-apt)', () => {
    const install = readFileSync(fileURLToPath(new URL('../../hardware/raspberry-pi/install.sh', import.meta.url)), 'utf8');
    const line = /^for pkg in ([a-z0-9. +-]+); do$/m.exec(install);
    assert.ok(line !== null, 'install.sh has no package loop');
    const wanted = (line[1] as string).split(/\s+/);
    assert.ok(wanted.includes('tpm2-abrmd') && wanted.includes('libtss2-tcti-tabrmd0'), wanted.join(' '));
    for (const pkg of wanted) assert.ok((GUEST_PACKAGES as readonly string[]).includes(pkg), `${pkg} is installed by install.sh but not in the rig's GUEST_PACKAGES`);
  });
});

describe('sandboxedOneShot', () => {
  const agentUnit = readFileSync(join(repo, 'hardware', 'raspberry-pi', 'vitalseal-agent.service'), 'utf8');
  const derived = sandboxedOneShot(agentUnit, {
    description: 'key check',
    execStart: '/usr/local/bin/vitalseal keys list --store tpm --tcti device:/dev/tpmrm0 --dir /var/lib/vitalseal/tpm',
    standardInput: 'file:/run/check/in.bin',
    standardOutput: 'truncate:/run/check/out.pem',
  });

  it('keeps every sandbox directive of the agent unit and replaces only what runs', () => {
    const serviceLines = (text: string) => {
      const s = text.slice(text.indexOf('[Service]'), text.indexOf('[Install]') < 0 ? undefined : text.indexOf('[Install]'));
      return s.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith('['));
    };
    const lifecycle = /^(Type|ExecStart|Restart|RestartSec|RestartPreventExitStatus|TimeoutStopSec|StandardInput|StandardOutput|StandardError)=/;
    const kept = serviceLines(agentUnit).filter((l) => !lifecycle.test(l));
    assert.ok(kept.length > 30, `only ${kept.length} sandbox directives?`);
    const out = serviceLines(derived);
    for (const l of kept) assert.ok(out.includes(l), `lost: ${l}`);
    assert.ok(out.includes('Type=oneshot'));
    assert.deepEqual(out.filter((l) => l.startsWith('ExecStart=')), ['ExecStart=/usr/local/bin/vitalseal keys list --store tpm --tcti device:/dev/tpmrm0 --dir /var/lib/vitalseal/tpm']);
    assert.ok(!out.some((l) => l.startsWith('Restart')));
    assert.ok(!derived.includes('[Install]') && !derived.includes('ConditionPathExists'));
    assert.match(derived, /^Requires=dev-tpmrm0\.device$/m);
    const withExtra = sandboxedOneShot(agentUnit, { description: 'x', execStart: '/bin/true', extra: ['CacheDirectory=vitalseal-x'] });
    assert.match(withExtra, /^CacheDirectory=vitalseal-x$/m);
    assert.ok(withExtra.indexOf('CacheDirectory=vitalseal-x') > withExtra.indexOf('ProtectSystem=strict'), 'extra lines come after the source\'s');
  });

  it('passes systemd-analyze verify', () => {
    const root = mkdtempSync(join(tmpdir(), 'vitalseal-oneshot-root-'));
    try {
      mkdirSync(join(root, 'usr', 'lib', 'systemd'), { recursive: true });
      cpSync('/usr/lib/systemd/system', join(root, 'usr', 'lib', 'systemd', 'system'), { recursive: true, verbatimSymlinks: true });
      mkdirSync(join(root, 'usr', 'local', 'bin'), { recursive: true });
      copyFileSync(join(repo, 'scripts', 'bin', 'vitalseal.mjs'), join(root, 'usr', 'local', 'bin', 'vitalseal'));
      chmodSync(join(root, 'usr', 'local', 'bin', 'vitalseal'), 0o755);
      mkdirSync(join(root, 'etc', 'systemd', 'system'), { recursive: true });
      writeFileSync(join(root, 'etc', 'systemd', 'system', 'vitalseal-check.service'), derived);
      const r = spawnSync('systemd-analyze', ['verify', `--root=${root}`, 'vitalseal-check.service'], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(`${r.stdout}${r.stderr}`.trim(), '');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('refuses a source unit without User= (the one-shot would run as root) and multi-line values', () => {
    assert.throws(() => sandboxedOneShot(agentUnit.replace(/^User=.*$/m, ''), { description: 'x', execStart: '/bin/true' }), /no User=/);
    assert.throws(() => sandboxedOneShot(agentUnit, { description: 'x\nExecStartPre=/bin/sh', execStart: '/bin/true' }), /one line/);
    assert.throws(() => sandboxedOneShot(agentUnit, { description: 'x', execStart: '/bin/true', extra: ['Environment=A=1\nUser=root'] }), /one line/);
    assert.throws(() => sandboxedOneShot(agentUnit, { description: 'x', execStart: '/bin/true', extra: ['no-equals'] }), /not a directive/);
  });
});

describe('startSwtpmForVm', () => {
  it('serves the control channel on a 0600 UNIX socket, as QEMU uses it, and cleans up', async () => {
    const tpm = await startSwtpmForVm();
    try {
      const st = statSync(tpm.ctrlSocket);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o777, 0o600);
      const ioctl = (flag: string) => spawnSync('swtpm_ioctl', ['--unix', tpm.ctrlSocket, flag], { encoding: 'utf8', timeout: 10_000 });
      // What QEMU sends first: CMD_INIT, then it asks for the capabilities.
      const init = ioctl('-i');
      assert.equal(init.status, 0, `${init.stdout}${init.stderr}`);
      const caps = ioctl('-c');
      assert.equal(caps.status, 0, caps.stderr);
      assert.match(caps.stdout, /ptm capability/);
      // CMD_SHUTDOWN ends swtpm; `exited` sees it.
      assert.equal(ioctl('-s').status, 0);
      const code = await Promise.race([tpm.exited, new Promise((r) => setTimeout(() => r('still running'), 10_000))]);
      assert.equal(code, 0);
    } finally {
      await tpm.stop();
    }
    assert.ok(!existsSync(tpm.ctrlSocket) && !existsSync(tpm.stateDir), 'temp dirs removed');
  });
});

describe('opensslVerify', () => {
  it('verifies a P-256 DER signature as the rig checks the guest\'s, and refuses a tampered one', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const msg = randomBytes(32);
    const sig = sign('sha256', msg, privateKey);
    const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
    assert.equal(opensslVerify(pem, msg, sig).ok, true);
    const flipped = Buffer.from(msg);
    flipped[0] = (flipped[0] as number) ^ 1;
    assert.equal(opensslVerify(pem, flipped, sig).ok, false);
    assert.equal(opensslVerify(pem, msg, sig.subarray(0, sig.length - 1)).ok, false);
  });
});
