// Benchmark (not a timed test): what offloading a pod's sidecar proxy to the DPU
// saves the host under HTTP load from a client outside the node, on the test bed.
// The pod is the demo's shape:
//
//   app    busybox httpd on :8080 serving a small page, always on the host
//          (--app keepalive: a server that keeps connections, see APPS);
//   proxy  haproxy (heteropod.local/haproxy:1, one thread), a frontend on :15006
//          forwarding every request to 127.0.0.1:8080.
//
// The client is remote: wrk runs in the fabric (the namespace hp-fabric, the
// network outside the node) and loads podIP:15006 (keep-alive, a few
// connections, fixed duration). The node is a DPU-mode node: every packet from
// the fabric enters at the DPU's uplink p0. One run measures two cases,
// alternating round by round, each on fresh pods:
//
//   host  proxy on the host next to app: fabric → p0 → the DPU forwards → PF
//         link (pf0hpf → hp-pf0) → host bridge → pod → haproxy → app over lo;
//   dpu   proxy offloaded (heteropod.io/offload: proxy, heteropod.io/ports:
//         proxy=15006): fabric → p0 → the DPU half's own wire → haproxy on the
//         DPU → 127.0.0.1:8080 over the XPU link → app on the host. The
//         fabric's packets never reach the host; only haproxy→app crosses.
//
// Two phases: `single`, one pod under load (--rounds rounds per case), and
// `scale`, --scale pods (default 8) of the same shape under load at once
// (--scale-rounds per case; 0 pods skips it). wrk reaches one address per
// process, so the scale phase runs one wrk per pod, each with the single
// phase's connections and thread, all started together: every pod gets the
// same offered load as in the single phase, and the host CPU is contended by
// the apps, the host proxies, the shims and the packet work, as on a busy node.
//
// Fairness: both pods use the handler heteropod and an offload annotation with
// policy require, so both get a DPU half, its wire to the DPU, an XPU link (in
// the shim's default [xpu] host_mode, served: the agent's threads serve the
// host end's TAP device, and the host runs no pump), the same netfilter rules
// in the host half and the same port watcher. In the host case the annotation
// names a container the pod does not have, so the link idles; idle, its pumps
// sleep and cost nothing. A pod without the annotation would differ in more
// than placement.
//
// CPUs. On one kernel a packet's receive work runs on whichever CPU it is
// scheduled on, and by default that is the sender's: the DPU's forwarding would
// run on the host's CPU when the fabric sends, the host's TCP work on the DPU's
// when the DPU sends. The emulation pins each wire's receive work (a threaded
// NAPI kernel thread per receiving end, src/dpu/napi.ts) to the CPUs of the side
// that does it on real hardware, so each side's packet work is counted on its
// own CPUs; the XPU link's host device steers what the DPU end writes into it
// to the host's CPUs (RPS, set by libxpu's served DPU end). That needs TSO off
// on the wires' sending ends (veth hands a TCP
// packet to the receiver's NAPI only when the sender has no TSO; `dpu up` turns
// it off, napi.ts), which the benchmark checks before it starts (see
// WIRE_SENDERS). The host's pods, the node daemon (the host ends of the XPU
// links) and wrk are pinned to the first host CPU (cpu0): containers with CRI
// linux.resources.cpuset_cpus, the node daemon with taskset -a, wrk with taskset. The DPU keeps its cpuset (the last CPU);
// the offloaded proxy and the agent run there. The fabric's client has no
// machine of its own here: it shares the host's CPU, and so does the fabric
// end's receive thread (side 'fabric'), which does the client's receive work.
//
// Reported per case, the median over rounds (of two: their mean) of:
//   - requests/s, p50 and p99 latency (wrk's own histogram, from a Lua done
//     hook; with several pods: their sum, the median p50, the worst p99);
//   - host CPU seconds per 10,000 requests: busy time of the host CPUs (all but
//     the DPU's; /proc/stat: user, nice, system, irq, softirq) during the load,
//     minus the client's: wrk's utime+stime (the growth of this process's
//     cutime+cstime once wrk is reaped, since nothing else is its child then)
//     and the fabric end's receive thread;
//   - where that host time goes: the apps' and (host case) proxies' cgroups
//     (cpuacct), the shims' utime+stime (their XPU pump threads included, and
//     by thread name in --json), the host-side receive threads (the PF's
//     hp-pf0, the management link's), and the rest (softirq run in other
//     tasks' context, containerd, other processes on this shared machine);
//     also the softirq ticks on the host CPUs, which overlap those parts (a
//     tick in softirq is also charged to the task it interrupted);
//   - DPU CPU: busy time of the DPU's CPUs (everything pinned to them: the
//     offloaded proxy, the agent and the DPU end of the link it pumps, the DPU's
//     receive threads for p0, pf0hpf and the management link, the forwarding
//     they do), and its parts: the DPU cgroup (cpuacct; its containers), the
//     agent, the DPU receive threads; its utilisation (busy / wall time);
//   - what crossed per request: packets and bytes on the host's PF link
//     (hp-pf0, rx+tx, /sys/class/net/hp-pf0/statistics) and frames and bytes on
//     the pods' XPU links (each window's statistics, both directions).
// and the ratios offloaded/host against the targets (keepalive: host CPU per
// request ≤ 0.5, p99 ≤ 1.1, req/s ≥ 0.9; httpd: host CPU per request ≤ 0.8),
// and for the scale phase the host CPU left to the apps: the apps' cgroups'
// share of the host CPUs' time less the client's.
//
// The machine is shared: a measurement during which other user-space processes
// used more than --max-noise seconds of CPU (default 1; a process that exited
// counts in the parent that reaped it) is made again on fresh pods, three times
// at most; each round lists what else was busy.
//
// The bench touches only its own pods (namespace bench-sidecar), each removed as
// soon as it is measured. The test bed is left as found: brought up if needed
// and then taken down (and checked for leftovers); one it found running stays,
// with whatever a user left in it.
//
//   flock /run/heteropod-testbed.lock node dist/scripts/bench-sidecar.js \
//     [--app httpd|keepalive] [--rounds 3] [--duration 10] [--connections 4] [--warmup 2] \
//     [--scale 8] [--scale-rounds 2] [--max-noise 1] [--json FILE]
//   node dist/scripts/bench-sidecar.js --report FILE    (the tables of a saved --json again)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CriClient } from '../src/cri/client';
import type { CriObject } from '../src/cri/config';
import * as dpu from '../src/dpu/dpu';
import { hostAndDpuCpus } from '../src/dpu/cgroup';
import { parseCpuList } from '../src/common/cpulist';
import { receiveThreads, ReceiveThread } from '../src/dpu/napi';
import { cgroupDir, DPU } from '../src/dpu/paths';
import { podWindowPath } from '../src/netns/half';
import { persistentLeaksSince, snapshotHost } from '../src/testbed/leaks';
import { TESTBED } from '../src/testbed/paths';
import { run, waitFor } from '../src/testbed/proc';
import { readStats, XpuDirStats } from '../src/xpu/window';
import { down, nodeDaemonPids, status, up } from '../src/testbed/testbed';
import {
  allProcessTicks,
  arg,
  CLK_TCK,
  cgroupProcs,
  containerCpuacct,
  cpuacctSeconds,
  cpuSecondsBetween,
  cpuTicks,
  median,
  processSeconds,
  reapedChildrenSeconds,
  threadRunSeconds,
  threadSecondsByName,
} from './bench-lib';

