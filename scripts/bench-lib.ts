// What the benchmark scripts share: their command-line values, summary statistics
// and CPU accounting.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** `--name VALUE` from the command line, else `fallback`. */
export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

export interface Stats {
  median: number;
  p90: number;
  mean: number;
}

/** The median: of an even count, the mean of the middle two (nearest rank would take the upper one of two rounds). */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median and p90 by nearest rank, and the mean. */
export function stats(values: number[]): Stats {
  const s = [...values].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  return { median: at(0.5), p90: at(0.9), mean: values.reduce((a, b) => a + b, 0) / values.length };
}

// CPU accounting from /proc and the cgroup v1 cpuacct hierarchy. The kernel
// accounts tasks' utime/stime and /proc/stat by ticks (no IRQ-time accounting
// here): a tick taken in softirq counts in /proc/stat's softirq column and in the
// stime of the task it interrupted; cpuacct.usage is a cgroup's run time.

export const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export interface CpuTicks {
  /** user + nice + system + irq + softirq (not idle, iowait, steal; guest is in user) */
  busy: number;
  softirq: number;
}

/** Ticks per CPU from /proc/stat. */
export function cpuTicks(): Map<number, CpuTicks> {
  const out = new Map<number, CpuTicks>();
  for (const line of fs.readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [user, nice, system, , , irq, softirq] = m[2].split(/\s+/).map(Number);
    out.set(Number(m[1]), { busy: user + nice + system + irq + softirq, softirq });
  }
  return out;
}

/** Seconds of `field` on `cpus` between two readings of cpuTicks(). */
export function cpuSecondsBetween(a: Map<number, CpuTicks>, b: Map<number, CpuTicks>, cpus: number[], field: keyof CpuTicks): number {
  return cpus.reduce((s, c) => s + ((b.get(c)?.[field] ?? 0) - (a.get(c)?.[field] ?? 0)), 0) / CLK_TCK;
}

/** Fields of /proc/<pid>[/task/<tid>]/stat after the command name: [0] is state (field 3), so utime is [11]. */
function statFields(file: string): { comm: string; f: number[] } {
  const text = fs.readFileSync(file, 'utf8');
  return { comm: text.slice(text.indexOf('(') + 1, text.lastIndexOf(')')), f: text.slice(text.lastIndexOf(')') + 2).split(' ').map(Number) };
}

/** utime+stime of a process (all its threads, live and exited) or a kernel thread, in seconds; 0 when it is gone. */
export function processSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const { f } = statFields(`/proc/${pid}/stat`);
    return (f[11] + f[12]) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** The live threads of a process: tid -> name (none when the process is gone). */
export function threadNames(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  let tids: string[] = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      out.set(Number(tid), fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim());
    } catch {
      // gone while we looked
    }
  }
  return out;
}

/** utime+stime seconds of each live thread of a process, summed by thread name. */
export function threadSecondsByName(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const [tid, comm] of threadNames(pid)) {
    try {
      const { f } = statFields(`/proc/${pid}/task/${tid}/stat`);
      out.set(comm, (out.get(comm) ?? 0) + (f[11] + f[12]) / CLK_TCK);
    } catch {
      // gone while we looked
    }
  }
  return out;
}

/** cutime+cstime of this process: the CPU of the children (and their reaped descendants) it has reaped. */
export function reapedChildrenSeconds(): number {
  const { f } = statFields('/proc/self/stat');
  return (f[13] + f[14]) / CLK_TCK;
}

const PF_KTHREAD = 0x00200000;

/**
 * CPU ticks, name, and whether it is a kernel thread, of every process now:
 * utime+stime (threads summed by the kernel) and cutime+cstime, so that a
 * process that ran and exited between two readings still counts, in the
 * parent that reaped it.
 */
export function allProcessTicks(): Map<number, { comm: string; ticks: number; kernel: boolean }> {
  const out = new Map<number, { comm: string; ticks: number; kernel: boolean }>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const { comm, f } = statFields(`/proc/${name}/stat`);
      // flags is field 9: [6]
      out.set(Number(name), { comm, ticks: f[11] + f[12] + f[13] + f[14], kernel: (f[6] & PF_KTHREAD) !== 0 });
    } catch {
      // gone while we looked
    }
  }
  return out;
}

export function cgroupProcs(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export const CPUACCT = '/sys/fs/cgroup/cpuacct';

/** A cgroup's run time (cpuacct.usage), in seconds; 0 without one. */
export function cpuacctSeconds(dir: string | undefined): number {
  if (!dir) return 0;
  try {
    return Number(fs.readFileSync(path.join(dir, 'cpuacct.usage'), 'utf8').trim()) / 1e9;
  } catch {
    return 0;
  }
}

/** The cpuacct cgroup directory runc made for a container: named for its id, a few levels down. */
export function containerCpuacct(containerId: string): string {
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

/** A thread's run time (sum_exec_runtime, /proc/PID/schedstat), in seconds: exact, where utime/stime are sampled by ticks; 0 when it is gone. */
export function threadRunSeconds(pid: number): number {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]) / 1e9;
  } catch {
    return 0;
  }
}
