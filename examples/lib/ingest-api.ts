/**
 * Asking the ingest service what it stored: the proof that a reading went all the way, sealed on
 * the device and opened, checked and stored by the ingest. A reader API token (`vitalseal ingest
 * api-token create --name NAME --role reader`) on the HTTPS API (TLS 1.3, the ingest's certificate
 * checked against the fleet root); docs/ingest.md, "HTTPS API".
 *
 * `GET /api/v1/devices/{id}/readings` answers SenML JSON in the wire units of docs/senml-vitals.md
 * (SpO2 as a ratio, pressures in Pa); `VITALS[kind].fromWire` turns them back into clinical units.
 *
 * @example
 *   const api = new IngestApi({ url: 'https://ingest.ward7:8443/', token, caPem });
 *   console.log(describeStored(await api.stored('oxi-1', startedAt)));
 *   // oxi-1: stored 9 messages (18 readings) at the ingest; last heart rate 72 beat/min, SpO2 97 %
 */
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { VITALS, type VitalKind } from 'vitalseal/codec';

export interface IngestApiOptions {
  /** The ingest's HTTPS base URL, e.g. `https://ingest.ward7:8443/`. */
  readonly url: string;
  /** A reader (or admin) API token, `vst_...`. */
  readonly token: string;
  /** The fleet root certificate (PEM) the ingest's HTTPS certificate chains to. */
  readonly caPem: string;
}

export interface StoredSummary {
  readonly deviceId: string;
  /** Messages (sealed batches) stored since the time asked for. */
  readonly messages: number;
  /** Vital-sign readings in them (ECG strips not counted). */
  readonly readings: number;
  readonly ecgStrips: number;
  /** The newest value of each vital, in clinical units. */
  readonly last: Partial<Record<VitalKind, number>>;
}

interface SenmlJson {
  readonly n: string;
  readonly u: string;
  readonly t: number;
  readonly v?: number;
  readonly vd?: string;
}

const CLINICAL: Readonly<Record<VitalKind, [label: string, unit: string]>> = {
  'heart-rate': ['heart rate', 'beat/min'],
  spo2: ['SpO2', '%'],
  'respiration-rate': ['respiration', '/min'],
  'body-temperature': ['temperature', '°C'],
  'nibp-systolic': ['NIBP systolic', 'mmHg'],
  'nibp-diastolic': ['diastolic', 'mmHg'],
  'nibp-mean': ['mean', 'mmHg'],
};

export class IngestApi {
  readonly #o: IngestApiOptions;

  constructor(o: IngestApiOptions) {
    this.#o = o;
  }

  /** From the three things an operator hands a device team: the URL, a token file (0600) and the root. */
  static fromFiles(url: string, tokenFile: string, caFile: string): IngestApi {
    return new IngestApi({ url, token: readFileSync(tokenFile, 'utf8').trim(), caPem: readFileSync(caFile, 'utf8') });
  }

  /** GET `path` with the token; the parsed JSON body and the response headers. */
  get<T>(path: string): Promise<{ body: T; headers: Record<string, string | string[] | undefined> }> {
    return new Promise((resolve, reject) => {
      const req = request(new URL(path, this.#o.url), {
        ca: this.#o.caPem, minVersion: 'TLSv1.3', headers: { authorization: `Bearer ${this.#o.token}` }, timeout: 10_000,
      }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          // The API's errors are { error, message } and never carry data; show them as they are.
          if (res.statusCode !== 200) return reject(new Error(`GET ${path}: HTTP ${String(res.statusCode)} ${text.slice(0, 200)}`));
          try {
            resolve({ body: JSON.parse(text) as T, headers: res.headers });
          } catch {
            reject(new Error(`GET ${path}: the answer is not JSON`));
          }
        });
      });
      req.on('error', reject);
      req.on('timeout', () => req.destroy(new Error(`GET ${path}: no answer within 10 s`)));
      req.end();
    });
  }

  /** What the ingest stored for `deviceId` from `since` (ms) until now, decrypted by the ingest. */
  async stored(deviceId: string, since: number): Promise<StoredSummary> {
    const path = `/api/v1/devices/${encodeURIComponent(deviceId)}/readings?from=${Math.floor(since)}&limit=2000`;
    const { body, headers } = await this.get<SenmlJson[]>(path);
    const last: Partial<Record<VitalKind, number>> = {};
    const lastAt: Partial<Record<VitalKind, number>> = {};
    let readings = 0;
    let ecgStrips = 0;
    for (const r of body) {
      const kind = r.n.slice(deviceId.length + 1);
      if (kind === 'ecg') ecgStrips += 1;
      if (!(kind in VITALS) || r.v === undefined) continue; // ecg/interval, ecg/lsb: strip metadata
      const k = kind as VitalKind;
      readings += 1;
      if (r.t >= (lastAt[k] ?? -Infinity)) {
        lastAt[k] = r.t;
        last[k] = VITALS[k].fromWire(r.v);
      }
    }
    return { deviceId, messages: Number(headers['x-vitalseal-messages'] ?? 0), readings, ecgStrips, last };
  }

  /** Asks again every 500 ms until at least `messages` are stored or `timeoutMs` has passed; the last answer. */
  async waitForStored(deviceId: string, since: number, messages: number, timeoutMs: number): Promise<StoredSummary> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.stored(deviceId, since);
      if (s.messages >= messages || Date.now() > end) return s;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** `oxi-1: stored 9 messages (18 readings) at the ingest; last heart rate 72 beat/min, SpO2 97 %`. */
export function describeStored(s: StoredSummary): string {
  const last = (Object.keys(CLINICAL) as VitalKind[])
    .filter((k) => s.last[k] !== undefined)
    .map((k) => `${CLINICAL[k][0]} ${k === 'body-temperature' ? (s.last[k] as number).toFixed(1) : String(s.last[k])} ${CLINICAL[k][1]}`);
  const ecg = s.ecgStrips > 0 ? `, ${s.ecgStrips} ECG strips` : '';
  return `${s.deviceId}: stored ${s.messages} messages (${s.readings} readings${ecg}) at the ingest${last.length > 0 ? `; last ${last.join(', ')}` : ''}`;
}
