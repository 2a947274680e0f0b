// Listening TCP sockets of one network namespace, asked of the kernel over
// netlink (NETLINK_SOCK_DIAG, inet_diag) by libxpu.
//
// Why netlink: a dump that asks for state LISTEN only makes the kernel walk its
// listening sockets and nothing else, so one look costs in proportion to the
// listeners. /proc/net/tcp lists every socket of the namespace instead, and a
// pod under HTTP load holds tens of thousands in TIME_WAIT: re-read every 200 ms
// by each shim and by the DPU agent, that was CPU spent per connection served.
//
// A netlink socket answers for the namespace it was created in. Node.js cannot
// enter a namespace itself, so xpu_diag_open creates the socket from a
// short-lived thread of its own inside the namespace (this process's threads
// never change namespace); after that each look is one dump on that socket: no
// process, no namespace switch per poll. The socket holds a reference to the
// namespace until the watcher is closed.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { LISTENER_BYTES, errnoText, native } from '../xpu/native';
import { sortedPorts } from './ports';

export interface Listener {
  family: 4 | 6;
  address: string; // "0.0.0.0", "127.0.0.1", "::", "::1", …
  port: number;
}

function ipv6Text(b: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  // Compress the longest run of zero groups, as inet_ntop does.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/**
 * The first count records of struct xpu_listener in buf (xpu.h: family u8,
 * reserved u8, port u16 in host byte order, 16 address bytes in network order).
 */
export function decodeListeners(buf: Buffer, count: number): Listener[] {
  const out: Listener[] = [];
  for (let i = 0; i < count; i++) {
    const r = buf.subarray(i * LISTENER_BYTES, (i + 1) * LISTENER_BYTES);
    const port = os.endianness() === 'LE' ? r.readUInt16LE(2) : r.readUInt16BE(2);
    const addr = r.subarray(4, 20);
    if (r[0] === 4) out.push({ family: 4, address: [...addr.subarray(0, 4)].join('.'), port });
    else if (r[0] === 6) out.push({ family: 6, address: ipv6Text(addr), port });
  }
  return out;
}

export interface WatchOptions {
  /** How often to look while the ports change; a new listener is seen within this then (default 200 ms). */
  intervalMs?: number;
  /**
   * How often to look once the ports have not changed for settleMs since the
   * watcher started or last saw a change (default 800 ms): a new listener is
   * seen within this then, and the first change brings the watcher back to
   * intervalMs.
   */
  idleIntervalMs?: number;
  /** How long the ports must stay the same before the watcher looks less often (default 10 s). */
  settleMs?: number;
  /** Called with the sorted listening ports whenever the set changes. */
  onChange?: (ports: number[]) => void;
}

const INTERVAL_MS = 200;
const IDLE_INTERVAL_MS = 800;
const SETTLE_MS = 10_000;

/**
 * One timer per interval for every watcher of the process: a node daemon or an
 * agent serving 50 pods wakes 5 times a second, not 250 (idle CPU is what a
 * waiting pod costs the node, and on the DPU the sidecars' CPU).
 */
class Ticker {
  private static readonly byInterval = new Map<number, Ticker>();
  private readonly watchers = new Map<ListenerWatcher, () => void>();
  private readonly timer: NodeJS.Timeout;

  private constructor(private readonly intervalMs: number) {
    this.timer = setInterval(() => {
      for (const look of [...this.watchers.values()]) look();
    }, intervalMs);
    this.timer.unref(); // the owners of the halves keep the process alive
  }

  static add(intervalMs: number, w: ListenerWatcher, look: () => void): void {
    let t = Ticker.byInterval.get(intervalMs);
    if (!t) {
      t = new Ticker(intervalMs);
      Ticker.byInterval.set(intervalMs, t);
    }
    t.watchers.set(w, look);
  }

  static remove(w: ListenerWatcher): void {
    for (const t of Ticker.byInterval.values()) {
      if (!t.watchers.delete(w) || t.watchers.size > 0) continue;
      clearInterval(t.timer);
      Ticker.byInterval.delete(t.intervalMs);
    }
  }
}

export class ListenerWatcher {
  private watching = false;
  private lookCount = 0;
  private last: number[] = [];
  /** Room for this many records; grown when the namespace has more listeners. */
  private buf = Buffer.alloc(64 * LISTENER_BYTES);
  /** The records of the last look as the kernel gave them: the same bytes need no decoding. */
  private lastRaw = Buffer.alloc(0);

  private constructor(readonly netnsPath: string, private fd: number) {}

  /** Opens a sock_diag socket in the namespace at netnsPath. Does not poll yet. */
  static async open(netnsPath: string): Promise<ListenerWatcher> {
    const what = `watch listening sockets in ${netnsPath}`;
    let nsFd: number;
    try {
      nsFd = fs.openSync(netnsPath, 'r');
    } catch (err) {
      throw new Error(`${what}: ${(err as Error).message}`);
    }
    let rc: number;
    try {
      rc = native().diagOpen(nsFd);
    } catch (err) {
      throw new Error(`${what}: ${(err as Error).message}`); // libxpu missing or too old
    } finally {
      fs.closeSync(nsFd); // the socket holds the namespace from here on
    }
    if (rc < 0) {
      const why = -rc === os.constants.errno.EINVAL ? 'not a network namespace' : errnoText(-rc);
      throw new Error(`${what}: netlink sock_diag socket: ${why}`);
    }
    return new ListenerWatcher(netnsPath, rc);
  }

  /** The namespace's listening TCP sockets now: IPv4, then IPv6. */
  listeners(): Listener[] {
    const n = this.look(); // may grow this.buf
    return decodeListeners(this.buf, n);
  }

  // Asks the kernel; the records are in this.buf; returns how many.
  private look(): number {
    if (this.fd < 0) throw new Error(`listener watcher for ${this.netnsPath} is closed`);
    this.lookCount++;
    for (;;) {
      const room = this.buf.length / LISTENER_BYTES;
      const n = native().diagListeners(this.fd, this.buf, room);
      if (n < 0) throw new Error(`list listening sockets in ${this.netnsPath}: ${errnoText(-n)}`);
      if (n <= room) return n;
      // More than there was room for: ask again with room for them and a few that
      // may have appeared in between.
      this.buf = Buffer.alloc((n + 16) * LISTENER_BYTES);
    }
  }

  /** The namespace's listening TCP ports now, sorted. */
  ports(): number[] {
    return sortedPorts(this.listeners().map((l) => l.port));
  }

  /** How often this watcher has asked the kernel so far (diagnostics, tests). */
  get looks(): number {
    return this.lookCount;
  }

  /** The ports as of the last look. */
  get lastPorts(): number[] {
    return this.last;
  }

  /** Look now; true when the ports differ from the last look. */
  refresh(): boolean {
    const n = this.look(); // may grow this.buf
    const raw = this.buf.subarray(0, n * LISTENER_BYTES);
    if (raw.equals(this.lastRaw)) return false; // nothing to decode: the same sockets
    this.lastRaw = Buffer.from(raw);
    const now = sortedPorts(decodeListeners(raw, raw.length / LISTENER_BYTES).map((l) => l.port));
    if (now.length === this.last.length && now.every((p, i) => p === this.last[i])) return false;
    this.last = now;
    return true;
  }

  /**
   * Look every intervalMs (on the process's one timer for that interval), and
   * every idleIntervalMs once the ports have settled; onChange gets each new
   * set. The timer does not keep the process alive: the owner of the half does.
   *
   * Why settle: each look makes the kernel walk its whole table of listening
   * sockets (every namespace's: inet_diag filters by namespace as it walks), so
   * a node daemon or an agent serving 50 pods, 5 looks a second each, spent
   * most of its idle CPU there. A pod's ports change as its containers start;
   * a pod that has run a while looks 4 times less often.
   */
  start(opts: WatchOptions = {}): void {
    if (this.watching) return;
    this.watching = true;
    const interval = opts.intervalMs ?? INTERVAL_MS;
    const idle = Math.max(interval, opts.idleIntervalMs ?? IDLE_INTERVAL_MS);
    const settle = opts.settleMs ?? SETTLE_MS;
    let changedAt = Date.now();
    let next = 0;
    Ticker.add(interval, this, () => {
      const now = Date.now();
      if (now < next) return;
      let changed: boolean;
      try {
        changed = this.refresh();
      } catch {
        return; // closed between ticks
      }
      if (changed) changedAt = now;
      // Half a tick early, so that a late tick does not skip a look.
      next = now - changedAt < settle ? 0 : now + idle - interval / 2;
      if (changed) opts.onChange?.(this.last);
    });
  }

  /** Stop looking and release the namespace. Idempotent. */
  close(): void {
    if (this.watching) Ticker.remove(this);
    this.watching = false;
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}
