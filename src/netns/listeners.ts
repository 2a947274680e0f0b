// Listening TCP sockets of one network namespace, read from /proc/net/tcp and
// /proc/net/tcp6 as the kernel shows them to a process inside it.
//
// Node.js cannot enter a namespace (setns) itself, so a ListenerWatcher borrows
// one: a short-lived `nsenter --net=NETNS` child whose /proc/<pid>/net/tcp{,6}
// files it opens. An open /proc/net file holds a reference to the namespace it
// was opened in (the kernel's seq_open_net), so after the child has exited each
// re-read from offset 0 still lists that namespace's sockets: one open per pod,
// no process per poll. Closing the watcher drops the reference.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { sortedPorts } from './ports';

/** TCP_LISTEN in include/net/tcp_states.h, as /proc/net/tcp prints it. */
const TCP_LISTEN = '0A';

export interface Listener {
  family: 4 | 6;
  address: string; // "0.0.0.0", "127.0.0.1", "::", "::1", …
  port: number;
}

/** /proc/net/tcp prints each 32-bit word of an address in host byte order. */
function words(hex: string): Buffer {
  const out = Buffer.alloc(hex.length / 2);
  for (let i = 0; i < hex.length / 8; i++) {
    const word = parseInt(hex.slice(i * 8, i * 8 + 8), 16) >>> 0;
    if (os.endianness() === 'LE') out.writeUInt32LE(word, i * 4);
    else out.writeUInt32BE(word, i * 4);
  }
  return out;
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
 * The listening sockets in the text of /proc/net/tcp (family 4) or tcp6
 * (family 6). Lines that do not parse are skipped: the format has been stable
 * since Linux 2.6, and a half-written last line cannot occur (each read returns
 * whole records).
 */
export function parseProcNetTcp(text: string, family: 4 | 6): Listener[] {
  const out: Listener[] = [];
  const addrHex = family === 4 ? 8 : 32;
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== TCP_LISTEN) continue;
    const m = /^([0-9A-Fa-f]+):([0-9A-Fa-f]{4})$/.exec(f[1]);
    if (!m || m[1].length !== addrHex) continue;
    const raw = words(m[1]);
    const address = family === 4 ? [...raw].join('.') : ipv6Text(raw);
    out.push({ family, address, port: parseInt(m[2], 16) });
  }
  return out;
}

/** Read a whole /proc file from offset 0 through an fd kept open. */
function readFromStart(fd: number): string {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(64 * 1024);
  for (let pos = 0; ; ) {
    const n = fs.readSync(fd, buf, 0, buf.length, pos);
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
    pos += n;
  }
  return Buffer.concat(chunks).toString('latin1');
}

/** "net:[4026532xyz]" for a namespace file such as /run/netns/NAME. */
function netnsId(netnsPath: string): string {
  return `net:[${fs.statSync(netnsPath).ino}]`;
}

export interface WatchOptions {
  /** How often to look; a new listener is seen within this (default 200 ms). */
  intervalMs?: number;
  /** Called with the sorted listening ports whenever the set changes. */
  onChange?: (ports: number[]) => void;
}

export class ListenerWatcher {
  private timer: NodeJS.Timeout | null = null;
  private last: number[] = [];

  private constructor(readonly netnsPath: string, private fds: number[]) {}

  /** Opens /proc/net/tcp{,6} of the namespace at netnsPath. Does not poll yet. */
  static async open(netnsPath: string): Promise<ListenerWatcher> {
    const what = `watch listening sockets in ${netnsPath}`;
    let want: string;
    try {
      want = netnsId(netnsPath);
    } catch (err) {
      throw new Error(`${what}: ${(err as Error).message}`);
    }
    // The child says "ready" once nsenter has entered the namespace and exec'd
    // the shell, and then waits for its stdin to close.
    // $0 names it in ps (and in the leak check) while it lives.
    const child = spawn('nsenter', [`--net=${netnsPath}`, '--', 'sh', '-c', 'echo ready; read _', `heteropod-netns-watch ${netnsPath}`], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const exited = new Promise<void>((r) => child.once('close', () => r()));
    const fds: number[] = [];
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        let err = '';
        child.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('ready\n')) resolve();
        });
        child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
        child.once('error', (e) => reject(new Error(`${what}: nsenter: ${e.message}`)));
        child.once('exit', (code) => reject(new Error(`${what}: nsenter exited ${code}: ${err.trim()}`)));
      });
      const pid = child.pid!;
      for (const [file, optional] of [['tcp', false], ['tcp6', true]] as const) {
        try {
          fds.push(fs.openSync(`/proc/${pid}/net/${file}`, 'r'));
        } catch (err) {
          // tcp6 is absent when IPv6 is disabled; tcp never is.
          if (!(optional && (err as NodeJS.ErrnoException).code === 'ENOENT')) throw err;
          fds.push(-1);
        }
      }
      // The pid is still ours (the child waits on its stdin), but check that the
      // files are the namespace's and not nsenter's own before setns.
      const got = fs.readlinkSync(`/proc/${pid}/ns/net`);
      if (got !== want) throw new Error(`${what}: helper process ${pid} is in ${got}, not ${want}`);
      const w = new ListenerWatcher(netnsPath, [...fds]);
      fds.length = 0; // handed over to the watcher
      return w;
    } catch (err) {
      for (const fd of fds) if (fd >= 0) fs.closeSync(fd);
      throw err instanceof Error && err.message.startsWith(what) ? err : new Error(`${what}: ${(err as Error).message}`);
    } finally {
      child.stdin!.end();
      if (child.exitCode === null && child.signalCode === null) {
        const t = setTimeout(() => child.kill('SIGKILL'), 2000);
        await exited;
        clearTimeout(t);
      }
    }
  }

  /** The namespace's listening TCP sockets now. */
  listeners(): Listener[] {
    if (this.fds.length === 0) throw new Error(`listener watcher for ${this.netnsPath} is closed`);
    const [v4, v6] = this.fds;
    return [...parseProcNetTcp(readFromStart(v4), 4), ...(v6 >= 0 ? parseProcNetTcp(readFromStart(v6), 6) : [])];
  }

  /** The namespace's listening TCP ports now, sorted. */
  ports(): number[] {
    return sortedPorts(this.listeners().map((l) => l.port));
  }

  /** The ports as of the last look. */
  get lastPorts(): number[] {
    return this.last;
  }

  /** Look now; true when the ports differ from the last look. */
  refresh(): boolean {
    const now = this.ports();
    if (now.length === this.last.length && now.every((p, i) => p === this.last[i])) return false;
    this.last = now;
    return true;
  }

  /**
   * Look every intervalMs; onChange gets each new set. The timer does not keep
   * the process alive: the owner of the half does.
   */
  start(opts: WatchOptions = {}): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      let changed: boolean;
      try {
        changed = this.refresh();
      } catch {
        return; // closed between ticks
      }
      if (changed) opts.onChange?.(this.last);
    }, opts.intervalMs ?? 200);
    this.timer.unref();
  }

  /** Stop looking and release the namespace. Idempotent. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const fd of this.fds.splice(0)) if (fd >= 0) fs.closeSync(fd);
  }
}
