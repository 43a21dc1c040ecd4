/**
 * A one-shot unit that runs a command in exactly the sandbox of another unit: every [Service]
 * directive of the source unit (user, groups, file-system and device policy, system-call filter,
 * ...) is kept; only what says *what* runs and *how often* (ExecStart, Type, Restart*, timeouts) is
 * replaced. The rig uses it to run `vitalseal keys create/sign` under vitalseal-agent.service's
 * hardening, which proves that the hardening leaves Node, koffi, FAPI and /dev/tpmrm0 working,
 * before the agent itself exists.
 *
 * @example
 *   const text = sandboxedOneShot(readFileSync('/etc/systemd/system/vitalseal-agent.service', 'utf8'), {
 *     description: 'key check', execStart: '/usr/local/bin/vitalseal keys list --store tpm ...',
 *     standardOutput: 'truncate:/run/check/out.txt',
 *   });
 */

export interface OneShotSpec {
  readonly description: string;
  readonly execStart: string;
  /** systemd StandardInput= value, e.g. `file:/run/x/in.bin`. */
  readonly standardInput?: string;
  /** systemd StandardOutput= value, e.g. `truncate:/run/x/out.pem`. */
  readonly standardOutput?: string;
  /** More [Service] lines, after the source's (a later assignment wins for single-valued keys). */
  readonly extra?: readonly string[];
}

/** [Service] keys that describe the agent's process and lifecycle rather than its sandbox. */
const LIFECYCLE = new Set([
  'Type', 'ExecStart', 'ExecStartPre', 'ExecStartPost', 'ExecReload', 'ExecStop', 'ExecStopPost',
  'Restart', 'RestartSec', 'RestartPreventExitStatus', 'RestartForceExitStatus', 'SuccessExitStatus',
  'TimeoutSec', 'TimeoutStartSec', 'TimeoutStopSec', 'WatchdogSec', 'RemainAfterExit',
  'StandardInput', 'StandardOutput', 'StandardError', 'NotifyAccess', 'PIDFile',
]);

/** [Unit] keys carried over: the source's device requirements. */
const UNIT_KEPT = new Set(['Requires', 'BindsTo']);

function value(key: string, v: string): string {
  if (/[\n\r]/.test(v)) throw new Error(`${key}= must be one line`);
  return `${key}=${v}`;
}

/** The one-shot unit's text, derived from `sourceUnit` (a unit file's text). */
export function sandboxedOneShot(sourceUnit: string, spec: OneShotSpec): string {
  const unit: string[] = [];
  const service: string[] = [];
  let section = '';
  for (const raw of sourceUnit.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s !== null) {
      section = s[1] as string;
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq).trim();
    if (section === 'Unit' && UNIT_KEPT.has(key)) {
      unit.push(line);
      // Order after what is required, as the source does for its devices.
      const after = line.slice(eq + 1).trim();
      if (after !== '') unit.push(`After=${after}`);
    } else if (section === 'Service' && !LIFECYCLE.has(key)) {
      service.push(line);
    }
  }
  if (!service.some((l) => l.startsWith('User='))) {
    throw new Error('the source unit has no User= in [Service]: refusing to derive a sandbox that would run as root');
  }
  return [
    '[Unit]',
    value('Description', spec.description),
    ...unit,
    '',
    '[Service]',
    'Type=oneshot',
    value('ExecStart', spec.execStart),
    ...(spec.standardInput === undefined ? [] : [value('StandardInput', spec.standardInput)]),
    ...(spec.standardOutput === undefined ? [] : [value('StandardOutput', spec.standardOutput)]),
    'StandardError=journal',
    ...service,
    ...(spec.extra ?? []).map((l) => {
      const eq = l.indexOf('=');
      if (eq <= 0) throw new Error(`not a directive: ${l}`);
      return value(l.slice(0, eq), l.slice(eq + 1));
    }),
    '',
  ].join('\n');
}
