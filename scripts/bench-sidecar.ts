// Benchmark (not a timed test): what offloading a pod's sidecar proxy to the DPU
// saves the host under HTTP load, on the test bed. The pod is the demo's shape:
//
//   app    busybox httpd on :8080 serving a small page, always on the host
//          (--app keepalive: a server that keeps connections, see APPS);
//   proxy  haproxy (heteropod.local/haproxy:1, one thread), a frontend on :15006
//          forwarding every request to 127.0.0.1:8080.
//
// wrk, in the node's network namespace, loads podIP:15006 (keep-alive, a few
// connections, fixed duration). One run measures two cases, alternating round by
// round, each on a fresh pod:
//
//   host  proxy on the host next to app;
//   dpu   proxy offloaded (heteropod.io/offload: proxy, heteropod.io/ports:
//         proxy=15006): node → host half → XPU link → haproxy on the DPU →
//         127.0.0.1:8080 back over the link → httpd on the host.
//
// Fairness: both pods use the handler heteropod and an offload annotation with
// policy require, so both get a DPU half, an XPU link (its host end pumped by the
// pod's shim, in the shim's default [xpu] host_mode, sleep), the same netfilter rules in the host half and the same port
// watcher. In the host case the annotation names a container the pod does not
// have, so the link idles; idle, its pumps sleep on a futex and cost nothing. A
// pod without the annotation would differ in more than placement: it is served
// by runc's shim behind the launcher's C proxy, with no DPU half, no link and no
// rules in its namespace, and the comparison would mix those in.
//
// CPUs: the host's pods, the pod's shim (which pumps the host end of the link)
// and wrk are pinned to the first host CPU (cpu0): the containers with CRI
// linux.resources.cpuset_cpus, the shim with taskset -a on its pid, wrk with
// taskset. The DPU keeps its default cpuset (the last CPU); the offloaded proxy
// has no cpuset of its own and runs there.
//
// Reported per case, the median over rounds of:
//   - requests/s, p50 and p99 latency (wrk's own histogram, from a Lua done hook);
//   - host CPU seconds per 10,000 requests: busy time of all CPUs but the DPU's
//     (/proc/stat: user, nice, system, irq, softirq) during the load, minus wrk's
//     utime+stime (read as the growth of this process's cutime+cstime once wrk is
//     reaped: its /proc/<pid>/stat is gone by the time its totals are final);
//   - where that host time goes: app's and (host case) proxy's cgroup cpuacct
//     usage, the shim's utime+stime (the XPU pump threads included), the rest;
//   - DPU CPU: the DPU cgroup's cpuacct usage (its containers: `dpu up` does not
//     put the agent in the cpuacct hierarchy), the agent's utime+stime (the DPU
//     end of the link is pumped by its threads), and the DPU CPUs' busy time.
// and the ratios offloaded/host of host CPU per request (target ≤ 0.60) and of
// p99 (target ≤ 1.2). The kernel accounts CPU by ticks without IRQ-time
// accounting: softirq work (the network stack) is charged to whichever task it
// interrupts or runs in, so part of the pod's packet processing lands in wrk's
// system time and is subtracted with it (more so in the host case, where a
// send by wrk runs the stack down to haproxy's socket in wrk's context).
//
// Every pod is removed as soon as it is measured. The test bed is left as found:
// brought up if needed and then taken down (and checked for leftovers).
//
//   flock /run/heteropod-testbed.lock node dist/scripts/bench-sidecar.js \
//     [--rounds 3] [--duration 10] [--connections 4] [--warmup 2] [--app httpd|keepalive] [--json FILE]
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CriClient } from '../src/cri/client';
import type { CriObject } from '../src/cri/config';
import * as dpu from '../src/dpu/dpu';
import { parseCpuList } from '../src/dpu/config';
import { cgroupDir } from '../src/dpu/paths';
import { podWindowPath } from '../src/netns/half';
import { persistentLeaksSince, snapshotHost } from '../src/testbed/leaks';
import { TESTBED } from '../src/testbed/paths';
import { httpGet } from '../src/testbed/http';
import { listProcesses, run, waitFor } from '../src/testbed/proc';
import { readStats, XpuDirStats } from '../src/xpu/window';
import { down, status, up } from '../src/testbed/testbed';
import { arg, stats } from './bench-lib';

