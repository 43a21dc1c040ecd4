/**
 * The agent's structured logs (pino, JSON lines). What is logged: events and counts: start-up,
 * self-test results, queue recovery, connects and disconnects, back-off delays, rejected messages
 * by sequence number and reason code, HL7 errors by code, certificate expiry. What is never logged:
 * vital-sign values, sealed or plaintext payloads, key bytes, patient fields from HL7 messages, PINs
 * or passphrases. Call sites pass only such metadata; the redaction paths below are a second line
 * of defence that blanks any field with a name that could carry them, at any depth up to two.
 *
 * @example
 *   const log = createLogger({ level: 'info' });
 *   log.info({ seq: 42, depth: 3 }, 'message acknowledged');
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger } from 'pino';

/** Field names blanked wherever they appear (top level, one and two levels down). */
export const REDACTED_FIELDS: readonly string[] = Object.freeze([
  'value', 'values', 'reading', 'readings', 'vitals', 'samples', 'ecg', 'payload', 'plaintext', 'pack',
  'key', 'keys', 'privateKey', 'secret', 'pin', 'passphrase', 'password', 'cek',
  'patient', 'pid', 'mrn', 'hl7', 'frame',
]);

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface LoggerOptions {
  readonly level?: LogLevel;
  /** Where JSON lines go; default stdout. */
  readonly destination?: DestinationStream;
  /** Fixed fields on every line (e.g. the device id). */
  readonly base?: Record<string, string>;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const paths = REDACTED_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`]);
  return pino({
    level: opts.level ?? 'info',
    base: { ...opts.base },
    redact: { paths, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, opts.destination ?? pino.destination({ dest: 1, sync: false }));
}

/** A logger that drops everything (embedding without logs, unit tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
