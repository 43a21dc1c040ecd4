/**
 * The load generator's process (see load-generator.ts): receives its devices over IPC, then
 * connects and streams on request, reporting progress every 100 ms. Exits when its parent goes.
 */
import { LoadGenerator, type LoadGeneratorConfig, type LoadMode, type RunOptions } from './load-generator.ts';

let gen: LoadGenerator | undefined;
const send = (m: object) => process.send?.(m);

process.on('message', (raw: unknown) => {
  const m = raw as { type: string; id?: number; config?: LoadGeneratorConfig; mode?: LoadMode; options?: RunOptions; key?: string };
  const id = m.id ?? 0;
  const fail = (e: unknown) => send({ type: 'error', id, message: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
  switch (m.type) {
    case 'init':
      try {
        gen = new LoadGenerator(m.config as LoadGeneratorConfig);
        send({ type: 'ready' });
      } catch (e) {
        fail(e);
        process.exit(1);
      }
      return;
    case 'connect':
      void (gen as LoadGenerator).connect(m.mode as LoadMode).then((result) => send({ type: 'connected', id, result }), fail);
      return;
    case 'run': {
      const g = gen as LoadGenerator;
      const timer = setInterval(() => send({ type: 'progress', progress: g.progress() }), 100);
      void g.run(m.options as RunOptions).then((report) => send({ type: 'report', id, report }), fail).finally(() => clearInterval(timer));
      return;
    }
    case 'stopNew':
      gen?.stopNew();
      return;
    case 'sealTo':
      try {
        (gen as LoadGenerator).sealTo(m.key as string);
        send({ type: 'sealing', id });
      } catch (e) {
        fail(e);
      }
      return;
    case 'rss':
      send({ type: 'rss', id, rss: process.memoryUsage().rss });
      return;
    case 'close':
      void (gen?.close() ?? Promise.resolve()).then(() => send({ type: 'closed', id }), fail);
      return;
    default:
      fail(new Error(`unknown request ${m.type}`));
  }
});
process.on('disconnect', () => process.exit(0));
