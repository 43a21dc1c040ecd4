/**
 * The C library calls batched UDP needs, bound through koffi on first use: sockets, `sendmsg` with
 * UDP segmentation offload, `sendmmsg`, `recvmmsg` with UDP receive offload, epoll and an eventfd.
 *
 * Only 64-bit little-endian Linux (x86_64, aarch64: Raspberry Pi OS 64-bit) is supported: the
 * structure layouts below (msghdr 56 bytes, mmsghdr 64, iovec 16, epoll_event 12 on x86_64 where
 * the kernel packs it, 16 on aarch64) and the constants are that ABI's. Anywhere else
 * `loadUdpBindings` gives a one-line reason and the caller keeps node:dgram.
 *
 * FFI lives only here (STYLE.md rule 9): the rest of src/net/batched-udp sees `UdpBindings` and
 * plain numbers.
 */
import type { CPointer, Koffi, LibraryHandle, NativeFunction } from '../../util/koffi-types.ts';
import { bindUnlessOff, loadProgramSymbols, oneLine, type Binding } from '../../util/koffi-program.ts';

/** `off` keeps every socket on node:dgram even where batched I/O was asked for. */
export const BATCHED_UDP_ENV = 'VITALSEAL_BATCHED_UDP';

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_DGRAM = 2;
export const SOCK_NONBLOCK = 0x800;
export const SOCK_CLOEXEC = 0x80000;
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const IPPROTO_IPV6 = 41;
export const IPV6_V6ONLY = 26;
export const SOL_UDP = 17;
/** setsockopt / cmsg: segment size for a GSO send (Linux 4.18). */
export const UDP_SEGMENT = 103;
/** setsockopt / cmsg: receive coalesced datagrams with their segment size (Linux 5.0). */
export const UDP_GRO = 104;
export const MSG_DONTWAIT = 0x40;
export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EPOLL_CLOEXEC = 0x80000;
export const EFD_NONBLOCK = 0x800;
export const EFD_CLOEXEC = 0x80000;

export const EINTR = 4;
export const EIO = 5;
export const EAGAIN = 11;
export const EINVAL = 22;
export const ECONNREFUSED = 111;

/** Sizes and offsets of the 64-bit Linux ABI. */
export const IOVEC_SIZE = 16;
export const MSGHDR_SIZE = 56;
export const MMSGHDR_SIZE = 64;
export const MSG_NAME = 0;
export const MSG_NAMELEN = 8;
export const MSG_IOV = 16;
export const MSG_IOVLEN = 24;
export const MSG_CONTROL = 32;
export const MSG_CONTROLLEN = 40;
export const MSG_FLAGS = 48;
/** mmsghdr.msg_len: bytes received or sent for that message. */
export const MMSG_LEN = 56;
/** struct epoll_event { uint32_t events; uint64_t data; }: packed on x86_64 only. */
export const EPOLL_EVENT_SIZE = process.arch === 'x64' ? 12 : 16;
export const EPOLL_EVENT_DATA = process.arch === 'x64' ? 4 : 8;
/** struct cmsghdr { size_t len; int level; int type; } then data, aligned to 8. */
export const CMSG_HEADER = 16;
/** Room for one sockaddr_in6. */
export const SOCKADDR_SIZE = 28;

export interface UdpBindings {
  /** koffi itself, for alloc/free/view/address on the memory the calls use. */
  readonly k: Koffi;
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Uint8Array, len: number): number;
  connect(fd: number, addr: Uint8Array, len: number): number;
  getsockname(fd: number, addr: Uint8Array, len: Uint32Array): number;
  setsockopt(fd: number, level: number, name: number, value: Uint8Array, len: number): number;
  sendmsg(fd: number, msg: CPointer, flags: number): number;
  sendmmsg(fd: number, msgs: CPointer, count: number, flags: number): number;
  recvmmsg(fd: number, msgs: CPointer, count: number, flags: number): number;
  epollCreate(flags: number): number;
  /** `event`: one epoll_event (EPOLL_EVENT_SIZE bytes), or null for EPOLL_CTL_DEL. */
  epollCtl(epfd: number, op: number, fd: number, event: Uint8Array | null): number;
  /** epoll_wait() on koffi's worker thread: `done(result)` runs on the event loop. */
  epollWaitAsync(epfd: number, events: CPointer, max: number, timeoutMs: number, done: (error: unknown, result: number) => void): void;
  eventfd(initial: number, flags: number): number;
  read(fd: number, into: Uint8Array, length: number): number;
  write(fd: number, from: Uint8Array, length: number): number;
  close(fd: number): number;
  errno(): number;
}

