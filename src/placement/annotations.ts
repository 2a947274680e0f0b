// The pod annotations that ask for offload, read from the sandbox's OCI spec
// (containerd copies the pod's `heteropod.io/*` annotations there, given the
// handler's pod_annotations). Bad values are refused with an error that names the
// annotation and the value, so that RunPodSandbox fails with something a user can fix.
//
// The one rule for every heteropod.io/* value: it is read exactly as written.
// Nothing is trimmed, and whitespace anywhere in a value is refused, so that
// "istio-proxy, log-agent" or " require" fail loudly instead of meaning
// something other than they look (the C launcher, which reads the policy when
// no node daemon may answer, holds the same rule). An error quotes at most
// QUOTE_MAX characters of the value, and says how long the rest is.

export const OFFLOAD = 'heteropod.io/offload';
export const OFFLOAD_POLICY = 'heteropod.io/offload-policy';
export const PORTS = 'heteropod.io/ports';

export type OffloadPolicy = 'prefer' | 'require';

export interface PodOffload {
  // containers, by name, to run on the DPU (empty: none)
  containers: string[];
  policy: OffloadPolicy;
}

const QUOTE_MAX = 64;

/** A value as an error message shows it: quoted, cut to QUOTE_MAX characters. */
export function quoted(value: string): string {
  if (value.length <= QUOTE_MAX) return JSON.stringify(value);
  return `${JSON.stringify(value.slice(0, QUOTE_MAX))}... (${value.length} characters)`;
}

/** A malformed pod annotation; the message names the annotation and (the start of) the bad value. */
export class AnnotationError extends Error {
  constructor(readonly annotation: string, readonly value: string, why: string) {
    super(`annotation ${annotation}=${quoted(value)}: ${why}`);
    this.name = 'AnnotationError';
  }
}

/** Refuses a value with whitespace in it (the rule above). */
export function checkNoWhitespace(annotation: string, value: string, example: string): void {
  const at = value.search(/\s/);
  if (at >= 0) throw new AnnotationError(annotation, value, `whitespace at character ${at + 1}: values are read exactly as written, with no spaces (e.g. ${JSON.stringify(example)})`);
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
  checkNoWhitespace(OFFLOAD, raw, 'istio-proxy,log-agent');
  const containers: string[] = [];
  if (raw !== '') {
    for (const name of raw.split(',')) {
      if (!isContainerName(name)) {
        throw new AnnotationError(OFFLOAD, raw, `${quoted(name)} is not a container name (a comma-separated list of DNS-1123 labels, e.g. "istio-proxy,log-agent")`);
      }
      if (containers.includes(name)) throw new AnnotationError(OFFLOAD, raw, `container ${name} is named twice`);
      containers.push(name);
    }
  }
  const policyRaw = a[OFFLOAD_POLICY];
  let policy: OffloadPolicy = 'prefer';
  if (policyRaw !== undefined) {
    if (policyRaw !== 'prefer' && policyRaw !== 'require') throw new AnnotationError(OFFLOAD_POLICY, policyRaw, 'must be "prefer" or "require", exactly');
    policy = policyRaw;
  }
  return { containers, policy };
}
