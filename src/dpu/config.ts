// The emulated DPU's size, from `dpu up` options, as the values written into its
// cgroup. Pure: the host's CPU list is passed in, nothing is read here.
import { formatCpuList, parseCpuList } from '../common/cpulist';
import { DPU } from './paths';

export interface DpuOptions {
  /** how many CPUs the DPU gets, taken from the end of the host's CPU list */
  cpus?: string;
  /** an explicit cpuset list instead ("3", "2-3", "0,2") */
  cpuset?: string;
  /** memory limit: bytes, or a number with K, M, G (KiB, MiB, GiB; "i"/"B" optional) */
  memory?: string;
  /** the pod network (CIDR) that the fabric routes to the node through the DPU */
  podCidr?: string;
}

export interface DpuSize {
  cpus: number[];
  memoryBytes: number;
}

/** The values `dpu up` writes, file by file, into /sys/fs/cgroup/<controller>/heteropod-dpu. */
export interface CgroupValues {
  cpuset: { 'cpuset.cpus': string; 'cpuset.mems': string };
  memory: { 'memory.limit_in_bytes': string };
  pids: { 'pids.max': string };
  cpu: Record<string, never>;
}

const UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

export function parseMemory(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new Error(`bad memory size "${text}": use bytes or a number with K, M or G (e.g. 1G, 512M)`);
  const bytes = Math.floor(Number(m[1]) * UNITS[m[2].toLowerCase()]);
  // Below this the agent (a node process) cannot even start.
  if (bytes < 64 * 1024 ** 2) throw new Error(`memory size "${text}" is below the DPU's minimum of 64M`);
  return bytes;
}

export function formatBytes(bytes: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size) return bytes % size === 0 ? `${bytes / size} ${unit}` : `${(bytes / size).toFixed(1)} ${unit}`;
  }
  return `${bytes} B`;
}

/**
 * The DPU's CPUs and memory. Default: the host's last online CPU (nproc - 1 on a
 * machine with CPUs 0..n-1) and 1 GiB. `hostCpus` is the root cpuset's cpuset.cpus.
 */
export function dpuSize(opts: DpuOptions, hostCpus: number[]): DpuSize {
  if (hostCpus.length === 0) throw new Error('the host has no CPUs in its root cpuset');
  if (opts.cpus !== undefined && opts.cpuset !== undefined) throw new Error('give --cpus or --cpuset, not both');
  let cpus: number[];
  if (opts.cpuset !== undefined) {
    cpus = parseCpuList(opts.cpuset);
    const missing = cpus.filter((c) => !hostCpus.includes(c));
    if (cpus.length === 0) throw new Error('--cpuset is empty');
    if (missing.length) throw new Error(`--cpuset ${opts.cpuset}: CPU ${missing.join(', ')} not on this host (it has ${formatCpuList(hostCpus)})`);
  } else {
    const count = opts.cpus === undefined ? 1 : Number(opts.cpus);
    if (!Number.isInteger(count) || count < 1) throw new Error(`--cpus ${opts.cpus}: want a whole number of CPUs, 1 or more`);
    if (count > hostCpus.length) throw new Error(`--cpus ${count}: the host has only ${hostCpus.length}`);
    cpus = hostCpus.slice(hostCpus.length - count);
  }
  const memoryBytes = opts.memory === undefined ? DPU.defaultMemoryBytes : parseMemory(opts.memory);
  return { cpus, memoryBytes };
}

export function cgroupValues(size: DpuSize): CgroupValues {
  return {
    // cpuset.mems must be set before a task may join a v1 cpuset; node 0 is the
    // one memory node every machine has.
    cpuset: { 'cpuset.cpus': formatCpuList(size.cpus), 'cpuset.mems': '0' },
    memory: { 'memory.limit_in_bytes': String(size.memoryBytes) },
    pids: { 'pids.max': String(DPU.defaultPidsMax) },
    // Joined for accounting (cpuacct is separate here) and so a later CFS quota has a place.
    cpu: {},
  };
}
