// Windows and ports of the XPU transport, as a caller in one process sees them.
// One process owns one end of a link: it creates or attaches the window, then
// opens a port for its side. Every failure becomes an XpuError whose message
// names what was being done and why it failed.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MODES, NativeHandle, RawStats, SIDES, XpuError, XpuMode, XpuSide, errnoName, native } from './native';

export { XpuError, XpuMode, XpuSide, MODES, SIDES };

/** Windows live here (the stand-in for the CXL window shared with the DPU). */
export const WINDOW_DIR = '/dev/shm/heteropod';
export const WINDOW_SUFFIX = '.xpu';
export const RING_MIN = 256 * 1024;
export const RING_MAX = 64 * 1024 * 1024;

const E = os.constants.errno;

function fail(what: string, rc: number, reason?: string): never {
  const errno = -rc;
  throw new XpuError(`${what}: ${reason ?? errnoName(errno)}`, errno);
}

function windowReason(rc: number): string | undefined {
  switch (-rc) {
    case E.ENOENT: return 'no such window';
    case E.EBADMSG: return 'not an XPU window (wrong magic)';
    case E.EPROTONOSUPPORT: return 'unsupported window layout version';
    case E.EMSGSIZE: return 'window size does not match its header';
    case E.EACCES: case E.EPERM: return 'permission denied';
    default: return undefined;
  }
}

export function windowPath(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) throw new Error(`invalid XPU window name "${name}"`);
  return path.join(WINDOW_DIR, name + WINDOW_SUFFIX);
}

export interface XpuDirStats {
  frames: number; bytes: number; drops: number; wakeups: number;
  sleeps: number; spins: number; tapErrors: number; fullWaits: number;
}

export interface XpuSideStats {
  state: 'free' | 'attached' | 'closed';
  pid: number;
  mode: XpuMode;
  alive: boolean;
  peerUp: boolean;
  heartbeat: number;
  linkDowns: number;
  tap: string;
  netns: string;
}

export interface XpuStats {
  path: string;
  version: number;
  linkUp: boolean;
  ringBytes: number;
  frameMax: number;
  host: XpuSideStats;
  dpu: XpuSideStats;
  hostToDpu: XpuDirStats;
  dpuToHost: XpuDirStats;
}

function toSide(s: RawStats['side'][number]): XpuSideStats {
  return {
    state: (['free', 'attached', 'closed'] as const)[s.state] ?? 'closed',
    pid: s.pid,
    mode: MODES[s.mode] ?? 'elastic',
    alive: s.alive !== 0,
    peerUp: s.peer_up !== 0,
    heartbeat: Number(s.heartbeat),
    linkDowns: Number(s.link_downs),
    tap: s.tap,
    netns: s.netns,
  };
}

function toDir(d: RawStats['dir'][number]): XpuDirStats {
  return {
    frames: Number(d.frames), bytes: Number(d.bytes), drops: Number(d.drops), wakeups: Number(d.wakeups),
    sleeps: Number(d.sleeps), spins: Number(d.spins), tapErrors: Number(d.tap_errors), fullWaits: Number(d.full_waits),
  };
}

/** Statistics of the window at file, read from the window itself (any process). */
export function readStats(file: string): XpuStats {
  const out: Partial<RawStats> = {};
  const rc = native().windowStats(file, out);
  if (rc < 0) fail(`read XPU window ${file}`, rc, windowReason(rc));
  const s = out as RawStats;
  return {
    path: file,
    version: s.version,
    linkUp: s.link_up !== 0,
    ringBytes: s.ring_bytes,
    frameMax: s.frame_max,
    host: toSide(s.side[0]),
    dpu: toSide(s.side[1]),
    hostToDpu: toDir(s.dir[0]),
    dpuToHost: toDir(s.dir[1]),
  };
}

/** Every window file on this machine. */
/**
 * Removes a window file once no end uses it, and the window directory with the
 * last window in it (libxpu makes the directory on the first create).
 */
export function removeWindow(file: string): void {
  fs.rmSync(file, { force: true });
  try {
    fs.rmdirSync(path.dirname(file));
  } catch {
    // other windows remain, or it is gone
  }
}

export function listWindows(dir = WINDOW_DIR): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(WINDOW_SUFFIX))
    .sort()
    .map((f) => path.join(dir, f));
}

const TAP_NAME = /^[A-Za-z0-9_.-]{1,15}$/;

