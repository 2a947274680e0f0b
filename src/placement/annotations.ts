// The pod annotations that ask for offload, read from the sandbox's OCI spec
// (containerd copies the pod's `heteropod.io/*` annotations there, given the
// handler's pod_annotations). Bad values are refused with an error that names the
// annotation and the value, so that RunPodSandbox fails with something a user can fix.

export const OFFLOAD = 'heteropod.io/offload';
export const OFFLOAD_POLICY = 'heteropod.io/offload-policy';
export const PORTS = 'heteropod.io/ports';

export type OffloadPolicy = 'prefer' | 'require';

export interface PodOffload {
  // containers, by name, to run on the DPU (empty: none)
  containers: string[];
  policy: OffloadPolicy;
}

export class AnnotationError extends Error {
  constructor(readonly annotation: string, readonly value: string, why: string) {
    super(`annotation ${annotation}=${JSON.stringify(value)}: ${why}`);
    this.name = 'AnnotationError';
  }
}

// A Kubernetes container name: a DNS-1123 label.
const CONTAINER_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export function isContainerName(name: string): boolean {
  return name.length <= 63 && CONTAINER_NAME.test(name);
}

/** Whether the pod asked this runtime anything about offload (the key is there, whatever its value). */
export function mentionsOffload(annotations: Record<string, string> | undefined): boolean {
  return annotations !== undefined && OFFLOAD in annotations;
}

export function parsePodOffload(annotations: Record<string, string> | undefined): PodOffload {
  const a = annotations ?? {};
  const raw = a[OFFLOAD] ?? '';
  const containers: string[] = [];
  if (raw.trim() !== '') {
    for (const part of raw.split(',')) {
      const name = part.trim();
      if (!isContainerName(name)) {
        throw new AnnotationError(OFFLOAD, raw, `${JSON.stringify(name)} is not a container name (a comma-separated list of DNS-1123 labels, e.g. "istio-proxy,log-agent")`);
      }
      if (containers.includes(name)) throw new AnnotationError(OFFLOAD, raw, `container ${name} is named twice`);
      containers.push(name);
    }
  }
  const policyRaw = a[OFFLOAD_POLICY];
  let policy: OffloadPolicy = 'prefer';
  if (policyRaw !== undefined) {
    const p = policyRaw.trim();
    if (p !== 'prefer' && p !== 'require') throw new AnnotationError(OFFLOAD_POLICY, policyRaw, 'must be "prefer" or "require"');
    policy = p;
  }
  return { containers, policy };
}