const BUSYBOX = 'heteropod.local/busybox:1';
const HAPROXY = 'heteropod.local/haproxy:1';
const APP_PORT = 8080;
const PROXY_PORT = 15006;
/** What the host case's offload annotation names: no container of the pod. */
const NO_SUCH_CONTAINER = 'no-such-container';
const POD_NAMESPACE = 'bench-sidecar';
const PAGE = '<html><body><p>hello from app</p></body></html>';
const PF_STATS = `/sys/class/net/${DPU.pf.hostDev}/statistics`;

type Where = 'host' | 'dpu';
type Phase = 'single' | 'scale';

// haproxy configurations are written by the container's own shell, so that both
// placements start them the same way (no file volume to copy). One thread, as on
// a one-CPU DPU.
const HAPROXY_GLOBAL = ['global', '    maxconn 1024', '    nbthread 1', 'defaults', '    mode http', '    timeout connect 5s', '    timeout client 30s', '    timeout server 30s'];

function haproxyCommand(file: string, lines: string[]): string[] {
  return ['sh', '-c', `printf '%s\\n' ${lines.map((l) => `'${l}'`).join(' ')} > ${file} && exec /usr/sbin/haproxy -f ${file}`];
}

/**
 * The app behind the proxy (--app). Both serve PAGE on :8080 from one process
 * on the host; they differ in what a request costs the host besides the proxy:
 *   httpd      busybox httpd, the demo's app: a new process per connection, and
 *              it closes every connection, so the proxy opens one to it per
 *              request (its handshake and teardown cross the link when offloaded);
 *   keepalive  an event-driven server that keeps connections open (haproxy
 *              answering from its own configuration), with the proxy reusing
 *              idle backend connections, as a mesh sidecar does with a
 *              long-running app: per request, one request and one response
 *              each way.
 */
const APPS = {
  httpd: {
    image: BUSYBOX,
    command: ['sh', '-c', `mkdir -p /www && echo '${PAGE}' > /www/index.html && exec httpd -f -p ${APP_PORT} -h /www`],
    reuse: false,
  },
  keepalive: {
    image: HAPROXY,
    command: haproxyCommand('/tmp/app.cfg', [...HAPROXY_GLOBAL, 'frontend app', `    bind :${APP_PORT}`, `    http-request return status 200 content-type text/html string "${PAGE}"`]),
    reuse: true,
  },
};
type AppKind = keyof typeof APPS;

/** The targets (issue 12), offloaded/on-host; a missing one is not set for that app. */
const TARGETS: Record<AppKind, { hostCpu: number; p99?: number; rps?: number }> = {
  keepalive: { hostCpu: 0.5, p99: 1.1, rps: 0.9 },
  httpd: { hostCpu: 0.8 },
};

function proxyCommand(app: AppKind): string[] {
  const reuse = APPS[app].reuse ? ['    http-reuse always'] : [];
  return haproxyCommand('/tmp/haproxy.cfg', [...HAPROXY_GLOBAL, 'frontend proxy', `    bind :${PROXY_PORT}`, '    default_backend app', 'backend app', ...reuse, `    server app 127.0.0.1:${APP_PORT}`]);
}

