/**
 * The device's part of the rig's guest job (guest-job.ts runs it, as root in the VM): what an
 * installer does on a board, then the agent as systemd runs it.
 *
 *   1. the fleet root and the ingest's public key into /etc/vitalseal (public; root-owned);
 *   2. the one-time enrolment token from the host into a 0600 file owned by vitalseal, `vitalseal
 *      provision --enrol https://10.0.2.2:PORT --store tpm` in the agent unit's sandbox (the key is
 *      made in the TPM, the CSR signed there, the certificate issued by the host's ingest), then
 *      the token file removed whatever happened; the token is never printed;
 *   3. `keys list` and `keys sign device-identity` of the host's challenge in the same sandbox: the
 *      TPM holds the enrolled key (the host verifies the signature with the issued certificate);
 *   4. per phase: /etc/vitalseal/agent.yaml, `systemctl restart vitalseal-agent.service`, then
 *      wait until the host says its ingest has the readings; then the unit's state, its main
 *      process's credentials and sandbox flags, the agent's own status and the run's journal.
 */
import { spawn } from 'node:child_process';
import { chownSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readStatus } from '../../src/agent/status-socket.ts';
import { GUEST_PATHS } from './host-ingest.ts';
import { parsePhaseAnswer, type CommandOutcome, type DeviceJob, type DeviceResult, type PhaseResult } from './protocol.ts';

const AGENT_CONFIG = '/etc/vitalseal/agent.yaml';
const AGENT_UNIT = 'vitalseal-agent.service';

export interface GuestDeviceDeps {
  /** The rig protocol: a request to the host, the answer's body. */
  readonly call: (path: string) => Promise<string>;
  readonly progress: (step: string, ms: number) => Promise<void>;
  /** A command in the agent unit's sandbox, as user vitalseal. */
  readonly inAgentSandbox: (name: string, execStart: string, io: { stdin?: string; stdout: string }) => CommandOutcome & { ms: number };
  /** A command's output, or a description of its failure (never throws). */
  readonly sh: (cmd: string, args: string[]) => string;
  /** A scratch directory (root, 0755) for the sandboxed commands' input and output. */
  readonly runDir: string;
  /** The host's challenge, already in a file. */
  readonly challengeFile: string;
  readonly vitalseal: string;
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** uid and gid of a user from /etc/passwd; names of ids from /etc/passwd and /etc/group. */
function passwdEntry(name: string): { uid: number; gid: number } {
  for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === name) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  throw new Error(`no user ${name} in the guest`);
}

export function idName(file: '/etc/passwd' | '/etc/group', id: number): string {
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[2] === String(id)) return f[0] as string;
  }
  return String(id);
}

function modeOwner(path: string): { mode: string; owner: string } {
  const st = statSync(path);
  return { mode: (st.mode & 0o7777).toString(8).padStart(4, '0'), owner: `${idName('/etc/passwd', st.uid)}:${idName('/etc/group', st.gid)}` };
}

/** Credentials and sandbox flags of a running process, from /proc/PID/status. */
function processFacts(pid: string): string {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return `(no process ${pid})`;
  }
  const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '?';
  const [uid] = field('Uid').split(/\s+/);
  const [gid] = field('Gid').split(/\s+/);
  const groups = field('Groups').split(/\s+/).filter((g) => g !== '').map((g) => idName('/etc/group', Number(g)));
  return [
    `user=${idName('/etc/passwd', Number(uid))}`, `group=${idName('/etc/group', Number(gid))}`, `groups=${groups.join(',')}`,
    `NoNewPrivs=${field('NoNewPrivs')}`, `Seccomp=${field('Seccomp')}`, `CapEff=${field('CapEff')}`, `CapBnd=${field('CapBnd')}`,
  ].join(' ');
}

