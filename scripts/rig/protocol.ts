/**
 * What the host and the guest of the rig say to each other, over plain HTTP on the host's loopback
 * (the guest reaches it as 10.0.2.2 through QEMU's user-mode network):
 *
 *   GET  /job          host → guest: what to do (RigJob)
 *   POST /progress     guest → host: one step done ({ step, ms }), for the operator's display
 *   GET  /enrol-token  host → guest: the device's one-time enrolment token, text; served once
 *                      (410 afterwards), never part of the job, so it is in no report
 *   GET  /phase/N      guest → host: "agent phase N is running; has the ingest got its readings?"
 *                      ({ done }); polled until done
 *   POST /result       guest → host: everything measured and made (RigResult)
 *
 * Every request carries the run's token (from the kernel command line) in `x-rig-token`, so two rigs
 * on one host never mix. The host checks the guest's report with `parseResult` (bounded, typed)
 * before believing any of it, and then checks the signature itself.
 */

export const TOKEN_HEADER = 'x-rig-token';
/** Largest body either side accepts. */
export const MAX_BODY_BYTES = 256 * 1024;

export interface RigJob {
  /** 32 random bytes (base64) for the guest's TPM key to sign: the signature cannot have been made earlier. */
  readonly challenge: string;
  /** Name of the TPM signing key the guest creates. */
  readonly keyName: string;
  /** When set: the device's part, the agent sending to the ingest service on the host. */
  readonly device?: DeviceJob;
  /** Power the VM off after reporting. */
  readonly poweroff: boolean;
}

export type RigTransport = 'coaps' | 'mqtts';

/** One run of vitalseal-agent.service with one transport. */
export interface AgentPhase {
  readonly transport: RigTransport;
  /** Written to /etc/vitalseal/agent.yaml (root:vitalseal 0640) before the unit is (re)started. */
  readonly agentConfig: string;
}

/**
 * The device's part: enrol through the host's ingest (`vitalseal provision --enrol`, the key made
 * in the TPM, the token from GET /enrol-token), then run the agent unit once per phase.
 */
export interface DeviceJob {
  readonly deviceId: string;
  /** The ingest's enrolment endpoint as the guest reaches it (https://10.0.2.2:PORT). */
  readonly enrolUrl: string;
  /** The fleet root (PEM) the device pins: TLS servers and the issued chain must chain to it. */
  readonly rootCaPem: string;
  /** The ingest's static X25519 public key (PEM) the agent seals to. */
  readonly ingestPublicKeyPem: string;
  readonly phases: readonly AgentPhase[];
}

export interface CommandOutcome {
  readonly exitCode: number;
  readonly output: string;
}

export interface RigResult {
  readonly system: {
    /** process.arch in the guest: 'arm64'. */
    readonly arch: string;
    /** uname -r */
    readonly kernel: string;
    readonly node: string;
    /** The checkout the guest runs (git HEAD and the disk's content key). */
    readonly checkout: string;
    /** `systemd-analyze time` once the boot finished. */
    readonly bootTime: string;
  };
  readonly tpm: {
    readonly device: string;
    /** e.g. "crw-rw---- tss:tss" */
    readonly access: string;
    /** Kernel driver bound to the TPM: tpm_tis on the virt board, tpm_tis_spi on a Pi. */
    readonly driver: string;
    readonly versionMajor: string;
    /** hardware/raspberry-pi/check-tpm.sh run in the guest. */
    readonly check: CommandOutcome;
  };
  readonly keys: {
    /** `vitalseal keys create` in the agent unit's sandbox, as user vitalseal. */
    readonly create: CommandOutcome;
    /** `vitalseal keys sign` of the challenge, same sandbox. */
    readonly sign: CommandOutcome;
    readonly publicKeyPem: string;
    /** DER ECDSA signature, base64. */
    readonly signature: string;
  };
  /** `systemd-analyze security vitalseal-agent.service` in the guest: the exposure line. */
  readonly exposure: string;
  readonly device?: DeviceResult;
  /** Measured in the guest. */
  readonly timings: {
    /** Seconds since the guest kernel started, when the job began. */
    readonly jobStartUptime: number;
    /** Seconds since the guest kernel started, when the TPM signature was made. */
    readonly signatureUptime: number;
    /** `node -e 0`, three runs, ms. */
    readonly nodeStartMs: readonly number[];
    /** `vitalseal --help` (Node + tsx + the CLI), cold then warm compile cache, ms. */
    readonly cliStartMs: readonly number[];
    readonly keysCreateMs: number;
    readonly keysSignMs: number;
    /**
     * `keys sign` again, with tsx's compile cache kept in a CacheDirectory= instead of the private
     * /tmp: first run fills it, second run uses it. The difference to keysSignMs is compile time.
     */
    readonly keysSignCachedMs: readonly number[];
  };
}

