/**
 * Runs inside the rig's ARM virtual machine (vitalseal-rig-job.service, as root, from the checkout
 * disk at /opt/vitalseal): fetches the host's job, checks the TPM device, measures Node's start-up,
 * creates a TPM signing key and signs the host's challenge with `vitalseal keys` in the agent
 * unit's own sandbox, then (when the job has a device) enrols the device through the host's ingest
 * and runs the agent unit (guest-device.ts), and posts everything back (protocol.ts).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { basename } from 'node:path';
import {
  MAX_BODY_BYTES, parseRigParam, TOKEN_HEADER, type CommandOutcome, type RigJob, type RigResult,
} from './protocol.ts';
import { idName, runGuestDevice } from './guest-device.ts';
import { sandboxedOneShot } from './sandbox-unit.ts';

const AGENT_UNIT = '/etc/systemd/system/vitalseal-agent.service';
const RUN_DIR = '/run/vitalseal-rig';
const VITALSEAL = '/usr/local/bin/vitalseal';
const TPM_DEVICE = '/dev/tpmrm0';
const KEYSTORE_DIR = '/var/lib/vitalseal/tpm';

const param = parseRigParam(readFileSync('/proc/cmdline', 'utf8'));
if (param === undefined) {
  console.error('guest-job: no vitalseal.rig= on the kernel command line; nothing to do');
  process.exit(0);
}
const base = `http://${param.host}:${param.port}`;

const uptime = () => Number.parseFloat(readFileSync('/proc/uptime', 'utf8').split(' ')[0] as string);
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function call(path: string, body?: unknown): Promise<string> {
  // A kept-alive connection the host closed meanwhile fails once ("other side closed"): try again
  // on network errors, never on an HTTP answer.
  for (let attempt = 1; ; attempt++) {
    let res: Response;
    try {
      res = await fetch(`${base}${path}`, {
        method: body === undefined ? 'GET' : 'POST',
        headers: { [TOKEN_HEADER]: param!.token, 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(30_000),
      });
    } catch (e) {
      if (attempt >= 3) throw e;
      await delay(500);
      continue;
    }
    const text = await res.text();
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status} ${text.slice(0, 200)}`);
    return text;
  }
}

async function progress(step: string, ms: number): Promise<void> {
  console.log(`guest-job: ${step} (${Math.round(ms)} ms)`);
  await call('/progress', { step, ms: Math.round(ms) }).catch(() => undefined);
}

/** Runs a command; its exit code and the end of its output, never a throw. */
function outcome(cmd: string, args: string[], input?: Buffer): CommandOutcome & { ms: number } {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, ...(input === undefined ? {} : { input }) });
  const ms = performance.now() - t0;
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}${r.error === undefined ? '' : String(r.error)}`.slice(-16_000);
  return { exitCode: r.status ?? -1, output, ms };
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 120_000 }).trim();
  } catch (e) {
    return `(${cmd} failed: ${(e as Error).message.split('\n')[0]})`;
  }
}

/** Runs `execStart` as a one-shot unit derived from the agent's unit (its sandbox, its user). */
function inAgentSandbox(name: string, execStart: string, io: { stdin?: string; stdout: string }, extra: string[] = []): CommandOutcome & { ms: number } {
  const unit = `vitalseal-rig-${name}.service`;
  writeFileSync(`/run/systemd/system/${unit}`, sandboxedOneShot(readFileSync(AGENT_UNIT, 'utf8'), {
    description: `vitalseal rig: ${name} in vitalseal-agent.service's sandbox`,
    execStart,
    ...(io.stdin === undefined ? {} : { standardInput: `file:${io.stdin}` }),
    standardOutput: `truncate:${io.stdout}`,
    extra,
  }));
  execFileSync('systemctl', ['daemon-reload']);
  const r = outcome('systemctl', ['start', unit]);
  const journal = sh('journalctl', ['-u', unit, '-o', 'cat', '--no-pager', '-n', '40']);
  return { exitCode: r.exitCode, output: `${r.output}${journal}`.slice(-16_000), ms: r.ms };
}

