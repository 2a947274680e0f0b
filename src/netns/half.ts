// The two halves of a pod's split network namespace. The shim opens the host
// half in the pod's CNI namespace (it creates the pod's XPU window); the DPU
// agent opens the DPU half in the namespace it made for the pod (it attaches to
// that window). Each half owns its end of the XPU link (TAP `xpu0` with its
// pump threads, in this process), its link address, its sysctls and its
// netfilter chains; close() removes all of them, and the host half also the
// window.
//
// Port ownership (ports.ts) needs what each half sees: a half watches its own
// listening sockets and reports them through onListeningPorts; whoever joins
// the halves (the shim and the agent, over the agent API) hands them to the
// other half's setPeerListeningPorts. Rule updates are serialised and coalesced.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { processRunning } from '../common/processes';
import { WINDOW_DIR, XpuMode, XpuPort, XpuWindow, readStats, removeWindow, windowPath } from '../xpu/window';
import { Address4, addresses4, isNetns, setUpLink, swapSysctls, writeSysctls } from './exec';
import { ListenerWatcher } from './listeners';
import { PortView, conflictingPorts, dpuOwnedPorts, hostOwnedPorts, sortedPorts } from './ports';
import { DPU_LINK_IP, HOST_LINK_IP, HalfSide, LINK_PREFIX, LINK_TAP, applyRules, chainName, halfRules, removeRules } from './rules';
import { DPU_EPHEMERAL, DpuUplink, HOST_EPHEMERAL, isIPv4Cidr } from './uplink';

export type LogLevel = 'info' | 'warn' | 'error';

export interface HalfOptions {
  /** The pod sandbox id (CRI's, as containerd passes it to the shim). */
  podId: string;
  /** This half's network namespace, e.g. /var/run/netns/cni-… on the host. */
  netnsPath: string;
  /** Ports from heteropod.io/ports (declaredPortList): the DPU half's from the start. */
  declaredDpuPorts?: readonly number[];
  /** This half's listening TCP ports changed (and once at open): give them to the other half. */
  onListeningPorts?: (ports: number[]) => void;
  /** Conflicts and failures of background rule updates; default: stderr. */
  log?: (level: LogLevel, msg: string) => void;
  /** XPU notification mode of this end (default elastic). */
  mode?: XpuMode;
  /** How often listening sockets are read (default 200 ms). */
  pollMs?: number;
}

export interface HostHalfOptions extends HalfOptions {
  /** The pod IP CNI gave the pod (IPv4). */
  podIp: string;
  /**
   * Take over the host half a process that died left (the node daemon after a
   * crash or an upgrade): its window, with what the rings hold, is attached
   * rather than made anew, and `restoreSysctls` are the values that the first
   * open found (sysctlsToRestore), to put back at close.
   */
  resume?: { restoreSysctls: Record<string, string> };
}

export interface DpuHalfOptions extends HalfOptions {
  /** The pod IP, if known: lets the DPU half's own traffic to podIP:PORT stay local for its ports. */
  podIp?: string;
  /**
   * The DPU's uplink (DPU mode, uplink.ts): the half gets the pod IP and a wire
   * of its own to the DPU's namespace `rootNetns`, where the fabric's traffic for
   * its ports arrives and where its egress leaves; only `nodeCidr` (the pod
   * network of the node) is reached through the host half. Needs podIp.
   */
  uplink?: { rootNetns: string; nodeCidr: string };
  /**
   * The caller made the namespace for this pod and opened no half in it before:
   * there are no rules of an earlier half to look for (one iptables-save fewer).
   */
  freshNetns?: boolean;
}

/** The link's two ends (locally administered unicast addresses; each link is a wire of its own). */
const LINK_MAC = { host: '02:68:70:77:00:01', dpu: '02:68:70:77:00:02' } as const;

const POD_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** The pod's XPU window, /dev/shm/heteropod/pod-<pod id>.xpu: the same name on both sides. */
export function podWindowPath(podId: string): string {
  if (!POD_ID.test(podId)) throw new Error(`invalid pod id "${podId}"`);
  return windowPath(`pod-${podId}`);
}

export interface HalfStatus {
  side: HalfSide;
  podId: string;
  netnsPath: string;
  window: string;
  linkUp: boolean;
  declaredDpuPorts: number[];
  listening: number[];
  peerListening: number[];
  /** Ports this half's traffic (to localhost, and on the host half to the pod IP) sends across. */
  crossing: number[];
  conflicts: number[];
  chains: string[];
}

type Undo = () => unknown;

