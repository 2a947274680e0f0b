// The OCI runtime spec of a container as the DPU runs it. The host's spec names
// host things the DPU cannot see or must not share; each is replaced here:
//   network namespace  -> the pod's DPU half
//   ipc, uts, pid paths (the sandbox's namespaces on the host) -> new namespaces
//                         of the container's own, hostname from the pod's
//   cgroupsPath        -> under the DPU's cgroup, one level per pod
//   bind mounts        -> the copies the shim sent (files/), refused if absent;
//                         the termination-message file's always writable
//   the sandbox's /dev/shm -> a tmpfs of the container's own
//   hooks              -> dropped: they are host programs
// Everything else (process, user, capabilities, seccomp, environment,
// resources, devices, masked and read-only paths) is kept as the host made it.
import { isBindMount, isSandboxShm, OciMount } from '../oci/mounts';

export interface OciNamespace {
  type: string;
  path?: string;
}

export interface OciSpec {
  hostname?: string;
  root?: { path: string; readonly?: boolean };
  mounts?: OciMount[];
  hooks?: unknown;
  annotations?: Record<string, string>;
  linux?: { namespaces?: OciNamespace[]; cgroupsPath?: string; [k: string]: unknown };
  [k: string]: unknown;
}

export interface DpuPlacement {
  containerId: string;
  netnsPath: string;
  cgroupParent: string;
  // destination -> path of the copy on the DPU
  copies: Map<string, string>;
  hostname?: string;
  // the destination of the container's termination-message file, if it has one
  terminationLog?: string;
}

export class SpecError extends Error {}

const OWN_NAMESPACES = new Set(['ipc', 'uts', 'pid']);

export function specForDpu(host: OciSpec, p: DpuPlacement): OciSpec {
  const spec: OciSpec = JSON.parse(JSON.stringify(host));
  spec.root = { ...(spec.root ?? { path: 'rootfs' }), path: 'rootfs' };
  delete spec.hooks;

  const linux = (spec.linux ??= {});
  const namespaces = (linux.namespaces ?? []).map((ns): OciNamespace => {
    if (ns.type === 'network') return { type: 'network', path: p.netnsPath };
    if (OWN_NAMESPACES.has(ns.type)) return { type: ns.type };
    return ns;
  });
  if (!namespaces.some((ns) => ns.type === 'network')) namespaces.push({ type: 'network', path: p.netnsPath });
  linux.namespaces = namespaces;
  // A new uts namespace starts with the DPU's hostname; the pod's is the one to keep.
  if (namespaces.some((ns) => ns.type === 'uts') && p.hostname) spec.hostname = p.hostname;
  linux.cgroupsPath = `${p.cgroupParent}/${p.containerId}`;

  spec.mounts = (spec.mounts ?? []).map((m): OciMount => {
    if (isSandboxShm(m)) {
      return { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] };
    }
    if (!isBindMount(m)) return m;
    const copy = p.copies.get(m.destination);
    if (!copy) throw new SpecError(`mount ${m.destination} (from ${m.source}) was not copied to the DPU`);
    if (m.destination === p.terminationLog) return { ...m, type: 'bind', source: copy, options: [...(m.options ?? []).filter((o) => o !== 'ro' && o !== 'rw'), 'rw'] };
    return { ...m, type: 'bind', source: copy };
  });
  return spec;
}
