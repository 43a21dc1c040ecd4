/**
 * `npm run rig`: boots the aarch64 rig and shows the chain from the ARM VM's TPM to the ingest
 * service on the host: a reading sealed in the VM arriving decrypted at the host's ingest.
 *
 *   npm run rig                      build what is missing, boot, check, print the report
 *   npm run rig -- --shell           the VM's console on this terminal (root; `poweroff` to leave)
 *   npm run rig -- --transport T     both (default: CoAPS, then MQTTS), coaps, mqtts or none
 *   npm run rig -- --refresh         refresh the arm64 package lists and the kernel choice (rebuilds)
 *   npm run rig -- --console         print the VM's console as it boots
 *   npm run rig -- --json            print the guest's whole report as JSON
 *
 * Cache: $VITALSEAL_RIG_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/vitalseal/rig. See docs/hardware.md.
 */
import { parseArgs } from 'node:util';
import { cacheDir } from './config.ts';
import { RigError } from './errors.ts';
import type { RigTransport } from './protocol.ts';
import { runRig, type RigReport } from './run.ts';

const HELP = `usage: npm run rig -- [--shell] [--transport both|coaps|mqtts|none] [--refresh] [--console] [--json] [--timeout MINUTES]

Starts a development fleet CA, mosquitto and the ingest service on this host's loopback, boots
Debian 12 arm64 in qemu-system-aarch64 (virt, Cortex-A72) with swtpm as its TPM, and checks inside
it: /dev/tpmrm0, Node, vitalseal keys create/sign on the TPM in the agent unit's sandbox (the
signature verified here with OpenSSL). Then the VM enrols its device through the ingest (key made
in its TPM, one-time token), and vitalseal-agent.service sends readings over each transport
(10.0.2.2 is this host; CoAPS, then MQTTS, by default; the agent reaches the TPM through
tpm2-abrmd); the ingest's HTTPS API serves the readings back decrypted, as SenML JSON.
The first run builds the images (15-30 minutes on two cores); later runs reuse them from
${cacheDir()}.
`;

const TRANSPORTS: Readonly<Record<string, readonly RigTransport[]>> = { both: ['coaps', 'mqtts'], coaps: ['coaps'], mqtts: ['mqtts'], none: [] };

function deviceSummary(r: RigReport): string[] {
  const d = r.result.device;
  const ing = r.ingest;
  if (d === undefined || ing === undefined || r.identity === undefined) return [];
  // The newest vital sign (ECG strips come as three records of samples and metadata).
  const sample = [...ing.readings].reverse().find((x) => typeof x.v === 'number' && !/\/ecg/.test(String(x.n))) ?? ing.readings.at(-1);
  const lines = [
    `enrolment       ${ing.deviceId}: key device-identity made in the VM's TPM, certificate ${r.identity.serial} issued through the host's ingest (one-time token, file ${d.tokenFile.mode} ${d.tokenFile.owner}, removed)`,
    `registry        ${ing.registry?.credential ?? '?'} SPKI sha256 ${r.identity.spkiSha256.slice(0, 16)}…, ${ing.registry?.status ?? '?'}; the TPM signed the challenge with it: ${r.identity.signatureVerified ? 'verified' : 'NOT verified'}`,
  ];
  for (const [i, p] of ing.phases.entries()) {
    const g = d.phases[i];
    let deviceSuite = '';
    try {
      const t = (JSON.parse(g?.status ?? '{}') as { transport?: { protocol?: string | null; suite?: string | null } }).transport;
      if (t?.suite != null) deviceSuite = `; the device negotiated ${t.protocol ?? ''} ${t.suite}`;
    } catch {
      // a status the agent could not give
    }
    lines.push(`${p.transport.padEnd(16)}${p.messagesAfter - p.messagesBefore} messages stored after ${p.seconds.toFixed(0)} s; the ingest saw ${p.seenTransport ?? '-'}, ${p.seenSuite ?? '-'}${deviceSuite}`);
  }
  lines.push(
    `agent process   ${d.phases[0]?.process ?? '-'}`,
    `reading         ${sample === undefined ? '(none)' : JSON.stringify(sample)}`,
    `                (GET /api/v1/devices/${ing.deviceId}/readings with a reader token: SenML JSON, opened and decrypted by the ingest; ${String(ing.posture?.['messages'] ?? '?')} messages stored)`,
  );
  return lines;
}

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
    ...deviceSummary(r),
    '',
    'timings',
    ...Object.entries(r.timings.build).map(([k, v]) => `  build: ${k.padEnd(38)} ${v.toFixed(1)} s`),
    `  build total (incl. cached steps)              ${r.timings.buildTotal.toFixed(1)} s`,
    `  VM start -> guest job running                 ${r.timings.bootToJob.toFixed(1)} s (guest uptime ${t.jobStartUptime.toFixed(1)} s)`,
    `  VM start -> guest's report (every step)      ${r.timings.bootToResult.toFixed(1)} s (first TPM signature at guest uptime ${t.signatureUptime.toFixed(1)} s)`,
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
      transport: { type: 'string' },
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
  const transports = TRANSPORTS[values.transport ?? 'both'];
  if (transports === undefined) throw new RigError('usage', '--transport takes coaps, mqtts, both or none');
  // Ctrl-C (or a SIGTERM) ends the VM; runRig then stops the ingest, the broker and swtpm.
  const interrupted = new AbortController();
  const onSignal = () => interrupted.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const report = await runRig({
    signal: interrupted.signal,
    log: (l) => process.stderr.write(`rig: ${l}\n`),
    ...(values.console === true ? { onConsoleLine: (l: string) => process.stderr.write(`vm| ${l}\n`) } : {}),
    ...(values.refresh === true ? { refresh: true } : {}),
    ...(timeout === undefined ? {} : { timeoutMinutes: timeout }),
    transports,
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
