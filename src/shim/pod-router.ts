// Which runtime each task of the pod goes to, decided at Create from the specs.
//
// The sandbox (the pause container) always stays on the host: its network
// namespace is the pod's host half. Its annotations say which containers to
// offload and how strictly; when they name any, the DPU agent is asked then, at
// RunPodSandbox, for its health and the pod's DPU half, so that a `require` pod
// fails at once when the DPU cannot take it and a `prefer` pod knows to stay on
// the host. Each container is then placed by src/placement. What was decided, and
// why, is written to the pod's state file for `heteropod pods`; it stays for the
// life of the pod (an exited container's task is deleted by containerd at once,
// but the container is still the user's to inspect).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DpuAgentClient } from '../agent/client';
import { AnnotationError, parsePodOffload, PodOffload } from '../placement/annotations';
import { ContainerSpec, Placement, PlacementError, placeContainer } from '../placement/placement';
import { failedPrecondition, invalidArgument } from '../ttrpc';
import type { ShimConfig } from './config';
import { DpuAgentRuntime } from './dpu-runtime';
import type { Logger } from './log';
import type { Runtime } from './runtime';
import type { CreateInfo } from './task-service';
import { readSpec } from './bundle';
import { PodRecordFile, podRecordPath } from './pod-record';

type Annotations = Record<string, string>;

function readPodSpec(bundle: string): ContainerSpec & { annotations?: Annotations } {
  try {
    return readSpec(bundle) as ContainerSpec & { annotations?: Annotations };
  } catch (err) {
    throw invalidArgument((err as Error).message);
  }
}

export class PodRouter {
  private offload: PodOffload = { containers: [], policy: 'prefer' };
  private dpu: DpuAgentRuntime | null = null;
  private dpuProblem = '';
  private readonly record: PodRecordFile;
  private readonly file: string;

  constructor(
    private readonly config: ShimConfig,
    private readonly namespace: string,
    readonly group: string,
    private readonly runc: Runtime,
    private readonly log: Logger,
    private readonly onDpuEvent: (forward: Buffer, topic: string) => void,
  ) {
    this.file = podRecordPath(config.stateDir, group);
    this.record = { pod_id: group, name: '', namespace: '', offload: [], policy: 'prefer', dpu_problem: '', containers: [] };
  }

  runtimes(): Runtime[] {
    return this.dpu ? [this.runc, this.dpu] : [this.runc];
  }

  async runtimeFor(req: CreateInfo): Promise<Runtime> {
    const spec = readPodSpec(req.bundle);
    const a = spec.annotations ?? {};
    const type = a['io.kubernetes.cri.container-type'];
    if (type !== 'container') {
      if (type === 'sandbox') await this.sandbox(a);
      this.note(req.id, a['io.kubernetes.cri.sandbox-name'] ? '(sandbox)' : req.id, { where: 'host', reason: '' });
      return this.runc;
    }
    const name = a['io.kubernetes.cri.container-name'] ?? req.id;
    let placement: Placement;
    try {
      placement = placeContainer(this.offload, name, spec, await this.dpuState(name));
    } catch (err) {
      if (err instanceof PlacementError) throw failedPrecondition(err.message);
      throw err;
    }
    if (placement.reason) this.log.warn('offload fallback: container runs on the host', { container: name, id: req.id, reason: placement.reason });
    this.note(req.id, name, placement);
    return placement.where === 'dpu' && this.dpu ? this.dpu : this.runc;
  }

  private async sandbox(a: Annotations): Promise<void> {
    try {
      this.offload = parsePodOffload(a);
    } catch (err) {
      if (err instanceof AnnotationError) throw invalidArgument(err.message);
      throw err;
    }
    this.record.name = a['io.kubernetes.cri.sandbox-name'] ?? '';
    this.record.namespace = a['io.kubernetes.cri.sandbox-namespace'] ?? '';
    this.record.offload = this.offload.containers;
    this.record.policy = this.offload.policy;
    if (this.offload.containers.length === 0) return;
    this.dpuProblem = await this.connectDpu();
    this.record.dpu_problem = this.dpuProblem;
    if (this.dpuProblem) {
      if (this.offload.policy === 'require') throw failedPrecondition(`heteropod.io/offload-policy=require: ${this.dpuProblem}`);
      this.log.warn('offload fallback: the pod runs on the host', { offload: this.offload.containers.join(','), reason: this.dpuProblem });
    }
    this.save();
  }

  // The DPU half of the pod, or why there is none.
  private async connectDpu(): Promise<string> {
    const d = this.config.dpu;
    if (!d.address) return 'no DPU agent is configured ([dpu] address in the shim config)';
    let client: DpuAgentClient;
    try {
      client = DpuAgentClient.connect({ address: d.address, caFile: d.ca, certFile: d.cert, keyFile: d.key, timeoutMs: d.timeoutMs });
    } catch (err) {
      return (err as Error).message;
    }
    const runtime = new DpuAgentRuntime(
      {
        pod: { podId: this.group, namespace: this.namespace, podName: this.record.name, podNamespace: this.record.namespace },
        client,
        layerIndexDir: path.join(this.config.stateDir, 'layers'),
        onEvent: this.onDpuEvent,
      },
      this.log.with({ runtime: 'dpu' }),
    );
    try {
      const health = await runtime.health();
      if (!health.ok) throw new Error(`DPU agent at ${d.address} is unhealthy: ${health.problem}`);
      const info = await runtime.podInfo();
      this.log.info('pod has a DPU half', { agent: d.address, netns: info.netns_path });
    } catch (err) {
      client.close();
      return (err as Error).message;
    }
    this.dpu = runtime;
    return '';
  }

  private async dpuState(name: string): Promise<{ unavailable: string; memoryFreeBytes: number }> {
    if (!this.offload.containers.includes(name)) return { unavailable: '', memoryFreeBytes: 0 };
    if (!this.dpu) return { unavailable: this.dpuProblem || 'the pod has no DPU half', memoryFreeBytes: 0 };
    try {
      return { unavailable: '', memoryFreeBytes: (await this.dpu.capacity()).memory_free_bytes };
    } catch (err) {
      return { unavailable: (err as Error).message, memoryFreeBytes: 0 };
    }
  }

  private note(id: string, name: string, p: Placement): void {
    this.record.containers = this.record.containers.filter((c) => c.id !== id);
    this.record.containers.push({ id, name, where: p.where, reason: p.reason });
    this.save();
  }

  private save(): void {
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o711 });
      fs.writeFileSync(`${this.file}.tmp`, JSON.stringify(this.record, null, 2));
      fs.renameSync(`${this.file}.tmp`, this.file);
    } catch (err) {
      this.log.warn('write pod state', { file: this.file, error: (err as Error).message });
    }
  }

  remove(): void {
    fs.rmSync(this.file, { force: true });
    try {
      fs.rmdirSync(path.dirname(this.file));
    } catch {
      // other pods' files are there
    }
  }
}
