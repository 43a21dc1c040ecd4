/**
 * How an MQTTS uplink gets its TLS connections. The MQTT session (mqtt.js) runs in the agent's
 * process either way; only where the TLS connection lives differs:
 *
 * - `inProcessTls`: node:tls in this process, for keys the process may hold (the `software` store,
 *   a development key file).
 * - `opensslTpmTls` (openssl-tpm-tls.ts): `openssl s_client` per connection, signing with the TPM
 *   through the `tpm2` provider; this process sees only the plaintext MQTT bytes.
 * - `serverAuthTls`: node:tls in this process with no client certificate, for enrolment (a one-time
 *   token authenticates the device; src/pki/est-client.ts).
 *
 * Nothing here is MQTT-specific: the device's HTTPS requests to the enrolment endpoint (renewal over
 * mutual TLS) run over the same connectors.
 *
 * The in-process connectors build their SecureContext once (parsing certificates and keys costs
 * ~1.3 ms of CPU per context) and reuse it for every reconnect, and every connector checks the
 * broker's chain with `validateChain` (fleet profile, server name, SPKI pins, the injected clock)
 * before the first MQTT byte is written.
 *
 * @example
 *   const tls = inProcessTls({ certChainPem, privateKey, trust });
 *   const uplink = createMqttsUplink({ deviceId: 'bed-7', host: '127.0.0.1', port: 8883, tls });
 */
import type { KeyObject } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls';
import { checkServerIdentityWith } from '../../pki/node-tls.ts';
import { systemClock, type Clock } from '../../util/clock.ts';
import { ApiMisuse } from '../../util/errors.ts';
import { clientContextOptions, connectOptions, mapConnectionError, sessionInfoOf, type MqttsTrust, type TlsSessionInfo } from './tls.ts';

export interface TlsTarget {
  readonly host: string;
  readonly port: number;
  /** The name the broker's certificate must carry (DNS-ID or IP-ID, RFC 6125). */
  readonly serverName: string;
}

export interface TlsConnection {
  /** The plaintext side, for mqtt.js. Writes made before the handshake completes are held. */
  readonly stream: Duplex;
  /**
   * Resolves when the handshake is done and the broker's chain passed our checks; rejects with the
   * typed reason otherwise (then `stream` fails too).
   */
  readonly secured: Promise<TlsSessionInfo>;
}

export interface TlsConnector {
  /** For status lines: where the key lives and where TLS runs. Never a secret. */
  readonly description: string;
  open(target: TlsTarget): TlsConnection;
  /** Releases what the connector holds (s_client processes and files for a TPM key). Idempotent. */
  close(): Promise<void>;
}

export interface InProcessTlsOptions {
  /** The device certificate and its issuing CA, PEM (what the device presents). */
  readonly certChainPem: string;
  /** The device's private key; exported once, as PEM, into the SecureContext. */
  readonly privateKey: KeyObject;
  readonly trust: MqttsTrust;
  readonly clock?: Clock;
}

/** TLS in this process, for keys it may hold (development stores). */
export function inProcessTls(opts: InProcessTlsOptions): TlsConnector {
  if (opts.privateKey.type !== 'private') throw new ApiMisuse('bad-key', 'inProcessTls: privateKey must be a private key');
  // node:tls takes the key only as PEM (not a KeyObject, not DER), so it passes through a JS string
  // once, which cannot be wiped: one more reason this path is for development keys only.
  const context: SecureContext = createSecureContext({
    ...clientContextOptions(opts.trust),
    cert: opts.certChainPem,
    key: opts.privateKey.export({ format: 'pem', type: 'pkcs8' }),
  });
  return contextConnector(context, opts.trust, opts.clock ?? systemClock, 'TLS in this process (development key)');
}

/**
 * TLS in this process without a client certificate: the server is authenticated as always (pinned
 * roots, its name, the fleet profile), the client by something else. For enrolment, where a
 * one-time token authenticates the device (src/pki/est-client.ts).
 */
export function serverAuthTls(opts: { readonly trust: MqttsTrust; readonly clock?: Clock }): TlsConnector {
  return contextConnector(createSecureContext(clientContextOptions(opts.trust)), opts.trust, opts.clock ?? systemClock, 'TLS in this process (no client certificate)');
}

function contextConnector(context: SecureContext, trust: MqttsTrust, clock: Clock, description: string): TlsConnector {
  const checkServerIdentity = checkServerIdentityWith({
    roots: trust.roots,
    clock,
    ...(trust.spkiPins === undefined ? {} : { spkiPins: trust.spkiPins }),
  });
  let closed = false;
  return {
    description,
    open(target) {
      if (closed) throw new ApiMisuse('closed', 'the TLS connector is closed');
      const socket = tlsConnect({
        ...connectOptions(target.host, target.port, target.serverName),
        secureContext: context,
        // Checked against the configured name, whether or not it went out as SNI (an IP literal does not).
        checkServerIdentity: (_host, cert) => checkServerIdentity(target.serverName, cert),
      });
      // Small MQTT packets go out at once; Nagle would hold a PUBLISH until the previous one's ACK.
      socket.setNoDelay(true);
      const where = `${target.host}:${target.port}`;
      const secured = new Promise<TlsSessionInfo>((resolve, reject) => {
        socket.once('secureConnect', () => resolve(sessionInfoOf(socket)));
        socket.once('error', (e) => reject(mapConnectionError(e, where)));
        socket.once('close', () => reject(mapConnectionError(new Error('closed before the handshake completed'), where)));
      });
      // Whoever waits on `secured` sees the failure; an unobserved rejection must not crash.
      secured.catch(() => undefined);
      return { stream: socket, secured };
    },
    async close() {
      closed = true;
    },
  };
}
