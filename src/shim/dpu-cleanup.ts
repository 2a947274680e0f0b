// What `delete` does for a pod whose shim is gone: its containers on the DPU lost
// the process that relayed them, so the pod's DPU half is removed (the agent stops
// them and removes everything made for them), as containerd reports the tasks dead.
// What the dead shim held of the pod's split network goes too: the host half's
// rules in the pod's namespace and the XPU window (the sandbox's poststop hook does
// the same when runc deletes the sandbox; both are idempotent).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DpuAgentClient } from '../agent/client';
import { cleanupPod } from '../netns';
import type { ShimConfig } from './config';
import { PodRecordFile, podStateDir } from './pod-router';

export async function removeDpuHalf(config: ShimConfig, group: string, warn: (what: string, err: unknown) => void): Promise<void> {
  const file = path.join(podStateDir(config.stateDir), `${group}.json`);
  let record: PodRecordFile;
  try {
    record = JSON.parse(fs.readFileSync(file, 'utf8')) as PodRecordFile;
  } catch {
    return; // the pod never had placement state: nothing on the DPU
  }
  if (record.netns_path) {
    try {
      await cleanupPod({ podId: group, netnsPath: record.netns_path });
    } catch (err) {
      warn('remove the host half of the pod\'s split network', err);
    }
  }
  if (record.offload.length > 0 && !record.dpu_problem && config.dpu.address) {
    try {
      const d = config.dpu;
      const client = DpuAgentClient.connect({ address: d.address, caFile: d.ca, certFile: d.cert, keyFile: d.key, timeoutMs: 3000 });
      try {
        await client.call('RemovePod', { pod_id: group }, { timeoutMs: 3000 });
      } finally {
        client.close();
      }
    } catch (err) {
      warn('remove the pod\'s DPU half', err);
      return; // the record stays, so the pod's next `delete` tries again
    }
  }
  fs.rmSync(file, { force: true });
}
