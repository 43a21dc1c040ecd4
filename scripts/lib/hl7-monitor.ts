/**
 * A simulated bedside monitor that speaks what many real ones do: HL7 v2.6 ORU^R01 messages over
 * MLLP, in clear, on the local network, one message every `intervalMs` with heart rate, SpO2,
 * respiration rate and temperature (LOINC and ISO/IEEE 11073 MDC codes, UCUM/MDC units), and a
 * blood pressure every `nibpEvery` messages. It waits for each acknowledgement (MSA|AA) before the
 * next message and reconnects when the link drops. For the demo and the examples only.
 *
 * Run as a program: `node --import tsx scripts/lib/hl7-monitor.ts --port 2575 [--host 127.0.0.1] [--interval-ms 1000]`
 */
import { connect, type Socket } from 'node:net';
import { parseArgs } from 'node:util';

const VT = 0x0b;
const FS = 0x1c;
const CR = 0x0d;

export interface MonitorOptions {
  readonly host: string;
  readonly port: number;
  readonly intervalMs: number;
  /** A blood pressure every this many messages (default 30). */
  readonly nibpEvery?: number;
  readonly seed?: number;
}

function stamp(t: number): string {
  return new Date(t).toISOString().replace(/[-:T]/g, '').slice(0, 14) + '+0000';
}

/** One ORU^R01 with the readings of one moment. */
export function oruMessage(n: number, t: number, v: { hr: number; spo2: number; rr: number; temp: number; nibp?: [number, number, number] }): string {
  const ts = stamp(t);
  const obx = (i: number, code: string, value: string, unit: string) => ['OBX', String(i), 'NM', code, '', value, unit, '', '', '', '', 'F', '', '', ts].join('|');
  const lines = [
    ['MSH', '^~\\&', 'MONITOR', 'ICU', 'VITALSEAL', 'HOSP', ts, '', 'ORU^R01^ORU_R01', `MON${String(n).padStart(8, '0')}`, 'P', '2.6'].join('|'),
    ['OBR', '1', '', '', 'VITALS^Vital signs', '', '', ts].join('|'),
    obx(1, '8867-4^Heart rate^LN', v.hr.toFixed(0), '/min^/min^UCUM'),
    obx(2, '150456^MDC_PULS_OXIM_SAT_O2^MDC', v.spo2.toFixed(0), '262688^MDC_DIM_PERCENT^MDC'),
    obx(3, '9279-1^Respiratory rate^LN', v.rr.toFixed(0), '/min^/min^UCUM'),
    obx(4, '8310-5^Body temperature^LN', v.temp.toFixed(1), 'Cel^Cel^UCUM'),
  ];
  if (v.nibp !== undefined) {
    lines.push(obx(5, '8480-6^Systolic blood pressure^LN', String(v.nibp[0]), 'mm[Hg]^mm[Hg]^UCUM'));
    lines.push(obx(6, '8462-4^Diastolic blood pressure^LN', String(v.nibp[1]), 'mm[Hg]^mm[Hg]^UCUM'));
    lines.push(obx(7, '8478-0^Mean blood pressure^LN', String(v.nibp[2]), 'mm[Hg]^mm[Hg]^UCUM'));
  }
  return lines.join('\r') + '\r';
}

/** Sends messages until `stop()`; counts what was acknowledged. */
export function runMonitor(o: MonitorOptions): { stop(): void; counts(): { sent: number; accepted: number; refused: number } } {
  let n = 0;
  let accepted = 0;
  let refused = 0;
  let stopped = false;
  let socket: Socket | undefined;
  let timer: NodeJS.Timeout | undefined;
  let rnd = (o.seed ?? 7) >>> 0;
  const random = () => {
    rnd = (rnd * 1664525 + 1013904223) >>> 0;
    return rnd / 2 ** 32;
  };
  const wobble = (base: number, span: number) => base + (random() - 0.5) * span;

  const sendOne = () => {
    if (stopped || socket === undefined) return;
    n += 1;
    const every = o.nibpEvery ?? 30;
    const nibp: [number, number, number] | undefined = n % every === 1 ? [Math.round(wobble(122, 8)), Math.round(wobble(78, 6)), 0] : undefined;
    if (nibp !== undefined) nibp[2] = Math.round((nibp[0] + 2 * nibp[1]) / 3);
    const text = oruMessage(n, Date.now(), { hr: wobble(76, 6), spo2: Math.min(100, wobble(97, 2)), rr: wobble(15, 3), temp: wobble(36.9, 0.3), ...(nibp === undefined ? {} : { nibp }) });
    socket.write(Buffer.concat([Buffer.from([VT]), Buffer.from(text, 'latin1'), Buffer.from([FS, CR])]));
  };

  const open = () => {
    if (stopped) return;
    let buf = Buffer.alloc(0);
    const s = connect({ host: o.host, port: o.port });
    socket = s;
    s.on('connect', sendOne);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf(FS);
        if (end < 0 || end + 1 >= buf.length) break;
        const ack = buf.subarray(buf.indexOf(VT) + 1, end).toString('latin1');
        buf = buf.subarray(end + 2);
        if (/\rMSA\|AA\|/.test(ack)) accepted += 1;
        else refused += 1;
        timer = setTimeout(sendOne, o.intervalMs);
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      socket = undefined;
      if (!stopped) timer = setTimeout(open, 1000);
    });
  };
  open();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      socket?.end();
    },
    counts: () => ({ sent: n, accepted, refused }),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string' }, 'interval-ms': { type: 'string', default: '1000' } } });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    process.stderr.write('usage: hl7-monitor.ts --port N [--host H] [--interval-ms MS]\n');
    process.exit(2);
  }
  const m = runMonitor({ host: values.host ?? '127.0.0.1', port, intervalMs: Number(values['interval-ms']) });
  const stop = () => {
    m.stop();
    process.stdout.write(`${JSON.stringify(m.counts())}\n`);
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
