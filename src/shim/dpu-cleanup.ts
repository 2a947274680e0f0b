// What `delete` does on the DPU for a pod whose shim is gone: nothing relays the
// pod's DPU containers any more. containerd runs `delete` once per task; an
// offloaded container's is killed and deleted on the DPU (its exit status is
// the answer), and the sandbox's removes the pod's DPU half with whatever is left.
// The sandbox's also removes what the dead shim held of the pod's split network:
// the host half's rules in the pod's namespace and the XPU window (the sandbox's
// poststop hook does the same when runc deletes the sandbox; both are idempotent).
import * as fs from 'node:fs';
import type { DpuAgentError } from '../agentapi/client';
import { Code } from '../common/status';
import type { ShimConfig } from './config';
import { DeleteResult, decodeDeleteResponse, encodeIdRequest, encodeKillRequest } from '../taskapi/messages';
import { PodRecordFile, podRecordPath } from './pod-record';

const SIGKILL = 9;

/** The task's DeleteResult when it ran on the DPU; null when it did not (or the pod has no DPU half). */
export async function deleteOnDpu(config: ShimConfig, group: string, taskId: string, warn: (what: string, err: unknown) => void): Promise<DeleteResult | null> {
  const file = podRecordPath(config.stateDir, group);
  let record: PodRecordFile;
  try {
    record = JSON.parse(fs.readFileSync(file, 'utf8')) as PodRecordFile;
  } catch {
    return null; // no placement state: nothing of the pod on the DPU
  }
  const onDpu = record.containers.some((c) => c.id === taskId && c.where === 'dpu');
  const isSandbox = taskId === group;
  if (isSandbox && record.netns_path) {
    // Loaded only here, like the DPU client below.
    const { cleanupPod } = require('../netns') as typeof import('../netns');
    await cleanupPod({ podId: group, netnsPath: record.netns_path }).catch((err) => warn('remove the host half of the pod\'s split network', err));
  }
  const hasHalf = record.offload.length > 0 && !record.dpu_problem && Boolean(config.dpu.address);
  if (!hasHalf) {
    if (isSandbox) fs.rmSync(file, { force: true });
    return null;
  }
  if (!onDpu && !isSandbox) return null;
  const d = config.dpu;
  // Loaded only here: every other pod's `delete` is spared loading the agent API (protobufjs and the .proto).
  const { DpuAgentClient } = require('../agentapi/client') as typeof import('../agentapi/client');
  // containerd allows a `delete` 5 s in all.
  const client = DpuAgentClient.connect({ address: d.address, caFile: d.ca, certFile: d.cert, keyFile: d.key, timeoutMs: 1500 });
  try {
    if (onDpu) {
      const task = (method: string, request: Buffer) => client.call<{ response: Buffer }>(method, { pod_id: group, request });
      await task('Kill', encodeKillRequest(taskId, SIGKILL, true)).catch(() => undefined);
      await task('Wait', encodeIdRequest(taskId)).catch(() => undefined);
      const res = await task('Delete', encodeIdRequest(taskId)).catch((err: Error) => {
        warn('delete the container on the DPU', err);
        return null;
      });
      return res ? decodeDeleteResponse(res.response) : { pid: 0, exitStatus: 128 + SIGKILL, exitedAt: null };
    }
    await client.call('RemovePod', { pod_id: group }, { timeoutMs: 3000 }).catch((err: DpuAgentError) => {
      // The agent goes on removing after our deadline; only a refusal is a failure.
      if (err.code !== Code.DEADLINE_EXCEEDED) throw err;
    });
    fs.rmSync(file, { force: true });
    return null;
  } catch (err) {
    warn('remove the pod\'s DPU half', err);
    return null; // the record stays, so a later `delete` of the pod tries again
  } finally {
    client.close();
  }
}
