/**
 * One epoll set for every batched UDP socket of the process, waited on by one of koffi's worker
 * threads (the libuv pool) while the event loop runs. When the wait returns, the ready sockets
 * drain their queues on the event loop with non-blocking calls; those that had datagrams are read
 * once more on the next turn, and the wait is armed again only when that read finds nothing.
 *
 * One wait per process, not per socket, so a process with many client sockets holds one pool
 * thread, not one each. A socket joins or leaves the set with one `epoll_ctl` from the event loop,
 * which a wait in progress sees at once: opening and closing a socket wakes no thread. Each socket
 * is known to the set by a number of its own, never reused, so an event that names a socket
 * already gone is ignored rather than taken for a later socket with the same descriptor; its
 * descriptor can be closed as soon as it has left the set. An eventfd in the set wakes the wait
 * when the last socket leaves (the pool thread is given back) and when the process exits.
 */
import type { CPointer } from '../../util/koffi-types.ts';
import {
  EFD_CLOEXEC, EFD_NONBLOCK, EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD, EPOLL_EVENT_DATA, EPOLL_EVENT_SIZE,
  EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, type UdpBindings,
} from './native.ts';

export interface Pollable {
  readonly fd: number;
  /** True while sends wait for room in the socket's buffer. */
  readonly wantsWrite: boolean;
  /** Reads what is queued without blocking; true if anything was read. */
  onReadable(): boolean;
  onWritable(): void;
}

const pollers = new WeakMap<UdpBindings, Poller>();

/** Events one wait reports at most; more ready sockets are reported by the next wait. */
const MAX_EVENTS = 64;
/** The eventfd's number in the set; sockets count from 1. */
const WAKE_TOKEN = 0;

export class Poller {
  readonly #b: UdpBindings;
  readonly #epfd: number;
  readonly #wakeFd: number;
  readonly #wakeBytes = new Uint8Array(8);
  readonly #event = new Uint8Array(EPOLL_EVENT_SIZE);
  readonly #eventView = new DataView(this.#event.buffer);
  readonly #members = new Map<number, Pollable>();
  readonly #tokens = new Map<Pollable, number>();
  #nextToken = WAKE_TOKEN + 1;
  #armed = false;
  #exiting = false;
  #wakePending = false;
  readonly #events: CPointer;
  readonly #eventsView: DataView;

  private constructor(b: UdpBindings) {
    this.#b = b;
    this.#epfd = b.epollCreate(EPOLL_CLOEXEC);
    if (this.#epfd < 0) throw new Error(`epoll_create1 failed (errno ${b.errno()})`);
    this.#wakeFd = b.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.#wakeFd < 0) throw new Error(`eventfd failed (errno ${b.errno()})`);
    this.#ctl(EPOLL_CTL_ADD, this.#wakeFd, EPOLLIN, WAKE_TOKEN);
    this.#events = b.k.alloc('uint8_t', MAX_EVENTS * EPOLL_EVENT_SIZE) as CPointer;
    this.#eventsView = new DataView(b.k.view(this.#events, MAX_EVENTS * EPOLL_EVENT_SIZE) as ArrayBuffer);
    // Node joins libuv's pool threads on its way out: a wait still blocked in epoll_wait() there
    // would hold process.exit() forever. The wait is woken as the process exits, and never armed again.
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
    const token = this.#nextToken++;
    this.#ctl(EPOLL_CTL_ADD, member.fd, this.#interest(member), token);
    this.#members.set(token, member);
    this.#tokens.set(member, token);
    this.#arm();
  }

  /** The member's interest (wantsWrite) changed. */
  update(member: Pollable): void {
    const token = this.#tokens.get(member);
    if (token === undefined) return;
    this.#ctl(EPOLL_CTL_MOD, member.fd, this.#interest(member), token);
    this.#arm();
  }

  /** Stops watching `member`; `release` (closing its descriptor) may run at once: no wait can name it. */
  remove(member: Pollable, release: () => void): void {
    const token = this.#tokens.get(member);
    if (token !== undefined) {
      this.#tokens.delete(member);
      this.#members.delete(token);
      this.#ctl(EPOLL_CTL_DEL, member.fd, 0, token);
    }
    release();
    // The last socket gone: the wait gives its pool thread back.
    if (this.#members.size === 0 && this.#armed) this.#wake();
  }

  #interest(member: Pollable): number {
    return EPOLLIN | (member.wantsWrite ? EPOLLOUT : 0);
  }

  #ctl(op: number, fd: number, events: number, token: number): void {
    const v = this.#eventView;
    v.setUint32(0, events, true);
    v.setBigUint64(EPOLL_EVENT_DATA, BigInt(token), true);
    if (this.#b.epollCtl(this.#epfd, op, fd, op === EPOLL_CTL_DEL ? null : this.#event) !== 0) {
      throw new Error(`epoll_ctl(${op}) failed (errno ${this.#b.errno()})`);
    }
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
    this.#armed = true;
    this.#b.epollWaitAsync(this.#epfd, this.#events, MAX_EVENTS, -1, (error, result) => this.#returned(error === null || error === undefined ? result : -1));
  }

  #returned(result: number): void {
    this.#armed = false;
    const v = this.#eventsView;
    const hot: Pollable[] = [];
    try {
      for (let i = 0; i < result; i++) {
        const at = i * EPOLL_EVENT_SIZE;
        const events = v.getUint32(at, true);
        const token = Number(v.getBigUint64(at + EPOLL_EVENT_DATA, true));
        if (token === WAKE_TOKEN) {
          // Drained whatever woke it: a wake written after the wait returned would otherwise end the next.
          while (this.#b.read(this.#wakeFd, this.#wakeBytes, 8) === 8) {
            // drained
          }
          this.#wakePending = false;
          continue;
        }
        // A socket that left the set after the wait reported it: its number is not reused.
        const m = this.#members.get(token);
        if (m === undefined) continue;
        if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) !== 0 && m.onReadable()) hot.push(m);
        if ((events & EPOLLOUT) !== 0 && this.#members.get(token) === m) m.onWritable();
      }
    } finally {
      // Armed again even when a listener threw (that error still reaches the process as it would
      // from a node:dgram 'message' listener).
      if (result < 0) setTimeout(() => this.#arm(), 10); // EINTR or a failed call: do not spin
      else if (hot.length > 0) {
        this.#recheck(hot);
        // A socket waiting for room to send cannot wait for the re-read: its wait starts now.
        for (const m of this.#members.values()) {
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
        for (const m of hot) if (this.#tokens.has(m) && m.onReadable()) still.push(m);
      } finally {
        if (still.length > 0 && !this.#armed) this.#recheck(still);
        else this.#arm();
      }
    });
  }
}
