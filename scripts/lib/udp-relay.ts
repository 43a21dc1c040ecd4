/**
 * A UDP relay on loopback between clients and a server, for tests: each client address gets its
 * own upstream socket (so the server sees one peer per client, and a client that rebinds becomes a
 * new address), and every datagram in either direction may be dropped, duplicated or delayed (and
 * so reordered) by a seeded PRNG: the same seed gives the same decisions. `freeze()` drops
 * everything until thawed (a peer that stopped answering, the connection otherwise intact).
 *
 * @example
 *   const relay = await startUdpRelay({ target: { host: '127.0.0.1', port: server.port }, seed: 7,
 *     profile: { drop: 0.2, duplicate: 0.1, delayMs: 2, jitterMs: 20 } });
 *   const uplink = createCoapsUplink({ host: '127.0.0.1', port: relay.port, ... });
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { Prng } from '../../src/agent/sensors/prng.ts';

export interface RelayProfile {
  /** Probability a datagram is dropped. */
  readonly drop: number;
  /** Probability a datagram that is not dropped is delivered twice. */
  readonly duplicate: number;
  /** Every delivery waits delayMs plus up to jitterMs (uniform): jitter reorders. */
  readonly delayMs: number;
  readonly jitterMs: number;
}

export const CLEAN: RelayProfile = Object.freeze({ drop: 0, duplicate: 0, delayMs: 0, jitterMs: 0 });

export interface RelayCounters {
  forwarded: number;
  dropped: number;
  duplicated: number;
  frozen: number;
}

export interface UdpRelay {
  readonly host: string;
  readonly port: number;
  readonly counters: RelayCounters;
  profile: RelayProfile;
  /** Drops every datagram, both ways, until the returned function is called. */
  freeze(): () => void;
  stop(): Promise<void>;
}

export interface UdpRelayOptions {
  readonly target: { readonly host: string; readonly port: number };
  /** Where clients send to (default 127.0.0.1, a port the OS picks). */
  readonly listen?: { readonly host: string; readonly port?: number };
  readonly seed?: number;
  readonly profile?: RelayProfile;
}

export async function startUdpRelay(o: UdpRelayOptions): Promise<UdpRelay> {
  const rng = new Prng(o.seed ?? 1);
  const front = createSocket('udp4');
  const host = o.listen?.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    front.once('error', reject);
    front.bind(o.listen?.port ?? 0, host, () => {
      front.off('error', reject);
      resolve();
    });
  });
  const upstream = new Map<string, Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const counters: RelayCounters = { forwarded: 0, dropped: 0, duplicated: 0, frozen: 0 };
  let frozen = false;
  let stopped = false;

  const relay: UdpRelay = {
    host,
    port: front.address().port,
    counters,
    profile: o.profile ?? CLEAN,
    freeze() {
      frozen = true;
      return () => {
        frozen = false;
      };
    },
    async stop() {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const s of upstream.values()) s.close();
      upstream.clear();
      await new Promise<void>((resolve) => front.close(() => resolve()));
    },
  };

  const deliver = (send: () => void) => {
    if (stopped) return;
    if (frozen) {
      counters.frozen++;
      return;
    }
    const p = relay.profile;
    if (rng.next() < p.drop) {
      counters.dropped++;
      return;
    }
    const copies = rng.next() < p.duplicate ? 2 : 1;
    if (copies === 2) counters.duplicated++;
    for (let i = 0; i < copies; i++) {
      counters.forwarded++;
      const wait = p.delayMs + Math.floor(rng.next() * p.jitterMs);
      if (wait === 0) {
        send();
        continue;
      }
      const t = setTimeout(() => {
        timers.delete(t);
        if (!stopped) send();
      }, wait);
      timers.add(t);
    }
  };

  front.on('message', (msg: Buffer, from: RemoteInfo) => {
    const key = `${from.address}:${from.port}`;
    let up = upstream.get(key);
    if (up === undefined) {
      const s = createSocket('udp4');
      // The target is on this machine (loopback or a local veth address): the upstream socket
      // binds that same address, so nothing listens anywhere else.
      s.bind(0, o.target.host);
      s.on('message', (reply: Buffer) => deliver(() => front.send(reply, from.port, from.address)));
      s.on('error', () => undefined);
      upstream.set(key, s);
      up = s;
    }
    const socket = up;
    deliver(() => socket.send(msg, o.target.port, o.target.host));
  });
  front.on('error', () => undefined);
  return relay;
}
