/**
 * What the host and the guest of the rig say to each other, over plain HTTP on the host's loopback
 * (the guest reaches it as 10.0.2.2 through QEMU's user-mode network):
 *
 *   GET  /job       host → guest: what to do (RigJob)
 *   POST /progress  guest → host: one step done ({ step, ms }), for the operator's display
 *   POST /result    guest → host: everything measured and made (RigResult)
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
  /** When set: written to /etc/vitalseal/agent.yaml, then vitalseal-agent.service is started. */
  readonly agentConfig?: string;
  /** How long the guest watches the agent unit before reporting its state. */
  readonly agentWatchSeconds: number;
  /** Power the VM off after reporting. */
  readonly poweroff: boolean;
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
  readonly agent?: {
    /** `vitalseal keys list --config /etc/vitalseal/agent.yaml` in the agent's sandbox: the agent user reads its configuration and keystore. */
    readonly configRead: CommandOutcome;
    readonly state: string;
    readonly journal: string;
  };
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

/** The guest's report, checked field by field; throws ProtocolError naming the first bad field. */
export function parseResult(text: string): RigResult {
  if (text.length > MAX_BODY_BYTES) throw new ProtocolError(`result: larger than ${MAX_BODY_BYTES} bytes`);
  let root: Json;
  try {
    root = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError(`result: not JSON (${(e as Error).message})`);
  }
  const r = obj(root, 'result');
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
  if (r['agent'] !== undefined) {
    const a = obj(r['agent'], 'agent');
    return { ...result, agent: { configRead: outcome(a, 'configRead', 'agent'), state: str(a, 'state', 'agent', 1024), journal: str(a, 'journal', 'agent', 65_536) } };
  }
  return result;
}

/** The guest's progress report: a step name and how long it took. */
export function parseProgress(text: string): { step: string; ms: number } {
  if (text.length > 4096) throw new ProtocolError('progress: too large');
  let root: Json;
  try {
    root = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError(`progress: not JSON (${(e as Error).message})`);
  }
  const o = obj(root, 'progress');
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