async function undoAll(undo: Undo[]): Promise<void> {
  for (const step of undo.reverse()) {
    try {
      await step();
    } catch {
      // keep undoing; the error that made us undo is the one reported
    }
  }
}

export class NetnsHalf {
  private peerListening: number[] = [];
  private appliedRules: string | null = null;
  private lastConflicts = '';
  private queue: Promise<void> = Promise.resolve();
  private closing: Promise<void> | null = null;
  private appliedPorts = '';
  /** @internal ip_local_reserved_ports as the namespace has it now, when known (a write that changes nothing is skipped). */
  reservedNow: string | null = null;
  /** @internal the DPU half's wire to the DPU's uplink, when it has one (set while opening) */
  uplink: DpuUplink | null = null;

  /** @internal use openHostHalf / openDpuHalf */
  constructor(
    readonly side: HalfSide,
    readonly podId: string,
    readonly netnsPath: string,
    readonly podIp: string | undefined,
    private readonly window: XpuWindow,
    private readonly port: XpuPort,
    private readonly watcher: ListenerWatcher,
    private readonly restoreSysctls: Map<string, string>,
    private readonly opts: HalfOptions,
  ) {}

  get windowPath(): string {
    return this.window.path;
  }

  /** The namespace's settings as they were before this half: what close() puts back. */
  sysctlsToRestore(): Record<string, string> {
    return Object.fromEntries(this.restoreSysctls);
  }

  /** Both ends of the link attached and alive. */
  linkUp(): boolean {
    return this.port.linkUp();
  }

  waitUp(timeoutMs: number): Promise<boolean> {
    return this.port.waitUp(timeoutMs);
  }

  /** This half's listening TCP ports, as last seen. */
  listeningPorts(): number[] {
    return this.watcher.lastPorts;
  }

  /** The other half's listening TCP ports, as its owner reported them. Resolves once the rules say so. */
  setPeerListeningPorts(ports: readonly number[]): Promise<void> {
    for (const p of ports) {
      if (!Number.isInteger(p) || p < 1 || p > 65535) {
        return Promise.reject(new Error(`${this.side} half of pod ${this.podId}: peer listening port ${p} is not a port number`));
      }
    }
    this.peerListening = sortedPorts(ports);
    return this.sync();
  }

  private view(): PortView {
    const own = this.watcher.lastPorts;
    return {
      declaredDpu: this.opts.declaredDpuPorts ?? [],
      hostListening: this.side === 'host' ? own : this.peerListening,
      dpuListening: this.side === 'dpu' ? own : this.peerListening,
    };
  }

  status(): HalfStatus {
    const v = this.view();
    return {
      side: this.side,
      podId: this.podId,
      netnsPath: this.netnsPath,
      window: this.window.path,
      linkUp: this.closing === null && this.port.linkUp(),
      declaredDpuPorts: sortedPorts(v.declaredDpu),
      listening: this.watcher.lastPorts,
      peerListening: this.peerListening,
      crossing: this.side === 'host' ? dpuOwnedPorts(v) : hostOwnedPorts(v),
      conflicts: conflictingPorts(v),
      chains: (this.side === 'host' ? ['PREROUTING', 'OUTPUT', 'POSTROUTING', 'FORWARD'] : ['PREROUTING', 'OUTPUT', 'POSTROUTING']).map((b) =>
        chainName(this.podId, b),
      ),
    };
  }

  private rulesText(jumps: boolean): string {
    const v = this.view();
    return halfRules(
      {
        side: this.side,
        podId: this.podId,
        podIp: this.podIp,
        tap: LINK_TAP,
        peerPorts: this.side === 'host' ? dpuOwnedPorts(v) : hostOwnedPorts(v),
        ownPodIpPorts: this.side === 'dpu' ? dpuOwnedPorts(v) : undefined,
        podIpLocal: this.uplink !== null,
      },
      { jumps },
    );
  }

  /** @internal first install, with the jumps from the built-in chains. */
  async installRules(): Promise<void> {
    const text = this.rulesText(true);
    await applyRules(this.netnsPath, text);
    this.appliedRules = this.rulesText(false);
    await this.applyPorts();
  }

