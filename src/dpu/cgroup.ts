// The DPU's cgroup (v1): one directory named heteropod-dpu under each of the
// cpuset, memory, cpu and pids hierarchies. Its cpuset is the DPU's cores, its
// memory limit the DPU's RAM; the agent and everything it starts live in it, so
// its cgroup.procs are exactly the processes `dpu down` must stop.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseCpuList } from '../common/cpulist';
import { waitFor } from '../testbed/proc';
import { CgroupValues } from './config';
import { cgroupDir, DPU } from './paths';

export function hostCpuList(): string {
  return fs.readFileSync(path.join(DPU.cgroupRoot, 'cpuset', 'cpuset.cpus'), 'utf8').trim();
}

/** The emulated DPU's CPUs (its cpuset) and the host's: every other online CPU; throws when none is left to the host. */
export function hostAndDpuCpus(): { host: number[]; dpu: number[] } {
  const online = parseCpuList(fs.readFileSync('/sys/devices/system/cpu/online', 'utf8'));
  const dpu = parseCpuList(fs.readFileSync(path.join(cgroupDir('cpuset'), 'cpuset.cpus'), 'utf8'));
  const host = online.filter((c) => !dpu.includes(c));
  if (host.length === 0) throw new Error(`no host CPU left: online ${online.join(',')}, DPU ${dpu.join(',')}`);
  return { host, dpu };
}

export function cgroupsPresent(): string[] {
  return DPU.cgroupControllers.map((c) => cgroupDir(c)).filter((d) => fs.existsSync(d));
}

/** Creates the cgroups (if missing) and writes `values`; cpuset.cpus before cpuset.mems, both before anyone joins. */
export function ensureCgroups(values: CgroupValues): void {
  for (const controller of DPU.cgroupControllers) {
    const dir = cgroupDir(controller);
    if (!fs.existsSync(path.dirname(dir))) throw new Error(`cgroup v1 controller ${controller} is not mounted at ${path.dirname(dir)}`);
    fs.mkdirSync(dir, { recursive: true });
    for (const [file, value] of Object.entries(values[controller] as Record<string, string>)) {
      try {
        fs.writeFileSync(path.join(dir, file), value);
      } catch (err) {
        throw new Error(`set ${controller} ${file}=${value} in ${dir}: ${(err as Error).message}`);
      }
    }
  }
}

export function readCgroupFile(controller: string, file: string): string | undefined {
  try {
    return fs.readFileSync(path.join(cgroupDir(controller), file), 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * The DPU's cgroup directories in every hierarchy, deepest first: runc makes the
 * DPU's containers' cgroups below heteropod-dpu, also in hierarchies the DPU
 * itself does not use (devices, freezer, ...).
 */
export function cgroupTree(): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory()) walk(path.join(dir, e.name));
    out.push(dir);
  };
  let hierarchies: fs.Dirent[] = [];
  try {
    hierarchies = fs.readdirSync(DPU.cgroupRoot, { withFileTypes: true });
  } catch {
    return out;
  }
  // Symbolic links (cpu,cpuacct) name a hierarchy already listed.
  for (const h of hierarchies) if (h.isDirectory()) walk(cgroupDir(h.name));
  return out;
}

/** Every process in the DPU's cgroups and below: the agent, runc shims, containers. */
export function cgroupPids(): number[] {
  const pids = new Set<number>();
  for (const dir of cgroupTree()) {
    let text = '';
    try {
      text = fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) if (line.trim()) pids.add(Number(line));
  }
  return [...pids];
}

/** Removes the (empty) cgroups. A v1 memory cgroup may stay busy for a moment after its last task exits. */
export async function removeCgroups(): Promise<string[]> {
  const removed: string[] = [];
  for (const dir of cgroupTree()) {
    await waitFor(`cgroup ${dir} to be removed`, 5000, () => {
      try {
        fs.rmdirSync(dir);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
        throw new Error(`rmdir ${dir}: ${(err as Error).message}`);
      }
    });
    removed.push(`cgroup ${dir}`);
  }
  return removed;
}
