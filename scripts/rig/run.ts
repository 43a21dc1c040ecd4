/**
 * One run of the aarch64 rig: build (or reuse) the images, start swtpm as the VM's TPM and the job
 * server, boot the VM, receive the guest's report, and check it on the host:
 *
 *   - the guest is arm64 and has /dev/tpmrm0 (the kernel's resource manager for a TIS TPM),
 *     group tss, as udev and the Raspberry Pi profile's rules make it;
 *   - check-tpm.sh in the guest calls this TPM a simulator (it is swtpm);
 *   - `vitalseal keys create/sign --store tpm --tcti device:/dev/tpmrm0` worked as user vitalseal in
 *     vitalseal-agent.service's sandbox, and the signature of the host's fresh challenge verifies
 *     with OpenSSL on the host against the public key the TPM returned.
 *
 * The agent step (a reading from the VM arriving at an ingest service on the host) rides on the
 * same path: `agentConfig` is written to /etc/vitalseal/agent.yaml in the guest and
 * vitalseal-agent.service started; the report carries the unit's state and journal.
 */
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSwtpmForVm } from '../lib/swtpm.ts';
import { cacheDir, HOST_FROM_GUEST } from './config.ts';
import { RigError } from './errors.ts';
import { buildRigImages } from './image.ts';
import { startJobServer } from './job-server.ts';
import type { RigJob, RigResult } from './protocol.ts';
import { runVm } from './qemu.ts';

export interface RigOptions {
  readonly cache?: string;
  readonly log?: (line: string) => void;
  /** Every console line of the VM. */
  readonly onConsoleLine?: (line: string) => void;
  /** Re-resolve the kernel and refresh the package lists. */
  readonly refresh?: boolean;
  /** Minutes for the boot and the guest's checks (the image build has its own limits). */
  readonly timeoutMinutes?: number;
  /** Written to /etc/vitalseal/agent.yaml in the guest; vitalseal-agent.service is then started. */
  readonly agentConfig?: string;
  readonly agentWatchSeconds?: number;
  /** The serial console on this terminal; the VM keeps running until `poweroff` in it. */
  readonly interactive?: boolean;
}

export interface RigReport {
  /** What the guest was asked to do (its challenge included). */
  readonly job: RigJob;
  readonly result: RigResult;
  /** `openssl dgst -verify` said "Verified OK" for the challenge, the signature and the TPM's public key. */
  readonly signatureVerified: boolean;
  /** Seconds on the host. */
  readonly timings: {
    readonly build: Readonly<Record<string, number>>;
    readonly buildTotal: number;
    /** VM start to the guest's first request (kernel, systemd, network, Node, tsx). */
    readonly bootToJob: number;
    /** VM start to the result (all checks done, signature made). */
    readonly bootToResult: number;
    /** VM start to QEMU's exit after the guest's poweroff. */
    readonly bootToPoweroff: number;
  };
  readonly consoleLog: string;
}

const KEY_NAME = 'rig-identity';