// wrk's summary as one JSON line: its percentiles are exact (from its own
// histogram), where the text report rounds them.
const WRK_DONE_HOOK = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%.0f,"durationUs":%.0f,"bytes":%.0f,"p50Us":%.0f,"p99Us":%.0f,"maxUs":%.0f,"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f}}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
`;

interface WrkSummary {
  requests: number;
  durationUs: number;
  bytes: number;
  p50Us: number;
  p99Us: number;
  maxUs: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
}

const wrkErrors = (w: WrkSummary): number => Object.values(w.errors).reduce((a, b) => a + b, 0);

/** CPU seconds during one load window, each over the same window. */
interface CpuSeconds {
  /** Wall time of the window. */
  wallS: number;
  /** Busy time of the host CPUs (all but the DPU's), from /proc/stat. */
  hostBusy: number;
  /** The client's, subtracted: wrk's utime+stime, and the fabric end's receive thread. */
  wrk: number;
  fabricReceive: number;
  /** hostBusy - wrk - fabricReceive: what the host figures are made of. */
  host: number;
  /** The apps' container cgroups (with httpd, the children it forks per connection too). */
  app: number;
  /** The proxies' container cgroups when they run on the host, else 0. */
  proxyOnHost: number;
  /** The pods' shims (threads included: the host ends' XPU pumps). */
  shim: number;
  /** The shims' time by thread name. */
  shimThreads: Record<string, number>;
  /** The host-side receive threads: the PF's (hp-pf0) and the management link's. */
  hostReceive: number;
  /** Softirq ticks on the host CPUs: part of the above, not beside them. */
  hostSoftirq: number;
  /** Busy time of the DPU's CPUs, from /proc/stat. */
  dpuBusy: number;
  /** The DPU cgroup (cpuacct): the DPU's containers. */
  dpuCgroup: number;
  /** The DPU agent process (threads included: the DPU ends' XPU pumps). */
  agent: number;
  /** The DPU-side receive threads (p0, pf0hpf, management link). */
  dpuReceive: number;
}

/** What crossed into or out of the host during the load (counter deltas). */
interface Crossings {
  /** the host's PF link, hp-pf0: rx + tx */
  pfPackets: number;
  pfBytes: number;
  /** the pods' XPU links, summed */
  hostToDpu: XpuDirStats;
  dpuToHost: XpuDirStats;
}

/** A process outside the pods and the bench that used CPU during the load: noise on a shared machine. */
interface Busy {
  pid: number;
  comm: string;
  seconds: number;
}

interface PodSample {
  podId: string;
  podIp: string;
  /** Cpus_allowed_list of app's and proxy's first process and of the shim, as checked. */
  cpusAllowed: { app: string; proxy: string; shim: string };
  wrk: WrkSummary;
}

interface Sample {
  phase: Phase;
  where: Where;
  round: number;
  pods: PodSample[];
  requests: number;
  /** Sum over the pods of each one's requests / its wrk's duration. */
  requestsPerSecond: number;
  /** The median of the pods' p50, the worst of their p99. */
  p50Us: number;
  p99Us: number;
  errors: number;
  cpu: CpuSeconds;
  crossings: Crossings;
  /** The busiest other processes (kernel threads included) during the load. */
  others: Busy[];
  /** CPU seconds of all other user-space processes during the load: another user's work on this shared machine. */
  noise: number;
  /** CPU seconds of kernel threads other than the wires' receive threads (kworkers, ksoftirqd: some of it the pods' own work). */
  kernelOthers: number;
  /** Measurements made for this one (see --max-noise). */
  attempts: number;
}

interface Result {
  when: string;
  cpus: number;
  hostCpus: number[];
  dpuCpus: number[];
  pinnedCpu: number;
  app: AppKind;
  rounds: number;
  scalePods: number;
  scaleRounds: number;
  durationS: number;
  connections: number;
  warmupS: number;
  receiveThreads: ReceiveThread[];
  /** TSO of the wires' sending ends as found, and whether this run turned it off. */
  wiresTsoFound: Record<string, boolean>;
  samples: Sample[];
  leftovers: string[];
}

/** One pod running and checked, ready for load. */
interface PodUnderTest {
  podId: string;
  podIp: string;
  url: string;
  shimPid: number;
  appCgroup: string;
  proxyCgroup: string;
  window: string;
  cpusAllowed: PodSample['cpusAllowed'];
}

function cpusAllowed(status: string): string {
  return /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] ?? '?';
}

function sumDirs(list: XpuDirStats[]): XpuDirStats {
  const out: XpuDirStats = { frames: 0, bytes: 0, drops: 0, wakeups: 0, sleeps: 0, spins: 0, tapErrors: 0, fullWaits: 0 };
  for (const d of list) for (const k of Object.keys(out) as (keyof XpuDirStats)[]) out[k] += d[k];
  return out;
}

function dirDelta(a: XpuDirStats, b: XpuDirStats): XpuDirStats {
  const out = { ...b };
  for (const k of Object.keys(out) as (keyof XpuDirStats)[]) out[k] = b[k] - a[k];
  return out;
}

function pfCounters(): { packets: number; bytes: number } {
  const n = (f: string): number => Number(fs.readFileSync(path.join(PF_STATS, f), 'utf8').trim());
  return { packets: n('rx_packets') + n('tx_packets'), bytes: n('rx_bytes') + n('tx_bytes') };
}

function sumMaps(maps: Map<string, number>[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of maps) for (const [k, v] of m) out.set(k, (out.get(k) ?? 0) + v);
  return out;
}

/**
 * The emulated wires' sending ends, by namespace ('' for the host's). veth hands
 * a TCP packet to its peer's NAPI instance, and so to the receive thread that
 * napi.ts pins to the receiver's CPUs, only when the sending end has no TSO
 * (the kernel's veth_skb_is_eligible_for_gro); with TSO on, the receive work
 * would run in the sender's context, on the sender's CPU. `dpu up` turns it off;
 * a DPU made by an older checkout has it on, and the benchmark refuses to run.
 */
const WIRE_SENDERS: readonly (readonly [string, string])[] = [
  ['', DPU.pf.hostDev],
  [DPU.netns, DPU.pf.dpuDev],
  [DPU.netns, DPU.uplink.dev],
  [DPU.uplink.fabricNetns, DPU.uplink.fabricDev],
];

async function ethtool(netns: string, args: string[]): Promise<string> {
  const argv = [...(netns ? ['ip', 'netns', 'exec', netns] : []), 'ethtool', ...args];
  return (await run(argv[0], argv.slice(1))).stdout;
}

/** TSO of each wire's sending end, on or off, keyed "netns/dev". */
async function wiresTso(): Promise<Record<string, boolean>> {
  const out: Record<string, boolean> = {};
  for (const [netns, dev] of WIRE_SENDERS) out[`${netns || 'host'}/${dev}`] = /^tcp-segmentation-offload:\s*on/m.test(await ethtool(netns, ['-k', dev]));
  return out;
}

interface Cpus {
  host: number[];
  dpu: number[];
  pinned: number;
}

class Bench {
  private readonly workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-bench-sidecar-'));
  private readonly hook = path.join(this.workDir, 'done.lua');
  /** Pods not yet removed: the clean-up list if a step fails. */
  readonly live = new Set<string>();
  private seq = 0;

  // As kubelet makes them: each container has its own process namespace (with
  // the sandbox's, the shim would not offload it).
  private static readonly OWN_PID = { security_context: { namespace_options: { pid: 'CONTAINER' } } };

  constructor(
    private readonly cri: CriClient,
    private readonly cpu: Cpus,
    private readonly threads: ReceiveThread[],
    private readonly load: { durationS: number; connections: number; warmupS: number },
    private readonly app: AppKind,
    private readonly say: (l: string) => void,
  ) {
    fs.writeFileSync(this.hook, WRK_DONE_HOOK);
  }

  /** `count` fresh pods with proxy on `where`, loaded at once and measured; all removed before this returns. */
  async measure(phase: Phase, where: Where, round: number, count: number): Promise<Sample> {
    const pods: PodUnderTest[] = [];
    try {
      // Started together (each pod's steps in order): every start settles
      // before the clean-up below, so no pod appears after it.
      const started = await Promise.allSettled(Array.from({ length: count }, () => this.startPod(where)));
      for (const r of started) if (r.status === 'rejected') throw r.reason;
      for (const r of started) if (r.status === 'fulfilled') pods.push(r.value);
      if (this.load.warmupS > 0) await Promise.all(pods.map((p) => this.wrk(p.url, this.load.warmupS)));
      return await this.window(phase, where, round, pods);
    } finally {
      // Whatever was started, measured or not; a failure here is the error to see.
      await Promise.all([...this.live].map((id) => this.removePod(id)));
    }
  }

  /** One pod, its containers started, placed and pinned as intended, serving app's page through proxy. */
  private async startPod(where: Where): Promise<PodUnderTest> {
    const n = ++this.seq;
    const annotations: Record<string, string> =
      where === 'dpu'
        ? { 'heteropod.io/offload': 'proxy', 'heteropod.io/offload-policy': 'require', 'heteropod.io/ports': `proxy=${PROXY_PORT}` }
        : { 'heteropod.io/offload': NO_SUCH_CONTAINER, 'heteropod.io/offload-policy': 'require' };
    const pod: CriObject = {
      metadata: { name: `bench-sidecar-${where}-${n}`, namespace: POD_NAMESPACE, uid: `bench-sidecar-${process.pid}-${n}`, attempt: 0 },
      log_directory: path.join(this.workDir, `pod-${n}`),
      annotations,
      linux: Bench.OWN_PID,
    };
    const pinned = { ...Bench.OWN_PID, resources: { cpuset_cpus: String(this.cpu.pinned) } };
    const podId = await this.cri.runPodSandbox(pod, 'heteropod');
    this.live.add(podId);
    const podIp = (((await this.cri.podSandboxStatus(podId)).status as CriObject).network as CriObject).ip as string;
    const window = podWindowPath(podId);
    if (!fs.existsSync(window)) throw new Error(`pod ${podId.slice(0, 13)} (${where}) has no XPU window: both cases must have a DPU half`);
    const app = await this.start(podId, pod, { metadata: { name: 'app', attempt: 0 }, image: { image: APPS[this.app].image }, command: APPS[this.app].command, log_path: 'app.log', linux: pinned });
    const proxy = await this.start(podId, pod, {
      metadata: { name: 'proxy', attempt: 0 },
      image: { image: HAPROXY },
      command: proxyCommand(this.app),
      log_path: 'proxy.log',
      // On the DPU the proxy runs on the DPU's CPUs, its cgroup's default.
      linux: where === 'host' ? pinned : Bench.OWN_PID,
    });
    const shimPid = this.findShim(podId);
    await run('taskset', ['-a', '-p', '-c', String(this.cpu.pinned), String(shimPid)]);

    // Placement and pinning as intended, or every figure is the wrong one.
    const appStatus = (await this.cri.execSync(app, ['cat', '/proc/1/status'], 10)).stdout.toString();
    const proxyText = (await this.cri.execSync(proxy, ['sh', '-c', 'cat /proc/1/status; echo; grep -c heteropod-dpu /proc/1/cgroup'], 10)).stdout.toString();
    const onDpu = Number(proxyText.trim().split('\n').pop()) > 0;
    if (onDpu !== (where === 'dpu')) throw new Error(`proxy runs ${onDpu ? 'on the DPU' : 'on the host'}, expected ${where}`);
    const allowed = { app: cpusAllowed(appStatus), proxy: cpusAllowed(proxyText), shim: cpusAllowed(fs.readFileSync(`/proc/${shimPid}/status`, 'utf8')) };
    const expectProxy = where === 'host' ? String(this.cpu.pinned) : this.cpu.dpu.join(',');
    if (allowed.app !== String(this.cpu.pinned) || allowed.shim !== String(this.cpu.pinned) || parseCpuList(allowed.proxy).join(',') !== expectProxy) {
      throw new Error(`CPUs allowed: app ${allowed.app}, proxy ${allowed.proxy}, shim ${allowed.shim}; expected app and shim ${this.cpu.pinned}, proxy ${expectProxy}`);
    }

    const url = `http://${podIp}:${PROXY_PORT}/`;
    await waitFor(`${url} to serve app's page through proxy (${where}), from the fabric`, 15_000, async () => (await this.fetchFromFabric(url)) === PAGE || undefined, 200);
    return { podId, podIp, url, shimPid, appCgroup: containerCpuacct(app), proxyCgroup: containerCpuacct(proxy), window, cpusAllowed: allowed };
  }

  /** The load on every pod at once, and what it cost each side. */
  private async window(phase: Phase, where: Where, round: number, pods: PodUnderTest[]): Promise<Sample> {
    const agentPid = dpu.agentPid();
    const side = (s: ReceiveThread['side']): number[] => this.threads.filter((t) => t.side === s).map((t) => t.pid);
    const [fabricThreads, hostThreads, dpuThreads] = [side('fabric'), side('host'), side('dpu')];
    const threadsSeconds = (pids: number[]): number => pids.reduce((a, p) => a + threadRunSeconds(p), 0);
    const proxyCgroups = where === 'host' ? pods.map((p) => p.proxyCgroup) : [];
    const ours = new Set([process.pid, agentPid ?? 0, ...this.threads.map((t) => t.pid)]);
    for (const p of pods) for (const pid of [p.shimPid, ...cgroupProcs(p.appCgroup), ...cgroupProcs(p.proxyCgroup)]) ours.add(pid);
    const procsBefore = allProcessTicks();
    // Only files are read here: no child process may start between the two
    // snapshots but wrk, whose CPU is this process's cutime+cstime growth.
    const snap = () => ({
      at: process.hrtime.bigint(),
      links: pods.map((p) => readStats(p.window)),
      pf: pfCounters(),
      ticks: cpuTicks(),
      children: reapedChildrenSeconds(),
      fabricReceive: threadsSeconds(fabricThreads),
      hostReceive: threadsSeconds(hostThreads),
      dpuReceive: threadsSeconds(dpuThreads),
      app: pods.reduce((a, p) => a + cpuacctSeconds(p.appCgroup), 0),
      proxy: proxyCgroups.reduce((a, dir) => a + cpuacctSeconds(dir), 0),
      // One node daemon serves every pod: counted once.
      shim: [...new Set(pods.map((p) => p.shimPid))].reduce((a, pid) => a + processSeconds(pid), 0),
      shimThreads: sumMaps([...new Set(pods.map((p) => p.shimPid))].map((pid) => threadSecondsByName(pid))),
      dpuCgroup: cpuacctSeconds(cgroupDir('cpuacct')),
      agent: processSeconds(agentPid),
    });
    const before = snap();
    const summaries = await Promise.all(pods.map((p) => this.wrk(p.url, this.load.durationS)));
    const after = snap();

    const others: Busy[] = [];
    let noise = 0;
    let kernelOthers = 0;
    for (const [pid, p] of allProcessTicks()) {
      if (ours.has(pid) || p.comm === 'wrk') continue;
      const seconds = (p.ticks - (procsBefore.get(pid)?.ticks ?? 0)) / CLK_TCK;
      if (p.kernel) kernelOthers += seconds;
      else noise += seconds;
      if (seconds >= 0.1) others.push({ pid, comm: p.comm, seconds });
    }
    others.sort((a, b) => b.seconds - a.seconds);
    const d = <K extends 'children' | 'fabricReceive' | 'hostReceive' | 'dpuReceive' | 'app' | 'proxy' | 'shim' | 'dpuCgroup' | 'agent'>(k: K): number => after[k] - before[k];
    const hostBusy = cpuSecondsBetween(before.ticks, after.ticks, this.cpu.host, 'busy');
    const shimThreads: Record<string, number> = {};
    for (const [name, s] of after.shimThreads) shimThreads[name] = s - (before.shimThreads.get(name) ?? 0);
    const cpu: CpuSeconds = {
      wallS: Number(after.at - before.at) / 1e9,
      hostBusy,
      wrk: d('children'),
      fabricReceive: d('fabricReceive'),
      host: hostBusy - d('children') - d('fabricReceive'),
      app: d('app'),
      proxyOnHost: d('proxy'),
      shim: d('shim'),
      shimThreads,
      hostReceive: d('hostReceive'),
      hostSoftirq: cpuSecondsBetween(before.ticks, after.ticks, this.cpu.host, 'softirq'),
      dpuBusy: cpuSecondsBetween(before.ticks, after.ticks, this.cpu.dpu, 'busy'),
      dpuCgroup: d('dpuCgroup'),
      agent: d('agent'),
      dpuReceive: d('dpuReceive'),
    };
    const crossings: Crossings = {
      pfPackets: after.pf.packets - before.pf.packets,
      pfBytes: after.pf.bytes - before.pf.bytes,
      hostToDpu: sumDirs(pods.map((_, i) => dirDelta(before.links[i].hostToDpu, after.links[i].hostToDpu))),
      dpuToHost: sumDirs(pods.map((_, i) => dirDelta(before.links[i].dpuToHost, after.links[i].dpuToHost))),
    };
    const podSamples = pods.map((p, i) => ({ podId: p.podId, podIp: p.podIp, cpusAllowed: p.cpusAllowed, wrk: summaries[i] }));
    const sample: Sample = {
      phase,
      where,
      round,
      pods: podSamples,
      requests: summaries.reduce((a, w) => a + w.requests, 0),
      requestsPerSecond: summaries.reduce((a, w) => a + w.requests / (w.durationUs / 1e6), 0),
      p50Us: median(summaries.map((w) => w.p50Us)),
      p99Us: Math.max(...summaries.map((w) => w.p99Us)),
      errors: summaries.reduce((a, w) => a + wrkErrors(w), 0),
      cpu,
      crossings,
      others: others.slice(0, 4),
      noise,
      kernelOthers,
      attempts: 1,
    };
    if (sample.errors > 0) this.say(`${phase} round ${round} ${where}: wrk counted ${sample.errors} error(s): ${summaries.map((w) => JSON.stringify(w.errors)).join(' ')}`);
    return sample;
  }

  private async start(podId: string, pod: CriObject, config: CriObject): Promise<string> {
    const name = (config.metadata as CriObject).name as string;
    const id = await this.cri.createContainer(podId, config, pod);
    await this.cri.startContainer(id);
    await waitFor(`container ${name} (${id.slice(0, 13)}) to run`, 30_000, async () => {
      const s = (await this.cri.containerStatus(id)).status as CriObject;
      if (s.state === 'CONTAINER_EXITED') throw new Error(`container ${name} exited with ${s.exit_code}: ${s.reason ?? ''} ${s.message ?? ''}`);
      return s.state === 'CONTAINER_RUNNING' || undefined;
    }).catch((err: Error) => {
      // An exited container's reason is the one worth reporting, not the timeout.
      throw new Error(`start ${name}: ${err.message}`);
    });
    return id;
  }

  /** The node daemon: the process that pumps the host ends of the pods' XPU links (one for all pods). */
  private findShim(podId: string): number {
    const daemons = nodeDaemonPids();
    if (daemons.length !== 1) throw new Error(`pod ${podId.slice(0, 13)}: expected one node daemon, found ${daemons.length}`);
    return daemons[0];
  }

  /** A page fetched by a client in the fabric (node: busybox's static wget crashes there), or undefined. */
  private async fetchFromFabric(url: string): Promise<string | undefined> {
    const get = `require('http').get(process.argv[1], { timeout: 3000 }, (r) => { let b = ''; r.on('data', (d) => (b += d)).on('end', () => { process.stdout.write(b); process.exit(r.statusCode === 200 ? 0 : 1); }); }).on('error', () => process.exit(1)).on('timeout', () => process.exit(1))`;
    const r = await run('ip', ['netns', 'exec', DPU.uplink.fabricNetns, process.execPath, '-e', get, url], { allowFail: true, timeout: 20_000 });
    return r.code === 0 ? r.stdout.trim() : undefined;
  }

  /** wrk in the fabric, one thread pinned to the host CPU; its summary from the done hook. */
  private async wrk(url: string, seconds: number): Promise<WrkSummary> {
    // ip netns exec and taskset each exec the next: wrk is this process's child.
    const args = ['netns', 'exec', DPU.uplink.fabricNetns, 'taskset', '-c', String(this.cpu.pinned), 'wrk', '-t', '1', '-c', String(this.load.connections), '-d', `${seconds}s`, '--timeout', '5s', '--latency', '-s', this.hook, url];
    const r = await run('ip', args, { allowFail: true, timeout: (seconds + 30) * 1000 });
    const line = r.stdout.split('\n').filter((l) => l.startsWith('{')).pop();
    if (r.code !== 0 || !line) throw new Error(`ip ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 500)}`);
    const summary = JSON.parse(line) as WrkSummary;
    if (summary.requests === 0) throw new Error(`wrk made no request to ${url}: ${r.stdout.trim().slice(0, 500)}`);
    return summary;
  }

  async removePod(podId: string): Promise<void> {
    await this.cri.stopPodSandbox(podId);
    await this.cri.removePodSandbox(podId);
    this.live.delete(podId);
  }

  removeFiles(): void {
    fs.rmSync(this.workDir, { recursive: true, force: true });
  }
}

