// Benchmark (not a timed test): handler heteropod against handler runc on the test
// bed, alternating pod by pod in one run. heteropod runs in both of its modes: a
// pod without the `heteropod.io/offload` annotation (`heteropod`: runc's shim
// behind the C proxy) and, unless --no-offload, a pod that offloads its one
// container (`heteropod-offload`: runc's shim behind the C proxy for the
// sandbox, the container on the DPU, the pod's XPU link up, served by the node
// daemon). For each pod: the time from RunPodSandbox to its container running,
// and the resident memory of every host process serving it: its shims (runc's
// and our proxy), plus, for an offloading pod, the node daemon's memory divided
// by the pods it serves (RSS, and PSS, which shares the binaries' pages fairly
// among the processes that map them; the daemon's executable is counted
// whole, see daemonMemory). Then, every pod up and idle, the CPU those processes
// use (the node daemon's divided as its memory is; the DPU's agent reported on its
// own: it is the DPU's CPU). Each pod's start also counts the CPU the whole
// machine (host and emulated DPU, every process: containerd, runc, the shims,
// the daemon, the agent, this benchmark) spent while it started, from
// /proc/stat: the pods start one at a time; and how it divides: the host's CPUs
// and the DPU's (when pinned), the node daemon's and the agent's own. Prints a
// markdown table and the ratios.
//
// The host's processes are kept to the host's CPUs (every online CPU but the
// emulated DPU's), as on a real node, where the DPU's cores run nothing of the
// host's: containerd and all it starts (CNI plugins, the shims, runc), the pods'
// host containers (their parent cgroup k8s.io, which the test bed made), the node
// daemon and this benchmark. Without that, a runc pod's start would use the DPU's
// CPU too, and the host's work would delay the DPU's. --no-pin measures without it.
//
//   flock /run/heteropod-testbed.lock node dist/scripts/bench-shim.js [--pods 50] [--no-offload] [--no-pin] [--json FILE]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CriClient } from '../src/cri/client';
import type { CriObject } from '../src/cri/config';
import { TESTBED } from '../src/testbed/paths';
import { listProcesses, run, sleep } from '../src/testbed/proc';
import { formatCpuList } from '../src/common/cpulist';
import { down, nodeDaemonPids, ownsPodCgroups, up } from '../src/testbed/testbed';
import { agentPid } from '../src/dpu/dpu';
import { podWindowPath } from '../src/netns/half';
import { readStats } from '../src/xpu/window';
import { hostAndDpuCpus } from '../src/dpu/cgroup';
import { arg, cpuSecondsBetween, cpuTicks, processSeconds, stats } from './bench-lib';

const ALL = ['runc', 'heteropod', 'heteropod-offload'] as const;
type Handler = (typeof ALL)[number];
const HANDLERS: Handler[] = process.argv.includes('--no-offload') ? ['runc', 'heteropod'] : [...ALL];
const OWN_PID_NAMESPACE = { security_context: { namespace_options: { pid: 'CONTAINER' } } };
// The offloading pods' one container runs on the DPU.
const OFFLOADED = 'sidecar';

interface PodSample {
  handler: Handler;
  podId: string;
  startMs: number;
  rssKiB: number;
  pssKiB: number;
  shims: number;
  // CPU of its host processes while every pod is up and idle, ms per second
  idleCpuMs: number;
  // CPU of the whole machine (host and DPU, every process) while it started, ms
  startCpuMs: number;
  // of it: the host's CPUs and the DPU's (pinned runs only), the node daemon and the agent
  startHostCpuMs: number;
  startDpuCpuMs: number;
  startDaemonCpuMs: number;
  startAgentCpuMs: number;
}

// How long idle CPU is measured, every pod up.
const IDLE_MS = 5000;
/** CPU time of a process's threads so far, ms (schedstat: nanoseconds, where /proc/PID/stat counts 10 ms ticks). */
function cpuMs(pid: number): number {
  let ns = 0;
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // the thread exited
      }
    }
  } catch {
    // the process is gone
  }
  return ns / 1e6;
}


