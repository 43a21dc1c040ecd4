/**
 * Prometheus text exposition format (version 0.0.4) on a local HTTP endpoint, 127.0.0.1 by default:
 * counts and gauges only, never a vital value or anything from a message. Samples are gathered when
 * scraped, from the parts' own counters, so nothing is double-booked.
 *
 * @example
 *   const m = new MetricsRegistry();
 *   m.gauge('vitalseal_agent_queue_depth', 'Messages held and not yet acknowledged', () => queue.stats().depth);
 *   const server = await serveMetrics(m, { host: '127.0.0.1', port: 9464 });
 */
import { createServer, type Server } from 'node:http';

type Labels = Readonly<Record<string, string>>;
type Sample = { readonly labels?: Labels; readonly value: number };

interface Family {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'gauge';
  readonly collect: () => number | readonly Sample[] | undefined;
}

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function fmt(n: number): string {
  if (Number.isNaN(n)) return 'NaN';
  if (n === Infinity) return '+Inf';
  if (n === -Infinity) return '-Inf';
  return String(n);
}

export class MetricsRegistry {
  readonly #families: Family[] = [];

  counter(name: string, help: string, collect: Family['collect']): void {
    this.#add({ name, help, type: 'counter', collect });
  }

  gauge(name: string, help: string, collect: Family['collect']): void {
    this.#add({ name, help, type: 'gauge', collect });
  }

  #add(f: Family): void {
    if (!NAME_RE.test(f.name)) throw new RangeError(`invalid metric name ${f.name}`);
    if (this.#families.some((x) => x.name === f.name)) throw new RangeError(`metric ${f.name} registered twice`);
    this.#families.push(f);
  }

  /** The exposition text. A collector that throws is reported as a comment, not a broken scrape. */
  render(): string {
    const out: string[] = [];
    for (const f of this.#families) {
      let v: ReturnType<Family['collect']>;
      try {
        v = f.collect();
      } catch {
        out.push(`# ${f.name}: collector failed`);
        continue;
      }
      if (v === undefined) continue;
      out.push(`# HELP ${f.name} ${f.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${f.name} ${f.type}`);
      const samples: readonly Sample[] = typeof v === 'number' ? [{ value: v }] : v;
      for (const s of samples) {
        const labels = s.labels === undefined ? '' : `{${Object.entries(s.labels).map(([k, x]) => `${k}="${escapeLabel(x)}"`).join(',')}}`;
        out.push(`${f.name}${labels} ${fmt(s.value)}`);
      }
    }
    return `${out.join('\n')}\n`;
  }
}

/** Serves GET /metrics; everything else is 404. Returns the bound address. */
export function serveMetrics(registry: MetricsRegistry, listen: { host: string; port: number }): Promise<{ server: Server; host: string; port: number }> {
  const server = createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/metrics' || req.url?.startsWith('/metrics?'))) {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(registry.render());
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
    }
  });
  server.headersTimeout = 5000;
  server.requestTimeout = 10_000;
  server.maxConnections = 16;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      const a = server.address();
      if (a === null || typeof a === 'string') return reject(new Error('metrics: no address'));
      resolve({ server, host: a.address, port: a.port });
    });
  });
}