const per10k = (s: Sample, seconds: number): number => (seconds / s.requests) * 1e4;
const perRequest = (s: Sample, n: number): number => n / s.requests;

/** A sample's figures as reported: CPU in seconds per 10,000 requests, shares in % of the window. */
function figures(s: Sample, nHost: number, nDpu: number) {
  const c = s.cpu;
  const x = s.crossings;
  /** The host CPUs' time less the client's: what the node's host had. */
  const hostTime = c.wallS * nHost - c.wrk - c.fabricReceive;
  const share = (v: number): number => (100 * v) / hostTime;
  return {
    rps: s.requestsPerSecond,
    p50Ms: s.p50Us / 1000,
    p99Ms: s.p99Us / 1000,
    host: per10k(s, c.host),
    app: per10k(s, c.app),
    proxyOnHost: per10k(s, c.proxyOnHost),
    shim: per10k(s, c.shim),
    hostReceive: per10k(s, c.hostReceive),
    hostRest: per10k(s, c.host - c.app - c.proxyOnHost - c.shim - c.hostReceive),
    hostSoftirq: per10k(s, c.hostSoftirq),
    wrk: per10k(s, c.wrk),
    fabricReceive: per10k(s, c.fabricReceive),
    dpuBusy: per10k(s, c.dpuBusy),
    dpuCgroup: per10k(s, c.dpuCgroup),
    agent: per10k(s, c.agent),
    dpuReceive: per10k(s, c.dpuReceive),
    dpuRest: per10k(s, c.dpuBusy - c.dpuCgroup - c.agent - c.dpuReceive),
    dpuUtil: (100 * c.dpuBusy) / (c.wallS * nDpu),
    pfPackets: perRequest(s, x.pfPackets),
    pfBytes: perRequest(s, x.pfBytes),
    xpuH2d: perRequest(s, x.hostToDpu.frames),
    xpuD2h: perRequest(s, x.dpuToHost.frames),
    xpuBytes: perRequest(s, x.hostToDpu.bytes + x.dpuToHost.bytes),
    appShare: share(c.app),
    proxyShare: share(c.proxyOnHost),
    shimShare: share(c.shim),
    receiveShare: share(c.hostReceive),
    restShare: share(c.host - c.app - c.proxyOnHost - c.shim - c.hostReceive),
    idleShare: share(hostTime - c.host),
    errors: s.errors,
  };
}
type Figures = ReturnType<typeof figures>;