  /**
   * What else follows the port sets: the other half's ports are reserved here
   * (this half's own connections never take a port the pod IP routes to the
   * other half), and the DPU's uplink steers the DPU-owned ports.
   */
  private async applyPorts(): Promise<void> {
    const v = this.view();
    const dpu = dpuOwnedPorts(v);
    const host = hostOwnedPorts(v);
    const reserved = this.side === 'host' ? dpu : host;
    const text = `${dpu.join(',')} ${host.join(',')}`;
    if (text === this.appliedPorts) return;
    if (reserved.join(',') !== this.reservedNow) {
      await writeSysctls(this.netnsPath, new Map([['net.ipv4.ip_local_reserved_ports', reserved.join(',')]]));
      this.reservedNow = reserved.join(',');
    }
    await this.uplink?.setPorts(dpu, host);
    this.appliedPorts = text;
  }

  /** Bring the rules up to date with what is known now (serialised, skipped when unchanged). */
  private sync(): Promise<void> {
    const run = this.queue.then(async () => {
      if (this.closing || this.appliedRules === null) return;
      const v = this.view();
      const conflicts = conflictingPorts(v).join(',');
      if (conflicts !== this.lastConflicts) {
        this.lastConflicts = conflicts;
        if (conflicts) {
          this.log('warn', `ports ${conflicts} are listened on in both halves: each half's localhost keeps its own listener, the pod IP reaches the host half`);
        }
      }
      const text = this.rulesText(false);
      if (text !== this.appliedRules) {
        await applyRules(this.netnsPath, text);
        this.appliedRules = text;
      }
      await this.applyPorts();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private log(level: LogLevel, msg: string): void {
    const line = `${this.side} half of pod ${this.podId}: ${msg}`;
    if (this.opts.log) this.opts.log(level, line);
    else process.stderr.write(`heteropod netns ${level}: ${line}\n`);
  }

  /** @internal start watching this half's listeners. */
  startWatching(): void {
    this.watcher.start({
      intervalMs: this.opts.pollMs,
      onChange: (ports) => {
        this.sync().catch((err: Error) => this.log('error', `update rules: ${err.message}`));
        this.opts.onListeningPorts?.(ports);
      },
    });
    this.opts.onListeningPorts?.(this.watcher.lastPorts);
  }

  /**
   * Remove this half: its rules, its sysctls (back to what they were), its TAP
   * device and pumps, and on the host half the window. Every step is tried;
   * the error lists each step that failed. Idempotent.
   */
  close(): Promise<void> {
    if (!this.closing) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const failed: string[] = [];
    const step = async (what: string, fn: () => unknown): Promise<boolean> => {
      try {
        await fn();
        return true;
      } catch (err) {
        failed.push(`${what}: ${(err as Error).message}`);
        return false;
      }
    };
    this.watcher.close();
    await this.queue; // an update in flight finishes before its chains go
    // A namespace already deleted took its rules and sysctls with it.
    if (this.uplink) await step(`remove the wire to the DPU's uplink (${this.uplink.device})`, () => this.uplink!.close());
    let rulesLeft = false;
    if (isNetns(this.netnsPath)) {
      rulesLeft = !(await step('remove netfilter rules', () => removeRules(this.netnsPath, this.podId)));
      await step('restore sysctls', () => writeSysctls(this.netnsPath, this.restoreSysctls));
    }
    await step(`close XPU port ${LINK_TAP}`, () => this.port.close());
    await step('close XPU window', () => this.window.close());
    // The window outlives the rules: an open finds them by it (removeStaleWindow).
    if (this.side === 'host' && !rulesLeft) await step(`remove XPU window ${this.window.path}`, () => removeWindow(this.window.path));
    if (failed.length) throw new Error(`close the ${this.side} half of pod ${this.podId}: ${failed.join('; ')}`);
  }
}

/** The device in the namespace that carries address ip (eth0, as CNI names it). */
function deviceWithAddress(netnsPath: string, ip: string): string {
  const dev = addresses4(netnsPath).find((a) => a.ip === ip)?.dev;
  if (!dev) throw new Error(`no device in ${netnsPath} has the pod IP ${ip} (has CNI set the pod's network up?)`);
  return dev;
}

/**
 * The pod IP: the IPv4 address of `dev` (eth0, as CNI names it) in the pod's
 * namespace. The shim reads it once CNI has run, to open the host half.
 */
export async function podIpv4(netnsPath: string, dev = 'eth0'): Promise<string> {
  return (await podAddress(netnsPath, dev)).ip;
}

/** The pod IP and its network's prefix length (the node's pod network, as CNI configured eth0). */
export async function podAddress(netnsPath: string, dev = 'eth0'): Promise<{ ip: string; prefixLength: number }> {
  const what = `read the pod IP (IPv4 of ${dev}) in ${netnsPath}`;
  if (!isNetns(netnsPath)) throw new Error(`${what}: not a network namespace`);
  let addr: Address4 | undefined;
  try {
    // Not 127.0.0.0/8: a loopback address is of the namespace, not the pod's network.
    addr = addresses4(netnsPath).find((a) => a.dev === dev && !a.ip.startsWith('127.'));
  } catch (err) {
    throw new Error(`${what}: ${(err as Error).message}`);
  }
  if (!addr) throw new Error(`${what}: ${dev} has no IPv4 address (has CNI set the pod's network up?)`);
  return { ip: addr.ip, prefixLength: addr.prefixLength };
}

/**
 * A window left by a host half whose shim died without its hook running: no
 * live end means nobody uses it. A live end means this pod already has a host
 * half (or the DPU half of a previous one is still attached). True when there
 * was one: the host half's rules go only before its window does (close,
 * cleanup.ts), so without a window there are no rules of the pod to remove.
 */
function removeStaleWindow(file: string): boolean {
  if (!fs.existsSync(file)) return false;
  let live: string[];
  try {
    const s = readStats(file);
    live = [s.host.alive ? `host end (pid ${s.host.pid})` : '', s.dpu.alive ? `DPU end (pid ${s.dpu.pid})` : ''].filter(Boolean);
  } catch {
    live = []; // not a readable window: ours to replace
  }
  if (live.length) throw new Error(`XPU window ${file} is in use by its ${live.join(' and ')}`);
  removeWindow(file);
  return true;
}

/**
 * The window of a host half being resumed: attached when no running process
 * holds its host end. The host end's owner ran on this machine, so whether it
 * still runs is asked of the kernel: its heartbeat stays fresh for a second
 * after it died, and a restart of the node daemon inside that second (an
 * upgrade: stop the old, start the new) must take the pod over all the same.
 */
function attachOrphanWindow(file: string): XpuWindow | null {
  if (!fs.existsSync(file)) return null;
  const s = readStats(file);
  if (s.host.state === 'attached' && processRunning(s.host.pid)) throw new Error(`XPU window ${file}: its host end is held by live process ${s.host.pid}`);
  return XpuWindow.attach(file);
}

async function openHalf(side: HalfSide, o: HalfOptions & { podIp?: string; uplink?: DpuHalfOptions['uplink']; freshNetns?: boolean; resume?: HostHalfOptions['resume'] }): Promise<NetnsHalf> {
  const what = `open the ${side} half of pod ${o.podId} in ${o.netnsPath}`;
  const file = podWindowPath(o.podId);
  if (!isNetns(o.netnsPath)) throw new Error(`${what}: ${o.netnsPath} is not a network namespace`);
  if (o.podIp !== undefined && !net.isIPv4(o.podIp)) throw new Error(`${what}: pod IP "${o.podIp}" is not an IPv4 address`);
  if (o.uplink && !o.podIp) throw new Error(`${what}: a half on the DPU's uplink needs the pod IP`);
  if (o.uplink && !isIPv4Cidr(o.uplink.nodeCidr)) throw new Error(`${what}: node network "${o.uplink.nodeCidr}" is not an IPv4 CIDR`);
  for (const p of o.declaredDpuPorts ?? []) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`${what}: declared port ${p} is not a port number`);
  }
  const undo: Undo[] = [];
  // No rules of the pod can be in the namespace: the agent has just made it,
  // or (host half) the pod had no window, which outlives its rules.
  let fresh = o.freshNetns === true;
  // Rules that could not be removed keep the window, for the next open or clean-up to find.
  let rulesLeft = false;
  try {
    let window: XpuWindow;
    const orphan = side === 'host' && o.resume ? attachOrphanWindow(file) : null;
    if (orphan) {
      window = orphan;
    } else if (side === 'host') {
      fs.mkdirSync(WINDOW_DIR, { recursive: true, mode: 0o700 });
      fresh = !removeStaleWindow(file) && !o.resume;
      window = XpuWindow.create(file);
      undo.push(() => {
        if (!rulesLeft) removeWindow(file);
      });
    } else {
      if (!fs.existsSync(file)) throw new Error(`XPU window ${file} does not exist (the host half is opened first)`);
      window = XpuWindow.attach(file);
    }
    undo.push(() => window.close());
    const port = window.openPort(side, o.netnsPath, LINK_TAP, o.mode ?? 'elastic');
    undo.push(() => port.close()); // the device goes, and its addresses and routes with it

    // The link is a point-to-point wire with fixed ends: fixed MAC addresses and
    // permanent neighbour entries, so no ARP crosses it (and nothing else but
    // the pod's IPv4 traffic: IPv6 is off on xpu0, below). Without an uplink
    // the DPU half has no other way out: everything not on the link goes to the
    // host half. With one, only the node's pod network does (its egress to the
    // fabric leaves from the DPU's uplink, uplink.ts). The DPU half's loopback
    // carries the pod's localhost: up, as CNI's loopback plugin leaves the host half's.
    const other = side === 'host' ? 'dpu' : 'host';
    setUpLink(o.netnsPath, {
      dev: LINK_TAP,
      mac: LINK_MAC[side],
      cidr: `${side === 'host' ? HOST_LINK_IP : DPU_LINK_IP}/${LINK_PREFIX}`,
      peer: side === 'host' ? DPU_LINK_IP : HOST_LINK_IP,
      peerMac: LINK_MAC[other],
      route: side === 'dpu' ? (o.uplink ? o.uplink.nodeCidr : 'default') : undefined,
      loUp: side === 'dpu',
    });
    let uplink: DpuUplink | null = null;
    if (o.uplink) {
      uplink = await DpuUplink.attach({ podId: o.podId, podIp: o.podIp!, halfNetns: o.netnsPath, rootNetns: o.uplink.rootNetns });
      undo.push(() => uplink!.close());
    }

    // route_localnet on xpu0: 127.0.0.1 may be routed out of it (before SNAT)
    // and DNATed to on arrival. Forwarding (host half): from eth0 to the DPU
    // half for its ports, and from xpu0 out for its egress. Settings of xpu0 go
    // with the device; eth0's are put back at close.
    const conf = (dev: string, key: string) => `net/ipv4/conf/${dev}/${key}`;
    // Each half takes its own connections' ports from its own range (uplink.ts:
    // the DPU steers replies by port), and never one the other half serves
    // (ip_local_reserved_ports, kept up to date with the ports).
    const range = side === 'host' ? HOST_EPHEMERAL : DPU_EPHEMERAL;
    const want = new Map([
      [conf(LINK_TAP, 'route_localnet'), '1'],
      [`net/ipv6/conf/${LINK_TAP}/disable_ipv6`, '1'],
      ['net.ipv4.ip_local_port_range', `${range[0]} ${range[1]}`],
    ]);
    const keep = ['net.ipv4.ip_local_port_range', 'net.ipv4.ip_local_reserved_ports'];
    if (side === 'host') {
      const eth = deviceWithAddress(o.netnsPath, o.podIp!);
      want.set(conf(LINK_TAP, 'forwarding'), '1');
      want.set(conf(eth, 'forwarding'), '1');
      keep.push(conf(eth, 'forwarding'));
    }
    let restore: Map<string, string>;
    if (o.resume) {
      restore = new Map(Object.entries(o.resume.restoreSysctls));
      await writeSysctls(o.netnsPath, want);
    } else {
      restore = await swapSysctls(o.netnsPath, keep, want);
    }
    undo.push(() => writeSysctls(o.netnsPath, restore));

    const watcher = await ListenerWatcher.open(o.netnsPath);
    undo.push(() => watcher.close());
    const half = new NetnsHalf(side, o.podId, o.netnsPath, o.podIp, window, port, watcher, restore, o);
    if (!o.resume) half.reservedNow = restore.get('net.ipv4.ip_local_reserved_ports') ?? null;
    half.uplink = uplink;
    watcher.refresh(); // one look now, so that the first rules know the listeners already there
    // Chains a previous half of this pod left (its owner crashed and no hook
    // ran) go first, so that jumps are never doubled.
    if (!fresh) await removeRules(o.netnsPath, o.podId);
    undo.push(() =>
      removeRules(o.netnsPath, o.podId).catch((err: unknown) => {
        rulesLeft = true;
        throw err;
      }),
    );
    await half.installRules();
    half.startWatching();
    return half;
  } catch (err) {
    await undoAll(undo);
    throw new Error(`${what}: ${(err as Error).message}`);
  }
}

/** The host half, in the shim: creates the pod's window and opens xpu0 (169.254.77.1/30) in the pod's netns. */
export function openHostHalf(o: HostHalfOptions): Promise<NetnsHalf> {
  if (!o.podIp) return Promise.reject(new Error(`open the host half of pod ${o.podId}: the pod IP is required`));
  return openHalf('host', o);
}

/** The DPU half, in the agent: attaches to the pod's window and opens xpu0 (169.254.77.2/30, default route via .1). */
export function openDpuHalf(o: DpuHalfOptions): Promise<NetnsHalf> {
  return openHalf('dpu', o);
}
