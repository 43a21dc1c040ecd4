/**
 * One `poll()` for every batched UDP socket of the process, waiting on one of koffi's worker
 * threads (the libuv pool) while the event loop runs. When it returns, the ready sockets drain
 * their queues on the event loop with non-blocking calls; those that had datagrams are read once
 * more on the next turn, and the poll is armed again only when that read finds nothing.
 *
 * One wait per process, not per socket, so a process with many client sockets holds one pool
 * thread, not one each. An eventfd wakes the wait when the set changes; a socket's descriptor is
 * closed only after the wait that may still name it has returned, so a reused descriptor number
 * is never mistaken for the old socket.
 */
import type { CPointer } from '../../util/koffi-types.ts';
import { EFD_CLOEXEC, EFD_NONBLOCK, POLLERR, POLLFD_SIZE, POLLHUP, POLLIN, POLLNVAL, POLLOUT, type UdpBindings } from './native.ts';

export interface Pollable {
  readonly fd: number;
  /** True while sends wait for room in the socket's buffer. */
  readonly wantsWrite: boolean;
  /** Reads what is queued without blocking; true if anything was read. */
  onReadable(): boolean;
  onWritable(): void;
}

const pollers = new WeakMap<UdpBindings, Poller>();

export class Poller {
  readonly #b: UdpBindings;
  readonly #wakeFd: number;
  readonly #wakeBytes = new Uint8Array(8);
  readonly #members = new Set<Pollable>();
  /** Sockets removed while a wait was in flight: closed once it returns. */
  #closing: (() => void)[] = [];
  #armed = false;
  #exiting = false;
  #wakePending = false;
  #fds: CPointer | undefined;
  #fdsView: DataView | undefined;
  #capacity = 0;
  /** The members in the order of the pollfd array the wait in flight was given. */
  #order: Pollable[] = [];

  private constructor(b: UdpBindings) {
    this.#b = b;
    this.#wakeFd = b.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.#wakeFd < 0) throw new Error(`eventfd failed (errno ${b.errno()})`);
    // Node joins libuv's pool threads on its way out: a wait still blocked in poll() there would
    // hold process.exit() forever. The wait is woken as the process exits, and never armed again.
    process.once('exit', () => {
      this.#exiting = true;
      if (this.#armed) this.#wake();
    });
  }

  static for(b: UdpBindings): Poller {
    let p = pollers.get(b);
    if (p === undefined) {
      p = new Poller(b);
      pollers.set(b, p);
    }
    return p;
  }

  add(member: Pollable): void {
    this.#members.add(member);
    this.#changed();
  }

  /** The member's interest (wantsWrite) changed. */
  update(): void {
    this.#changed();
  }

  /** Stops watching `member`; `release` (closing its descriptor) runs once no wait can name it. */
  remove(member: Pollable, release: () => void): void {
    this.#members.delete(member);
    if (this.#armed) {
      this.#closing.push(release);
      this.#wake();
    } else release();
  }

  #changed(): void {
    if (this.#armed) this.#wake();
    else this.#arm();
  }

  #wake(): void {
    if (this.#wakePending) return;
    this.#wakePending = true;
    const one = new Uint8Array(8);
    one[0] = 1;
    this.#b.write(this.#wakeFd, one, 8);
  }

  #arm(): void {
    if (this.#armed || this.#exiting || this.#members.size === 0) return;
    const k = this.#b.k;
    const n = this.#members.size + 1;
    if (n > this.#capacity) {
      if (this.#fds !== undefined) k.free(this.#fds);
      this.#capacity = Math.max(n, this.#capacity * 2, 8);
      this.#fds = k.alloc('uint8_t', this.#capacity * POLLFD_SIZE) as CPointer;
      this.#fdsView = new DataView(k.view(this.#fds, this.#capacity * POLLFD_SIZE));
    }
    const v = this.#fdsView as DataView;
    v.setInt32(0, this.#wakeFd, true);
    v.setInt16(4, POLLIN, true);
    v.setInt16(6, 0, true);
    this.#order = [...this.#members];
    this.#order.forEach((m, i) => {
      const o = (i + 1) * POLLFD_SIZE;
      v.setInt32(o, m.fd, true);
      v.setInt16(o + 4, POLLIN | (m.wantsWrite ? POLLOUT : 0), true);
      v.setInt16(o + 6, 0, true);
    });
    this.#armed = true;
    this.#b.pollAsync(this.#fds as CPointer, n, -1, (error, result) => this.#returned(error === null || error === undefined ? result : -1));
  }

  #returned(result: number): void {
    this.#armed = false;
    const v = this.#fdsView as DataView;
    // Drained whatever woke it: a wake written after the wait returned would otherwise end the next.
    while (this.#b.read(this.#wakeFd, this.#wakeBytes, 8) === 8) {
      // drained
    }
    this.#wakePending = false;
    for (const release of this.#closing.splice(0)) release();
    const hot: Pollable[] = [];
    try {
      if (result > 0) {
        this.#order.forEach((m, i) => {
          const revents = v.getInt16((i + 1) * POLLFD_SIZE + 6, true);
          if (revents === 0 || !this.#members.has(m)) return;
          if ((revents & POLLNVAL) !== 0) {
            // A descriptor closed under us: stop watching it rather than spin on it.
            this.#members.delete(m);
            return;
          }
          if ((revents & (POLLIN | POLLERR | POLLHUP)) !== 0 && m.onReadable()) hot.push(m);
          if ((revents & POLLOUT) !== 0 && this.#members.has(m)) m.onWritable();
        });
      }
    } finally {
      // Armed again even when a listener threw (that error still reaches the process as it would
      // from a node:dgram 'message' listener).
      if (result < 0) setTimeout(() => this.#arm(), 10); // EINTR or a failed call: do not spin
      else if (hot.length > 0) {
        this.#recheck(hot);
        // A socket waiting for room to send cannot wait for the re-read: its wait starts now.
        for (const m of this.#members) {
          if (m.wantsWrite) {
            this.#arm();
            break;
          }
        }
      } else this.#arm();
    }
  }

  /**
   * Sockets that just had datagrams are read once more, without blocking, after the event loop has
   * run what those datagrams caused, before the wait is armed again: under a steady flow the next
   * datagrams are usually there by then. Each wait costs two thread wake-ups (the pool thread, then
   * the event loop), tens of microseconds of CPU on a virtual machine; a read that finds nothing
   * costs one system call. Only sockets that were just read are tried, so an idle process (or one
   * with many quiet sockets) pays nothing.
   */
  #recheck(hot: Pollable[]): void {
    setImmediate(() => {
      const still: Pollable[] = [];
      try {
        for (const m of hot) if (this.#members.has(m) && m.onReadable()) still.push(m);
      } finally {
        if (still.length > 0 && !this.#armed) this.#recheck(still);
        else this.#arm();
      }
    });
  }
}
