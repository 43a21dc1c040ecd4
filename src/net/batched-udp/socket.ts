/**
 * A UDP socket that moves many datagrams per system call (Linux): what node:dgram cannot do, and
 * what one datagram per 1 KiB record costs most of DTLS's throughput (docs/dtls.md).
 *
 * - Sending: the datagrams given to one `send` go out in one `sendmmsg`. A run of datagrams to
 *   the same peer that are all the same size (the last may be shorter) travels as one message with
 *   UDP segmentation offload (`UDP_SEGMENT`, up to 64 segments): the kernel cuts it into the same
 *   datagrams, on the wire they are ordinary datagrams. A path that refuses segmentation (no
 *   checksum offload, a segment larger than the device MTU) turns it off for the socket and the
 *   same datagrams are sent one message each.
 * - Receiving: `recvmmsg` with UDP receive offload (`UDP_GRO`): datagrams of one flow that the
 *   kernel coalesced arrive as one buffer with their segment size and are cut back into the exact
 *   datagrams (all the segment size but the last). Datagram boundaries are never guessed.
 * - Waiting: a process-wide epoll set waited on by koffi's worker thread (poller.ts); the calls
 *   that move data are non-blocking and run on the event loop.
 *
 * UDP semantics are kept: a send the kernel refuses (no buffer, ICMP unreachable reported) loses
 * that datagram and counts it; a full send buffer (EAGAIN) keeps the rest queued until the socket
 * is writable.
 *
 * @example
 *   const s = await BatchedUdpSocket.open({ host: '127.0.0.1', onDatagrams: (batch) => {
 *     for (const d of batch) console.log(d.from, d.data.length);
 *   } });
 *   s.send([{ data, address: '127.0.0.1', port: 5684 }]);
 *   await s.close();
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { constants as osConstants } from 'node:os';
import { TransportError, Unsupported } from '../../util/errors.ts';
import type { CPointer } from '../../util/koffi-types.ts';
import {
  AF_INET, AF_INET6, CMSG_HEADER, EAGAIN, ECONNREFUSED, EINTR, EINVAL, EIO, IOVEC_SIZE, IPPROTO_IPV6, IPV6_V6ONLY,
  loadUdpBindings, MMSG_LEN, MMSGHDR_SIZE, MSG_CONTROL, MSG_CONTROLLEN, MSG_DONTWAIT, MSG_FLAGS, MSG_IOV, MSG_IOVLEN,
  MSG_NAME, MSG_NAMELEN, SO_RCVBUF, SO_SNDBUF, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOCKADDR_SIZE, SOL_SOCKET, SOL_UDP,
  UDP_GRO, UDP_SEGMENT, type UdpBindings,
} from './native.ts';
import { Poller, type Pollable } from './poller.ts';
import { decodeSockaddr, encodeSockaddr, type SocketAddress } from './sockaddr.ts';

export type { SocketAddress };

export interface OutgoingDatagram {
  readonly data: Uint8Array;
  /** Ignored on a connected socket. */
  readonly address: string;
  readonly port: number;
}

export interface ReceivedDatagram {
  readonly data: Uint8Array;
  readonly from: SocketAddress;
}

export interface BatchedUdpOptions {
  /** Local address literal to bind (default 127.0.0.1; with `connect`, the wildcard of the peer's family). */
  readonly host?: string;
  /** Local port (default 0: an ephemeral port). */
  readonly port?: number;
  /** Connect to this peer (a host name is looked up): only its datagrams are received. */
  readonly connect?: SocketAddress;
  /** SO_RCVBUF and SO_SNDBUF (capped by net.core.rmem_max/wmem_max); the system default if unset. */
  readonly bufferBytes?: number;
  /** Receive buffers per system call, each 64 KiB (default 16; 4 is plenty for one peer). */
  readonly receiveSlots?: number;
  /** Called on the event loop with each system call's worth of datagrams, in arrival order. */
  readonly onDatagrams: (batch: ReceivedDatagram[]) => void;
}

