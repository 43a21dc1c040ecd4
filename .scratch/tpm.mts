import { readFileSync } from 'node:fs';
import { startStack } from '../scripts/lib/stack.ts';
const s = await startStack({ devices: [{ id: 'bed-1', transport: 'mqtts', keyStore: 'tpm', source: 'simulated' }, { id: 'bed-2', transport: 'coaps', keyStore: 'tpm', source: 'simulated' }] });
try {
  await new Promise((r) => setTimeout(r, 6000));
  for (const d of s.devices) console.log(d.spec.id, JSON.stringify((await d.status()).queue));
  for (const d of s.devices) { await d.agent.stop(); await d.tpm!.down(); }
  const t0 = Date.now();
  for (const d of s.devices) d.startAgent();
  for (const d of s.devices) {
    const r = await Promise.race([d.agent.exited, new Promise((r) => setTimeout(() => r('still running after 60 s'), 60000))]);
    console.log(d.spec.id, 'exit', r, (Date.now() - t0) / 1000);
    console.log(readFileSync(d.logFile, 'utf8').split('\n').slice(-6).join('\n'));
  }
} finally { await s.stop(); }