/** Verifies `signature` (DER ECDSA) over `message` with `publicKeyPem`, using the openssl command. */
export function opensslVerify(publicKeyPem: string, message: Buffer, signature: Buffer): { ok: boolean; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-rig-verify-'));
  try {
    writeFileSync(join(dir, 'pub.pem'), publicKeyPem);
    writeFileSync(join(dir, 'msg.bin'), message);
    writeFileSync(join(dir, 'sig.der'), signature);
    const r = spawnSync('openssl', ['dgst', '-sha256', '-verify', join(dir, 'pub.pem'), '-signature', join(dir, 'sig.der'), join(dir, 'msg.bin')], { encoding: 'utf8' });
    const output = `${r.stdout}${r.stderr}`.trim();
    return { ok: r.status === 0 && /Verified OK/.test(output), output };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function verifyResult(result: RigResult, challenge: Buffer): boolean {
  const fail = (what: string) => {
    throw new RigError('verify', what);
  };
  if (result.system.arch !== 'arm64') fail(`the guest runs on ${result.system.arch}, not arm64`);
  if (!/^c0660 tss:tss$/.test(result.tpm.access)) fail(`/dev/tpmrm0 in the guest is "${result.tpm.access}", expected a character device, mode 0660, tss:tss`);
  if (result.tpm.driver !== 'tpm_tis') fail(`the guest's TPM driver is "${result.tpm.driver}", expected tpm_tis`);
  if (result.tpm.versionMajor !== '2') fail(`the guest's TPM is version "${result.tpm.versionMajor}", expected 2`);
  if (result.keys.create.exitCode !== 0) fail(`vitalseal keys create failed in the guest (exit ${result.keys.create.exitCode}):\n${result.keys.create.output}`);
  if (result.keys.sign.exitCode !== 0) fail(`vitalseal keys sign failed in the guest (exit ${result.keys.sign.exitCode}):\n${result.keys.sign.output}`);
  const v = opensslVerify(result.keys.publicKeyPem, challenge, Buffer.from(result.keys.signature, 'base64'));
  if (!v.ok) fail(`the guest's signature does not verify with openssl on the host: ${v.output}`);
  return true;
}

/** Builds what is missing, boots the rig, and returns its checked report. */
export async function runRig(opts: RigOptions = {}): Promise<RigReport> {
  const cache = opts.cache ?? cacheDir();
  const log = opts.log ?? (() => undefined);
  const t0 = performance.now();
  const images = await buildRigImages({ cache, log, ...(opts.refresh === undefined ? {} : { refresh: opts.refresh }) });
  const buildTotal = (performance.now() - t0) / 1000;

  const challenge = randomBytes(32);
  const job: RigJob = {
    challenge: challenge.toString('base64'),
    keyName: KEY_NAME,
    ...(opts.agentConfig === undefined ? {} : { agentConfig: opts.agentConfig }),
    agentWatchSeconds: opts.agentWatchSeconds ?? 20,
    poweroff: opts.interactive !== true,
  };
  let firstRequest: number | undefined;
  let vmStart = 0;
  const server = await startJobServer(job, {
    failOnGuestError: true,
    onProgress: (step, ms) => {
      firstRequest ??= performance.now();
      log(`guest: ${step}${ms > 0 ? ` [${(ms / 1000).toFixed(1)} s]` : ''} (+${((performance.now() - vmStart) / 1000).toFixed(0)} s)`);
    },
  });
  const tpm = await startSwtpmForVm();
  const logs = join(cache, 'logs');
  mkdirSync(logs, { recursive: true });
  const consoleLog = join(logs, 'boot.log');
  rmSync(consoleLog, { force: true });
  try {
    log(`booting the VM (console: ${consoleLog}; TPM: swtpm on ${tpm.ctrlSocket})`);
    vmStart = performance.now();
    const vm = runVm({
      kernel: images.kernel,
      initrd: images.initrd,
      append: [`vitalseal.rig=${HOST_FROM_GUEST}:${server.port}:${server.token}`, 'quiet', 'systemd.show_status=auto'],
      disks: [{ file: images.rootfs, snapshot: true }, { file: images.app, readOnly: true }],
      tpmSocket: tpm.ctrlSocket,
      network: true,
      console: opts.interactive === true ? 'interactive' : 'pipe',
    }, {
      consoleLog,
      timeoutMs: (opts.timeoutMinutes ?? 20) * 60_000,
      ...(opts.onConsoleLine === undefined ? {} : { onLine: opts.onConsoleLine }),
    });
    const exitedEarly = vm.done.then((exit) => {
      throw new RigError(exit.timedOut ? 'timeout' : 'guest', `the VM ${exit.timedOut ? 'timed out' : `exited (code ${exit.code})`} before the guest reported; console: ${consoleLog}\n${exit.consoleTail.split('\n').slice(-30).join('\n')}\nswtpm: ${tpm.log()}`);
    });
    // After the result, the guest's poweroff ends the VM: that is not a failure.
    exitedEarly.catch(() => undefined);
    let result: RigResult;
    try {
      result = await Promise.race([server.result, exitedEarly]);
    } catch (e) {
      await vm.stop();
      throw e;
    }
    const bootToResult = (performance.now() - vmStart) / 1000;
    const bootToJob = ((firstRequest ?? performance.now()) - vmStart) / 1000;
    log(`guest reported after ${bootToResult.toFixed(0)} s`);
    let signatureVerified = false;
    try {
      signatureVerified = verifyResult(result, challenge);
    } finally {
      if (opts.interactive !== true) {
        // The guest powers off after reporting; give it a minute, then end QEMU.
        const timer = setTimeout(() => void vm.stop(), 60_000);
        await vm.done.catch(() => undefined);
        clearTimeout(timer);
      }
    }
    if (opts.interactive === true) await vm.done;
    const bootToPoweroff = (performance.now() - vmStart) / 1000;
    return {
      job,
      result,
      signatureVerified,
      timings: { build: images.timings, buildTotal, bootToJob, bootToResult, bootToPoweroff },
      consoleLog,
    };
  } finally {
    await server.close();
    await tpm.stop();
  }
}