function kib(file: string, field: string): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(file, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** The node daemon's memory by kind of mapping, in KiB. */
interface DaemonMemory {
  /** every mapping's PSS, its executable's pages counted whole (RSS) */
  pssKiB: number;
  /** its executable's resident pages */
  executableKiB: number;
  /** anonymous memory: malloc's arenas (V8's heap for a Node.js daemon), the threads' stacks */
  anonymousKiB: number;
  /** the rest: shared libraries (PSS), the links' windows, other files */
  otherKiB: number;
}

/**
 * The node daemon's PSS with the pages of its own executable counted whole, and
 * what it is made of. (For the daemon in C its executable is its own; for the
 * TypeScript one, HETEROPOD_NODE_DAEMON=node, it is node, which on the test bed
 * the DPU's agent and this benchmark map too, while on a real node the daemon
 * alone would.)
 */
function daemonMemory(pid: number): DaemonMemory {
  const exe = fs.readlinkSync(`/proc/${pid}/exe`);
  const m: DaemonMemory = { pssKiB: 0, executableKiB: 0, anonymousKiB: 0, otherKiB: 0 };
  let kind: 'executable' | 'anonymous' | 'other' = 'other';
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const name = head[1];
      kind = name === exe ? 'executable' : name === '' || /^\[(heap|stack|anon)/.test(name) ? 'anonymous' : 'other';
      continue;
    }
    const f = /^(Rss|Pss):\s+(\d+) kB/.exec(line);
    if (!f || f[1] !== (kind === 'executable' ? 'Rss' : 'Pss')) continue;
    const kib = Number(f[2]);
    m.pssKiB += kib;
    m[`${kind}KiB`] += kib;
  }
  return m;
}

// Every shim process of the pod: runc's own, or ours plus the runc shim behind it.
function podShims(podId: string): number[] {
  return listProcesses()
    .filter((p) => /containerd-shim-(runc|heteropod)-v2/.test(p.cmdline) && p.cmdline.includes(TESTBED.socket) && p.cmdline.includes(`-id ${podId}`))
    .map((p) => p.pid);
}

// The processes and CPUs a start's CPU is divided between, looked up once a run.
interface StartCpuParts {
  daemon: number | undefined;
  agent: number | undefined;
  cpus: { host: number[]; dpu: number[] };
}

async function runPod(cri: CriClient, handler: Handler, n: number, parts: StartCpuParts): Promise<PodSample> {
  const pod: CriObject = {
    metadata: { name: `bench-${handler}-${n}`, namespace: 'bench', uid: `bench-${handler}-${n}-${process.pid}`, attempt: 0 },
    log_directory: `/tmp/hp-bench-${process.pid}/${handler}-${n}`,
    // Each container its own process namespace, as kubelet makes them by default
    // (a DPU container cannot join the sandbox's).
    linux: OWN_PID_NAMESPACE,
    ...(handler === 'heteropod-offload' ? { annotations: { 'heteropod.io/offload': OFFLOADED, 'heteropod.io/offload-policy': 'require' } } : {}),
  };
  const container: CriObject = { metadata: { name: handler === 'heteropod-offload' ? OFFLOADED : 'app', attempt: 0 }, image: { image: 'heteropod.local/busybox:1' }, command: ['sleep', '3600'], log_path: 'app.log', linux: OWN_PID_NAMESPACE };
  const { daemon, agent } = parts;
  const own0 = [processSeconds(daemon), processSeconds(agent)];
  const cpu0 = cpuTicks();
  const t0 = process.hrtime.bigint();
  const podId = await cri.runPodSandbox(pod, handler === 'runc' ? 'runc' : 'heteropod');
  const id = await cri.createContainer(podId, container, pod);
  await cri.startContainer(id);
  for (;;) {
    const s = (await cri.containerStatus(id)).status as CriObject;
    if (s.state === 'CONTAINER_RUNNING') break;
    await sleep(5);
  }
  const startMs = Number(process.hrtime.bigint() - t0) / 1e6;
  if (handler === 'heteropod-offload') {
    // Both ends' heartbeats seen: up within a moment of the container's start.
    for (let i = 0; !readStats(podWindowPath(podId)).linkUp; i++) {
      if (i >= 50) throw new Error(`pod ${podId}: its XPU link is not up`);
      await sleep(20);
    }
  }
  const cpu1 = cpuTicks();
  const ms = (cpus: number[]): number => cpuSecondsBetween(cpu0, cpu1, cpus, 'busy') * 1000;
  return {
    handler,
    podId,
    startMs,
    rssKiB: 0,
    pssKiB: 0,
    shims: 0,
    idleCpuMs: 0,
    startCpuMs: ms([...cpu0.keys()]),
    startHostCpuMs: ms(parts.cpus.host),
    startDpuCpuMs: ms(parts.cpus.dpu),
    startDaemonCpuMs: (processSeconds(daemon) - own0[0]) * 1000,
    startAgentCpuMs: (processSeconds(agent) - own0[1]) * 1000,
  };
}

