/**
 * `npm run build:agent [-- --outdir DIR]`: the device agent's bundle (scripts/lib/agent-bundle.ts),
 * by default into dist/agent/, which the Raspberry Pi unit and the rig run with plain node.
 */
import { parseArgs } from 'node:util';
import { AGENT_BUNDLE_DIR, buildAgentBundle } from './lib/agent-bundle.ts';

const { values } = parseArgs({ options: { outdir: { type: 'string' } } });
const bundle = await buildAgentBundle(values.outdir ?? AGENT_BUNDLE_DIR);
const kib = (n: number) => `${(n / 1024).toFixed(0)} KiB`;
process.stdout.write(`agent bundle: ${bundle.entry} (+ ${bundle.files.length - 1} files); largest inputs:\n`);
for (const i of bundle.inputs.slice(0, 8)) process.stdout.write(`  ${kib(i.bytes).padStart(8)}  ${i.path}\n`);
