// The koffi binding of build/libxpu.so: control calls only (windows, ports,
// statistics, the listening sockets of a namespace). Frames never pass through
// JavaScript: the pump threads are C pthreads started by xpu_port_open.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { constants } from 'node:os';
import { getSystemErrorMap } from 'node:util';
import * as koffi from 'koffi';

export const SIDES = ['host', 'dpu'] as const;
export type XpuSide = (typeof SIDES)[number];
/** Index = enum xpu_mode. */
export const MODES = ['elastic', 'poll', 'sleep', 'served'] as const;
export type XpuMode = (typeof MODES)[number];

/** Opaque C handle (a pointer value owned by libxpu). */
export type NativeHandle = unknown;

/** A libxpu call failed; errno is the positive error number. */
export class XpuError extends Error {
  constructor(message: string, readonly errno: number) {
    super(message);
    this.name = 'XpuError';
  }
  get code(): string {
    return errnoName(this.errno);
  }
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/** "EINVAL (invalid argument)": the name and the C library's text. */
export function errnoText(errno: number): string {
  const text = getSystemErrorMap().get(-errno)?.[1];
  return text ? `${errnoName(errno)} (${text})` : errnoName(errno);
}

/** sizeof(struct xpu_listener); xpu.h gives its layout. */
export const LISTENER_BYTES = 20;
/** sizeof(struct xpu_addr4): dev[16], addr[4], prefix, 3 reserved. */
export const ADDR4_BYTES = 24;

const DirStats = koffi.struct('xpu_dir_stats', {
  frames: 'uint64_t',
  bytes: 'uint64_t',
  drops: 'uint64_t',
  wakeups: 'uint64_t',
  sleeps: 'uint64_t',
  spins: 'uint64_t',
  tap_errors: 'uint64_t',
  full_waits: 'uint64_t',
});

const SideInfo = koffi.struct('xpu_side_info', {
  pid: 'int32_t',
  state: 'uint32_t',
  mode: 'uint32_t',
  alive: 'uint32_t',
  peer_up: 'uint32_t',
  reserved: 'uint32_t',
  heartbeat: 'uint64_t',
  link_downs: 'uint64_t',
  tap: koffi.array('char', 16),
  netns: koffi.array('char', 112),
});

const Stats = koffi.struct('xpu_stats', {
  version: 'uint32_t',
  link_up: 'uint32_t',
  ring_bytes: 'uint32_t',
  frame_max: 'uint32_t',
  side: koffi.array(SideInfo, 2),
  dir: koffi.array(DirStats, 2),
});

// Inputs of the rules and port ownership: koffi converts the strings (UTF-8)
// and the Uint16Arrays behind the pointers for the call's duration.
const HalfRules = koffi.struct('xpu_half_rules', {
  side: 'int32_t',
  flags: 'uint32_t',
  pod_id: 'const char *',
  pod_ip: 'const char *',
  tap: 'const char *',
  peer_ports: 'const uint16_t *',
  own_pod_ip_ports: 'const uint16_t *',
  peer_ports_count: 'uint32_t',
  own_pod_ip_ports_count: 'uint32_t',
});

const PortView = koffi.struct('xpu_port_view', {
  declared_dpu: 'const uint16_t *',
  host_listening: 'const uint16_t *',
  dpu_listening: 'const uint16_t *',
  declared_dpu_count: 'uint32_t',
  host_listening_count: 'uint32_t',
  dpu_listening_count: 'uint32_t',
});

/** struct xpu_half_rules.flags */
export const RULES_JUMPS = 1;
export const RULES_POD_IP_LOCAL = 2;

/** struct xpu_half_rules; the counts are the arrays' lengths. */
export interface RawHalfRules {
  side: number;
  flags: number;
  pod_id: string;
  pod_ip: string | null;
  tap: string | null;
  peer_ports: Uint16Array;
  own_pod_ip_ports: Uint16Array;
  peer_ports_count: number;
  own_pod_ip_ports_count: number;
}

/** struct xpu_port_view */
export interface RawPortView {
  declared_dpu: Uint16Array;
  host_listening: Uint16Array;
  dpu_listening: Uint16Array;
  declared_dpu_count: number;
  host_listening_count: number;
  dpu_listening_count: number;
}

koffi.opaque('xpu_window');
koffi.opaque('xpu_port');

interface RawDir {
  frames: number | bigint; bytes: number | bigint; drops: number | bigint; wakeups: number | bigint;
  sleeps: number | bigint; spins: number | bigint; tap_errors: number | bigint; full_waits: number | bigint;
}
interface RawSide {
  pid: number; state: number; mode: number; alive: number; peer_up: number;
  heartbeat: number | bigint; link_downs: number | bigint; tap: string; netns: string;
}
export interface RawStats {
  version: number; link_up: number; ring_bytes: number; frame_max: number; side: RawSide[]; dir: RawDir[];
}

export interface Native {
  windowCreate(path: string, ringBytes: number, out: NativeHandle[]): number;
  windowAttach(path: string, out: NativeHandle[]): number;
  windowClose(w: NativeHandle): number;
  portOpen(w: NativeHandle, side: number, netns: string, tap: string, mode: number, out: NativeHandle[]): number;
  portClose(p: NativeHandle): number;
  portLinkUp(p: NativeHandle): number;
  windowStats(path: string, out: Partial<RawStats>): number;
  /** A NETLINK_SOCK_DIAG socket of the namespace netnsFd refers to, or -errno. */
  diagOpen(netnsFd: number): number;
  /** Fills out (max records of LISTENER_BYTES); returns how many there are, or -errno. */
  diagListeners(fd: number, out: Buffer, max: number): number;
  /** Fills out (max records of ADDR4_BYTES): the namespace's IPv4 addresses; returns how many there are, or -errno. */
  netnsAddrs4(netnsPath: string, out: Buffer, max: number): number;
  /** Reads then writes sysctls in the namespace; out: the values read, or the name that failed. 0 or -errno. */
  netnsSysctls(netnsPath: string, reads: string, writes: string, out: Buffer, outLen: number): number;
  /** Sets the link's device up in the namespace; why: the step that failed. 0 or -errno. */
  netnsLink4(netnsPath: string, dev: string, mac: string, cidr: string, peer: string, peerMac: string, route: string, loUp: number, why: Buffer, whyLen: number): number;
  // The rules and port ownership. Texts: the whole length (snprintf's way), or -errno; see nativeText.
  rulesChainTag(podId: string, out: Buffer, outLen: number): number;
  rulesChainName(podId: string, builtin: string, out: Buffer, outLen: number): number;
  rulesMultiport(ports: Uint16Array, count: number, out: Buffer, outLen: number): number;
  /** -EINVAL: out holds why the input makes no rules. */
  rulesHalf(r: RawHalfRules, out: Buffer, outLen: number): number;
  rulesRemoval(saved: string, podId: string, out: Buffer, outLen: number): number;
  // Port lists: how many there are (out holds the first max), or -errno.
  portsSorted(ports: Uint16Array, count: number, out: Uint16Array, max: number): number;
  portsDpuOwned(v: RawPortView, out: Uint16Array, max: number): number;
  portsHostOwned(v: RawPortView, out: Uint16Array, max: number): number;
  portsConflicting(v: RawPortView, out: Uint16Array, max: number): number;
  /** xpu_run_in, on a worker thread: a program run to its end; the callback gets its wait status or -errno. */
  runIn: {
    async(
      netnsPath: string | null, cwd: string | null, env: Buffer | null, envLen: number, args: Buffer, argsLen: number, input: Buffer, inputLen: number,
      out: Buffer, outLen: number, outUsed: number[], err: Buffer, errLen: number, errUsed: number[],
      done: (error: unknown, status: number) => void,
    ): void;
  };
}

/** Where the library is: HETEROPOD_LIBXPU, else build/libxpu.so of this checkout. */
export function libraryPath(): string {
  if (process.env.HETEROPOD_LIBXPU) return process.env.HETEROPOD_LIBXPU;
  // dist/src/xpu/native.js -> <root>/build/libxpu.so
  return path.resolve(__dirname, '..', '..', '..', 'build', 'libxpu.so');
}

let loaded: Native | undefined;

export function native(): Native {
  if (loaded) return loaded;
  const file = libraryPath();
  if (!fs.existsSync(file)) throw new Error(`libxpu not found at ${file} (run "make build")`);
  const lib = koffi.load(file);
  const statsSize = lib.func('uint32_t xpu_stats_size(void)');
  const want = koffi.sizeof(Stats);
  const have = statsSize() as number;
  if (have !== want) throw new Error(`libxpu at ${file}: struct xpu_stats is ${have} bytes, binding expects ${want}`);
  const listenerBytes = lib.func('uint32_t xpu_listener_size(void)')() as number;
  if (listenerBytes !== LISTENER_BYTES) {
    throw new Error(`libxpu at ${file}: struct xpu_listener is ${listenerBytes} bytes, binding expects ${LISTENER_BYTES}`);
  }
  const addr4Bytes = lib.func('uint32_t xpu_addr4_size(void)')() as number;
  if (addr4Bytes !== ADDR4_BYTES) throw new Error(`libxpu at ${file}: struct xpu_addr4 is ${addr4Bytes} bytes, binding expects ${ADDR4_BYTES}`);
  for (const [name, type] of [['xpu_half_rules', HalfRules], ['xpu_port_view', PortView]] as const) {
    const have = lib.func(`uint32_t ${name}_size(void)`)() as number;
    if (have !== koffi.sizeof(type)) throw new Error(`libxpu at ${file}: struct ${name} is ${have} bytes, binding expects ${koffi.sizeof(type)}`);
  }
  const n: Native = {
    windowCreate: lib.func('int xpu_window_create(const char *path, uint32_t ring_bytes, _Out_ xpu_window **out)'),
    windowAttach: lib.func('int xpu_window_attach(const char *path, _Out_ xpu_window **out)'),
    windowClose: lib.func('int xpu_window_close(xpu_window *w)'),
    portOpen: lib.func(
      'int xpu_port_open(xpu_window *w, int side, const char *netns, const char *tap, int mode, _Out_ xpu_port **out)',
    ),
    portClose: lib.func('int xpu_port_close(xpu_port *p)'),
    portLinkUp: lib.func('int xpu_port_link_up(xpu_port *p)'),
    windowStats: lib.func('int xpu_window_stats(const char *path, _Out_ xpu_stats *out)'),
    diagOpen: lib.func('int xpu_diag_open(int netns_fd)'),
    // void *: koffi hands the C function the Buffer's own memory, no copy.
    diagListeners: lib.func('int xpu_diag_listeners(int fd, void *out, int max)'),
    netnsAddrs4: lib.func('int xpu_netns_addrs4(const char *netns, void *out, int max)'),
    netnsSysctls: lib.func('int xpu_netns_sysctls(const char *netns, const char *reads, const char *writes, void *out, uint32_t out_len)'),
    netnsLink4: lib.func(
      'int xpu_netns_link4(const char *netns, const char *dev, const char *mac, const char *cidr, const char *peer, const char *peer_mac, const char *route, int lo_up, void *why, uint32_t why_len)',
    ),
    rulesChainTag: lib.func('int xpu_rules_chain_tag(const char *pod_id, void *out, uint32_t out_len)'),
    rulesChainName: lib.func('int xpu_rules_chain_name(const char *pod_id, const char *builtin, void *out, uint32_t out_len)'),
    rulesMultiport: lib.func('int xpu_rules_multiport(const uint16_t *ports, uint32_t count, void *out, uint32_t out_len)'),
    rulesHalf: lib.func('int xpu_rules_half(const xpu_half_rules *r, void *out, uint32_t out_len)'),
    rulesRemoval: lib.func('int xpu_rules_removal(const char *saved, const char *pod_id, void *out, uint32_t out_len)'),
    portsSorted: lib.func('int xpu_ports_sorted(const uint16_t *ports, uint32_t count, void *out, uint32_t max)'),
    portsDpuOwned: lib.func('int xpu_ports_dpu_owned(const xpu_port_view *v, void *out, uint32_t max)'),
    portsHostOwned: lib.func('int xpu_ports_host_owned(const xpu_port_view *v, void *out, uint32_t max)'),
    portsConflicting: lib.func('int xpu_ports_conflicting(const xpu_port_view *v, void *out, uint32_t max)'),
    runIn: lib.func(
      'int xpu_run_in(const char *netns, const char *cwd, void *env, uint32_t env_len, void *args, uint32_t args_len, void *input, uint32_t input_len, void *out, uint32_t out_len, _Out_ uint32_t *out_used, void *err, uint32_t err_len, _Out_ uint32_t *err_used)',
    ),
  };
  loaded = n;
  return n;
}

/**
 * A text of libxpu written snprintf's way: call(out, outLen) returns the
 * whole length, and is called again with room for it when that did not fit.
 * rc: the length or -errno; text: the text, or on an error what out holds.
 */
export function nativeText(call: (out: Buffer, outLen: number) => number, room = 1024): { rc: number; text: string } {
  for (;;) {
    const out = Buffer.alloc(room);
    const rc = call(out, out.length);
    if (rc < 0) {
      const end = out.indexOf(0);
      return { rc, text: out.toString('utf8', 0, end < 0 ? out.length : end) };
    }
    if (rc < out.length) return { rc, text: out.toString('utf8', 0, rc) };
    room = rc + 1;
  }
}

/** TCP ports as libxpu takes them (uint16_t); a number that is not one is refused, not wrapped. */
export function portArray(ports: Iterable<number>): Uint16Array {
  const list = Array.isArray(ports) ? (ports as number[]) : [...ports];
  for (const p of list) {
    if (!Number.isInteger(p) || p < 0 || p > 65535) throw new RangeError(`${p} is not a TCP port number`);
  }
  return Uint16Array.from(list);
}

/** The few C library calls made beside libxpu's. */
export interface Libc {
  /** The interface index of a device of the calling thread's namespace; 0: none of that name. */
  ifNameToIndex(name: string): number;
}

let libcLoaded: Libc | undefined;

export function libc(): Libc {
  if (libcLoaded) return libcLoaded;
  const lib = koffi.load('libc.so.6');
  libcLoaded = { ifNameToIndex: lib.func('unsigned int if_nametoindex(const char *ifname)') };
  return libcLoaded;
}