/**
 * Binds the C library once per process. Returns the bindings, or a one-line reason they are not
 * available (not 64-bit Linux, koffi missing, disabled by VITALSEAL_BATCHED_UDP=off). Never throws.
 */
export const loadUdpBindings: () => Binding<UdpBindings> = bindUnlessOff(BATCHED_UDP_ENV, bind);

function bind(): Binding<UdpBindings> {
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) {
    return { reason: `batched UDP needs 64-bit Linux (x64 or arm64), this is ${process.platform}/${process.arch}` };
  }
  // The running program: its C library is the one Node itself calls (glibc on Debian).
  const program = loadProgramSymbols();
  if ('reason' in program) return { reason: program.reason };
  try {
    return { bindings: makeBindings(program.k, program.lib) };
  } catch (e) {
    return { reason: `the C library's socket calls are not usable through FFI: ${oneLine(e)}` };
  }
}

function makeBindings(k: Koffi, lib: LibraryHandle): UdpBindings {
  const f = (decl: string): NativeFunction => lib.func(decl);
  const socket = f('int socket(int domain, int type, int protocol)');
  const bindFn = f('int bind(int fd, const void *addr, uint32_t len)');
  const connect = f('int connect(int fd, const void *addr, uint32_t len)');
  const getsockname = f('int getsockname(int fd, void *addr, void *len)');
  const setsockopt = f('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');
  const sendmsg = f('intptr_t sendmsg(int fd, const void *msg, int flags)');
  const sendmmsg = f('int sendmmsg(int fd, void *msgs, uint32_t count, int flags)');
  const recvmmsg = f('int recvmmsg(int fd, void *msgs, uint32_t count, int flags, void *timeout)');
  const epollCreate = f('int epoll_create1(int flags)');
  const epollCtl = f('int epoll_ctl(int epfd, int op, int fd, void *event)');
  const epollWait = f('int epoll_wait(int epfd, void *events, int max, int timeout)');
  const eventfd = f('int eventfd(uint32_t initial, int flags)');
  const read = f('intptr_t read(int fd, void *buf, size_t count)');
  const write = f('intptr_t write(int fd, const void *buf, size_t count)');
  const close = f('int close(int fd)');
  return Object.freeze({
    k,
    socket: (d, t, p) => socket(d, t, p) as number,
    bind: (fd, a, l) => bindFn(fd, a, l) as number,
    connect: (fd, a, l) => connect(fd, a, l) as number,
    getsockname: (fd, a, l) => getsockname(fd, a, l) as number,
    setsockopt: (fd, level, name, v, l) => setsockopt(fd, level, name, v, l) as number,
    sendmsg: (fd, m, fl) => Number(sendmsg(fd, m, fl)),
    sendmmsg: (fd, m, n, fl) => sendmmsg(fd, m, n, fl) as number,
    recvmmsg: (fd, m, n, fl) => recvmmsg(fd, m, n, fl, null) as number,
    epollCreate: (fl) => epollCreate(fl) as number,
    epollCtl: (epfd, op, fd, ev) => epollCtl(epfd, op, fd, ev) as number,
    epollWaitAsync: (epfd, evs, max, t, done) => void (epollWait as unknown as { async: (...a: unknown[]) => void }).async(epfd, evs, max, t, done),
    eventfd: (i, fl) => eventfd(i, fl) as number,
    read: (fd, b, n) => Number(read(fd, b, n)),
    write: (fd, b, n) => Number(write(fd, b, n)),
    close: (fd) => close(fd) as number,
    errno: () => k.errno(),
  } satisfies UdpBindings);
}
