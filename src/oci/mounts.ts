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

/**
 * The kubelet's termination-message file, as a mount: its host file is made per
 * container instance, `<kubelet root>/pods/<pod uid>/containers/<name>/<8 hex>`
 * (kuberuntime's makeMounts), mounted at the container's terminationMessagePath
 * (/dev/termination-log unless the pod says otherwise). The kubelet reads the
 * host file once the container has exited.
 */
const KUBELET_TERMINATION_LOG = /\/pods\/[^/]+\/containers\/[^/]+\/[0-9a-f]{8}$/;
export const DEFAULT_TERMINATION_MESSAGE_PATH = '/dev/termination-log';

export function isTerminationLog(m: OciMount): boolean {
  if (!isBindMount(m) || !m.source) return false;
  return m.destination === DEFAULT_TERMINATION_MESSAGE_PATH || KUBELET_TERMINATION_LOG.test(m.source);
}

/** What the kubelet reads of a termination-message file: its last 4096 bytes (kubecontainer.MaxContainerTerminationMessageLength). */
export const MAX_TERMINATION_MESSAGE_BYTES = 4096;

/** The part of a termination message the kubelet would read. */
export function terminationMessageTail(content: Buffer): Buffer {
  return content.length > MAX_TERMINATION_MESSAGE_BYTES ? content.subarray(content.length - MAX_TERMINATION_MESSAGE_BYTES) : content;
}
