/**
 * What both sides of ingest-load.bench.ts report: when each (device index, seq) was committed, the
 * readings stored, the largest resident memory seen, and CPU time, since the last `take`.
 */
export interface RecordSink {
  /** Flattened triples: device index, seq, committed at (ms since the epoch). */
  records: number[];
  readings: number;
  rssMax: number;
  /** Storage transactions and the messages they held (the group commit's batching). */
  transactions?: number;
  rows?: number;
}

export interface Taken {
  readonly records: number[];
  readonly readings: number;
  readonly rssMax: number;
  readonly cpuMs: number;
  readonly transactions: number;
  readonly rows: number;
}

let lastCpu = process.cpuUsage();

/** Samples this process's RSS every 200 ms into `sink.rssMax`. */
export function sampleRss(sink: RecordSink): void {
  setInterval(() => {
    sink.rssMax = Math.max(sink.rssMax, process.memoryUsage().rss);
  }, 200).unref();
}

export function takeRecords(sink: RecordSink): Taken {
  const cpu = process.cpuUsage(lastCpu);
  lastCpu = process.cpuUsage();
  const out = {
    records: sink.records, readings: sink.readings, rssMax: Math.max(sink.rssMax, process.memoryUsage().rss), cpuMs: (cpu.user + cpu.system) / 1000,
    transactions: sink.transactions ?? 0, rows: sink.rows ?? 0,
  };
  sink.records = [];
  sink.readings = 0;
  sink.rssMax = 0;
  sink.transactions = 0;
  sink.rows = 0;
  return out;
}
