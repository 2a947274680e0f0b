// What the shim (placement, shipping) and the agent (the DPU's spec) both need to
// know about an OCI spec's mounts, in one place.

export interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

// CRI's per-sandbox /dev/shm, bind-mounted into each of the pod's containers.
const SANDBOX_SHM = /\/sandboxes\/[^/]+\/shm$/;

export function isBindMount(m: OciMount): boolean {
  return m.type === 'bind' || (m.options ?? []).some((o) => o === 'bind' || o === 'rbind');
}

/** Whether a mount is the pod sandbox's shared /dev/shm (replaced on the DPU, never copied). */
export function isSandboxShm(m: OciMount): boolean {
  return m.destination === '/dev/shm' && SANDBOX_SHM.test(m.source ?? '');
}