export async function runGuestDevice(job: DeviceJob, d: GuestDeviceDeps): Promise<DeviceResult> {
  const vs = passwdEntry('vitalseal');
  const store = `--store tpm --tcti ${GUEST_PATHS.tcti} --dir ${GUEST_PATHS.keystoreDir}`;
  writeFileSync(GUEST_PATHS.rootCa, job.rootCaPem, { mode: 0o644 });
  writeFileSync(GUEST_PATHS.ingestPublicKey, job.ingestPublicKeyPem, { mode: 0o644 });

  // The enrolment token: a file only user vitalseal may read, removed whatever happens.
  const tokenFile = join(d.runDir, 'enrol.token');
  let tokenFacts: { mode: string; owner: string };
  let provision: CommandOutcome & { ms: number };
  try {
    writeFileSync(tokenFile, await d.call('/enrol-token'), { mode: 0o600, flag: 'wx' });
    chownSync(tokenFile, vs.uid, vs.gid);
    tokenFacts = modeOwner(tokenFile);
    provision = d.inAgentSandbox('provision', `${d.vitalseal} provision --device-id ${job.deviceId} --enrol ${job.enrolUrl} --token-file ${tokenFile} --ca-file ${GUEST_PATHS.rootCa} --out ${GUEST_PATHS.identityDir} --key-name ${GUEST_PATHS.keyLabel} ${store}`, { stdout: join(d.runDir, 'provision.txt') });
  } finally {
    rmSync(tokenFile, { force: true });
  }
  const provisionOut = existsSync(join(d.runDir, 'provision.txt')) ? readFileSync(join(d.runDir, 'provision.txt'), 'utf8') : '';
  await d.progress(`provision --enrol ${job.enrolUrl} --store tpm (exit ${provision.exitCode})`, provision.ms);

  const identityFiles = existsSync(GUEST_PATHS.identityDir)
    ? [GUEST_PATHS.identityDir, ...readdirSync(GUEST_PATHS.identityDir).sort().map((f) => join(GUEST_PATHS.identityDir, f))]
      .map((p) => {
        const m = modeOwner(p);
        return `${m.mode} ${m.owner} ${p}`;
      }).join('\n')
    : '(no identity directory)';
  const chainFile = join(GUEST_PATHS.identityDir, 'chain.pem');
  const chainPem = existsSync(chainFile) ? readFileSync(chainFile, 'utf8') : '';

  const keysList = d.inAgentSandbox('keys-list', `${d.vitalseal} keys list ${store}`, { stdout: join(d.runDir, 'keys-list.txt') });
  const listed = existsSync(join(d.runDir, 'keys-list.txt')) ? readFileSync(join(d.runDir, 'keys-list.txt'), 'utf8') : '';
  const sigFile = join(d.runDir, 'identity-signature.der');
  const sign = d.inAgentSandbox('identity-sign', `${d.vitalseal} keys sign ${GUEST_PATHS.keyLabel} ${store}`, { stdin: d.challengeFile, stdout: sigFile });
  await d.progress(`keys list / keys sign ${GUEST_PATHS.keyLabel} (exit ${keysList.exitCode}/${sign.exitCode})`, keysList.ms + sign.ms);

  const phases: PhaseResult[] = [];
  if (provision.exitCode === 0) {
    for (const [i, phase] of job.phases.entries()) phases.push(await runPhase(i, phase.transport, phase.agentConfig, vs.gid, d));
  }
  return {
    provision: { exitCode: provision.exitCode, output: `${provisionOut}${provision.output}`.slice(-16_000) },
    tokenFile: { ...tokenFacts, removed: !existsSync(tokenFile) },
    identityFiles: identityFiles.slice(0, 4096),
    chainPem: chainPem.slice(0, 16_384),
    keysList: { exitCode: keysList.exitCode, output: `${listed}${keysList.output}`.slice(-16_000) },
    identitySignature: { exitCode: sign.exitCode, output: sign.output, signature: existsSync(sigFile) ? readFileSync(sigFile).toString('base64').slice(0, 512) : '' },
    phases,
  };
}

async function runPhase(index: number, transport: string, agentConfig: string, vitalsealGid: number, d: GuestDeviceDeps): Promise<PhaseResult> {
  writeFileSync(AGENT_CONFIG, agentConfig, { mode: 0o640 });
  chownSync(AGENT_CONFIG, 0, vitalsealGid);
  const t0 = performance.now();
  d.sh('systemctl', ['restart', AGENT_UNIT]);
  const invocation = d.sh('systemctl', ['show', AGENT_UNIT, '-p', 'InvocationID', '--value']);
  const thisRun = /^[0-9a-f]{32}$/.test(invocation) ? `_SYSTEMD_INVOCATION_ID=${invocation}` : `--unit=${AGENT_UNIT}`;
  await d.progress(`agent phase ${index + 1}: vitalseal-agent.service started with ${transport}`, performance.now() - t0);
  // The agent's log lines onto the console while the phase runs (the host keeps the console log),
  // so a phase that never delivers can be read there. They hold no secrets (docs/agent.md, "Logs").
  const follow = spawn('journalctl', ['--follow', '--lines=all', '-o', 'cat', thisRun], { stdio: ['ignore', 'pipe', 'ignore'] });
  let partial = '';
  follow.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) console.log(`agent[${transport}]: ${l.slice(0, 400)}`);
  });
  try {
    await waitForHost(index, d);
  } finally {
    follow.kill();
  }
  const seconds = (performance.now() - t0) / 1000;
  const mainPid = d.sh('systemctl', ['show', AGENT_UNIT, '-p', 'MainPID', '--value']);
  let status: string;
  try {
    const doc = await readStatus(GUEST_PATHS.statusSocket) as Record<string, unknown>;
    status = JSON.stringify({ transport: doc['transport'], sealing: doc['sealing'], certificate: doc['certificate'], lastAck: doc['lastAck'], uplink: doc['uplink'] });
  } catch (e) {
    status = `(${(e as Error).message})`;
  }
  await d.progress(`agent phase ${index + 1} (${transport}) done after ${seconds.toFixed(0)} s`, 0);
  return {
    transport,
    state: d.sh('systemctl', ['show', AGENT_UNIT, '-p', 'ActiveState,SubState,Result,ExecMainStatus,NRestarts,User']).slice(0, 1024),
    process: processFacts(mainPid).slice(0, 1024),
    status: status.slice(0, 16_384),
    journal: d.sh('journalctl', [thisRun, '-o', 'cat', '--no-pager', '-n', '80']).slice(-16_000),
    seconds,
  };
}

/** Polls the host until it declares phase `index` done: its ingest has the readings, or time is up. */
async function waitForHost(index: number, d: GuestDeviceDeps): Promise<void> {
  for (let polls = 0; ; polls++) {
    if (polls > 600) throw new Error(`the host never declared agent phase ${index + 1} done`);
    let done = false;
    try {
      done = parsePhaseAnswer(await d.call(`/phase/${index}`)).done;
    } catch (e) {
      if (polls > 20) throw e;
    }
    if (done) return;
    await delay(3000);
  }
}
