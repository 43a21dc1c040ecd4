/**
 * The legacy-monitor gateway: listens for HL7 v2 over MLLP (in clear, on the local network, as
 * bedside monitors send it), maps ORU^R01 observations to vitals and answers each message with an
 * HL7 ACK: AA only after its readings are in the durable queue (the `sink` resolved), AE with a
 * reason otherwise, AR for messages it does not process.
 *
 * Defences, each counted in `counters()` and logged by code (never with message content):
 * - framing: strict bounded MLLP (`MllpDecoder`); any violation closes that connection only;
 * - size: frames above `maxFrameBytes` close the connection before more is buffered;
 * - slow senders: `idleTimeoutMs` (no byte at all) and `frameTimeoutMs` (a frame begun must end
 *   within it) close the connection;
 * - floods: at most `maxConnections` at once (more are closed on accept) and at most
 *   `maxPendingFrames` messages waiting per connection (original mode sends one and waits).
 *
 * @example
 *   const gw = new MllpGateway({ host: '127.0.0.1', port: 2575, sink: pipeline, clock: systemClock, log });
 *   const { port } = await gw.start();
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { VitalReading } from '../../../codec/vitals.ts';
import type { Clock } from '../../../util/clock.ts';
import { DecodeError, VitalsealError } from '../../../util/errors.ts';
import type { Logger } from '../../log.ts';
import { buildAck } from './ack.ts';
import { parseHl7, type Hl7Message } from './message.ts';
import { MllpDecoder, encodeMllp } from './mllp.ts';
import { controlIdOf, Hl7Rejection, interpretOru } from './oru.ts';

/** Where accepted readings go: resolves only once they are durable (sealed and in the queue). */
export interface ReadingSink {
  submit(readings: readonly VitalReading[]): Promise<void>;
}

export interface MllpGatewayOptions {
  readonly host: string;
  /** 0 picks a free port (tests). */
  readonly port: number;
  readonly sink: ReadingSink;
  readonly clock: Clock;
  readonly log: Logger;
  readonly maxConnections?: number;
  readonly maxFrameBytes?: number;
  readonly idleTimeoutMs?: number;
  readonly frameTimeoutMs?: number;
  readonly maxPendingFrames?: number;
  readonly acceptSenders?: readonly string[];
  readonly utcOffsetMinutes?: number;
}

export interface MllpGatewayCounters {
  connections: number;
  connectionsRefused: number;
  messagesAccepted: number;
  messagesErrored: number;
  messagesRejected: number;
  readings: number;
  observationsIgnored: number;
  observationsImplausible: number;
  framingErrors: number;
  oversizedFrames: number;
  idleTimeouts: number;
  frameTimeouts: number;
  pipelineOverflows: number;
}

export interface MllpGatewayLimits {
  readonly maxConnections: number;
  readonly maxFrameBytes: number;
  readonly idleTimeoutMs: number;
  readonly frameTimeoutMs: number;
  readonly maxPendingFrames: number;
}

export const DEFAULT_MLLP_LIMITS: MllpGatewayLimits = Object.freeze({
  maxConnections: 8,
  maxFrameBytes: 64 * 1024,
  idleTimeoutMs: 120_000,
  frameTimeoutMs: 10_000,
  maxPendingFrames: 4,
});