const PODS_CPUSET_DIR = '/sys/fs/cgroup/cpuset/k8s.io';

/** Keeps the host's processes to the host's CPUs (see the top); returns what it did, for the report, and how to undo it. */
async function pinHost(): Promise<{ said: string; undo: () => void }> {
  const cpus = hostAndDpuCpus();
  const host = formatCpuList(cpus.host);
  // k8s.io is the test bed's own only when it made it; a system containerd's is not touched.
  if (!ownsPodCgroups()) throw new Error("the cgroup k8s.io was not made by the test bed: another containerd's pods are not pinned (--no-pin measures without pinning)");
  // containerd makes it at the first pod; made now, it needs its memory nodes
  // before CPUs (runc copies both into each pod's cgroup below); `down` removes it.
  if (!fs.existsSync(PODS_CPUSET_DIR)) {
    fs.mkdirSync(PODS_CPUSET_DIR);
    fs.writeFileSync(path.join(PODS_CPUSET_DIR, 'cpuset.mems'), fs.readFileSync('/sys/fs/cgroup/cpuset/cpuset.mems', 'utf8').trim());
  }
  const cpusFile = path.join(PODS_CPUSET_DIR, 'cpuset.cpus');
  const before = fs.readFileSync(cpusFile, 'utf8').trim();
  fs.writeFileSync(cpusFile, host);
  const daemons = nodeDaemonPids();
  const containerd = Number(fs.readFileSync(TESTBED.pidFile, 'utf8').trim());
  for (const pid of [containerd, ...daemons, process.pid]) await run('taskset', ['-a', '-p', '-c', host, String(pid)]);
  return {
    said: `host CPUs ${host} (containerd and what it starts, the pods' host containers, the node daemon, this benchmark), DPU CPUs ${formatCpuList(cpus.dpu)}`,
    undo: () => fs.writeFileSync(cpusFile, before || host),
  };
}

