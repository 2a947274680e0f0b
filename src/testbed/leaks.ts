// The leak check every end-to-end test ends with: what of ours exists on the host
// after a test that did not before it. "Ours": processes of containerd, its shims,
// runc, our binaries and anything in a CRI pod's cgroup; every mount, network
// namespace, host link, netfilter rule, pod cgroup, the emulated DPU's cgroups and
// state dir, shim socket and shared-memory file. The snapshot is taken before the
// test bed starts and after it stops.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { listProcesses, run } from './proc';
import { REPO_ROOT, TESTBED } from './paths';
import { cgroupDir, DPU } from '../dpu/paths';

export interface HostSnapshot {
  processes: string[];
  mounts: string[];
  netns: string[];
  links: string[];
  rules: string[];
  cgroups: string[];
  files: string[];
}

const OUR_PROCESS = /containerd|runc|heteropod|xpu|\/pause\b|haproxy|node-exporter/;

function lines(text: string): string[] {
  return text.split('\n').map((l) => l.trim()).filter(Boolean);
}

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir).map((name) => `${dir}/${name}`);
  } catch {
    return [];
  }
}

async function netfilterRules(): Promise<string[]> {
  const out: string[] = [];
  for (const [cmd, family] of [['iptables-save', 'ip'], ['ip6tables-save', 'ip6']] as const) {
    const { stdout, code } = await run(cmd, [], { allowFail: true });
    if (code !== 0) continue;
    let table = '';
    for (const line of lines(stdout)) {
      if (line.startsWith('*')) table = line.slice(1);
      else if (line.startsWith('-A') || line.startsWith('-N')) out.push(`${family} ${table} ${line}`);
      else if (line.startsWith(':')) out.push(`${family} ${table} chain ${line.split(' ')[0].slice(1)}`);
    }
  }
  return out;
}

/**
 * The checkout of this project a process belongs to (found from its cwd or its
 * binary), if any.
 * Several checkouts (git worktrees) share a machine; a process working in another
 * one, or running a binary built there, belongs to another engineer's build or
 * tests, not to ours.
 */
function checkoutOf(pid: number): string | undefined {
  // Its working directory, or, for a daemon that left it for / (a fifo keeper),
  // the binary it runs.
  for (const link of ['cwd', 'exe']) {
    let dir: string;
    try {
      dir = fs.readlinkSync(`/proc/${pid}/${link}`);
    } catch {
      continue;
    }
    for (; dir !== path.dirname(dir); dir = path.dirname(dir)) {
      if (fs.existsSync(path.join(dir, 'cri-proto')) && fs.existsSync(path.join(dir, 'package.json'))) return dir;
    }
  }
  return undefined;
}

export async function snapshotHost(): Promise<HostSnapshot> {
  const self = process.pid;
  const processes = listProcesses()
    .filter((p) => p.pid !== self && p.ppid !== self && (OUR_PROCESS.test(p.cmdline) || /\/k8s\.io\//.test(p.cgroup)))
    .filter((p) => !p.cmdline.includes('dist/test/')) // the test runners themselves
    .filter((p) => {
      const checkout = checkoutOf(p.pid);
      return checkout === undefined || checkout === REPO_ROOT;
    })
    .map((p) => `${p.pid} ${p.cmdline}`);
  const mounts = lines(fs.readFileSync('/proc/self/mountinfo', 'utf8')).map((l) => l.split(' ')[4]);
  const netns = listDir('/run/netns');
  const links = lines((await run('ip', ['-o', 'link', 'show'])).stdout).map((l) => l.split(':')[1].trim().split('@')[0]);
  const cgroups = [
    ...['pids', 'memory', 'cpu', 'unified'].flatMap((c) => listDir(`/sys/fs/cgroup/${c}/k8s.io`)).filter((p) => fs.statSync(p).isDirectory()),
    ...DPU.cgroupControllers.map((c) => cgroupDir(c)).filter((p) => fs.existsSync(p)),
  ];
  const files = [
    ...listDir('/dev/shm/heteropod'),
    ...listDir('/run/containerd/s'),
    ...[TESTBED.runDir, TESTBED.stateDir, DPU.stateDir].filter((p) => fs.existsSync(p)),
  ];
  return { processes, mounts, netns, links, rules: await netfilterRules(), cgroups, files };
}

/** One line per thing present in `after` and not in `before`. */
export function leaksSince(before: HostSnapshot, after: HostSnapshot): string[] {
  const out: string[] = [];
  for (const key of Object.keys(after) as (keyof HostSnapshot)[]) {
    const had = new Set(before[key]);
    for (const item of after[key]) if (!had.has(item)) out.push(`${key}: ${item}`);
  }
  return out;
}

/**
 * Leaks that persist: items new since `before` in two snapshots `settleMs` apart.
 * Other engineers' short-lived processes on a shared machine (a compiler whose
 * command line names xpu, say) come and go between the two and are not counted;
 * what our test left behind stays in both.
 */
export async function persistentLeaksSince(before: HostSnapshot, settleMs = 1500): Promise<string[]> {
  const first = leaksSince(before, await snapshotHost());
  if (first.length === 0) return first;
  await new Promise((r) => setTimeout(r, settleMs));
  const second = new Set(leaksSince(before, await snapshotHost()));
  return first.filter((l) => second.has(l));
}
