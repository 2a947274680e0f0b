// What the DPU has: the agent's CPUs and memory, read from its own cgroup (v1), so
// the same code is right on the emulated DPU (a cpuset + memory limit on the host)
// and on a real DPU (the root cgroup, i.e. the whole Arm complex). The parsers are
// pure; `readResources` does the reading.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseCpuList, formatCpuList } from '../common/cpulist';

export interface Resources {
  cpus: number[];
  memoryTotalBytes: number;
  memoryUsedBytes: number;
}

/** /proc/<pid>/cgroup -> controller -> path, for v1 hierarchies ("4:memory:/a/b"). */
export function parseProcCgroup(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line.trim());
    if (!m) continue;
    for (const controller of m[1].split(',')) if (controller) out.set(controller, m[2]);
  }
  return out;
}

/** MemTotal from /proc/meminfo, in bytes. */
export function parseMemTotal(meminfo: string): number {
  const m = /^MemTotal:\s+(\d+)\s+kB/m.exec(meminfo);
  if (!m) throw new Error('no MemTotal in /proc/meminfo');
  return Number(m[1]) * 1024;
}

/**
 * A v1 memory.limit_in_bytes means "no limit" when it is at least the machine's
 * memory (the kernel's "unlimited" is a page-rounded LONG_MAX); the total is then the machine's.
 */
export function effectiveMemoryLimit(limitInBytes: number, machineBytes: number): number {
  return Number.isFinite(limitInBytes) && limitInBytes > 0 && limitInBytes < machineBytes ? limitInBytes : machineBytes;
}

export function capacityOf(r: Resources, runningContainers: number) {
  return {
    cpus: r.cpus.length,
    cpuset: formatCpuList(r.cpus),
    memory_total_bytes: r.memoryTotalBytes,
    memory_free_bytes: Math.max(0, r.memoryTotalBytes - r.memoryUsedBytes),
    running_containers: runningContainers,
  };
}

function readNumber(file: string): number | undefined {
  try {
    return Number(fs.readFileSync(file, 'utf8').trim());
  } catch {
    return undefined;
  }
}

export function readResources(cgroupRoot = '/sys/fs/cgroup'): Resources {
  const mine = parseProcCgroup(fs.readFileSync('/proc/self/cgroup', 'utf8'));
  const machineMemory = parseMemTotal(fs.readFileSync('/proc/meminfo', 'utf8'));

  let cpus: number[] = [];
  const cpusetPath = mine.get('cpuset');
  if (cpusetPath !== undefined) {
    try {
      cpus = parseCpuList(fs.readFileSync(path.join(cgroupRoot, 'cpuset', cpusetPath, 'cpuset.cpus'), 'utf8'));
    } catch {
      // no v1 cpuset mounted: fall back to what the scheduler lets us use
    }
  }
  if (cpus.length === 0) cpus = os.cpus().map((_, i) => i);

  const memoryPath = mine.get('memory');
  const memDir = memoryPath === undefined ? undefined : path.join(cgroupRoot, 'memory', memoryPath);
  const limit = memDir ? readNumber(path.join(memDir, 'memory.limit_in_bytes')) : undefined;
  const usage = memDir ? readNumber(path.join(memDir, 'memory.usage_in_bytes')) : undefined;
  const memoryTotalBytes = effectiveMemoryLimit(limit ?? Infinity, machineMemory);
  const memoryUsedBytes = usage ?? machineMemory - os.freemem();
  return { cpus, memoryTotalBytes, memoryUsedBytes };
}
