/**
 * The TPM TLS child process (started by tpm-tunnel.ts; not imported by anything).
 *
 * It runs with an OpenSSL configuration that loads the `tpm2` provider, so the device's TLS key, a
 * TSS2 PRIVATE KEY PEM, signs CertificateVerify inside the TPM. Everything else that OpenSSL does
 * here stays in the default provider (digests, RNG, ciphers, X25519): see tpm-tunnel.ts for why
 * those properties are set. This process holds one SecureContext, parsed once, and opens a TLS
 * connection each time the parent asks, relaying the plaintext both ways over IPC. It reports the
 * broker's chain to the parent, which checks it before any MQTT byte is written.
 *
 * Deliberately small and self-contained: node:tls and the message shapes, nothing else.
 */
import { checkServerIdentity, connect, createSecureContext, type DetailedPeerCertificate, type SecureContext, type TLSSocket } from 'node:tls';
import { MAX_CHAIN, MAX_CHUNK, parseToChild, type ToParent, type WireError } from './tunnel-protocol.ts';

const sockets = new Map<number, TLSSocket>();
let context: SecureContext | undefined;

function send(msg: ToParent): void {
  if (process.connected) process.send?.(msg);
}

function wire(e: unknown): WireError {
  const message = (e instanceof Error ? e.message : String(e)).slice(0, 1000);
  const code = typeof e === 'object' && e !== null && 'code' in e && typeof (e as { code: unknown }).code === 'string' ? (e as { code: string }).code : undefined;
  return code === undefined ? { message } : { code: code.slice(0, 128), message };
}

function chainOf(socket: TLSSocket): Uint8Array[] {
  const out: Uint8Array[] = [];
  let cert: DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  const seen = new Set<unknown>();
  while (cert !== undefined && cert.raw !== undefined && !seen.has(cert) && out.length < MAX_CHAIN) {
    seen.add(cert);
    out.push(new Uint8Array(cert.raw));
    const next: DetailedPeerCertificate | undefined = cert.issuerCertificate;
    if (next === undefined || next === cert || next.raw?.equals(cert.raw) === true) break;
    cert = next;
  }
  return out;
}

function open(id: number, host: string, port: number, serverName: string): void {
  if (context === undefined || sockets.has(id)) {
    send({ t: 'closed', id, error: { message: context === undefined ? 'not configured' : 'connection id in use' } });
    return;
  }
  const ip = /^\d{1,3}(\.\d{1,3}){3}$/.test(serverName) || serverName.includes(':');
  const socket = connect({
    host,
    port,
    ...(ip ? {} : { servername: serverName }),
    secureContext: context,
    rejectUnauthorized: true,
    checkServerIdentity: (_h, cert) => checkServerIdentity(serverName, cert),
  });
  // Small MQTT packets go out at once; Nagle would hold a PUBLISH until the previous one's ACK.
  socket.setNoDelay(true);
  sockets.set(id, socket);
  let failed: unknown;
  socket.once('secureConnect', () => {
    const cipher = socket.getCipher();
    const key = socket.getEphemeralKeyInfo();
    const group = key !== null && typeof key === 'object' && 'name' in key && typeof key.name === 'string' ? key.name.toLowerCase() : 'unknown';
    send({ t: 'secure', id, protocol: socket.getProtocol() ?? 'unknown', suite: cipher.standardName ?? cipher.name, group, chain: chainOf(socket) });
  });
  // One IPC message per event-loop turn rather than one per TLS record (the broker sends a record
  // per MQTT packet): what arrived together travels together.
  let pending: Buffer[] = [];
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (pending.length === 0) return;
    const all = pending.length === 1 ? (pending[0] as Buffer) : Buffer.concat(pending);
    pending = [];
    for (let at = 0; at < all.length; at += MAX_CHUNK) send({ t: 'data', id, data: new Uint8Array(all.subarray(at, at + MAX_CHUNK)) });
  };
  socket.on('data', (chunk: Buffer) => {
    pending.push(chunk);
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  });
  socket.on('end', () => {
    flush();
    send({ t: 'eof', id });
  });
  socket.on('error', (e) => {
    failed = e;
  });
  socket.on('close', () => {
    flush();
    sockets.delete(id);
    send(failed === undefined ? { t: 'closed', id } : { t: 'closed', id, error: wire(failed) });
  });
}

process.on('message', (raw: unknown) => {
  const msg = parseToChild(raw);
  if (msg === undefined) {
    // The parent is the only peer; a malformed message means something is badly wrong.
    send({ t: 'failed', error: { message: 'malformed message from the parent' } });
    process.exit(70);
  }
  switch (msg.t) {
    case 'configure':
      try {
        context = createSecureContext({
          minVersion: 'TLSv1.3',
          maxVersion: 'TLSv1.3',
          ecdhCurve: 'X25519',
          ca: msg.caPem,
          cert: msg.certChainPem,
          key: msg.keyPem,
        });
        send({ t: 'configured' });
      } catch (e) {
        send({ t: 'failed', error: wire(e) });
      }
      return;
    case 'open':
      open(msg.id, msg.host, msg.port, msg.serverName);
      return;
    case 'write':
      sockets.get(msg.id)?.write(msg.data);
      return;
    case 'end':
      sockets.get(msg.id)?.end();
      return;
    case 'destroy':
      sockets.get(msg.id)?.destroy();
      return;
    default: {
      const never: never = msg;
      throw new Error(`unhandled ${String(never)}`);
    }
  }
});

// The parent went away: nothing left to serve.
process.on('disconnect', () => {
  for (const s of sockets.values()) s.destroy();
  process.exit(0);
});

send({ t: 'ready' });