/** Medians over rounds of each figure (errors summed). */
function medians(list: Figures[]): Figures {
  const out = { ...list[0] };
  for (const k of Object.keys(out) as (keyof Figures)[]) out[k] = k === 'errors' ? list.reduce((a, f) => a + f.errors, 0) : median(list.map((f) => f[k]));
  return out;
}

const f3 = (v: number): string => v.toFixed(3);
const f2 = (v: number): string => v.toFixed(2);
const f1 = (v: number): string => v.toFixed(1);
const f0 = (v: number): string => v.toFixed(0);

function table(header: string[], rows: string[][]): string[] {
  return [`| ${header.join(' | ')} |`, `| ${header.map((_, i) => (i < 2 ? '---' : '---:')).join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

function verdict(name: string, ratio: number, target: number | undefined, atMost: boolean): string {
  if (target === undefined) return `${name} ${f2(ratio)} (no target)`;
  const met = atMost ? ratio <= target : ratio >= target;
  return `${name} ${f3(ratio)} (target ${atMost ? '≤' : '≥'} ${target}: ${met ? 'met' : 'NOT met'})`;
}

function report(r: Result): string {
  const nH = r.hostCpus.length;
  const nD = r.dpuCpus.length;
  const label = (s: Sample | string): string => (typeof s === 'string' ? s : String(s.round));
  const onWhere = (w: Where): string => (w === 'host' ? 'host' : 'DPU');
  const lines = [
    `sidecar benchmark, app ${r.app}: wrk -t1 -c${r.connections} -d${r.durationS}s per pod (after ${r.warmupS} s warm-up) in the fabric (${DPU.uplink.fabricNetns}) to podIP:${PROXY_PORT}; cases alternating, fresh pods each round`,
    `node: ${r.cpus} CPUs; host CPUs ${r.hostCpus.join(',')} (apps, host proxies, shims, wrk and the fabric's receive thread pinned to cpu${r.pinnedCpu}), DPU CPUs ${r.dpuCpus.join(',')}; ${r.when}`,
    'CPU in seconds per 10,000 requests; host CPU = busy host CPUs minus the client (wrk and the fabric end\'s receive thread).',
    `wires' sending ends: TSO ${Object.entries(r.wiresTsoFound).map(([k, v]) => `${k} ${v ? 'on' : 'off'}`).join(', ')}`,
  ];
  const byCase = (phase: Phase, where: Where): Sample[] => r.samples.filter((s) => s.phase === phase && s.where === where);
  const summary: Partial<Record<Phase, Record<Where, Figures>>> = {};
  for (const phase of ['single', 'scale'] as Phase[]) {
    const samples = r.samples.filter((s) => s.phase === phase);
    if (!samples.length) continue;
    const rows = samples.map((s) => ({ name: label(s), where: onWhere(s.where), f: figures(s, nH, nD), s }));
    const med = { host: medians(byCase(phase, 'host').map((s) => figures(s, nH, nD))), dpu: medians(byCase(phase, 'dpu').map((s) => figures(s, nH, nD))) };
    summary[phase] = med;
    const all = [...rows, { name: 'median', where: 'host', f: med.host }, { name: 'median', where: 'DPU', f: med.dpu }];
    const pods = samples[0].pods.length;
    lines.push('', `## ${phase === 'single' ? 'One pod' : `${pods} pods at once`} (${phase}): ${samples.length / 2} round(s) per case`, '');
    if (phase === 'single') {
      lines.push(
        ...table(
          ['round', 'proxy on', 'req/s', 'p50 ms', 'p99 ms', 'host CPU', 'app', 'proxy (host)', 'shim', 'host receive thr.', 'host rest', '(softirq, within)', 'client: wrk', 'client: fabric recv', 'errors'],
          all.map(({ name, where, f }) => [name, where, f0(f.rps), f2(f.p50Ms), f2(f.p99Ms), f3(f.host), f3(f.app), f3(f.proxyOnHost), f3(f.shim), f3(f.hostReceive), f3(f.hostRest), f3(f.hostSoftirq), f3(f.wrk), f3(f.fabricReceive), String(f.errors)]),
        ),
      );
    } else {
      lines.push(
        ...table(
          ['round', 'proxy on', 'req/s (sum)', 'p50 ms (median pod)', 'p99 ms (worst pod)', 'host CPU', 'apps %', 'proxies (host) %', 'shims %', 'host receive thr. %', 'host rest %', 'host idle %', 'errors'],
          all.map(({ name, where, f }) => [name, where, f0(f.rps), f2(f.p50Ms), f2(f.p99Ms), f3(f.host), f1(f.appShare), f1(f.proxyShare), f1(f.shimShare), f1(f.receiveShare), f1(f.restShare), f1(f.idleShare), String(f.errors)]),
        ),
        '',
        '(%: of the host CPUs\' time during the load less the client\'s; "apps %" is the host CPU left to the apps)',
      );
    }
    lines.push(
      '',
      ...table(
        ['round', 'proxy on', 'DPU CPUs busy', 'DPU cgroup', 'agent', 'DPU receive thr.', 'DPU rest', 'DPU util %', 'PF packets/req', 'PF bytes/req', 'XPU frames/req host→DPU', 'XPU frames/req DPU→host', 'XPU bytes/req'],
        all.map(({ name, where, f }) => [name, where, f3(f.dpuBusy), f3(f.dpuCgroup), f3(f.agent), f3(f.dpuReceive), f3(f.dpuRest), f1(f.dpuUtil), f2(f.pfPackets), f0(f.pfBytes), f2(f.xpuH2d), f2(f.xpuD2h), f0(f.xpuBytes)]),
      ),
    );
    const shimThreads = (where: Where): string => {
      const names = new Map<string, number[]>();
      for (const s of byCase(phase, where)) for (const [n, v] of Object.entries(s.cpu.shimThreads)) names.set(n, [...(names.get(n) ?? []), per10k(s, v)]);
      return [...names].map(([n, v]) => ({ n, v: median(v) })).filter((t) => t.v >= 0.0005).sort((a, b) => b.v - a.v).map((t) => `${t.n} ${f3(t.v)}`).join(', ') || 'none';
    };
    lines.push('', `shim threads (median s/10k req): host case ${shimThreads('host')}; DPU case ${shimThreads('dpu')}`);
    lines.push(`other processes busy during the load (≥ 0.1 s; the pods, the agent, wrk and the receive threads excluded):`);
    for (const { name, where, s } of rows) {
      const busy = s.others.map((o) => `${o.comm}[${o.pid}] ${f2(o.seconds)} s`).join(', ') || 'none';
      lines.push(`  round ${name} ${where}: ${busy}; user-space total ${f2(s.noise)} s, kernel threads ${f2(s.kernelOthers ?? 0)} s${s.attempts > 1 ? ` (attempt ${s.attempts})` : ''}`);
    }
  }

  lines.push('', '## Offloaded / on host (medians)');
  const t = TARGETS[r.app];
  for (const phase of ['single', 'scale'] as Phase[]) {
    const m = summary[phase];
    if (!m) continue;
    const cpu = m.dpu.host / m.host.host;
    const parts = [
      verdict('host CPU per request', cpu, t.hostCpu, true),
      verdict('p99', m.dpu.p99Ms / m.host.p99Ms, phase === 'single' ? t.p99 : undefined, true),
      verdict('req/s', m.dpu.rps / m.host.rps, phase === 'single' ? t.rps : undefined, false),
      `p50 ${f2(m.dpu.p50Ms / m.host.p50Ms)}`,
    ];
    lines.push(`${phase}: ${parts.join(', ')}`);
    const util = m.dpu.dpuUtil;
    lines.push(`  DPU utilisation offloaded ${f1(util)}% of ${nD} CPU(s)${util >= 90 ? ': the DPU\'s CPU is saturated and bounds req/s' : ''}; host idle offloaded ${f1(m.dpu.idleShare)}% vs ${f1(m.host.idleShare)}%`);
    if (phase === 'scale') lines.push(`  host CPU left to the apps: ${f1(m.dpu.appShare)}% offloaded vs ${f1(m.host.appShare)}% on host`);
  }
  lines.push(`leftovers after the run: ${r.leftovers.length ? r.leftovers.join('; ') : 'none'}`);
  return `${lines.join('\n')}\n`;
}

function positiveInt(name: string, fallback: string, min = 1): number {
  const v = Number(arg(name, fallback));
  if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer ≥ ${min}, not ${arg(name, '')}`);
  return v;
}

async function main(): Promise<void> {
  // --report FILE: print the tables of an earlier run's --json output again.
  const saved = arg('report', '');
  if (saved) return void process.stdout.write(report(JSON.parse(fs.readFileSync(saved, 'utf8')) as Result));
  const rounds = positiveInt('rounds', '3', 0);
  const durationS = positiveInt('duration', '10');
  const connections = positiveInt('connections', '4');
  const warmupS = positiveInt('warmup', '2', 0);
  const scalePods = positiveInt('scale', '8', 0);
  const scaleRounds = positiveInt('scale-rounds', '2', 0);
  const maxNoise = Number(arg('max-noise', '1'));
  if (!(maxNoise >= 0)) throw new Error(`--max-noise must be a number of seconds ≥ 0, not ${arg('max-noise', '')}`);
  const json = arg('json', '');
  const app = arg('app', 'httpd');
  if (!(app in APPS)) throw new Error(`--app must be one of ${Object.keys(APPS).join(', ')}, not ${JSON.stringify(app)}`);
  const say = (l: string): void => void process.stderr.write(`${l}\n`);

  const wasUp = (await status()).running;
  const beforeUp = wasUp ? undefined : await snapshotHost();
  await up(say);
  const cri = CriClient.connect(TESTBED.endpoint, 120_000);
  const samples: Sample[] = [];
  let cpus: Cpus | undefined;
  let threads: ReceiveThread[] = [];
  let tsoFound: Record<string, boolean> = {};
  const leftovers: string[] = [];
  try {
    const { host: hostCpus, dpu: dpuCpus } = hostAndDpuCpus();
    cpus = { host: hostCpus, dpu: dpuCpus, pinned: hostCpus[0] };
    threads = receiveThreads();
    for (const s of ['fabric', 'host', 'dpu'] as const) {
      if (!threads.some((t) => t.side === s)) throw new Error(`no ${s} receive thread among the emulated wires' (${JSON.stringify(threads)}): is the DPU made by this checkout?`);
    }
    tsoFound = await wiresTso();
    const tsoOn = Object.entries(tsoFound).filter(([, on]) => on).map(([k]) => k);
    if (tsoOn.length) throw new Error(`TSO is on at ${tsoOn.join(', ')}: each side's receive work would run on the sender's CPU; remake the DPU with this checkout (heteropod dpu down; heteropod local up)`);
    const bench = new Bench(cri, cpus, threads, { durationS, connections, warmupS }, app as AppKind, say);
    try {
      const phases: [Phase, number, number][] = [['single', rounds, 1], ['scale', scalePods > 0 ? scaleRounds : 0, scalePods]];
      for (const [phase, n, pods] of phases) {
        for (let round = 1; round <= n; round++) {
          const order: Where[] = round % 2 === 1 ? ['host', 'dpu'] : ['dpu', 'host'];
          for (const where of order) {
            // Another user's work on this shared machine skews both sides'
            // figures: such a measurement is made again, on fresh pods.
            let s = await bench.measure(phase, where, round, pods);
            for (let attempt = 2; s.noise > maxNoise && attempt <= 3; attempt++) {
              say(`${phase} round ${round} ${where}: other processes used ${s.noise.toFixed(2)} s of CPU during the load; measuring again`);
              s = { ...(await bench.measure(phase, where, round, pods)), attempts: attempt };
            }
            samples.push(s);
            say(`${phase} round ${round} ${where}: ${pods} pod(s), ${s.requestsPerSecond.toFixed(0)} req/s, p50 ${(s.p50Us / 1000).toFixed(2)} ms, p99 ${(s.p99Us / 1000).toFixed(2)} ms, host CPU ${per10k(s, s.cpu.host).toFixed(3)} s/10k req, DPU busy ${((100 * s.cpu.dpuBusy) / (s.cpu.wallS * dpuCpus.length)).toFixed(0)}%`);
          }
        }
      }
    } finally {
      for (const podId of bench.live) await bench.removePod(podId).catch((err) => say(`remove pod ${podId}: ${(err as Error).message}`));
      bench.removeFiles();
      const ours = (await cri.listPodSandbox()).filter((p) => (p.metadata as CriObject | undefined)?.namespace === POD_NAMESPACE);
      leftovers.push(...ours.map((p) => `pod ${p.id as string}`));
    }
  } finally {
    cri.close();
    if (beforeUp) {
      await down(() => {});
      leftovers.push(...(await persistentLeaksSince(beforeUp)));
    }
  }
  if (!cpus) throw new Error('the CPUs were not read'); // unreachable: main would have thrown
  const result: Result = {
    when: new Date().toISOString(),
    cpus: os.cpus().length,
    hostCpus: cpus.host,
    dpuCpus: cpus.dpu,
    pinnedCpu: cpus.pinned,
    app: app as AppKind,
    rounds,
    scalePods,
    scaleRounds,
    durationS,
    connections,
    warmupS,
    receiveThreads: threads,
    wiresTsoFound: tsoFound,
    samples,
    leftovers,
  };
  process.stdout.write(report(result));
  if (json) fs.writeFileSync(json, `${JSON.stringify(result, null, 2)}\n`);
  if (leftovers.length) process.exitCode = 1;
}

main().catch((err) => {
  process.stderr.write(`bench-sidecar: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
