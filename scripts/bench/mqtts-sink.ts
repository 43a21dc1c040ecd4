/**
 * The ingest side of the MQTTS benchmark, in its own process: one shared-subscription consumer
 * (TLS, or plaintext for the baseline) whose handler only counts. Started with IPC by
 * mqtts.bench.ts; answers { count } when asked, and exits when the parent goes.
 */
import { createPrivateKey } from 'node:crypto';
import { plainTcp } from '../lib/plain-connector.ts';
import { inProcessTls } from '../../src/transport/mqtts/connector.ts';
import { createMqttsSubscriber } from '../../src/transport/mqtts/subscriber.ts';
import { trustFromPem } from '../../src/transport/mqtts/tls.ts';

interface SinkSettings {
  readonly host: string;
  readonly port: number;
  readonly plain: boolean;
  readonly clientId: string;
  readonly rootPem: string;
  readonly certChainPem: string;
  readonly keyPem: string;
}

let received = 0;
process.on('message', async (raw: unknown) => {
  const m = raw as { type: string; settings?: SinkSettings };
  if (m.type === 'count') {
    process.send?.({ type: 'count', received });
    return;
  }
  if (m.type !== 'start' || m.settings === undefined) return;
  const s = m.settings;
  const sub = createMqttsSubscriber({
    host: s.host,
    port: s.port,
    serverName: 'localhost',
    clientId: s.clientId,
    sessionExpirySeconds: 0,
    receiveMaximum: 256,
    tls: s.plain ? plainTcp() : inProcessTls({ certChainPem: s.certChainPem, privateKey: createPrivateKey(s.keyPem), trust: trustFromPem(s.rootPem) }),
    handler: async () => {
      received += 1;
    },
  });
  await sub.start();
  process.send?.({ type: 'ready' });
});
process.on('disconnect', () => process.exit(0));