async function main(): Promise<void> {
  const jobStartUptime = uptime();
  let job: RigJob | undefined;
  // The network may still be coming up: DHCP from QEMU's user-mode network.
  for (let i = 0; job === undefined; i++) {
    try {
      job = JSON.parse(await call('/job')) as RigJob;
    } catch (e) {
      if (i >= 60) throw e;
      await delay(1000);
    }
  }
  await progress('job fetched', (uptime() - jobStartUptime) * 1000);

  // The TPM device: present, the resource manager, group tss, the TIS driver.
  let t0 = performance.now();
  for (let i = 0; i < 60 && !existsSync(TPM_DEVICE); i++) await delay(500);
  let access = 'absent';
  let driver = '';
  let versionMajor = '';
  if (existsSync(TPM_DEVICE)) {
    const st = statSync(TPM_DEVICE);
    access = `${st.isCharacterDevice() ? 'c' : '?'}${(st.mode & 0o777).toString(8).padStart(4, '0')} ${idName('/etc/passwd', st.uid)}:${idName('/etc/group', st.gid)}`;
    try {
      driver = basename(readlinkSync('/sys/class/tpm/tpm0/device/driver'));
    } catch {
      driver = '(none)';
    }
    try {
      versionMajor = readFileSync('/sys/class/tpm/tpm0/tpm_version_major', 'utf8').trim();
    } catch {
      versionMajor = '';
    }
  }
  const check = outcome('sh', ['/opt/vitalseal/hardware/raspberry-pi/check-tpm.sh', '-T', `device:${TPM_DEVICE}`]);
  await progress(`TPM ${TPM_DEVICE}: ${access}, driver ${driver}`, performance.now() - t0);

  // Node's own start-up, then the CLI's (Node + tsx compiling the TypeScript; then from tsx's cache).
  const nodeStartMs: number[] = [];
  for (let i = 0; i < 3; i++) nodeStartMs.push(Math.round(outcome('/usr/local/bin/node', ['-e', '0']).ms));
  const cliStartMs: number[] = [];
  for (let i = 0; i < 2; i++) cliStartMs.push(Math.round(outcome(VITALSEAL, ['--help']).ms));
  await progress(`node -e 0: ${nodeStartMs.join('/')} ms; vitalseal --help: ${cliStartMs.join('/')} ms`, 0);

  // A TPM key and a signature of the host's challenge, by user vitalseal in the agent's sandbox.
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o755 });
  const challenge = Buffer.from(job.challenge, 'base64');
  writeFileSync(`${RUN_DIR}/challenge.bin`, challenge);
  const store = `--store tpm --tcti device:${TPM_DEVICE} --dir ${KEYSTORE_DIR}`;
  t0 = performance.now();
  const create = inAgentSandbox('keys-create', `${VITALSEAL} keys create ${job.keyName} ${store}`, { stdout: `${RUN_DIR}/public.pem` });
  await progress(`keys create (exit ${create.exitCode})`, create.ms);
  const sign = inAgentSandbox('keys-sign', `${VITALSEAL} keys sign ${job.keyName} ${store}`, { stdin: `${RUN_DIR}/challenge.bin`, stdout: `${RUN_DIR}/signature.der` });
  const signatureUptime = uptime();
  await progress(`keys sign (exit ${sign.exitCode})`, sign.ms);
  // How much of that is tsx compiling TypeScript (PrivateTmp= starts every run with an empty cache)?
  const cached = ['CacheDirectory=vitalseal-rig-tsx', 'Environment=TMPDIR=/var/cache/vitalseal-rig-tsx'];
  const keysSignCachedMs: number[] = [];
  for (let i = 0; i < 2; i++) {
    const again = inAgentSandbox('keys-sign-cached', `${VITALSEAL} keys sign ${job.keyName} ${store}`, { stdin: `${RUN_DIR}/challenge.bin`, stdout: `${RUN_DIR}/signature-${i}.der` }, cached);
    keysSignCachedMs.push(Math.round(again.ms));
  }
  await progress(`keys sign with a kept tsx cache: ${keysSignCachedMs.join(' / ')} ms`, 0);
  const read = (f: string) => (existsSync(f) ? readFileSync(f) : Buffer.alloc(0));

  const exposure = sh('systemd-analyze', ['security', '--no-pager', 'vitalseal-agent.service']).split('\n').find((l) => l.includes('Overall exposure')) ?? '';

  // The device: enrolled through the host's ingest, then the agent as systemd runs it.
  const device = job.device === undefined ? undefined : await runGuestDevice(job.device, {
    call: (path) => call(path), progress, inAgentSandbox, sh, runDir: RUN_DIR, challengeFile: `${RUN_DIR}/challenge.bin`, vitalseal: VITALSEAL,
  });

  // Boot timing, once systemd says the boot is over.
  spawnSync('systemctl', ['is-system-running', '--wait'], { timeout: 120_000 });
  const bootTime = sh('systemd-analyze', ['time', '--no-pager']);

  const result: RigResult = {
    system: {
      arch: process.arch,
      kernel: release(),
      node: process.version,
      checkout: existsSync('/opt/vitalseal/.rig-checkout') ? readFileSync('/opt/vitalseal/.rig-checkout', 'utf8').trim() : '',
      bootTime: bootTime.slice(0, 1024),
    },
    tpm: { device: TPM_DEVICE, access, driver, versionMajor, check: { exitCode: check.exitCode, output: check.output } },
    keys: {
      create: { exitCode: create.exitCode, output: create.output },
      sign: { exitCode: sign.exitCode, output: sign.output },
      publicKeyPem: read(`${RUN_DIR}/public.pem`).toString('utf8').slice(0, 4096),
      signature: read(`${RUN_DIR}/signature.der`).toString('base64').slice(0, 512),
    },
    exposure: exposure.trim().slice(0, 256),
    ...(device === undefined ? {} : { device }),
    timings: {
      jobStartUptime,
      signatureUptime,
      nodeStartMs,
      cliStartMs,
      keysCreateMs: Math.round(create.ms),
      keysSignMs: Math.round(sign.ms),
      keysSignCachedMs,
    },
  };
  const body = JSON.stringify(result);
  if (body.length > MAX_BODY_BYTES) throw new Error(`result of ${body.length} bytes is too large`);
  await call('/result', result);
  console.log('guest-job: result posted');
  if (job.poweroff) execFileSync('systemctl', ['poweroff', '--no-block']);
}

main().catch(async (e: unknown) => {
  const message = e instanceof Error ? e.message : String(e);
  console.error(`guest-job: ${message}`);
  await call('/progress', { step: `guest-job failed: ${message.slice(0, 150)}`, ms: 0 }).catch(() => undefined);
  process.exitCode = 1;
});