export interface BatchedUdpStats {
  datagramsSent: number;
  /** Messages sent with segmentation offload (each carried two or more datagrams). */
  segmentedMessages: number;
  /** Datagrams the kernel refused to send (counted, not retried: UDP). */
  sendDropped: number;
  datagramsReceived: number;
  /** Receive buffers that held two or more coalesced datagrams. */
  coalescedReceives: number;
  /** Received datagrams dropped: truncated (larger than 64 KiB) or of an unknown address family. */
  receiveDropped: number;
}

/** Whether batched UDP can be used in this process, and if not, why. Never throws. */
export function batchedUdpStatus(): { readonly available: boolean; readonly reason?: string } {
  const { bindings, reason } = loadUdpBindings();
  return bindings !== undefined ? { available: true } : { available: false, ...(reason === undefined ? {} : { reason }) };
}

const SLOT_BYTES = 65_536;
const SEND_MESSAGES = 64;
const SEND_BYTES = 256 * 1024;
/** The most a UDP/IPv4 datagram carries, and so the most one segmented message may hold. */
const MAX_UDP_PAYLOAD = 65_507;
/** UDP_MAX_SEGMENTS in the kernel. */
const MAX_SEGMENTS = 64;
/** CMSG_SPACE(sizeof(int)): room for one UDP_SEGMENT (u16) or UDP_GRO (int) control message. */
const CMSG_SPACE = 24;
const MSG_TRUNC = 0x20;
/** recvmmsg calls per readiness before giving the event loop back (the wait reports it ready again). */
const RECEIVE_ROUNDS = 4;

/** Native memory for one direction: freed on close. */
interface Area {
  readonly ptr: CPointer;
  readonly address: bigint;
  readonly bytes: Uint8Array;
  readonly view: DataView;
}

function area(b: UdpBindings, size: number): Area {
  const ptr = b.k.alloc('uint8_t', size) as CPointer;
  const ab = b.k.view(ptr, size) as ArrayBuffer;
  return { ptr, address: BigInt(b.k.address(ptr) as bigint), bytes: new Uint8Array(ab), view: new DataView(ab) };
}

export class BatchedUdpSocket implements Pollable {
  readonly fd: number;
  readonly stats: BatchedUdpStats = { datagramsSent: 0, segmentedMessages: 0, sendDropped: 0, datagramsReceived: 0, coalescedReceives: 0, receiveDropped: 0 };
  readonly #b: UdpBindings;
  readonly #poller: Poller;
  readonly #onDatagrams: (batch: ReceivedDatagram[]) => void;
  readonly #connected: SocketAddress | undefined;
  readonly #slots: number;
  #gso = true;
  readonly #gro: boolean;
  #queue: OutgoingDatagram[] = [];
  #wantsWrite = false;
  #closed: Promise<void> | undefined;
  readonly #addressCache = new Map<string, Uint8Array>();
  // Send side: data, message headers, iovecs, addresses, control messages.
  readonly #sData: Area;
  readonly #sMsgs: Area;
  readonly #sIov: Area;
  readonly #sNames: Area;
  readonly #sCtl: Area;
  // Receive side, one slot each.
  readonly #rData: Area;
  readonly #rMsgs: Area;
  readonly #rIov: Area;
  readonly #rNames: Area;
  readonly #rCtl: Area;