export interface DeviceResult {
  /** `vitalseal provision --enrol ... --store tpm` in the agent's sandbox. */
  readonly provision: CommandOutcome;
  /** The token file existed before provisioning (0600, owner vitalseal) and is gone after it. */
  readonly tokenFile: { readonly mode: string; readonly owner: string; readonly removed: boolean };
  /** `ls -ln`-like lines of the identity directory: owner and mode of each file (the agent renews them). */
  readonly identityFiles: string;
  /** The issued chain (PEM: device certificate, issuing CA) the agent presents. */
  readonly chainPem: string;
  /** `vitalseal keys list --store tpm ...` in the agent's sandbox. */
  readonly keysList: CommandOutcome;
  /** `vitalseal keys sign device-identity` of the job's challenge, in the sandbox; DER, base64. */
  readonly identitySignature: CommandOutcome & { readonly signature: string };
  readonly phases: readonly PhaseResult[];
}

export interface PhaseResult {
  readonly transport: string;
  /** `systemctl show` of the unit when the host said the phase was done. */
  readonly state: string;
  /** The unit's main process, from /proc/PID/status: user, groups, NoNewPrivs, Seccomp, CapEff. */
  readonly process: string;
  /** The agent's own status document (`agent status --json`): transport and sealing. */
  readonly status: string;
  /** The journal of this run of the unit. */
  readonly journal: string;
  /** Seconds from `systemctl restart` to the host's "done". */
  readonly seconds: number;
}

export class ProtocolError extends Error {
  readonly code = 'rig-protocol';
}

type Json = unknown;

function obj(v: Json, at: string): Record<string, Json> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ProtocolError(`${at}: expected an object`);
  return v as Record<string, Json>;
}

function str(o: Record<string, Json>, k: string, at: string, max = 16_384): string {
  const v = o[k];
  if (typeof v !== 'string') throw new ProtocolError(`${at}.${k}: expected a string`);
  if (v.length > max) throw new ProtocolError(`${at}.${k}: longer than ${max} characters`);
  return v;
}

function num(o: Record<string, Json>, k: string, at: string): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1e9) throw new ProtocolError(`${at}.${k}: expected a non-negative number`);
  return v;
}

function nums(o: Record<string, Json>, k: string, at: string): number[] {
  const v = o[k];
  if (!Array.isArray(v) || v.length > 16) throw new ProtocolError(`${at}.${k}: expected at most 16 numbers`);
  return v.map((_, i) => num(v as unknown as Record<string, Json>, String(i), `${at}.${k}`));
}

function outcome(o: Record<string, Json>, k: string, at: string): CommandOutcome {
  const c = obj(o[k], `${at}.${k}`);
  const exitCode = c['exitCode'];
  if (typeof exitCode !== 'number' || !Number.isInteger(exitCode) || exitCode < -1 || exitCode > 255) {
    throw new ProtocolError(`${at}.${k}.exitCode: expected an integer -1..255`);
  }
  return { exitCode, output: str(c, 'output', `${at}.${k}`, 65_536) };
}

/** A JSON object of at most `max` characters, or a ProtocolError naming `what`. */
function boundedObject(text: string, what: string, max: number): Record<string, Json> {
  if (text.length > max) throw new ProtocolError(`${what}: larger than ${max} characters`);
  let root: Json;
  try {
    root = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError(`${what}: not JSON (${(e as Error).message})`);
  }
  return obj(root, what);
}