const BUSYBOX = 'heteropod.local/busybox:1';
const HAPROXY = 'heteropod.local/haproxy:1';
const APP_PORT = 8080;
const PROXY_PORT = 15006;
/** What the host case's offload annotation names: no container of the pod. */
const NO_SUCH_CONTAINER = 'no-such-container';
const POD_NAMESPACE = 'bench-sidecar';
const PAGE = '<html><body><p>hello from app</p></body></html>';
const CPUACCT = '/sys/fs/cgroup/cpuacct';
const CPUSET_ONLINE = '/sys/devices/system/cpu/online';

type Where = 'host' | 'dpu';

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

/** CPU seconds during one load run, each over the same window. */
interface CpuSeconds {
  /** Busy time of the host CPUs (all but the DPU's), from /proc/stat. */
  hostBusy: number;
  /** wrk's utime+stime. */
  wrk: number;
  /** hostBusy - wrk: what the figure per request is made of. */
  host: number;
  /** app's container cgroup (with httpd, the children it forks per connection too). */
  app: number;
  /** proxy's container cgroup when it runs on the host, else 0. */
  proxyOnHost: number;
  /** The pod's shim (threads included: the host end's XPU pumps). */
  shim: number;
  /** The DPU cgroup (cpuacct): the DPU's containers. */
  dpuCgroup: number;
  /** The DPU agent process (threads included: the DPU end's XPU pumps). */
  agent: number;
  /** Busy time of the DPU's CPUs, from /proc/stat. */
  dpuBusy: number;
}

/** What crossed the pod's XPU link during the load, per direction (counter deltas). */
interface LinkCounts {
  hostToDpu: XpuDirStats;
  dpuToHost: XpuDirStats;
}

/** A process outside the pod and the bench that used CPU during the load: noise on a shared machine. */
interface Busy {
  pid: number;
  comm: string;
  seconds: number;
}

interface Sample {
  where: Where;
  round: number;
  podId: string;
  podIp: string;
  /** Cpus_allowed_list of app's and proxy's first process and of the shim, as checked. */
  cpusAllowed: { app: string; proxy: string; shim: string };
  wrk: WrkSummary;
  requestsPerSecond: number;
  cpu: CpuSeconds;
  link: LinkCounts;
  /** The busiest other processes (kernel threads included) during the load. */
  others: Busy[];
}

interface Result {
  when: string;
  cpus: number;
  hostCpus: number[];
  dpuCpus: number[];
  pinnedCpu: number;
  app: AppKind;
  rounds: number;
  durationS: number;
  connections: number;
  warmupS: number;
  samples: Sample[];
  leftovers: string[];
}

const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** Busy ticks per CPU from /proc/stat: user, nice, system, irq, softirq (not idle, iowait, steal; guest is in user). */
function busyTicks(): Map<number, number> {
  const out = new Map<number, number>();
  for (const line of fs.readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [user, nice, system, , , irq, softirq] = m[2].split(/\s+/).map(Number);
    out.set(Number(m[1]), user + nice + system + irq + softirq);
  }
  return out;
}

/** Fields of /proc/<pid>/stat after the command name: [0] is state (field 3), so utime is [11]. */
function procStatFields(pid: number | 'self'): number[] {
  const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return text
    .slice(text.lastIndexOf(')') + 2)
    .split(' ')
    .map(Number);
}

/** utime+stime of a process (all its threads, live and exited), in seconds; 0 when it is gone. */
function processSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const f = procStatFields(pid);
    return (f[11] + f[12]) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** cutime+cstime of this process: the CPU of the children it has reaped. */
function reapedChildrenSeconds(): number {
  const f = procStatFields('self');
  return (f[13] + f[14]) / CLK_TCK;
}

/** utime+stime ticks and name of every process now (threads summed by the kernel). */
function allProcessTicks(): Map<number, { comm: string; ticks: number }> {
  const out = new Map<number, { comm: string; ticks: number }>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      out.set(Number(name), { comm: text.slice(text.indexOf('(') + 1, text.lastIndexOf(')')), ticks: Number(f[11]) + Number(f[12]) });
    } catch {
      // gone while we looked
    }
  }
  return out;
}

