/**
 * First-boot enrolment of a certificate device, from its agent configuration alone.
 *
 * On first boot the device has a key store and a one-time enrolment token (`vitalseal ingest
 * enrol-token --device-id ID`, handed over in a 0600 file) but no certificate. This makes the
 * identity key inside the store named by `transport.primary.identity` (a TPM, a PKCS#11 token, or
 * the development software store), has the ingest's enrolment endpoint (`certificate.renew.url`)
 * issue the certificate for it, checks the answer against the pinned fleet root
 * (`transport.primary.caFile`), and writes the chain where `transport.primary.certFile` says. It is
 * `vitalseal provision --enrol` (docs/pki.md, "Provisioning"), the same step a factory line runs;
 * later renewals are the agent's own (`certificate.renew`, docs/agent.md).
 *
 * @example
 *   const config = loadAgentConfig('/etc/vitalseal/agent.yaml', process.env);
 *   await enrolOnFirstBoot(config, '/run/vitalseal/enrol.token');   // no-op once enrolled
 *   const agent = await createAgent({ config });
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { AgentConfig } from 'vitalseal/agent';

const run = promisify(execFile);

type Identity = NonNullable<AgentConfig['transport']['primary']['identity']>;

/** The `vitalseal` command of the installed package (its package.json "bin"). */
export function vitalsealCommand(): string {
  const pkgUrl = import.meta.resolve('vitalseal/package.json');
  const pkg = JSON.parse(readFileSync(fileURLToPath(pkgUrl), 'utf8')) as { bin: { vitalseal: string } };
  return fileURLToPath(new URL(pkg.bin.vitalseal, pkgUrl));
}

/** `vitalseal provision`'s key store options for the store the agent will use. */
function storeArgs(id: Identity): string[] {
  const secret = (s: { env: string } | { file: string }, flag: string) => ('env' in s ? [`--${flag}-env`, s.env] : [`--${flag}-file`, s.file]);
  const ks = id.keystore;
  switch (ks.kind) {
    case 'software':
      return ['--store', 'software', '--file', ks.path, ...secret(ks.passphrase, 'passphrase')];
    case 'tpm':
      return ['--store', 'tpm', ...(ks.fapiConfig === undefined ? [] : ['--fapi-config', ks.fapiConfig]), ...(ks.tcti === undefined ? [] : ['--tcti', ks.tcti]), ...(ks.dir === undefined ? [] : ['--dir', ks.dir])];
    case 'pkcs11':
      return ['--store', 'pkcs11', '--module', ks.module, '--token', ks.token, ...secret(ks.pin, 'pin')];
    default: {
      const never: never = ks;
      throw new Error(`unknown key store ${String(never)}`);
    }
  }
}

/**
 * Enrols the device unless `transport.primary.certFile` exists already. Returns true when it
 * enrolled. The token file is deleted afterwards: the ingest spent the token.
 */
export async function enrolOnFirstBoot(config: AgentConfig, tokenFile: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  const t = config.transport.primary;
  if (t.certFile === undefined || t.identity === undefined || t.caFile === undefined) throw new Error('transport.primary: a certificate device needs certFile, caFile and identity');
  if (existsSync(t.certFile)) return false;
  const url = config.certificate?.renew?.url;
  if (url === undefined) throw new Error('certificate.renew.url: needed to enrol (it names the ingest\'s enrolment endpoint)');
  if (tokenFile === undefined) throw new Error(`${t.certFile} does not exist: give the enrolment token file to enrol this device`);
  // provision writes chain.pem and device.pem into one new directory.
  if (basename(t.certFile) !== 'chain.pem') throw new Error('transport.primary.certFile: name it <identity dir>/chain.pem (what provision writes)');
  try {
    await run(process.execPath, [vitalsealCommand(), 'provision', '--device-id', config.device.id, '--enrol', url, '--token-file', tokenFile,
      '--ca-file', t.caFile, '--out', dirname(t.certFile), '--key-name', t.identity.keyLabel, ...storeArgs(t.identity)], { env });
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr ?? '';
    // provision's messages name codes and fields, never the token or a key.
    throw new Error(`enrolment failed: ${stderr.trim().split('\n').slice(-2).join(' / ') || (e as Error).message}`);
  }
  rmSync(tokenFile, { force: true });
  return true;
}
