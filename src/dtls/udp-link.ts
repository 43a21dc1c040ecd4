/**
 * The UDP socket under the DTLS adapter (udp.ts), in one of two forms:
 *
 * - `node`: a node:dgram socket, one system call per datagram each way (any platform).
 * - `batched`: src/net/batched-udp, Linux: the datagrams of one turn of the event loop go out in one
 *   system call (same-size runs to one peer as one segmented message), and received datagrams come
 *   up many per call. Needs koffi and 64-bit Linux; `batchedUdpStatus()` says whether it is here.
 *
 * `auto`, the default, picks `batched` where it is available and `node` elsewhere. Without an
 * option the VITALSEAL_UDP environment variable (`node`, `batched`, `auto`) decides, and `auto`
 * without it.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIP } from 'node:net';
import { BatchedUdpSocket, batchedUdpStatus, type OutgoingDatagram } from '../net/batched-udp/socket.ts';
import { concatBytes } from '../util/bytes.ts';
import { ApiMisuse } from '../util/errors.ts';

export type UdpIo = 'node' | 'batched' | 'auto';

export interface LinkAddress {
  readonly address: string;
  readonly port: number;
}

export interface LinkDatagram {
  readonly data: Uint8Array;
  readonly from: LinkAddress;
}

/** Called with what one read brought: one datagram on node:dgram, many on a batching link. */
export type LinkReceiver = (batch: readonly LinkDatagram[]) => void;

export interface DatagramLink {
  readonly io: 'node' | 'batched';
  /**
   * True: datagrams wait for `flush()` (or a full train of 8) and go out together. False: each goes
   * to the kernel at once (the Outbox then keeps only the last of a turn back, in case more records
   * join it).
   */
  readonly batches: boolean;
  /** Sends one datagram made of `parts`; `done` runs once the socket has taken it. */
  send(parts: Uint8Array[], port: number, host: string, done?: () => void): void;
  /** Hands what `send` queued to the kernel (batching links). */
  flush(): void;
  address(): LinkAddress;
  close(): Promise<void>;
}

function udpType(host: string): 'udp4' | 'udp6' {
  return isIP(host) === 6 ? 'udp6' : 'udp4';
}

/** The default when an option does not say: `auto`, or what VITALSEAL_UDP names. */
export const UDP_IO_ENV = 'VITALSEAL_UDP';

const UDP_IO: readonly unknown[] = ['node', 'batched', 'auto'];

export function resolveIo(option: UdpIo | undefined): 'node' | 'batched' {
  const env = process.env[UDP_IO_ENV];
  // A misspelt option or switch must not quietly pick a socket nobody asked for.
  if (option !== undefined && !UDP_IO.includes(option)) {
    throw new ApiMisuse('bad-udp-setting', `the udp option must be node, batched or auto, not ${JSON.stringify(option)}`);
  }
  if (option === undefined && env !== undefined && env !== '' && !UDP_IO.includes(env)) {
    throw new ApiMisuse('bad-udp-setting', `${UDP_IO_ENV} must be node, batched or auto, not "${env}"`);
  }
  const io = option ?? (env === 'node' || env === 'batched' ? env : 'auto');
  if (io === 'batched') return 'batched';
  if (io === 'auto') return batchedUdpStatus().available ? 'batched' : 'node';
  return 'node';
}

class NodeLink implements DatagramLink {
  readonly io = 'node';
  readonly batches = false;
  constructor(
    private readonly socket: Socket,
    private readonly connected: boolean,
  ) {}

  send(parts: Uint8Array[], port: number, host: string, done?: () => void): void {
    const data = parts.length === 1 ? (parts[0] as Uint8Array) : parts;
    // A send that throws (a socket closed or disconnected under us) is a lost datagram, which DTLS
    // recovers from by retransmission (RFC 9147 §5.8); it must not escape into the event loop.
    try {
      if (this.connected) {
        if (done === undefined) this.socket.send(data);
        else this.socket.send(data, done);
      } else if (done === undefined) this.socket.send(data, port, host);
      else this.socket.send(data, port, host, done);
    } catch {
      done?.();
    }
  }