async function main(): Promise<void> {
  const pods = Number(arg('pods', '50'));
  if (!(pods >= 1)) throw new Error('--pods must be a positive number');
  const say = (l: string): void => void process.stderr.write(`${l}\n`);
  await up(say);
  // A bed that cannot be pinned is taken down again, as at the end.
  const pinned = process.argv.includes('--no-pin')
    ? null
    : await pinHost().catch(async (err: Error) => {
        await down(() => {});
        throw err;
      });
  const cpusSaid = pinned ? pinned.said : 'not pinned (--no-pin): the host\'s processes may run on every CPU';
  say(cpusSaid);
  const cri = CriClient.connect(TESTBED.endpoint, 120_000);
  const parts: StartCpuParts = { daemon: nodeDaemonPids()[0], agent: agentPid(), cpus: hostAndDpuCpus() };
  const samples: PodSample[] = [];
  const node = { pods: 0, rssKiB: 0, pssKiB: 0, memory: null as DaemonMemory | null, threads: 0, idleCpuMs: 0, agentIdleCpuMs: 0 };
  try {
    // Warm-up, one pod each, not counted: page cache, image unpack.
    for (const h of HANDLERS) {
      const w = await runPod(cri, h, -1, parts);
      await cri.stopPodSandbox(w.podId);
      await cri.removePodSandbox(w.podId);
    }
    for (let i = 0; i < pods; i++) {
      // Each handler goes first, second, … in turn.
      const order = HANDLERS.map((_, k) => HANDLERS[(i + k) % HANDLERS.length]);
      for (const h of order) {
        const s = await runPod(cri, h, i, parts);
        samples.push(s);
        say(`pod ${i} ${h}: ${s.startMs.toFixed(0)} ms`);
      }
    }
    // Memory with every pod running, the steady state of a loaded node.
    await sleep(2000);
    const daemons = nodeDaemonPids();
    if (daemons.length !== 1) throw new Error(`want one node daemon, found ${daemons.length}`);
    node.pods = samples.filter((s) => s.handler === 'heteropod-offload').length;
    node.rssKiB = kib(`/proc/${daemons[0]}/status`, 'VmRSS');
    node.memory = daemonMemory(daemons[0]);
    node.pssKiB = node.memory.pssKiB;
    node.threads = Number(/^Threads:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${daemons[0]}/status`, 'utf8'))?.[1] ?? 0);
    // Idle CPU: each pod's shims, the node daemon and (on the DPU) the agent over IDLE_MS.
    const agent = agentPid();
    const shimPids = new Map(samples.map((s) => [s.podId, podShims(s.podId)]));
    const all = [daemons[0], ...(agent ? [agent] : []), ...[...shimPids.values()].flat()];
    const before = new Map(all.map((p) => [p, cpuMs(p)]));
    await sleep(IDLE_MS);
    const used = (p: number) => ((cpuMs(p) - before.get(p)!) * 1000) / IDLE_MS;
    node.idleCpuMs = used(daemons[0]);
    node.agentIdleCpuMs = agent ? used(agent) : 0;
    for (const s of samples) {
      const pids = shimPids.get(s.podId)!;
      s.idleCpuMs = pids.reduce((a, p) => a + used(p), 0) + (s.handler === 'heteropod-offload' ? node.idleCpuMs / node.pods : 0);
      s.shims = pids.length;
      s.rssKiB = pids.reduce((a, p) => a + kib(`/proc/${p}/status`, 'VmRSS'), 0);
      s.pssKiB = pids.reduce((a, p) => a + kib(`/proc/${p}/smaps_rollup`, 'Pss'), 0);
      if (s.handler === 'heteropod-offload') {
        s.rssKiB += node.rssKiB / node.pods;
        s.pssKiB += node.pssKiB / node.pods;
      }
    }
  } finally {
    for (const s of samples) {
      await cri.stopPodSandbox(s.podId).catch(() => {});
      await cri.removePodSandbox(s.podId).catch(() => {});
    }
    cri.close();
    pinned?.undo();
    await down(() => {});
    fs.rmSync(`/tmp/hp-bench-${process.pid}`, { recursive: true, force: true });
  }

  const by = (h: Handler): PodSample[] => samples.filter((s) => s.handler === h);
  const row = (h: Handler): string => {
    const t = stats(by(h).map((s) => s.startMs));
    const rss = stats(by(h).map((s) => s.rssKiB / 1024));
    const pss = stats(by(h).map((s) => s.pssKiB / 1024));
    const idle = stats(by(h).map((s) => s.idleCpuMs));
    const cpu = stats(by(h).map((s) => s.startCpuMs));
    return `| ${h} | ${by(h).length} | ${t.median.toFixed(0)} | ${t.mean.toFixed(0)} | ${t.p90.toFixed(0)} | ${cpu.median.toFixed(0)} | ${by(h)[0]?.shims ?? 0} | ${rss.mean.toFixed(1)} | ${pss.mean.toFixed(1)} | ${idle.mean.toFixed(2)} |`;
  };
  const ratio = (h: Handler, f: (s: PodSample) => number, pick: 'median' | 'mean'): string => (stats(by(h).map(f))[pick] / stats(by('runc').map(f))[pick]).toFixed(2);
  const ratios = (h: Handler): string =>
    `ratio ${h}/runc: start (median) ${ratio(h, (s) => s.startMs, 'median')}x, start (mean) ${ratio(h, (s) => s.startMs, 'mean')}x, CPU per start (median) ${ratio(h, (s) => s.startCpuMs, 'median')}x, RSS ${ratio(h, (s) => s.rssKiB, 'mean')}x, PSS ${ratio(h, (s) => s.pssKiB, 'mean')}x`;
  // What the daemon's PSS is made of, and the least an offloading pod's PSS could
  // be with this daemon: its share of its executable's pages alone.
  const memoryLine = (m: DaemonMemory, pods: number): string => {
    const mib = (k: number) => (k / 1024).toFixed(1);
    const offload = stats(by('heteropod-offload').map((s) => s.pssKiB - m.pssKiB / pods + m.executableKiB / pods)).mean;
    const floor = (offload / stats(by('runc').map((s) => s.pssKiB)).mean).toFixed(2);
    return `the node daemon's PSS: its executable ${mib(m.executableKiB)} MiB, anonymous memory (heap, stacks) ${mib(m.anonymousKiB)} MiB, libraries and other files ${mib(m.otherKiB)} MiB; with its executable's pages alone in their share, an offloading pod would be at ${floor}x runc's PSS`;
  };
  // Where a start's CPU went (means: /proc/stat counts 10 ms ticks).
  const startCpuLine = (h: Handler): string => {
    const mean = (f: (s: PodSample) => number): string => stats(by(h).map(f)).mean.toFixed(0);
    const where = pinned ? `host CPUs ${mean((s) => s.startHostCpuMs)} ms, DPU CPUs ${mean((s) => s.startDpuCpuMs)} ms` : 'not pinned: host and DPU not told apart';
    return `CPU per start, ${h} (means): ${mean((s) => s.startCpuMs)} ms in all; ${where}; of it the node daemon ${mean((s) => s.startDaemonCpuMs)} ms, the DPU's agent ${mean((s) => s.startAgentCpuMs)} ms`;
  };
  const lines = [
    `pods per handler: ${pods}, alternating; node: ${require('node:os').cpus().length} CPUs, ${new Date().toISOString()}`,
    cpusSaid,
    '`heteropod`: no heteropod.io/offload annotation (runc shim behind the C proxy); `heteropod-offload`: its container on the DPU, its XPU link up (runc shim behind the C proxy, and a share of the node daemon)',
    '',
    '| handler | pods | start median ms | start mean ms | start p90 ms | CPU per start median ms | shim processes per pod | RSS per pod MiB | PSS per pod MiB | idle host CPU per pod, ms/s |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...HANDLERS.map(row),
    '',
    ...HANDLERS.map(startCpuLine),
    ...(node.pods ? [`idle, every pod up (${IDLE_MS / 1000} s): the node daemon ${node.idleCpuMs.toFixed(1)} ms of CPU a second (in the table, a share to each offloading pod); the DPU's agent ${node.agentIdleCpuMs.toFixed(1)} ms a second of the DPU's CPU, ${(node.agentIdleCpuMs / node.pods).toFixed(2)} per offloading pod`] : []),
    ...(node.pods ? [`node daemon, serving ${node.pods} offloading pods: ${(node.rssKiB / 1024).toFixed(1)} MiB RSS, ${(node.pssKiB / 1024).toFixed(1)} MiB PSS (its executable's pages counted whole), ${node.threads} threads (goal: RSS at most 80 MiB at 50 pods); each offloading pod counts 1/${node.pods} of it`] : []),
    ...(node.pods && node.memory ? [memoryLine(node.memory, node.pods)] : []),
    `${ratios('heteropod')} (target: within 1.1x)`,
    ...HANDLERS.filter((h) => h === 'heteropod-offload').map((h) => `${ratios(h)} (targets: PSS at most 1.2x, RSS at most 1.3x, start median at most 1.1x)`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  const json = arg('json', '');
  if (json) fs.writeFileSync(json, JSON.stringify(samples, null, 2));
}

main().catch((err) => {
  process.stderr.write(`bench-shim: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