/** The guest's report, checked field by field; throws ProtocolError naming the first bad field. */
export function parseResult(text: string): RigResult {
  const r = boundedObject(text, 'result', MAX_BODY_BYTES);
  const system = obj(r['system'], 'system');
  const tpm = obj(r['tpm'], 'tpm');
  const keys = obj(r['keys'], 'keys');
  const timings = obj(r['timings'], 'timings');
  const result: RigResult = {
    system: {
      arch: str(system, 'arch', 'system', 32),
      kernel: str(system, 'kernel', 'system', 128),
      node: str(system, 'node', 'system', 32),
      checkout: str(system, 'checkout', 'system', 128),
      bootTime: str(system, 'bootTime', 'system', 1024),
    },
    tpm: {
      device: str(tpm, 'device', 'tpm', 64),
      access: str(tpm, 'access', 'tpm', 64),
      driver: str(tpm, 'driver', 'tpm', 64),
      versionMajor: str(tpm, 'versionMajor', 'tpm', 8),
      check: outcome(tpm, 'check', 'tpm'),
    },
    keys: {
      create: outcome(keys, 'create', 'keys'),
      sign: outcome(keys, 'sign', 'keys'),
      publicKeyPem: str(keys, 'publicKeyPem', 'keys', 4096),
      signature: str(keys, 'signature', 'keys', 512),
    },
    exposure: str(r, 'exposure', 'result', 256),
    timings: {
      jobStartUptime: num(timings, 'jobStartUptime', 'timings'),
      signatureUptime: num(timings, 'signatureUptime', 'timings'),
      nodeStartMs: nums(timings, 'nodeStartMs', 'timings'),
      cliStartMs: nums(timings, 'cliStartMs', 'timings'),
      keysCreateMs: num(timings, 'keysCreateMs', 'timings'),
      keysSignMs: num(timings, 'keysSignMs', 'timings'),
      keysSignCachedMs: nums(timings, 'keysSignCachedMs', 'timings'),
    },
  };
  if (r['device'] !== undefined) return { ...result, device: parseDevice(obj(r['device'], 'device')) };
  return result;
}

function parseDevice(d: Record<string, Json>): DeviceResult {
  const tf = obj(d['tokenFile'], 'device.tokenFile');
  const removed = tf['removed'];
  if (typeof removed !== 'boolean') throw new ProtocolError('device.tokenFile.removed: expected a boolean');
  const sig = outcome(d, 'identitySignature', 'device');
  const phasesRaw = d['phases'];
  if (!Array.isArray(phasesRaw) || phasesRaw.length > 4) throw new ProtocolError('device.phases: expected at most 4 phases');
  return {
    provision: outcome(d, 'provision', 'device'),
    tokenFile: { mode: str(tf, 'mode', 'device.tokenFile', 16), owner: str(tf, 'owner', 'device.tokenFile', 64), removed },
    identityFiles: str(d, 'identityFiles', 'device', 4096),
    chainPem: str(d, 'chainPem', 'device', 16_384),
    keysList: outcome(d, 'keysList', 'device'),
    identitySignature: { ...sig, signature: str(obj(d['identitySignature'], 'device.identitySignature'), 'signature', 'device.identitySignature', 512) },
    phases: phasesRaw.map((p: Json, i) => {
      const o = obj(p, `device.phases.${i}`);
      const at = `device.phases.${i}`;
      return {
        transport: str(o, 'transport', at, 16),
        state: str(o, 'state', at, 1024),
        process: str(o, 'process', at, 1024),
        status: str(o, 'status', at, 16_384),
        journal: str(o, 'journal', at, 65_536),
        seconds: num(o, 'seconds', at),
      };
    }),
  };
}

/** The host's answer to GET /phase/N. */
export function parsePhaseAnswer(text: string): { done: boolean } {
  const done = boundedObject(text, 'phase', 256)['done'];
  if (typeof done !== 'boolean') throw new ProtocolError('phase.done: expected a boolean');
  return { done };
}

/** The guest's progress report: a step name and how long it took. */
export function parseProgress(text: string): { step: string; ms: number } {
  const o = boundedObject(text, 'progress', 4096);
  return { step: str(o, 'step', 'progress', 200), ms: num(o, 'ms', 'progress') };
}

/** The `vitalseal.rig=HOST:PORT:TOKEN` word of a kernel command line. */
export function parseRigParam(cmdline: string): { host: string; port: number; token: string } | undefined {
  const word = cmdline.split(/\s+/).find((w) => w.startsWith('vitalseal.rig='));
  if (word === undefined) return undefined;
  const m = /^vitalseal\.rig=(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5}):([A-Za-z0-9_-]{16,64})$/.exec(word);
  if (m === null) throw new ProtocolError(`malformed ${word.slice(0, 80)}`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new ProtocolError(`port ${port} out of range`);
  return { host: m[1] as string, port, token: m[3] as string };
}