export class MllpGateway {
  readonly #o: MllpGatewayOptions;
  readonly #limits: MllpGatewayLimits;
  readonly #sockets = new Set<Socket>();
  readonly #busy = new Set<Promise<void>>();
  readonly #counters: MllpGatewayCounters = {
    connections: 0, connectionsRefused: 0, messagesAccepted: 0, messagesErrored: 0, messagesRejected: 0,
    readings: 0, observationsIgnored: 0, observationsImplausible: 0, framingErrors: 0, oversizedFrames: 0,
    idleTimeouts: 0, frameTimeouts: 0, pipelineOverflows: 0,
  };
  #server: Server | undefined;
  #ackSeq = 0;
  #lastError: string | undefined;

  constructor(o: MllpGatewayOptions) {
    this.#o = o;
    this.#limits = {
      maxConnections: o.maxConnections ?? DEFAULT_MLLP_LIMITS.maxConnections,
      maxFrameBytes: o.maxFrameBytes ?? DEFAULT_MLLP_LIMITS.maxFrameBytes,
      idleTimeoutMs: o.idleTimeoutMs ?? DEFAULT_MLLP_LIMITS.idleTimeoutMs,
      frameTimeoutMs: o.frameTimeoutMs ?? DEFAULT_MLLP_LIMITS.frameTimeoutMs,
      maxPendingFrames: o.maxPendingFrames ?? DEFAULT_MLLP_LIMITS.maxPendingFrames,
    };
  }

  start(): Promise<{ host: string; port: number }> {
    const server = createServer((s) => this.#accept(s));
    this.#server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#o.port, this.#o.host, () => {
        server.off('error', reject);
        server.on('error', (e) => this.#o.log.error({ err: e }, 'hl7 gateway server error'));
        const a = server.address();
        if (a === null || typeof a === 'string') return reject(new Error('hl7 gateway: no address'));
        this.#o.log.info({ host: a.address, port: a.port }, 'hl7 gateway listening');
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /** Stops accepting, lets messages being stored finish (their ACKs go out), then closes connections. */
  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    const closed = server === undefined ? Promise.resolve() : new Promise<void>((r) => server.close(() => r()));
    await Promise.allSettled([...this.#busy]);
    for (const s of this.#sockets) s.end();
    const t = setTimeout(() => { for (const s of this.#sockets) s.destroy(); }, 2000);
    await closed;
    clearTimeout(t);
  }

  counters(): Readonly<MllpGatewayCounters> {
    return { ...this.#counters };
  }

  health(): { ok: boolean; detail: string } {
    if (this.#server === undefined) return { ok: false, detail: 'hl7 gateway not listening' };
    return { ok: true, detail: `hl7 gateway: ${this.#sockets.size} connection(s)${this.#lastError === undefined ? '' : `, last error ${this.#lastError}`}` };
  }

  #accept(socket: Socket): void {
    const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    if (this.#server === undefined || this.#sockets.size >= this.#limits.maxConnections) {
      this.#counters.connectionsRefused++;
      this.#note('hl7-too-many-connections');
      this.#o.log.warn({ remote, max: this.#limits.maxConnections }, 'hl7 connection refused: too many connections');
      socket.destroy();
      return;
    }
    this.#counters.connections++;
    this.#sockets.add(socket);
    socket.setNoDelay(true);
    const decoder = new MllpDecoder({ maxFrameBytes: this.#limits.maxFrameBytes });
    const pending: Uint8Array[] = [];
    let working = false;
    let frameTimer: NodeJS.Timeout | undefined;
    const close = (code: string, what: string) => {
      this.#note(code);
      this.#o.log.warn({ remote, code }, `hl7 connection closed: ${what}`);
      socket.destroy();
    };
    socket.setTimeout(this.#limits.idleTimeoutMs, () => {
      this.#counters.idleTimeouts++;
      close('hl7-idle-timeout', `no data for ${this.#limits.idleTimeoutMs} ms`);
    });
    const pump = async () => {
      if (working) return;
      working = true;
      try {
        while (pending.length > 0 && !socket.destroyed) {
          const frame = pending.shift() as Uint8Array;
          const ack = await this.#handle(frame, remote);
          if (!socket.destroyed) socket.write(encodeMllp(ack));
        }
      } finally {
        working = false;
      }
    };
    socket.on('data', (chunk: Buffer) => {
      let frames: Uint8Array[];
      try {
        frames = decoder.push(chunk);
      } catch (e) {
        clearTimeout(frameTimer);
        const code = e instanceof DecodeError ? e.code : 'mllp-error';
        if (code === 'mllp-frame-too-large') this.#counters.oversizedFrames++;
        else this.#counters.framingErrors++;
        close(code, e instanceof Error ? e.message : 'framing error');
        return;
      }
      if (frames.length > 0 || !decoder.inFrame) {
        clearTimeout(frameTimer);
        frameTimer = undefined;
      }
      if (decoder.inFrame && frameTimer === undefined) {
        frameTimer = setTimeout(() => {
          this.#counters.frameTimeouts++;
          close('hl7-frame-timeout', `frame not finished within ${this.#limits.frameTimeoutMs} ms`);
        }, this.#limits.frameTimeoutMs);
      }
      if (pending.length + frames.length > this.#limits.maxPendingFrames) {
        this.#counters.pipelineOverflows++;
        close('hl7-too-many-pending', `more than ${this.#limits.maxPendingFrames} messages sent without waiting for ACKs`);
        return;
      }
      pending.push(...frames);
      const run = pump().catch((e: unknown) => this.#o.log.error({ err: e, remote }, 'hl7 connection handler failed'));
      this.#busy.add(run);
      void run.finally(() => this.#busy.delete(run));
    });
    socket.on('error', () => undefined); // reset by peer and the like: 'close' follows
    socket.on('close', () => {
      clearTimeout(frameTimer);
      this.#sockets.delete(socket);
    });
  }

  /** One message → its ACK. Never throws. */
  async #handle(frame: Uint8Array, remote: string): Promise<Uint8Array> {
    const now = this.#o.clock.now();
    const ackId = `VS${now.toString(36)}${(this.#ackSeq++).toString(36)}`;
    let msg: Hl7Message | undefined;
    try {
      msg = parseHl7(frame);
      const oru = interpretOru(msg, {
        now,
        ...(this.#o.acceptSenders === undefined ? {} : { acceptSenders: this.#o.acceptSenders }),
        ...(this.#o.utcOffsetMinutes === undefined ? {} : { utcOffsetMinutes: this.#o.utcOffsetMinutes }),
      });
      this.#counters.observationsIgnored += oru.ignored;
      this.#counters.observationsImplausible += oru.implausible;
      if (oru.readings.length > 0) {
        try {
          await this.#o.sink.submit(oru.readings);
        } catch (e) {
          const code = e instanceof VitalsealError ? e.code : 'internal';
          throw new Hl7Rejection('AE', 207, code, `readings could not be stored (${code}); send again later`);
        }
      }
      this.#counters.messagesAccepted++;
      this.#counters.readings += oru.readings.length;
      this.#o.log.debug({ remote, readingCount: oru.readings.length, ignoredCount: oru.ignored }, 'hl7 message stored');
      return buildAck(msg, { code: 'AA', controlId: ackId, now: new Date(now) });
    } catch (e) {
      let rej: Hl7Rejection;
      if (e instanceof Hl7Rejection) rej = e;
      else if (e instanceof DecodeError) rej = new Hl7Rejection(msg === undefined ? 'AR' : 'AE', 102, e.code, e.message);
      else rej = new Hl7Rejection('AE', 207, 'internal', 'internal error');
      if (rej.ack === 'AR') this.#counters.messagesRejected++;
      else this.#counters.messagesErrored++;
      this.#note(rej.code);
      this.#o.log.warn({ remote, code: rej.code, ack: rej.ack, controlId: msg === undefined ? undefined : controlIdOf(msg) }, `hl7 message refused: ${rej.reason}`);
      return buildAck(msg, { code: rej.ack, controlId: ackId, now: new Date(now), error: { hl7Code: rej.hl7Code, reason: rej.reason } });
    }
  }

  #note(code: string): void {
    this.#lastError = code;
  }
}
