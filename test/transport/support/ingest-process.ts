/**
 * An ingest instance in its own process, for tests that kill it (SIGKILL) mid-stream. Reads its
 * settings as one JSON line on stdin; its "storage" is stdout: one JSON line per message, written
 * before the handler resolves (so before the PUBACK), the way a real ingest commits before it
 * acknowledges. Prints {"ready":true} once subscribed.
 */
import { createInterface } from 'node:readline';
import { createPrivateKey } from 'node:crypto';
import { inProcessTls } from '../../../src/transport/mqtts/connector.ts';
import { createMqttsSubscriber } from '../../../src/transport/mqtts/subscriber.ts';
import { trustFromPem } from '../../../src/transport/mqtts/tls.ts';

interface Settings {
  host: string;
  port: number;
  clientId: string;
  rootPem: string;
  certChainPem: string;
  keyPem: string;
  receiveMaximum?: number;
}

const line = await new Promise<string>((resolve) => createInterface({ input: process.stdin }).once('line', resolve));
const s = JSON.parse(line) as Settings;
const sub = createMqttsSubscriber({
  host: s.host,
  port: s.port,
  serverName: 'localhost',
  clientId: s.clientId,
  tls: inProcessTls({ certChainPem: s.certChainPem, privateKey: createPrivateKey(s.keyPem), trust: trustFromPem(s.rootPem) }),
  backoff: { minMs: 50, maxMs: 500 },
  ...(s.receiveMaximum === undefined ? {} : { receiveMaximum: s.receiveMaximum }),
  handler: async (m) => {
    await new Promise<void>((resolve, reject) => process.stdout.write(`${JSON.stringify({ deviceId: m.deviceId, payload: Buffer.from(m.payload).toString('base64'), dup: m.redelivered })}\n`, (e) => (e ? reject(e) : resolve())));
  },
});
// Diagnostics for the test's log (stderr): connection changes and failures, never payloads.
sub.on('disconnected', ({ reason }) => process.stderr.write(`ingest ${s.clientId}: disconnected: ${reason}\n`));
sub.on('connectFailed', ({ error }) => process.stderr.write(`ingest ${s.clientId}: connect failed: ${error.message}\n`));
sub.on('handlerError', ({ error }) => process.stderr.write(`ingest ${s.clientId}: handler failed: ${String(error)}\n`));
await sub.start();
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
