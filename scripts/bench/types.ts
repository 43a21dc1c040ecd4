/** What a benchmark file (scripts/bench/<name>.bench.ts) exports and returns. */
export interface BenchContext {
  /** Where result files go (bench-results/). */
  readonly outDir: string;
  /** Shorter windows and fewer rounds: a smoke run, not numbers to quote. */
  readonly quick: boolean;
  log(line: string): void;
}

export interface BenchResult {
  /** e.g. "aead seal chacha20-poly1305 node 1KiB". */
  readonly name: string;
  readonly unit: string;
  readonly value: number;
  /** The baseline measured in the same run. */
  readonly baseline?: { readonly name: string; readonly value: number };
  /** value / baseline.value. For "lower is better" units (bytes, ms) the target says so. */
  readonly ratio?: number;
  readonly target?: { readonly ratio: number; readonly comparison: '>=' | '<=' };
  readonly meta?: Record<string, unknown>;
}

export interface BenchModule {
  run(ctx: BenchContext): Promise<BenchResult[]>;
}