  flush(): void {}

  address(): LinkAddress {
    const a = this.socket.address();
    return { address: a.address, port: a.port };
  }

  close(): Promise<void> {
    return new Promise<void>((resolve) => {
      try {
        this.socket.close(() => resolve());
      } catch {
        resolve(); // already closed
      }
    });
  }
}

/** Datagrams a batching link sends in one system call before the end of a turn. */
const TRAIN_DATAGRAMS = 8;

class BatchedLink implements DatagramLink {
  readonly io = 'batched';
  readonly batches = true;
  #pending: OutgoingDatagram[] = [];
  #done: (() => void)[] = [];
  constructor(private readonly socket: BatchedUdpSocket) {}

  send(parts: Uint8Array[], port: number, host: string, done?: () => void): void {
    const data = parts.length === 1 ? (parts[0] as Uint8Array) : concatBytes(...parts);
    this.#pending.push({ data, port, address: host });
    if (done !== undefined) this.#done.push(done);
    // A long burst leaves in trains, so the peer starts on the first datagrams while later ones
    // are still being protected (one system call per train instead of per datagram).
    if (this.#pending.length >= TRAIN_DATAGRAMS) this.flush();
  }

  flush(): void {
    const pending = this.#pending;
    const done = this.#done;
    this.#pending = [];
    this.#done = [];
    if (pending.length > 0) this.socket.send(pending);
    for (const d of done) d();
  }

  address(): LinkAddress {
    return this.socket.address();
  }

  close(): Promise<void> {
    this.flush();
    return this.socket.close();
  }
}

/** A bound server socket. */
export async function listenLink(io: 'node' | 'batched', host: string, port: number, bufferBytes: number, receive: LinkReceiver, onError: (e: Error) => void): Promise<DatagramLink> {
  if (io === 'batched') {
    return new BatchedLink(await BatchedUdpSocket.open({ host, port, bufferBytes, onDatagrams: receive }));
  }
  const socket = createSocket(udpType(host));
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, host, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  socket.on('message', (msg, rinfo) => receive([{ data: new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength), from: { address: rinfo.address, port: rinfo.port } }]));
  socket.on('error', onError);
  try {
    socket.setRecvBufferSize(bufferBytes);
    socket.setSendBufferSize(bufferBytes);
  } catch {
    // The system refused the size: keep its default.
  }
  return new NodeLink(socket, false);
}

/**
 * A client's socket, bound to an ephemeral port and connected to the server: the kernel then
 * passes up only the server's datagrams, and a send names no address (no per-datagram lookup).
 * Socket errors after the connect are ignored: a lost datagram is recovered by retransmission.
 */
export async function connectLink(io: 'node' | 'batched', host: string, port: number, receive: LinkReceiver): Promise<DatagramLink> {
  if (io === 'batched') {
    return new BatchedLink(await BatchedUdpSocket.open({ connect: { address: host, port }, receiveSlots: 4, onDatagrams: receive }));
  }
  const socket = createSocket(udpType(host));
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, () => {
        // Node hands a failed connect (ENETUNREACH with the link down, say) to this callback, not to
        // 'error', and leaves the socket unconnected: sends without an address would then throw.
        socket.connect(port, host, (...args: unknown[]) => {
          socket.off('error', reject);
          const failure = args[0];
          if (failure instanceof Error) reject(failure);
          else resolve();
        });
      });
    });
  } catch (e) {
    socket.close();
    throw e;
  }
  socket.on('message', (msg, rinfo) => receive([{ data: new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength), from: { address: rinfo.address, port: rinfo.port } }]));
  socket.on('error', () => undefined);
  return new NodeLink(socket, true);
}
