// The record the node daemon keeps of each offloading pod under the state dir
// (placement/<pod>.json): read by `heteropod pods`, by `delete` after a pod's
// proxy died, and by the node daemon itself when it starts again. Kept apart
// from pod-router.ts so that no reader loads the router and the DPU client.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Where } from '../placement/placement';
import type { RelayedProcess } from './dpu-runtime';
import type { PodAttach } from './node-pod';
import type { TaskStatus } from './tasks';

/** What the node daemon needs to take a pod over after it restarted. */
export interface NodePodRecord {
  attach: PodAttach;
  // the tasks it held: the pod's DPU containers and, with a DPU half, its sandbox
  tasks: { id: string; bundle: string; status: TaskStatus; runtime: 'dpu' | 'sandbox' }[];
  // the split network, once open
  pod_ip?: string;
  pod_prefix_length?: number;
  declared_dpu_ports?: number[];
  restore_sysctls?: Record<string, string>;
  last_event: number;
  processes: RelayedProcess[];
}

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
  node?: NodePodRecord;
}

export function readPodRecord(file: string): PodRecordFile | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as PodRecordFile;
  } catch {
    return null;
  }
}

/** Every pod record under the state dir. */
export function podRecordFiles(stateDir: string): string[] {
  try {
    return fs.readdirSync(podStateDir(stateDir)).filter((n) => n.endsWith('.json')).map((n) => path.join(podStateDir(stateDir), n));
  } catch {
    return [];
  }
}

export function podStateDir(stateDir: string): string {
  return path.join(stateDir, 'placement');
}

export function podRecordPath(stateDir: string, podId: string): string {
  return path.join(podStateDir(stateDir), `${podId}.json`);
}
