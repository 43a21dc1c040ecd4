/**
 * vitalseal/dtls: a DTLS 1.3 (RFC 9147) client and server with Connection IDs (RFC 9146).
 * The core is sans-I/O (`Connection`, `DtlsServerEndpoint`); `DtlsClientSocket` and `DtlsServer`
 * run it on a UDP socket: batched system calls where available (64-bit Linux; the default
 * `udp: 'auto'`, `batchedUdpStatus()` says whether they are here), node:dgram elsewhere or with
 * `udp: 'node'`. Design choices: docs/dtls.md; interop: docs/interop.md.
 *
 * @example
 *   import { DtlsClientSocket, X509PeerVerifier } from 'vitalseal/dtls';
 *   const client = await DtlsClientSocket.connect({
 *     host: 'ingest.example', port: 5684,
 *     verifier: new X509PeerVerifier({ roots: [fleetCaPem], purpose: 'server', serverName: 'ingest.example' }),
 *     certificateChain: [deviceCertDer], signer: tpmSigner,   // CertificateVerify is signed in the TPM
 *   });
 *   client.on('data', (d) => handle(d));
 *   await client.send(sealedReading);
 */
export type {
  ClientConfig, CommonConfig, ExternalPsk, ResumptionTicket, ServerConfig,
} from './config.ts';
export { Connection, type ConnectionOutput, type ConnectionStats, type ConnectionStatus, type DtlsEvent, type SessionInfo } from './connection.ts';
export { DtlsServerEndpoint, DEFAULT_ENDPOINT_LIMITS, type EndpointLimits, type EndpointOutput, type IncomingDatagram, type PeerAddress, type ServerSession } from './server-endpoint.ts';
export { DtlsClientSocket, DtlsServer, DtlsServerSession, type ClientSocketOptions, type ServerSocketOptions } from './udp.ts';
export type { UdpIo } from './udp-link.ts';
export { batchedUdpStatus } from '../net/batched-udp/socket.ts';
export { X509PeerVerifier, type PeerCertificateVerifier, type PeerIdentity, type X509PeerVerifierOptions } from './peer-verifier.ts';
export { alertFor, CertificateRejected, ConnectionClosed, DtlsTimeout, PeerAlert } from './errors.ts';
export { CIPHER_SUITES, DEFAULT_CIPHER_SUITES, type DtlsCipherSuite } from './suites.ts';
export type { AuthMode } from './handshake/context.ts';
export type { AlertName, CipherSuiteName, NamedGroupName } from './messages/constants.ts';
