/**
 * One run of the aarch64 rig: build (or reuse) the images, start swtpm as the VM's TPM and the job
 * server, boot the VM, receive the guest's report, and check it on the host:
 *
 *   - the guest is arm64 and has /dev/tpmrm0 (the kernel's resource manager for a TIS TPM),
 *     group tss, as udev and the Raspberry Pi profile's rules make it;
 *   - check-tpm.sh in the guest calls this TPM a simulator (it is swtpm);
 *   - `vitalseal keys create/sign --store tpm --tcti device:/dev/tpmrm0` worked as user vitalseal in
 *     vitalseal-agent.service's sandbox, and the signature of the host's fresh challenge verifies
 *     with OpenSSL on the host against the public key the TPM returned;
 *   - with transports (the default: CoAPS, then MQTTS): the device enrolled through the host's
 *     ingest (its key made in the TPM; the enrolled SPKI in the ingest's registry is the key that
 *     signed the challenge), and vitalseal-agent.service, hardened, as user vitalseal, sent
 *     readings over each transport that the ingest stored and serves decrypted as SenML JSON.
 */
import { createPublicKey, randomBytes, verify } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSwtpmForVm } from '../lib/swtpm.ts';
import { parseCertificate, spkiSha256 } from '../../src/pki/certificate.ts';
import { pemDecode, pemEncode } from '../../src/pki/pem.ts';
import { toHex } from '../../src/util/bytes.ts';
import { cacheDir, HOST_FROM_GUEST } from './config.ts';
import { RigError } from './errors.ts';
import { buildRigImages, type RigImages } from './image.ts';
import { startRigIngest, type IngestEvidence, type RigIngest } from './host-ingest.ts';
import { startJobServer } from './job-server.ts';
import type { RigJob, RigResult, RigTransport } from './protocol.ts';
import { runVm } from './qemu.ts';

export interface RigOptions {
  readonly cache?: string;
  readonly log?: (line: string) => void;
  /** Every console line of the VM. */
  readonly onConsoleLine?: (line: string) => void;
  /** Re-resolve the kernel and refresh the package lists. */
  readonly refresh?: boolean;
  /** Minutes for the boot, the guest's checks and the agent phases (default 45; the image build has its own limits). */
  readonly timeoutMinutes?: number;
  /**
   * The agent's transports, one phase each, in this order (default CoAPS, then MQTTS; the agent
   * reaches the TPM through tpm2-abrmd, as the Raspberry Pi profile configures it). Empty: no
   * ingest on the host and no agent in the guest, only the TPM and sandbox checks.
   */
  readonly transports?: readonly RigTransport[];
  /** Device id of the VM (default rig-arm64). */
  readonly deviceId?: string;
  /** The serial console on this terminal; the VM keeps running until `poweroff` in it. */
  readonly interactive?: boolean;
  /** Aborting ends the VM; the run then fails and stops everything it started. */
  readonly signal?: AbortSignal;
}

