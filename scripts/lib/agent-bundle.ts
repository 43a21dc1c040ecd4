/**
 * The device agent as a device runs it: src/cli/agent-main.ts bundled by esbuild into one ES module
 * (`vitalseal-agent.mjs`) that plain node runs, no TypeScript loader in the process. (MQTTS with a
 * TPM-held key runs each TLS connection in `openssl s_client`, a Debian program, not in a file of
 * the bundle.)
 *
 * Code splitting keeps the agent's on-demand imports on demand: the configured transport (mqtt.js
 * or DTLS/CoAP), the TPM or PKCS#11 key store, the HL7 gateway, certificate renewal each land in a
 * chunk of their own, loaded only when the configuration asks for them. Every chunk sits beside the
 * entry file.
 *
 * npm packages stay external and load from the checkout's node_modules: the native ones must
 * (koffi, better-sqlite3, pkcs11js), and the others (mqtt.js, pino: CommonJS) are used as they
 * are published. The output therefore has to live inside the checkout (dist/agent/) or beside a
 * node_modules that has the dependencies.
 *
 * @example
 *   const { entry } = await buildAgentBundle(join(REPO, 'dist', 'agent'));
 *   spawn(process.execPath, [entry, 'agent', 'run', '--config', 'agent.yaml']);
 */
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

/** Where `npm run build:agent` writes the bundle (git-ignored). */
export const AGENT_BUNDLE_DIR = join(REPO, 'dist', 'agent');

export interface AgentBundle {
  /** The program: `node <entry> agent run --config FILE`. */
  readonly entry: string;
  /** Every file written, names only. */
  readonly files: readonly string[];
  /** Bytes of JavaScript per input module (esbuild's metafile), largest first. */
  readonly inputs: readonly { readonly path: string; readonly bytes: number }[];
}

/** Builds the agent bundle into `outdir` (emptied first). */
export async function buildAgentBundle(outdir: string = AGENT_BUNDLE_DIR): Promise<AgentBundle> {
  const { build } = await import('esbuild');
  rmSync(outdir, { recursive: true, force: true });
  mkdirSync(outdir, { recursive: true });
  const result = await build({
    absWorkingDir: REPO,
    entryPoints: {
      'vitalseal-agent': 'src/cli/agent-main.ts',
    },
    bundle: true,
    splitting: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    outdir,
    outExtension: { '.js': '.mjs' },
    chunkNames: '[name]-[hash]',
    // Stack traces in the journal point at the TypeScript source lines.
    sourcemap: 'linked',
    sourcesContent: false,
    metafile: true,
    logLevel: 'warning',
    legalComments: 'none',
  });
  const inputs = Object.entries(result.metafile.outputs)
    .flatMap(([, o]) => Object.entries(o.inputs).map(([path, i]) => ({ path, bytes: i.bytesInOutput })))
    .sort((a, b) => b.bytes - a.bytes);
  writeFileSync(join(outdir, 'meta.json'), JSON.stringify(result.metafile));
  return { entry: join(outdir, 'vitalseal-agent.mjs'), files: readdirSync(outdir).sort(), inputs };
}
