/**
 * A private SoftHSM2 (the PKCS#11 token that stands in for OP-TEE's PKCS#11 TA) for tests, benchmarks
 * and the demo: its own SOFTHSM2_CONF and token directory in a temp dir, tokens initialised with
 * softhsm2-util, PINs generated here and never put on a command line (softhsm2-util prompts for them
 * on a pseudo-terminal made by util-linux `script`), everything removed by `stop()`.
 *
 * SoftHSM reads SOFTHSM2_CONF when the module is initialised, so `startSoftHsm` sets it in this
 * process's environment (and `stop` restores it); child processes (pkcs11-tool) get it from `env`.
 *
 * @example
 *   const hsm = await startSoftHsm();
 *   const token = await hsm.addToken('vitalseal');
 *   const store = await openPkcs11KeyStore({ kind: 'pkcs11', module: hsm.module, token: token.uri, pin: { file: token.pinFile } });
 *   ...
 *   await store.close();
 *   await hsm.stop();
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Debian's SoftHSM2 module (package softhsm2). */
export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface SoftHsmToken {
  readonly label: string;
  readonly serial: string;
  /** `pkcs11:token=<label>;serial=<serial>`. */
  readonly uri: string;
  /** A mode-0600 file holding the user PIN. */
  readonly pinFile: string;
  /** The user PIN itself, for child processes given it through an environment variable. */
  readonly userPin: string;
}

export interface SoftHsm {
  readonly dir: string;
  readonly conf: string;
  readonly module: string;
  /** Initialises a new token in the first free slot, with PINs generated here. */
  addToken(label: string): Promise<SoftHsmToken>;
  /** The environment a child process (pkcs11-tool) needs to see these tokens. */
  env(extra?: Record<string, string>): NodeJS.ProcessEnv;
  /** Removes the token directory and restores SOFTHSM2_CONF. Safe to call twice. */
  stop(): Promise<void>;
}

export interface SoftHsmOptions {
  /** SoftHSM's `slots.mechanisms` setting, e.g. "-CKM_AES_GCM" to take one mechanism away. */
  readonly mechanisms?: string;
}

function requireTool(cmd: string, pkg: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} not found: install the Debian package "${pkg}" (scripts/setup does)`);
}

function pin(): string {
  return randomBytes(12).toString('base64url'); // 16 characters, within SoftHSM's 4-255
}

/**
 * Runs softhsm2-util --init-token on a pseudo-terminal and answers its four PIN prompts (SO PIN twice,
 * user PIN twice) as they appear.
 */
function initToken(label: string, soPin: string, userPin: string, env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qec', `softhsm2-util --init-token --free --label ${label}`, '/dev/null'],
      { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const answers = [soPin, soPin, userPin, userPin];
    let output = '';
    let scanned = 0;
    const scrub = (text: string): string => text.split(soPin).join('***').split(userPin).join('***');
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`softhsm2-util --init-token timed out: ${scrub(output).slice(-500)}`));
    }, 30_000);
    const onData = (d: Buffer): void => {
      output += d.toString('utf8');
      // Answer each prompt once, in order, when its "PIN: " appears.
      for (;;) {
        const at = output.indexOf('PIN: ', scanned);
        if (at === -1) break;
        scanned = at + 5;
        const next = answers.shift();
        if (next !== undefined) child.stdin.write(`${next}\n`);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0 && answers.length === 0) resolve(scrub(output));
      else reject(new Error(`softhsm2-util --init-token ${label} failed (exit ${code}): ${scrub(output).slice(-500)}`));
    });
  });
}

/** The serial number softhsm2-util reports for the token labelled `label`. */
function serialOf(label: string, env: NodeJS.ProcessEnv): string {
  const r = spawnSync('softhsm2-util', ['--show-slots'], { env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`softhsm2-util --show-slots failed: ${r.stderr}`);
  let serial: string | undefined;
  for (const line of r.stdout.split('\n')) {
    const s = /^\s*Serial number:\s*(\S*)\s*$/.exec(line);
    if (s) serial = s[1];
    const l = /^\s*Label:\s*(.*?)\s*$/.exec(line);
    if (l && l[1] === label && serial) return serial;
  }
  throw new Error(`softhsm2-util --show-slots does not list token ${label}`);
}

export async function startSoftHsm(opts: SoftHsmOptions = {}): Promise<SoftHsm> {
  if (!existsSync(SOFTHSM_MODULE)) throw new Error(`${SOFTHSM_MODULE} not found: install the Debian package "softhsm2" (scripts/setup does)`);
  requireTool('softhsm2-util', 'softhsm2');
  requireTool('script', 'bsdutils');
  const dir = mkdtempSync(join(tmpdir(), 'vitalseal-softhsm-'));
  const tokens = join(dir, 'tokens');
  mkdirSync(tokens, { mode: 0o700 });
  const conf = join(dir, 'softhsm2.conf');
  const lines = [
    `directories.tokendir = ${tokens}`,
    'objectstore.backend = file',
    'log.level = ERROR',
    'slots.removable = false',
  ];
  if (opts.mechanisms !== undefined) lines.push(`slots.mechanisms = ${opts.mechanisms}`);
  writeFileSync(conf, `${lines.join('\n')}\n`, { mode: 0o600 });
  const previous = process.env['SOFTHSM2_CONF'];
  process.env['SOFTHSM2_CONF'] = conf;
  const childEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({ ...process.env, SOFTHSM2_CONF: conf, ...extra });
  let stopped = false;
  return {
    dir, conf, module: SOFTHSM_MODULE,
    async addToken(label: string): Promise<SoftHsmToken> {
      if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/.test(label)) throw new Error(`token label ${label}: 1-32 of A-Z a-z 0-9 _ . -`);
      const userPin = pin();
      await initToken(label, pin(), userPin, childEnv());
      const serial = serialOf(label, childEnv());
      const pinFile = join(dir, `${label}.pin`);
      writeFileSync(pinFile, `${userPin}\n`, { mode: 0o600 });
      return { label, serial, uri: `pkcs11:token=${label};serial=${serial}`, pinFile, userPin };
    },
    env: childEnv,
    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      if (process.env['SOFTHSM2_CONF'] === conf) {
        if (previous === undefined) delete process.env['SOFTHSM2_CONF'];
        else process.env['SOFTHSM2_CONF'] = previous;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