  private constructor(b: UdpBindings, fd: number, connected: SocketAddress | undefined, gro: boolean, options: BatchedUdpOptions) {
    this.#b = b;
    this.fd = fd;
    this.#connected = connected;
    this.#gro = gro;
    this.#onDatagrams = options.onDatagrams;
    this.#slots = Math.max(1, Math.min(64, options.receiveSlots ?? 16));
    this.#sData = area(b, SEND_BYTES);
    this.#sMsgs = area(b, SEND_MESSAGES * MMSGHDR_SIZE);
    this.#sIov = area(b, SEND_MESSAGES * IOVEC_SIZE);
    this.#sNames = area(b, SEND_MESSAGES * SOCKADDR_SIZE);
    this.#sCtl = area(b, SEND_MESSAGES * CMSG_SPACE);
    this.#rData = area(b, this.#slots * SLOT_BYTES);
    this.#rMsgs = area(b, this.#slots * MMSGHDR_SIZE);
    this.#rIov = area(b, this.#slots * IOVEC_SIZE);
    this.#rNames = area(b, this.#slots * SOCKADDR_SIZE);
    this.#rCtl = area(b, this.#slots * CMSG_SPACE);
    for (let i = 0; i < this.#slots; i++) {
      this.#rIov.view.setBigUint64(i * IOVEC_SIZE, this.#rData.address + BigInt(i * SLOT_BYTES), true);
      this.#rIov.view.setBigUint64(i * IOVEC_SIZE + 8, BigInt(SLOT_BYTES), true);
      const m = i * MMSGHDR_SIZE;
      this.#rMsgs.view.setBigUint64(m + MSG_IOV, this.#rIov.address + BigInt(i * IOVEC_SIZE), true);
      this.#rMsgs.view.setBigUint64(m + MSG_IOVLEN, 1n, true);
      if (connected === undefined) this.#rMsgs.view.setBigUint64(m + MSG_NAME, this.#rNames.address + BigInt(i * SOCKADDR_SIZE), true);
      if (gro) this.#rMsgs.view.setBigUint64(m + MSG_CONTROL, this.#rCtl.address + BigInt(i * CMSG_SPACE), true);
    }
    for (let i = 0; i < SEND_MESSAGES; i++) {
      this.#sMsgs.view.setBigUint64(i * MMSGHDR_SIZE + MSG_IOV, this.#sIov.address + BigInt(i * IOVEC_SIZE), true);
      this.#sMsgs.view.setBigUint64(i * MMSGHDR_SIZE + MSG_IOVLEN, 1n, true);
    }
    try {
      this.#poller = Poller.for(b);
      this.#poller.add(this);
    } catch (e) {
      // The epoll set refused it (no memory, the user's watch limit): nothing of this socket stays.
      this.#freeAreas();
      throw e;
    }
  }

