/**
 * The receiving side of the CoAPS benchmark, in its own process: a CoAPS server (DTLS 1.3 with
 * client certificates, the fleet root, device ids required) whose handler only counts and answers
 * 2.04, as the MQTTS benchmark's ingest consumer only counts. Started with IPC by coaps.bench.ts;
 * answers { port } when ready and { count } when asked; exits when the parent goes.
 */
import { createPrivateKey } from 'node:crypto';
import { X509PeerVerifier } from '../../src/dtls/peer-verifier.ts';
import { keyObjectSigner } from '../../src/keystore/signer.ts';
import { pemDecode } from '../../src/pki/pem.ts';
import { createCoapsServer, type CoapsServer } from '../../src/transport/coaps/server.ts';

interface SinkSettings {
  readonly rootPem: string;
  readonly certChainPem: string;
  readonly keyPem: string;
}

let received = 0;
let server: CoapsServer | undefined;
process.on('message', async (raw: unknown) => {
  const m = raw as { type: string; settings?: SinkSettings };
  if (m.type === 'count') {
    const c = server?.counters();
    // Retransmissions and empty ACKs say whether the run was smooth or stalled on lost datagrams.
    process.send?.({ type: 'count', received, retransmissions: c?.duplicates ?? 0, emptyAcks: c?.emptyAcks ?? 0 });
    return;
  }
  if (m.type !== 'start' || m.settings === undefined) return;
  const s = m.settings;
  server = await createCoapsServer({
    host: '127.0.0.1',
    port: 0,
    handler: async () => {
      received += 1;
      return { code: '2.04' };
    },
    dtls: {
      certificateChain: pemDecode(s.certChainPem, 'CERTIFICATE').map((b) => b.der),
      signer: keyObjectSigner(createPrivateKey(s.keyPem)),
      verifier: new X509PeerVerifier({ roots: [s.rootPem], purpose: 'client', requireDeviceId: true }),
      requireClientCertificate: true,
      // Every simulated device shares 127.0.0.1: the per-address handshake limit is for the Internet.
      limits: { maxPendingPerAddress: 128 },
    },
  });
  process.send?.({ type: 'ready', port: server.address().port });
});
process.on('disconnect', () => process.exit(0));