function cgroupProcs(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function cpuacctSeconds(dir: string | undefined): number {
  if (!dir) return 0;
  try {
    return Number(fs.readFileSync(path.join(dir, 'cpuacct.usage'), 'utf8').trim()) / 1e9;
  } catch {
    return 0;
  }
}

/** The cpuacct cgroup directory runc made for a container: named for its id, a few levels down. */
function containerCpuacct(containerId: string): string {
  const walk = (dir: string, depth: number): string | undefined => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return undefined;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const sub = path.join(dir, e.name);
      if (e.name.includes(containerId)) return sub;
      if (depth > 0) {
        const found = walk(sub, depth - 1);
        if (found) return found;
      }
    }
    return undefined;
  };
  const dir = walk(CPUACCT, 4);
  if (!dir) throw new Error(`no cpuacct cgroup for container ${containerId.slice(0, 13)} under ${CPUACCT}`);
  return dir;
}

function dirDelta(a: XpuDirStats, b: XpuDirStats): XpuDirStats {
  const out = { ...b };
  for (const k of Object.keys(out) as (keyof XpuDirStats)[]) out[k] = b[k] - a[k];
  return out;
}

function cpusAllowed(status: string): string {
  return /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] ?? '?';
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
    private readonly cpu: { host: number[]; dpu: number[]; pinned: number },
    private readonly load: { durationS: number; connections: number; warmupS: number },
    private readonly app: AppKind,
    private readonly say: (l: string) => void,
  ) {
    fs.writeFileSync(this.hook, WRK_DONE_HOOK);
  }

  /** One pod with proxy on `where`, loaded and measured; removed before this returns. */
  async measure(where: Where, round: number): Promise<Sample> {
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
    try {
      const podIp = (((await this.cri.podSandboxStatus(podId)).status as CriObject).network as CriObject).ip as string;
      if (!fs.existsSync(podWindowPath(podId))) throw new Error(`pod ${podId.slice(0, 13)} (${where}) has no XPU window: both cases must have a DPU half`);
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
      await this.pinShimThreads(shimPid);

      // Placement and pinning as intended, or every figure below is the wrong one.
      const appStatus = (await this.cri.execSync(app, ['cat', '/proc/1/status'], 10)).stdout.toString();
      const proxyCheck = await this.cri.execSync(proxy, ['sh', '-c', 'cat /proc/1/status; echo; grep -c heteropod-dpu /proc/1/cgroup'], 10);
      const proxyText = proxyCheck.stdout.toString();
      const onDpu = Number(proxyText.trim().split('\n').pop()) > 0;
      if (onDpu !== (where === 'dpu')) throw new Error(`proxy runs ${onDpu ? 'on the DPU' : 'on the host'}, expected ${where}`);
      const allowed = {
        app: cpusAllowed(appStatus),
        proxy: cpusAllowed(proxyText),
        shim: cpusAllowed(fs.readFileSync(`/proc/${shimPid}/status`, 'utf8')),
      };
      const expectProxy = where === 'host' ? String(this.cpu.pinned) : this.cpu.dpu.join(',');
      if (allowed.app !== String(this.cpu.pinned) || allowed.shim !== String(this.cpu.pinned) || parseCpuList(allowed.proxy).join(',') !== expectProxy) {
        throw new Error(`CPUs allowed: app ${allowed.app}, proxy ${allowed.proxy}, shim ${allowed.shim}; expected app and shim ${this.cpu.pinned}, proxy ${expectProxy}`);
      }

      const url = `http://${podIp}:${PROXY_PORT}/`;
      await waitFor(`${url} to serve app's page through proxy (${where})`, 15_000, async () => (await httpGet(url)) === PAGE || undefined, 100);
      if (this.load.warmupS > 0) await this.wrk(url, this.load.warmupS);

      const appCg = containerCpuacct(app);
      const proxyCgroup = containerCpuacct(proxy);
      const proxyCg = where === 'host' ? proxyCgroup : undefined;
      const agentPid = dpu.agentPid();
      const ours = new Set([process.pid, shimPid, agentPid ?? 0, ...cgroupProcs(appCg), ...cgroupProcs(proxyCgroup)]);
      const procsBefore = allProcessTicks();
      const window = podWindowPath(podId);
      const snap = () => ({
        link: readStats(window),
        busy: busyTicks(),
        children: reapedChildrenSeconds(),
        app: cpuacctSeconds(appCg),
        proxy: cpuacctSeconds(proxyCg),
        shim: processSeconds(shimPid),
        dpuCgroup: cpuacctSeconds(cgroupDir('cpuacct')),
        agent: processSeconds(agentPid),
      });
      // Nothing but wrk is a child of this process during the window, so the
      // growth of cutime+cstime is wrk's own CPU.
      const before = snap();
      const summary = await this.wrk(url, this.load.durationS);
      const after = snap();
      const others: Busy[] = [];
      for (const [pid, p] of allProcessTicks()) {
        const seconds = (p.ticks - (procsBefore.get(pid)?.ticks ?? 0)) / CLK_TCK;
        if (!ours.has(pid) && p.comm !== 'wrk' && seconds >= 0.1) others.push({ pid, comm: p.comm, seconds });
      }
      others.sort((a, b) => b.seconds - a.seconds);
      const ticks = (cpus: number[]): number => cpus.reduce((a, c) => a + ((after.busy.get(c) ?? 0) - (before.busy.get(c) ?? 0)), 0) / CLK_TCK;
      const hostBusy = ticks(this.cpu.host);
      const wrkS = after.children - before.children;
      const cpu: CpuSeconds = {
        hostBusy,
        wrk: wrkS,
        host: hostBusy - wrkS,
        app: after.app - before.app,
        proxyOnHost: after.proxy - before.proxy,
        shim: after.shim - before.shim,
        dpuCgroup: after.dpuCgroup - before.dpuCgroup,
        agent: after.agent - before.agent,
        dpuBusy: ticks(this.cpu.dpu),
      };
      const link = { hostToDpu: dirDelta(before.link.hostToDpu, after.link.hostToDpu), dpuToHost: dirDelta(before.link.dpuToHost, after.link.dpuToHost) };
      const sample: Sample = { where, round, podId, podIp, cpusAllowed: allowed, wrk: summary, requestsPerSecond: summary.requests / (summary.durationUs / 1e6), cpu, link, others: others.slice(0, 4) };
      const errors = Object.values(summary.errors).reduce((a, b) => a + b, 0);
      if (errors > 0) this.say(`round ${round} ${where}: wrk counted ${errors} error(s): ${JSON.stringify(summary.errors)}`);
      return sample;
    } finally {
      await this.removePod(podId);
    }
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

  /** The pod's shim: the process that pumps the host end of its XPU link. */
  private findShim(podId: string): number {
    const shims = listProcesses().filter((p) => p.cmdline.startsWith('containerd-shim-heteropod-v2') && p.cmdline.includes(`-id ${podId}`));
    if (shims.length !== 1) throw new Error(`expected one shim for pod ${podId.slice(0, 13)}, found ${shims.length}`);
    return shims[0].pid;
  }

  /** Every thread of the shim, present and future (threads inherit it), on the pinned CPU. */
  private async pinShimThreads(pid: number): Promise<void> {
    await run('taskset', ['-a', '-p', '-c', String(this.cpu.pinned), String(pid)]);
  }

  /** wrk from the node's namespace, one thread pinned to the host CPU; its summary from the done hook. */
  private async wrk(url: string, seconds: number): Promise<WrkSummary> {
    const args = ['-c', String(this.cpu.pinned), 'wrk', '-t', '1', '-c', String(this.load.connections), '-d', `${seconds}s`, '--timeout', '5s', '--latency', '-s', this.hook, url];
    const r = await run('taskset', args, { allowFail: true, timeout: (seconds + 30) * 1000 });
    const line = r.stdout.split('\n').filter((l) => l.startsWith('{')).pop();
    if (r.code !== 0 || !line) throw new Error(`taskset ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 500)}`);
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

const per10k = (s: Sample, seconds: number): number => (seconds / s.wrk.requests) * 1e4;

interface CaseSummary {
  samples: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  host: number;
  wrk: number;
  app: number;
  proxyOnHost: number;
  shim: number;
  hostOther: number;
  dpuCgroup: number;
  agent: number;
  dpuBusy: number;
  errors: number;
}

/** Medians over a case's rounds; CPU figures in seconds per 10,000 requests. */
function summarize(samples: Sample[]): CaseSummary {
  const med = (f: (s: Sample) => number): number => stats(samples.map(f)).median;
  return {
    samples: samples.length,
    rps: med((s) => s.requestsPerSecond),
    p50Ms: med((s) => s.wrk.p50Us / 1000),
    p99Ms: med((s) => s.wrk.p99Us / 1000),
    host: med((s) => per10k(s, s.cpu.host)),
    wrk: med((s) => per10k(s, s.cpu.wrk)),
    app: med((s) => per10k(s, s.cpu.app)),
    proxyOnHost: med((s) => per10k(s, s.cpu.proxyOnHost)),
    shim: med((s) => per10k(s, s.cpu.shim)),
    hostOther: med((s) => per10k(s, s.cpu.host - s.cpu.app - s.cpu.proxyOnHost - s.cpu.shim)),
    dpuCgroup: med((s) => per10k(s, s.cpu.dpuCgroup)),
    agent: med((s) => per10k(s, s.cpu.agent)),
    dpuBusy: med((s) => per10k(s, s.cpu.dpuBusy)),
    errors: samples.reduce((a, s) => a + Object.values(s.wrk.errors).reduce((x, y) => x + y, 0), 0),
  };
}

function report(r: Result): string {
  const f3 = (v: number): string => v.toFixed(3);
  const f2 = (v: number): string => v.toFixed(2);
  const errs = (s: Sample): number => Object.values(s.wrk.errors).reduce((a, b) => a + b, 0);
  const lines = [
    `sidecar benchmark: ${r.rounds} round(s) per case, alternating; wrk -t1 -c${r.connections} -d${r.durationS}s (after ${r.warmupS} s warm-up) from the node's namespace to podIP:${PROXY_PORT}; app ${r.app}`,
    `node: ${r.cpus} CPUs; host CPUs ${r.hostCpus.join(',')} (app, host proxy, the pod's shim and wrk pinned to cpu${r.pinnedCpu}), DPU CPUs ${r.dpuCpus.join(',')}; ${r.when}`,
    'CPU figures are seconds per 10,000 requests; host = busy host CPUs minus wrk.',
    '',
    '| round | proxy on | req/s | p50 ms | p99 ms | host CPU | wrk (subtracted) | app | proxy (host) | shim | host other | DPU cgroup | DPU agent | DPU CPUs busy | errors |',
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const s of r.samples) {
    const c = s.cpu;
    lines.push(
      `| ${s.round} | ${s.where} | ${s.requestsPerSecond.toFixed(0)} | ${f2(s.wrk.p50Us / 1000)} | ${f2(s.wrk.p99Us / 1000)} | ${f3(per10k(s, c.host))} | ${f3(per10k(s, c.wrk))} | ${f3(per10k(s, c.app))} | ${f3(per10k(s, c.proxyOnHost))} | ${f3(per10k(s, c.shim))} | ${f3(per10k(s, c.host - c.app - c.proxyOnHost - c.shim))} | ${f3(per10k(s, c.dpuCgroup))} | ${f3(per10k(s, c.agent))} | ${f3(per10k(s, c.dpuBusy))} | ${errs(s)} |`,
    );
  }
  lines.push('', 'other processes busy during the load (≥ 0.1 s; the pod, the DPU agent and wrk excluded):');
  for (const s of r.samples) lines.push(`  round ${s.round} ${s.where}: ${s.others.map((o) => `${o.comm}[${o.pid}] ${o.seconds.toFixed(2)} s`).join(', ') || 'none'}`);
  const host = summarize(r.samples.filter((s) => s.where === 'host'));
  const off = summarize(r.samples.filter((s) => s.where === 'dpu'));
  lines.push('', '| medians | rounds | req/s | p50 ms | p99 ms | host CPU | wrk (subtracted) | app | proxy (host) | shim | host other | DPU cgroup | DPU agent | DPU CPUs busy | errors |');
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const [name, c] of [['proxy on host', host], ['proxy on DPU', off]] as const) {
    lines.push(`| ${name} | ${c.samples} | ${c.rps.toFixed(0)} | ${f2(c.p50Ms)} | ${f2(c.p99Ms)} | ${f3(c.host)} | ${f3(c.wrk)} | ${f3(c.app)} | ${f3(c.proxyOnHost)} | ${f3(c.shim)} | ${f3(c.hostOther)} | ${f3(c.dpuCgroup)} | ${f3(c.agent)} | ${f3(c.dpuBusy)} | ${c.errors} |`);
  }
  const offSamples = r.samples.filter((s) => s.where === 'dpu');
  if (offSamples.length) {
    const per = (f: (l: LinkCounts) => number): string => stats(offSamples.map((s) => f(s.link) / s.wrk.requests)).median.toFixed(1);
    lines.push(
      '',
      `XPU link per request, proxy on DPU (medians): frames host→DPU ${per((l) => l.hostToDpu.frames)}, DPU→host ${per((l) => l.dpuToHost.frames)}; ` +
        `consumer futex sleeps host→DPU ${per((l) => l.hostToDpu.sleeps)}, DPU→host ${per((l) => l.dpuToHost.sleeps)}; producer wakes ${per((l) => l.hostToDpu.wakeups)}, ${per((l) => l.dpuToHost.wakeups)}; ` +
        `spins that found work ${per((l) => l.hostToDpu.spins)}, ${per((l) => l.dpuToHost.spins)}; drops ${per((l) => l.hostToDpu.drops + l.dpuToHost.drops)}`,
    );
  }
  const cpuRatio = off.host / host.host;
  const p99Ratio = off.p99Ms / host.p99Ms;
  lines.push(
    '',
    `ratio offloaded/host: host CPU per request ${f2(cpuRatio)} (target ≤ 0.60: ${cpuRatio <= 0.6 ? 'met' : 'NOT met'}), p99 ${f2(p99Ratio)}x (target ≤ 1.2x: ${p99Ratio <= 1.2 ? 'met' : 'NOT met'}), p50 ${f2(off.p50Ms / host.p50Ms)}x, req/s ${f2(off.rps / host.rps)}x`,
    `leftovers after the run: ${r.leftovers.length ? r.leftovers.join('; ') : 'none'}`,
  );
  return `${lines.join('\n')}\n`;
}

function positiveInt(name: string, fallback: string, min = 1): number {
  const v = Number(arg(name, fallback));
  if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer ≥ ${min}, not ${arg(name, '')}`);
  return v;
}

async function main(): Promise<void> {
  const rounds = positiveInt('rounds', '3');
  const durationS = positiveInt('duration', '10');
  const connections = positiveInt('connections', '4');
  const warmupS = positiveInt('warmup', '2', 0);
  const json = arg('json', '');
  const app = arg('app', 'httpd');
  if (!(app in APPS)) throw new Error(`--app must be one of ${Object.keys(APPS).join(', ')}, not ${JSON.stringify(app)}`);
  const say = (l: string): void => void process.stderr.write(`${l}\n`);

  const wasUp = (await status()).running;
  const beforeUp = wasUp ? undefined : await snapshotHost();
  await up(say);
  const cri = CriClient.connect(TESTBED.endpoint, 120_000);
  const samples: Sample[] = [];
  let cpus: { host: number[]; dpu: number[]; pinned: number } | undefined;
  const leftovers: string[] = [];
  try {
    const online = parseCpuList(fs.readFileSync(CPUSET_ONLINE, 'utf8'));
    const dpuCpus = parseCpuList(fs.readFileSync(path.join(cgroupDir('cpuset'), 'cpuset.cpus'), 'utf8'));
    const hostCpus = online.filter((c) => !dpuCpus.includes(c));
    if (hostCpus.length === 0) throw new Error(`no host CPU left: online ${online.join(',')}, DPU ${dpuCpus.join(',')}`);
    cpus = { host: hostCpus, dpu: dpuCpus, pinned: hostCpus[0] };
    const bench = new Bench(cri, cpus, { durationS, connections, warmupS }, app as AppKind, say);
    try {
      for (let round = 1; round <= rounds; round++) {
        const order: Where[] = round % 2 === 1 ? ['host', 'dpu'] : ['dpu', 'host'];
        for (const where of order) {
          const s = await bench.measure(where, round);
          samples.push(s);
          say(`round ${round} ${where}: ${s.requestsPerSecond.toFixed(0)} req/s, p50 ${(s.wrk.p50Us / 1000).toFixed(2)} ms, p99 ${(s.wrk.p99Us / 1000).toFixed(2)} ms, host CPU ${per10k(s, s.cpu.host).toFixed(3)} s/10k req`);
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
    durationS,
    connections,
    warmupS,
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