  #freeAreas(): void {
    for (const a of [this.#sData, this.#sMsgs, this.#sIov, this.#sNames, this.#sCtl, this.#rData, this.#rMsgs, this.#rIov, this.#rNames, this.#rCtl]) this.#b.k.free(a.ptr);
  }

  /**
   * Opens, binds (and connects) a socket. Throws Unsupported when batched UDP is not available
   * here (`batchedUdpStatus()` says why) and TransportError when a call fails (address in use).
   */
  static async open(options: BatchedUdpOptions): Promise<BatchedUdpSocket> {
    const { bindings: b, reason } = loadUdpBindings();
    if (b === undefined) throw new Unsupported('batched-udp-unavailable', `batched UDP is not available: ${reason ?? 'unknown reason'}`);
    let connected: SocketAddress | undefined;
    if (options.connect !== undefined) {
      const host = options.connect.address;
      const address = isIP(host) !== 0 ? host : (await lookup(host)).address;
      connected = { address, port: options.connect.port };
    }
    // A connected socket binds the wildcard of the peer's family, as node:dgram's bind(0) does: the
    // kernel then picks the source address for the route (a loopback bind could reach only this host).
    const local = options.host ?? (connected === undefined ? '127.0.0.1' : isIP(connected.address) === 6 ? '::' : '0.0.0.0');
    const family = isIP(local) === 6 ? AF_INET6 : AF_INET;
    const fd = b.socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw failure('socket', b.errno());
    let gro = false;
    try {
      const int = (v: number) => new Uint8Array(new Int32Array([v]).buffer);
      if (family === AF_INET6) b.setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, int(0), 4);
      if (options.bufferBytes !== undefined) {
        // A size the system refuses leaves its default, as node:dgram's setters would.
        b.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, int(options.bufferBytes), 4);
        b.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, int(options.bufferBytes), 4);
      }
      gro = b.setsockopt(fd, SOL_UDP, UDP_GRO, int(1), 4) === 0;
      const at = encodeSockaddr(local, options.port ?? 0);
      if (b.bind(fd, at, at.length) !== 0) throw failure('bind', b.errno());
      if (connected !== undefined) {
        const to = encodeSockaddr(connected.address, connected.port);
        if (b.connect(fd, to, to.length) !== 0) throw failure('connect', b.errno());
      }
      return new BatchedUdpSocket(b, fd, connected, gro, options);
    } catch (e) {
      b.close(fd);
      throw e;
    }
  }

  get wantsWrite(): boolean {
    return this.#wantsWrite;
  }

  /** Whether received datagrams may arrive coalesced (UDP_GRO accepted by the kernel). */
  get receiveOffload(): boolean {
    return this.#gro;
  }

  /** Whether sends still use segmentation offload (turned off if the path refused it). */
  get sendOffload(): boolean {
    return this.#gso;
  }

  address(): SocketAddress {
    const out = new Uint8Array(SOCKADDR_SIZE);
    const len = new Uint32Array([SOCKADDR_SIZE]);
    if (this.#b.getsockname(this.fd, out, len) !== 0) throw failure('getsockname', this.#b.errno());
    const a = decodeSockaddr(out, len[0] as number);
    if (a === undefined) throw new TransportError('udp-address', 'the socket has no IP address');
    return a;
  }

  /** Queues the datagrams and sends what the socket takes now; the rest follows when it is writable. */
  send(datagrams: readonly OutgoingDatagram[]): void {
    if (this.#closed !== undefined) return;
    for (const d of datagrams) {
      // Larger than any UDP datagram: the kernel would refuse it (EMSGSIZE). Lost, and counted.
      if (d.data.length > MAX_UDP_PAYLOAD) this.stats.sendDropped++;
      else this.#queue.push(d);
    }
    if (!this.#wantsWrite) this.#flush();
  }

  /** Sends what it can of the queue, drops the rest, and closes. */
  close(): Promise<void> {
    if (this.#closed !== undefined) return this.#closed;
    if (this.#queue.length > 0 && !this.#wantsWrite) this.#flush();
    this.#queue = [];
    this.#closed = new Promise<void>((resolve) => {
      this.#poller.remove(this, () => {
        this.#b.close(this.fd);
        this.#freeAreas();
        resolve();
      });
    });
    return this.#closed;
  }

  onWritable(): void {
    this.#wantsWrite = false;
    this.#flush();
    if (!this.#wantsWrite) this.#poller.update(this);
  }

  #sockaddr(d: OutgoingDatagram): Uint8Array {
    const key = `${d.address}|${d.port}`;
    let a = this.#addressCache.get(key);
    if (a === undefined) {
      a = encodeSockaddr(d.address, d.port);
      if (this.#addressCache.size >= 1024) this.#addressCache.clear();
      this.#addressCache.set(key, a);
    }
    return a;
  }

  #flush(): void {
    const q = this.#queue;
    let head = 0;
    while (head < q.length) {
      const counts = this.#pack(q, head);
      const sent = this.#b.sendmmsg(this.fd, this.#sMsgs.ptr, counts.length, 0);
      if (sent < 0) {
        const e = this.#b.errno();
        if (e === EINTR) continue;
        if (e === EAGAIN) {
          this.#wantsWrite = true;
          this.#poller.update(this);
          break;
        }
        if ((e === EIO || e === EINVAL) && (counts[0] as number) > 1) {
          // The path will not segment (no checksum offload, or a segment over the device MTU):
          // send the same datagrams one message each from now on.
          this.#gso = false;
          continue;
        }
        // ENOBUFS, ECONNREFUSED from an earlier ICMP error: that message is lost.
        this.stats.sendDropped += counts[0] as number;
        head += counts[0] as number;
        continue;
      }
      for (let k = 0; k < sent; k++) {
        const n = counts[k] as number;
        this.stats.datagramsSent += n;
        if (n > 1) this.stats.segmentedMessages++;
        head += n;
      }
    }
    this.#queue = head >= q.length ? [] : q.slice(head);
  }

  /**
   * Writes messages for the queue from `head` into the send area, as many as fit one sendmmsg;
   * returns how many datagrams each message carries.
   */
  #pack(q: readonly OutgoingDatagram[], head: number): number[] {
    const counts: number[] = [];
    let offset = 0;
    let i = head;
    while (i < q.length && counts.length < SEND_MESSAGES) {
      const first = q[i] as OutgoingDatagram;
      const { n, total } = this.#runFrom(q, i);
      if (offset + total > SEND_BYTES) break;
      for (let j = 0; j < n; j++) {
        const d = (q[i + j] as OutgoingDatagram).data;
        this.#sData.bytes.set(d, offset);
        offset += d.length;
      }
      this.#writeMessage(counts.length, offset - total, total, first, n > 1 ? first.data.length : undefined);
      counts.push(n);
      i += n;
    }
    return counts;
  }

  /**
   * The datagrams from q[i] that travel as one message: a run to the same peer, all the size of the
   * first but the last, which may be shorter (what UDP_SEGMENT sends); just q[i] without offload.
   */
  #runFrom(q: readonly OutgoingDatagram[], i: number): { n: number; total: number } {
    const first = q[i] as OutgoingDatagram;
    const size = first.data.length;
    let n = 1;
    let total = size;
    if (!this.#gso || size === 0) return { n, total };
    while (i + n < q.length && n < MAX_SEGMENTS) {
      const next = q[i + n] as OutgoingDatagram;
      const len = next.data.length;
      if (len > size || len === 0 || total + len > MAX_UDP_PAYLOAD) break;
      if (this.#connected === undefined && (next.port !== first.port || next.address !== first.address)) break;
      total += len;
      n++;
      if (len < size) break;
    }
    return { n, total };
  }

  /** Message `m`: `total` bytes at `offset` of the send area, to `to`, cut in `segment`-byte datagrams if given. */
  #writeMessage(m: number, offset: number, total: number, to: OutgoingDatagram, segment: number | undefined): void {
    const msgs = this.#sMsgs.view;
    const mo = m * MMSGHDR_SIZE;
    this.#sIov.view.setBigUint64(m * IOVEC_SIZE, this.#sData.address + BigInt(offset), true);
    this.#sIov.view.setBigUint64(m * IOVEC_SIZE + 8, BigInt(total), true);
    if (this.#connected === undefined) {
      const name = this.#sockaddr(to);
      this.#sNames.bytes.set(name, m * SOCKADDR_SIZE);
      msgs.setBigUint64(mo + MSG_NAME, this.#sNames.address + BigInt(m * SOCKADDR_SIZE), true);
      msgs.setUint32(mo + MSG_NAMELEN, name.length, true);
    } else {
      msgs.setBigUint64(mo + MSG_NAME, 0n, true);
      msgs.setUint32(mo + MSG_NAMELEN, 0, true);
    }
    if (segment !== undefined) {
      const c = this.#sCtl.view;
      const co = m * CMSG_SPACE;
      c.setBigUint64(co, BigInt(CMSG_HEADER + 2), true);
      c.setInt32(co + 8, SOL_UDP, true);
      c.setInt32(co + 12, UDP_SEGMENT, true);
      c.setUint16(co + CMSG_HEADER, segment, true);
      msgs.setBigUint64(mo + MSG_CONTROL, this.#sCtl.address + BigInt(co), true);
      msgs.setBigUint64(mo + MSG_CONTROLLEN, BigInt(CMSG_SPACE), true);
    } else {
      msgs.setBigUint64(mo + MSG_CONTROL, 0n, true);
      msgs.setBigUint64(mo + MSG_CONTROLLEN, 0n, true);
    }
    msgs.setInt32(mo + MSG_FLAGS, 0, true);
  }

  onReadable(): boolean {
    if (this.#closed !== undefined) return false;
    let read = false;
    const b = this.#b;
    const msgs = this.#rMsgs.view;
    for (let round = 0; round < RECEIVE_ROUNDS; round++) {
      for (let i = 0; i < this.#slots; i++) {
        const mo = i * MMSGHDR_SIZE;
        if (this.#connected === undefined) msgs.setUint32(mo + MSG_NAMELEN, SOCKADDR_SIZE, true);
        if (this.#gro) msgs.setBigUint64(mo + MSG_CONTROLLEN, BigInt(CMSG_SPACE), true);
        msgs.setInt32(mo + MSG_FLAGS, 0, true);
      }
      const n = b.recvmmsg(this.fd, this.#rMsgs.ptr, this.#slots, MSG_DONTWAIT);
      if (n < 0) {
        const e = b.errno();
        // ECONNREFUSED: an ICMP error for an earlier send, now consumed; the queue may hold more.
        if (e === EINTR || e === ECONNREFUSED) continue;
        return read;
      }
      if (n === 0) return read;
      read = true;
      let total = 0;
      for (let i = 0; i < n; i++) total += msgs.getUint32(i * MMSGHDR_SIZE + MMSG_LEN, true);
      const copy = Buffer.allocUnsafe(total);
      const batch: ReceivedDatagram[] = [];
      let offset = 0;
      for (let i = 0; i < n; i++) {
        const mo = i * MMSGHDR_SIZE;
        const len = msgs.getUint32(mo + MMSG_LEN, true);
        if ((msgs.getInt32(mo + MSG_FLAGS, true) & MSG_TRUNC) !== 0) {
          this.stats.receiveDropped++;
          continue;
        }
        const from = this.#connected ?? decodeSockaddr(this.#rNames.bytes.subarray(i * SOCKADDR_SIZE, (i + 1) * SOCKADDR_SIZE), msgs.getUint32(mo + MSG_NAMELEN, true));
        if (from === undefined) {
          this.stats.receiveDropped++;
          continue;
        }
        const segment = this.#gro ? this.#segmentSize(i, len) : len;
        const start = offset;
        copy.set(this.#rData.bytes.subarray(i * SLOT_BYTES, i * SLOT_BYTES + len), start);
        offset += len;
        if (segment < len) this.stats.coalescedReceives++;
        if (len === 0) batch.push({ data: new Uint8Array(0), from });
        for (let at = start; at < start + len; at += segment) {
          const end = Math.min(at + segment, start + len);
          batch.push({ data: new Uint8Array(copy.buffer, copy.byteOffset + at, end - at), from });
        }
      }
      this.stats.datagramsReceived += batch.length;
      if (batch.length > 0) this.#onDatagrams(batch);
      if (this.#closed !== undefined || n < this.#slots) return read;
    }
    return read;
  }

  /** The UDP_GRO segment size the kernel attached to slot `i`, or `len` when it did not coalesce. */
  #segmentSize(i: number, len: number): number {
    const controlLength = Number(this.#rMsgs.view.getBigUint64(i * MMSGHDR_SIZE + MSG_CONTROLLEN, true));
    if (controlLength < CMSG_HEADER + 4) return len;
    const c = this.#rCtl.view;
    const co = i * CMSG_SPACE;
    if (c.getInt32(co + 8, true) !== SOL_UDP || c.getInt32(co + 12, true) !== UDP_GRO) return len;
    const size = c.getInt32(co + CMSG_HEADER, true);
    return size > 0 && size < len ? size : len;
  }
}

/** The error a failed call gives, with the errno's name as its code (EACCES, EADDRINUSE, …) as node:dgram's errors have. */
function failure(call: string, errno: number): TransportError {
  const name = Object.entries(osConstants.errno).find(([, n]) => n === errno)?.[0] ?? `errno ${errno}`;
  return new TransportError(name, `${call} failed: ${name}`);
}