/** One end of a link: a TAP device in a namespace and its pump threads. */
export class XpuPort {
  private handle: NativeHandle | null;

  constructor(handle: NativeHandle, readonly window: XpuWindow, readonly side: XpuSide, readonly tap: string) {
    this.handle = handle;
  }

  get open(): boolean {
    return this.handle !== null;
  }

  /** Both ends attached and alive, as this end's monitor last saw it. */
  linkUp(): boolean {
    if (this.handle === null) return false;
    return native().portLinkUp(this.handle) === 1;
  }

  /** Wait until the link is up; false on timeout. Polls (control path only). */
  async waitUp(timeoutMs: number): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (this.linkUp()) return true;
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.linkUp();
  }

  /** Stop the pumps and remove the TAP device. Idempotent. */
  close(): void {
    if (this.handle === null) return;
    const h = this.handle;
    this.handle = null;
    const rc = native().portClose(h);
    this.window.portClosed(this);
    if (rc < 0) fail(`close XPU port ${this.tap}`, rc);
  }
}

/** A mapped window. create() makes the file; attach() maps an existing one. */
export class XpuWindow {
  private handle: NativeHandle | null;
  private readonly ports = new Set<XpuPort>();

  private constructor(handle: NativeHandle, readonly path: string) {
    this.handle = handle;
  }

  static create(file: string, opts: { ringBytes?: number } = {}): XpuWindow {
    const ring = opts.ringBytes ?? 0;
    if (ring !== 0 && (ring < RING_MIN || ring > RING_MAX || (ring & (ring - 1)) !== 0)) {
      throw new XpuError(`create XPU window ${file}: ring size ${ring} is not a power of two in [${RING_MIN}, ${RING_MAX}]`, E.EINVAL);
    }
    const out: NativeHandle[] = [null];
    const rc = native().windowCreate(file, ring, out);
    if (rc < 0) fail(`create XPU window ${file}`, rc, -rc === E.EEXIST ? 'it already exists' : windowReason(rc));
    return new XpuWindow(out[0], file);
  }

  static attach(file: string): XpuWindow {
    const out: NativeHandle[] = [null];
    const rc = native().windowAttach(file, out);
    if (rc < 0) fail(`attach XPU window ${file}`, rc, windowReason(rc));
    return new XpuWindow(out[0], file);
  }

  /** Open this process's end of the link: side, a namespace path, a TAP name. */
  openPort(side: XpuSide, netnsPath: string, tap: string, mode: XpuMode = 'elastic'): XpuPort {
    if (this.handle === null) throw new Error(`XPU window ${this.path} is closed`);
    const what = `open XPU port ${tap} (${side} side of ${this.path}) in ${netnsPath}`;
    if (!SIDES.includes(side)) throw new XpuError(`${what}: side must be one of ${SIDES.join(', ')}`, E.EINVAL);
    if (!MODES.includes(mode)) throw new XpuError(`${what}: mode must be one of ${MODES.join(', ')}`, E.EINVAL);
    if (!TAP_NAME.test(tap)) throw new XpuError(`${what}: invalid TAP device name`, E.EINVAL);
    const out: NativeHandle[] = [null];
    const rc = native().portOpen(this.handle, SIDES.indexOf(side), netnsPath, tap, MODES.indexOf(mode), out);
    if (rc < 0) {
      let reason: string | undefined;
      switch (-rc) {
        case E.ENOENT: reason = `network namespace ${netnsPath} does not exist`; break;
        case E.EINVAL: reason = `${netnsPath} is not a network namespace`; break;
        case E.EEXIST: reason = `a network device named ${tap} already exists in ${netnsPath}`; break;
        case E.EBUSY: reason = `the ${side} side is already attached by a live process`; break;
        case E.EPERM: case E.EACCES: reason = 'permission denied (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)'; break;
      }
      fail(what, rc, reason);
    }
    const port = new XpuPort(out[0], this, side, tap);
    this.ports.add(port);
    return port;
  }

  /** @internal called by XpuPort.close */
  portClosed(port: XpuPort): void {
    this.ports.delete(port);
  }

  /** Close every port still open on this window, then unmap it. Idempotent. */
  close(): void {
    if (this.handle === null) return;
    for (const p of [...this.ports]) p.close();
    const h = this.handle;
    this.handle = null;
    const rc = native().windowClose(h);
    if (rc < 0) fail(`close XPU window ${this.path}`, rc);
  }

  stats(): XpuStats {
    return readStats(this.path);
  }
}
