/**
 * The candidate side of ingest-load.bench.ts, in its own process: the ingest runtime exactly as
 * `vitalseal ingest run` starts it (configuration file, self-test, key store, HTTPS, the MQTT
 * listener), plus a hook on stored messages that records when each (device, seq) was committed.
 *
 * IPC: { type: 'take' } → { records: [device index, seq, stored at (ms)]..., readings, rss (max since
 * the last take), cpuMs }; { type: 'stop' } → stops gracefully. Exits when the parent goes.
 */
import { loadIngestConfig } from '../../src/ingest/config.ts';
import { mqttListener } from '../../src/ingest/listeners/index.ts';
import { startIngest, type RunningIngest } from '../../src/ingest/runtime.ts';
import { cryptoSelfTest } from '../../src/ingest/selftest.ts';
import { sampleRss, takeRecords, type RecordSink } from './ingest-load-records.ts';

const log = {
  info: () => undefined,
  warn: (o: object, m: string) => process.stderr.write(`ingest: ${m} ${JSON.stringify(o)}\n`),
  error: (o: object, m: string) => process.stderr.write(`ingest: ${m} ${JSON.stringify(o)}\n`),
};
let running: RunningIngest | undefined;
const sink: RecordSink = { records: [], readings: 0, rssMax: 0 };
sampleRss(sink);
let counted = { transactions: 0, rows: 0 };

process.on('message', async (raw: unknown) => {
  const m = raw as { type: string; config?: string };
  try {
    if (m.type === 'start') {
      running = await startIngest(loadIngestConfig(m.config as string), { env: process.env, selfTest: cryptoSelfTest(), log, listeners: { mqtt: mqttListener } });
      running.core.service?.onAccepted((e) => {
        sink.records.push(Number(e.deviceId.slice(e.deviceId.lastIndexOf('-') + 1)), e.seq, Date.now());
        sink.readings += e.batch.readings.length + e.batch.ecg.length;
      });
      process.send?.({ type: 'ready' });
    } else if (m.type === 'take') {
      const batches = running?.core.metrics.storeBatch;
      if (batches !== undefined) {
        sink.transactions = batches.count() - counted.transactions;
        sink.rows = batches.sum() - counted.rows;
        counted = { transactions: batches.count(), rows: batches.sum() };
      }
      process.send?.({ type: 'taken', ...takeRecords(sink) });
    } else if (m.type === 'stop') {
      await running?.stop();
      process.send?.({ type: 'stopped' });
    }
  } catch (e) {
    process.send?.({ type: 'error', message: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
  }
});
process.on('disconnect', () => {
  void (running?.stop() ?? Promise.resolve()).finally(() => process.exit(0));
});
