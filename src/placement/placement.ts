// Where one container of a pod runs. The pod's annotations name the containers
// to offload; each of them goes to the DPU unless something stands in the way:
// no DPU (none configured, unreachable, unhealthy), a container the DPU cannot
// hold (memory), or a mount that cannot span the two sides (a writable directory
// volume). Under `prefer` such a container runs on the host and the reason is
// kept for the log and `heteropod pods`; under `require` it is an error.
import * as fs from 'node:fs';
import { isBindMount, isSandboxShm, OciMount } from '../oci/mounts';
import { PodOffload } from './annotations';

export type Where = 'host' | 'dpu';

export interface Placement {
  where: Where;
  // why a container named for offload runs on the host; empty otherwise
  reason: string;
}

export class PlacementError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PlacementError';
  }
}

export interface ContainerSpec {
  mounts?: OciMount[];
  linux?: { resources?: { memory?: { limit?: number } }; namespaces?: { type: string; path?: string }[] };
}

/**
 * A container that joins the sandbox's process namespace (a pod with
 * shareProcessNamespace, or a CRI client leaving the pid mode at POD) cannot: the
 * sandbox is on the host. On the DPU it would be PID 1 of its own namespace and
 * signals would reach it differently, so it is not offloaded.
 */
export function sharesPodPidNamespace(spec: ContainerSpec): boolean {
  return (spec.linux?.namespaces ?? []).some((ns) => ns.type === 'pid' && Boolean(ns.path));
}

export interface DpuState {
  // empty when the DPU can take containers; else why not
  unavailable: string;
  memoryFreeBytes: number;
}

/**
 * Mounts of the spec that cannot go to the DPU: a writable bind mount of a
 * directory is a volume the host side may share, and a copy would split it.
 * Files (/etc/hosts, /etc/resolv.conf, termination-log) and read-only
 * directories are copied; the sandbox's /dev/shm is replaced.
 */
export function unshippableMounts(spec: ContainerSpec, isDirectory: (p: string) => boolean = defaultIsDirectory): string[] {
  const out: string[] = [];
  for (const m of spec.mounts ?? []) {
    if (!isBindMount(m) || isSandboxShm(m)) continue;
    if (!(m.options ?? []).includes('ro') && m.source && isDirectory(m.source)) out.push(`${m.destination} (writable volume from ${m.source})`);
  }
  return out;
}

function defaultIsDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

export function memoryLimit(spec: ContainerSpec): number {
  const limit = spec.linux?.resources?.memory?.limit;
  return typeof limit === 'number' && limit > 0 ? limit : 0;
}

export function placeContainer(pod: PodOffload, name: string, spec: ContainerSpec, dpu: DpuState, isDirectory?: (p: string) => boolean): Placement {
  if (!pod.containers.includes(name)) return { where: 'host', reason: '' };
  const refuse = (why: string): Placement => {
    if (pod.policy === 'require') throw new PlacementError(`container ${name} must run on the DPU (heteropod.io/offload-policy=require), but ${why}`);
    return { where: 'host', reason: why };
  };
  if (dpu.unavailable) return refuse(dpu.unavailable);
  if (sharesPodPidNamespace(spec)) return refuse('the pod shares one process namespace, which cannot span host and DPU');
  const mounts = unshippableMounts(spec, isDirectory);
  if (mounts.length) return refuse(`a writable volume cannot span host and DPU: ${mounts.join(', ')}`);
  const limit = memoryLimit(spec);
  if (limit > dpu.memoryFreeBytes) return refuse(`the DPU has ${dpu.memoryFreeBytes} bytes of memory free, the container's limit is ${limit}`);
  return { where: 'dpu', reason: '' };
}
