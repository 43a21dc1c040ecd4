/**
 * Plaintext MQTT over TCP as a `TlsConnector`, for benchmarks only: the baseline TLS's cost is
 * measured against, through the same uplink and subscriber code. Never part of the product (it
 * lives in scripts/, and the broker opens a plaintext listener only when a benchmark asks).
 *
 * @example
 *   const uplink = createMqttsUplink({ deviceId, host, port: broker.plainPort, tls: plainTcp(), clientId });
 */
import { connect } from 'node:net';
import type { TlsConnector } from '../../src/transport/mqtts/connector.ts';
import type { TlsSessionInfo } from '../../src/transport/mqtts/tls.ts';

export function plainTcp(): TlsConnector {
  return {
    description: 'plaintext TCP (benchmark baseline only)',
    open(target) {
      const socket = connect({ host: target.host, port: target.port });
      socket.setNoDelay(true);
      const secured = new Promise<TlsSessionInfo>((resolve, reject) => {
        socket.once('connect', () => resolve({ protocol: 'none', suite: 'none', group: 'none' }));
        socket.once('error', reject);
      });
      secured.catch(() => undefined);
      return { stream: socket, secured };
    },
    close: async () => undefined,
  };
}
