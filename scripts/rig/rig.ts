/**
 * `npm run rig`: boots the aarch64 rig and shows the chain from the host to the ARM VM's TPM.
 *
 *   npm run rig                      build what is missing, boot, check, print the report
 *   npm run rig -- --shell           the VM's console on this terminal (root; `poweroff` to leave)
 *   npm run rig -- --agent-config F  also start vitalseal-agent.service in the VM with F as agent.yaml
 *   npm run rig -- --refresh         refresh the arm64 package lists and the kernel choice (rebuilds)
 *   npm run rig -- --console         print the VM's console as it boots
 *   npm run rig -- --json            print the guest's whole report as JSON
 *
 * Cache: $VITALSEAL_RIG_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/vitalseal/rig. See docs/hardware.md.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { cacheDir } from './config.ts';
import { RigError } from './errors.ts';
import { runRig, type RigReport } from './run.ts';

const HELP = `usage: npm run rig -- [--shell] [--agent-config FILE] [--refresh] [--console] [--json] [--timeout MINUTES]

Boots Debian 12 arm64 in qemu-system-aarch64 (virt, Cortex-A72) with swtpm as its TPM, and checks
inside it: /dev/tpmrm0, Node, vitalseal keys create/sign on the TPM in the agent unit's sandbox;
then verifies the signature on the host with OpenSSL. The first run builds the images (about
half an hour on two cores); later runs reuse them from ${cacheDir()}.
`;

function summary(r: RigReport): string {
  const res = r.result;
  const t = res.timings;
  const checkVerdict = /verdict: (\S+)/.exec(res.tpm.check.output)?.[1] ?? `exit ${res.tpm.check.exitCode}`;
  const lines = [
    `guest           ${res.system.arch}, Linux ${res.system.kernel}, Node ${res.system.node}, checkout ${res.system.checkout}`,
    `TPM             ${res.tpm.device} ${res.tpm.access}, driver ${res.tpm.driver}, TPM ${res.tpm.versionMajor}.0; check-tpm.sh: ${checkVerdict}`,
    `keys            create + sign as vitalseal in vitalseal-agent.service's sandbox: exit ${res.keys.create.exitCode}/${res.keys.sign.exitCode}`,
    `signature       ${r.signatureVerified ? 'verified on the host with openssl' : 'NOT verified'}`,
    `unit hardening  ${res.exposure || '(systemd-analyze security gave nothing)'}`,
    ...(res.agent === undefined ? [] : [`agent unit      ${res.agent.state.replace(/\n/g, ' ')}`]),
    '',
    'timings',
    ...Object.entries(r.timings.build).map(([k, v]) => `  build: ${k.padEnd(38)} ${v.toFixed(1)} s`),
    `  build total (incl. cached steps)              ${r.timings.buildTotal.toFixed(1)} s`,
    `  VM start -> guest job running                 ${r.timings.bootToJob.toFixed(1)} s (guest uptime ${t.jobStartUptime.toFixed(1)} s)`,
    `  VM start -> first TPM signature reported      ${r.timings.bootToResult.toFixed(1)} s (signed at guest uptime ${t.signatureUptime.toFixed(1)} s)`,
    `  VM start -> powered off                       ${r.timings.bootToPoweroff.toFixed(1)} s`,
    `  node -e 0 in the VM                           ${t.nodeStartMs.join(' / ')} ms`,
    `  vitalseal --help in the VM (cold / warm tsx)  ${t.cliStartMs.join(' / ')} ms`,
    `  keys create / keys sign (incl. unit start)    ${t.keysCreateMs} / ${t.keysSignMs} ms`,
    `  keys sign, tsx cache kept (fill / use)        ${t.keysSignCachedMs.join(' / ')} ms`,
    `  ${res.system.bootTime.split('\n')[0] ?? ''}`,
  ];
  return lines.join('\n');
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      shell: { type: 'boolean' },
      'agent-config': { type: 'string' },
      refresh: { type: 'boolean' },
      console: { type: 'boolean' },
      json: { type: 'boolean' },
      timeout: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(HELP);
    return 0;
  }
  const timeout = values.timeout === undefined ? undefined : Number(values.timeout);
  if (timeout !== undefined && (!Number.isFinite(timeout) || timeout <= 0)) throw new RigError('usage', '--timeout takes minutes (a positive number)');
  const agentConfig = values['agent-config'] === undefined ? undefined : readFileSync(values['agent-config'], 'utf8');
  const report = await runRig({
    log: (l) => process.stderr.write(`rig: ${l}\n`),
    ...(values.console === true ? { onConsoleLine: (l: string) => process.stderr.write(`vm| ${l}\n`) } : {}),
    ...(values.refresh === true ? { refresh: true } : {}),
    ...(timeout === undefined ? {} : { timeoutMinutes: timeout }),
    ...(agentConfig === undefined ? {} : { agentConfig }),
    ...(values.shell === true ? { interactive: true } : {}),
  });
  process.stdout.write(values.json === true ? `${JSON.stringify(report, null, 2)}\n` : `${summary(report)}\n`);
  return 0;
}

main().then((code) => {
  process.exitCode = code;
}, (e: unknown) => {
  if (e instanceof RigError) process.stderr.write(`rig: ${e.message} [${e.code}]\n`);
  else process.stderr.write(`rig: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
  process.exitCode = 1;
});