export interface RigReport {
  /** What the guest was asked to do (its challenge included). */
  readonly job: RigJob;
  readonly result: RigResult;
  /** `openssl dgst -verify` said "Verified OK" for the challenge, the signature and the TPM's public key. */
  readonly signatureVerified: boolean;
  /** What the host's ingest holds for the VM's device (with transports). */
  readonly ingest?: IngestEvidence;
  /** The issued certificate's key, checked against the registry and the TPM's signature (with transports). */
  readonly identity?: { readonly serial: string; readonly spkiSha256: string; readonly subject: string; readonly signatureVerified: boolean };
  /** Where the enrolment token was looked for after the run, and not found (with transports). */
  readonly tokenNotIn?: readonly string[];
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

/**
 * The device part, checked on the host: enrolled with the token (file 0600 for vitalseal, removed),
 * the certificate files the agent's to renew, the issued certificate's key is the registry's and
 * the TPM's (it signed the challenge), and every phase delivered readings, sent by the hardened
 * unit as vitalseal, that the ingest serves decrypted.
 */
export function verifyDevice(result: RigResult, ingest: IngestEvidence, challenge: Buffer): NonNullable<RigReport['identity']> {
  const fail = (what: string): never => {
    throw new RigError('verify', what);
  };
  const d = result.device ?? fail('the guest reported no device part');
  if (d.provision.exitCode !== 0) fail(`vitalseal provision --enrol failed in the guest (exit ${d.provision.exitCode}):\n${d.provision.output}`);
  if (d.tokenFile.mode !== '0600' || !d.tokenFile.owner.startsWith('vitalseal:') || !d.tokenFile.removed) {
    fail(`the enrolment token file was ${d.tokenFile.mode} ${d.tokenFile.owner}${d.tokenFile.removed ? '' : ' and is still there'}; expected 0600, owner vitalseal, removed`);
  }
  for (const line of d.identityFiles.split('\n')) {
    if (!/ vitalseal:vitalseal /.test(line)) fail(`the agent cannot renew its certificate files: ${line}`);
  }
  if (!/^signing\s+device-identity$/m.test(d.keysList.output)) fail(`keys list in the guest's TPM store does not show device-identity:\n${d.keysList.output}`);
  const [leafPem] = pemDecode(d.chainPem, 'CERTIFICATE');
  const leaf = parseCertificate(leafPem?.der ?? fail('the guest reported no certificate chain'));
  const spki = toHex(spkiSha256(leaf.spki.der));
  const reg = ingest.registry ?? fail(`the ingest's registry has no device ${ingest.deviceId}`);
  if (reg.credential !== 'certificate' || reg.credentialSha256 !== spki) fail(`the registry's credential (${reg.credential} ${reg.credentialSha256}) is not the issued certificate's key (${spki})`);
  if (reg.certSerial !== leaf.serialHex) fail(`the registry's certificate serial ${reg.certSerial ?? '-'} is not the guest's ${leaf.serialHex}`);
  if (d.identitySignature.exitCode !== 0) fail(`keys sign device-identity failed in the guest:\n${d.identitySignature.output}`);
  const signature = Buffer.from(d.identitySignature.signature, 'base64');
  const pub = pemEncode('PUBLIC KEY', leaf.spki.der);
  const signatureVerified = verify('sha256', challenge, createPublicKey(pub), signature) && opensslVerify(pub, challenge, signature).ok;
  if (!signatureVerified) fail('the TPM\'s signature of the challenge does not verify with the enrolled certificate\'s key');
  for (const [i, p] of ingest.phases.entries()) {
    const g = d.phases[i];
    const journal = g === undefined ? '' : `\nagent unit: ${g.state.replace(/\n/g, ' ')}\n${g.journal.split('\n').slice(-30).join('\n')}`;
    if (!p.arrived) fail(`no readings from ${ingest.deviceId} over ${p.transport} reached the ingest within ${p.seconds.toFixed(0)} s${journal}`);
    if (g === undefined || !/^user=vitalseal /.test(g.process)) fail(`the agent unit's process over ${p.transport} was not user vitalseal: ${g?.process ?? '(no report)'}`);
  }
  if (ingest.phases.length !== d.phases.length || ingest.phases.length === 0) fail(`${ingest.phases.length} phases finished on the host, ${d.phases.length} reported by the guest`);
  if (ingest.readings.length === 0) fail('the ingest serves no readings for the device');
  const foreign = ingest.readings.find((r) => !String(r.n).startsWith(`${ingest.deviceId}/`));
  if (foreign !== undefined) fail(`a reading named ${String(foreign.n)} is not the device's`);
  return { serial: leaf.serialHex, spkiSha256: spki, subject: leaf.subject.text, signatureVerified };
}

/** Builds what is missing, boots the rig, and returns its checked report. */
export async function runRig(opts: RigOptions = {}): Promise<RigReport> {
  const cache = opts.cache ?? cacheDir();
  const log = opts.log ?? (() => undefined);
  const t0 = performance.now();
  const images = await buildRigImages({ cache, log, ...(opts.refresh === undefined ? {} : { refresh: opts.refresh }) });
  const buildTotal = (performance.now() - t0) / 1000;

  const interrupted = () => {
    if (opts.signal?.aborted === true) throw new RigError('usage', 'interrupted');
  };
  interrupted();
  const transports = opts.transports ?? ['coaps', 'mqtts'];
  let ingest: RigIngest | undefined;
  if (transports.length > 0) {
    log(`starting the host's ingest service and broker for the VM (${transports.join(', ')})`);
    ingest = await startRigIngest({ deviceId: opts.deviceId ?? 'rig-arm64', transports, log });
  }
  try {
    interrupted();
    return await bootAndCheck(opts, images, { build: images.timings, buildTotal }, ingest, log, cache);
  } finally {
    await ingest?.stop();
  }
}

async function bootAndCheck(
  opts: RigOptions, images: RigImages, build: { build: Readonly<Record<string, number>>; buildTotal: number },
  ingest: RigIngest | undefined, log: (line: string) => void, cache: string,
): Promise<RigReport> {
  const challenge = randomBytes(32);
  const job: RigJob = {
    challenge: challenge.toString('base64'),
    keyName: KEY_NAME,
    ...(ingest === undefined ? {} : { device: ingest.deviceJob }),
    poweroff: opts.interactive !== true,
  };
  let firstRequest: number | undefined;
  let vmStart = 0;
  // Kept only to search the run's outputs for it afterwards.
  let issuedToken: string | undefined;
  const server = await startJobServer(job, {
    failOnGuestError: true,
    onProgress: (step, ms) => {
      firstRequest ??= performance.now();
      log(`guest: ${step}${ms > 0 ? ` [${(ms / 1000).toFixed(1)} s]` : ''} (+${((performance.now() - vmStart) / 1000).toFixed(0)} s)`);
    },
    ...(ingest === undefined ? {} : {
      enrolToken: async () => {
        try {
          issuedToken = await ingest.enrolToken();
          return issuedToken;
        } catch (e) {
          log(`host: no enrolment token: ${(e as Error).message}`);
          throw e;
        }
      },
      phaseDone: (i: number) => ingest.phaseDone(i),
    }),
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
      timeoutMs: (opts.timeoutMinutes ?? 45) * 60_000,
      ...(opts.onConsoleLine === undefined ? {} : { onLine: opts.onConsoleLine }),
    });
    const abort = () => void vm.stop();
    opts.signal?.addEventListener('abort', abort, { once: true });
    vm.done.finally(() => opts.signal?.removeEventListener('abort', abort)).catch(() => undefined);
    const exitedEarly = vm.done.then((exit) => {
      if (opts.signal?.aborted === true) throw new RigError('usage', 'interrupted: the VM was stopped');
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
    let evidence: IngestEvidence | undefined;
    let identity: RigReport['identity'];
    try {
      signatureVerified = verifyResult(result, challenge);
      if (ingest !== undefined) {
        evidence = await ingest.evidence();
        identity = verifyDevice(result, evidence, challenge);
      }
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
    let tokenNotIn: string[] | undefined;
    if (ingest !== undefined && issuedToken !== undefined) {
      const places: Record<string, string> = {
        'the VM console': readFileSync(consoleLog, 'utf8'), 'the guest report': JSON.stringify(result), "the ingest's log": ingest.serviceLog(),
      };
      const found = Object.keys(places).filter((k) => places[k]?.includes(issuedToken as string) === true);
      issuedToken = undefined;
      if (found.length > 0) throw new RigError('verify', `the enrolment token appears in ${found.join(', ')}`);
      tokenNotIn = Object.keys(places);
    }
    return {
      job,
      result,
      signatureVerified,
      ...(evidence === undefined ? {} : { ingest: evidence }),
      ...(identity === undefined ? {} : { identity }),
      ...(tokenNotIn === undefined ? {} : { tokenNotIn }),
      timings: { ...build, bootToJob, bootToResult, bootToPoweroff },
      consoleLog,
    };
  } finally {
    await server.close();
    await tpm.stop();
  }
}
