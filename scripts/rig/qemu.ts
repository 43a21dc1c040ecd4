/**
 * The rig's virtual machine: QEMU's aarch64 `virt` board, booted straight into a kernel (no
 * firmware), virtio disks and network, and swtpm as its TPM on a `tpm-tis-device` (a TIS interface
 * on the system bus: the guest sees it in the device tree as "tcg,tpm-tis-mmio").
 *
 * `qemuArgs` only builds the command line (tested on its own); `runVm` starts QEMU, collects the
 * serial console, and stops it on timeout or when asked.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { MACHINE } from './config.ts';
import { RigError } from './errors.ts';

export interface VmDisk {
  readonly file: string;
  /** The guest may not write (the checkout disk). */
  readonly readOnly?: boolean;
  /** The guest's writes go to a temporary overlay that QEMU discards: the image stays as it was. */
  readonly snapshot?: boolean;
}

export interface VmSpec {
  readonly kernel: string;
  readonly initrd: string;
  /** Kernel command line words, after console=ttyAMA0. */
  readonly append: readonly string[];
  /** In order: /dev/vda, /dev/vdb, ... */
  readonly disks: readonly VmDisk[];
  /** swtpm's control socket (startSwtpmForVm); no TPM when absent. */
  readonly tpmSocket?: string;
  /** User-mode networking: the guest reaches the host's loopback as 10.0.2.2. */
  readonly network: boolean;
  /** 'pipe': the console goes to runVm's collector; 'interactive': to this terminal (Ctrl-A X quits). */
  readonly console: 'pipe' | 'interactive';
  readonly machine?: { readonly cpu: string; readonly smp: number; readonly memoryMiB: number };
}

/** The qemu-system-aarch64 command line for `spec`. */
export function qemuArgs(spec: VmSpec): string[] {
  const m = spec.machine ?? MACHINE;
  for (const word of spec.append) {
    if (/\s/.test(word) || word === '') throw new RigError('usage', `kernel command line word ${JSON.stringify(word)} is empty or has a space`);
  }
  const args = [
    '-machine', 'virt',
    '-cpu', m.cpu,
    '-smp', String(m.smp),
    '-m', String(m.memoryMiB),
    // Multi-threaded TCG: one host thread per vCPU.
    '-accel', 'tcg,thread=multi',
    '-nodefaults',
    '-no-reboot',
    '-display', 'none',
    '-kernel', spec.kernel,
    '-initrd', spec.initrd,
    '-append', ['console=ttyAMA0', 'panic=-1', ...spec.append].join(' '),
  ];
  spec.disks.forEach((d, i) => {
    const opts = [`if=none`, `id=disk${i}`, `file=${d.file}`, 'format=raw'];
    if (d.readOnly === true) opts.push('readonly=on');
    if (d.snapshot === true) opts.push('snapshot=on');
    args.push('-drive', opts.join(','), '-device', `virtio-blk-pci,drive=disk${i}`);
  });
  // Entropy for the guest kernel from the host, so early getrandom() calls (Node's start) never wait.
  args.push('-device', 'virtio-rng-pci');
  if (spec.network) {
    // romfile= : no iPXE option ROM (the kernel is booted directly; Debian ships the ROMs separately).
    args.push('-netdev', 'user,id=net0', '-device', 'virtio-net-pci,netdev=net0,romfile=');
  }
  if (spec.tpmSocket !== undefined) {
    args.push(
      '-chardev', `socket,id=chrtpm,path=${spec.tpmSocket}`,
      '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm',
      '-device', 'tpm-tis-device,tpmdev=tpm0',
    );
  }
  if (spec.console === 'interactive') {
    args.push('-serial', 'mon:stdio');
  } else {
    args.push('-serial', 'stdio', '-monitor', 'none');
  }
  return args;
}

export interface RunningVm {
  /** Resolves when QEMU exits (the guest powered off, or stop()/timeout ended it). */
  readonly done: Promise<VmExit>;
  /** Ends QEMU now (SIGTERM, then SIGKILL after 5 s). */
  stop(): Promise<void>;
}

export interface VmExit {
  readonly code: number | null;
  readonly timedOut: boolean;
  /** The console's last 64 KiB. */
  readonly consoleTail: string;
}

export interface RunOptions {
  /** The whole console, appended to this file. */
  readonly consoleLog?: string;
  /** Called for each console line as it arrives. */
  readonly onLine?: (line: string) => void;
  readonly timeoutMs: number;
}

const live = new Set<ChildProcess>();
let exitHook = false;

/** Starts QEMU for `spec`. */
export function runVm(spec: VmSpec, opts: RunOptions): RunningVm {
  const args = qemuArgs(spec);
  const child = spawn('qemu-system-aarch64', args, {
    stdio: spec.console === 'interactive' ? 'inherit' : ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  if (!exitHook) {
    exitHook = true;
    // Never leave a virtual machine running after the rig's process ends.
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  let tail = '';
  let partial = '';
  let log: WriteStream | undefined;
  if (opts.consoleLog !== undefined) log = createWriteStream(opts.consoleLog, { flags: 'a' });
  const onData = (d: Buffer) => {
    const text = d.toString('utf8');
    log?.write(d);
    tail = (tail + text).slice(-65536);
    if (opts.onLine !== undefined) {
      const lines = (partial + text).split(/\r?\n/);
      partial = lines.pop() ?? '';
      for (const l of lines) opts.onLine(l);
    }
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void stop();
  }, opts.timeoutMs);
  const done = new Promise<VmExit>((resolve, reject) => {
    child.once('error', (e) => {
      clearTimeout(timer);
      live.delete(child);
      reject(new RigError('host-tools', `cannot start qemu-system-aarch64: ${e.message} (Debian package qemu-system-arm)`, { cause: e }));
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      live.delete(child);
      if (partial !== '' && opts.onLine !== undefined) opts.onLine(partial);
      const finish = () => resolve({ code, timedOut, consoleTail: tail });
      if (log !== undefined) log.end(finish);
      else finish();
    });
  });
  async function stop(): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await done.catch(() => undefined);
    clearTimeout(killer);
  }
  return { done, stop };
}
