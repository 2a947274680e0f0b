// The placement record each offloading-capable pod's shim keeps under its state
// dir (placement/<pod>.json): read by `heteropod pods` and by `delete` after a
// shim died. Kept apart from pod-router.ts so that neither reader loads the
// router and the DPU client with it.
import * as path from 'node:path';
import type { Where } from '../placement/placement';

export interface PodRecordFile {
  pod_id: string;
  name: string;
  namespace: string;
  offload: string[];
  policy: string;
  // why the DPU cannot be used by this pod; empty when it can (or is not asked for)
  dpu_problem: string;
  // the host half of the pod's split network (the sandbox's netns), once open:
  // what `delete` cleans up after a shim that died (dpu-cleanup.ts)
  netns_path?: string;
  containers: { id: string; name: string; where: Where; reason: string }[];
}

export function podStateDir(stateDir: string): string {
  return path.join(stateDir, 'placement');
}

export function podRecordPath(stateDir: string, podId: string): string {
  return path.join(podStateDir(stateDir), `${podId}.json`);
}
