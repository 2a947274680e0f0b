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
//
// A pod with a DPU half also gets a split network namespace (src/netns): its
// sandbox task is runc's wrapped by SandboxRuntime, which joins the halves while
// runc creates the sandbox and separates them before its Delete. The
// sandbox spec carries a poststop hook (hooks/heteropod-netns-cleanup) for when
// this process dies without closing its half.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DpuAgentClient } from '../agentapi/client';
import { AnnotationError, parsePodOffload, PodOffload } from '../placement/annotations';
import { AnnotationError as PortsAnnotationError, PORTS_ANNOTATION, declaredPortList, OciHook, parsePortsAnnotation, podAddress, withCleanupHook } from '../netns';
import { ContainerSpec, Placement, PlacementError, placeContainer } from '../placement/placement';
import { RpcError, failedPrecondition, invalidArgument } from '../ttrpc';
import type { ShimConfig } from './config';
import { DpuAgentRuntime } from './dpu-runtime';
import type { Logger } from '../common/log';
import { CreateCall, TaskCall, encodeIdRequest, taskCall } from '../taskapi/messages';
import type { FirstTask, Runtime } from '../runcshim/runtime';
import { writeSpec } from './bundle';
import { NodePodRecord, PodRecordFile, podRecordPath } from './pod-record';

type Annotations = Record<string, string>;
type SandboxSpec = ContainerSpec & { annotations?: Annotations; hooks?: { poststop?: OciHook[] } };

/**
 * The sandbox task of a pod that asks for a DPU half: runc's, and the pod's
 * split network around it. While runc creates the sandbox, the agent is asked
 * for the pod's DPU half (under require, the Create fails without one) and then
 * the network is joined (its namespace exists and CNI has run: containerd runs
 * CNI before it creates the sandbox). The Create waits for the DPU half, not for
 * the network: the pod's containers do (PodRouter.runtimeFor), so the join
 * overlaps the sandbox's start and the kubelet's next calls. If runc's Create
 * fails, the network is separated again. It is separated before the sandbox's
 * Delete goes to runc, whose poststop hook then finds nothing left. runc's shim
 * itself is the router's to shut down. Only the Create and the Delete come
 * here (createAndDeleteOnly): the proxy sends the sandbox's other calls straight
 * to runc's shim, one hop fewer on the pod's start, and they answer while the
 * daemon is down; any that do come (from a proxy of an earlier release) pass
 * through to runc.
 */
class SandboxRuntime implements Runtime {
  readonly name: string;
  readonly createAndDeleteOnly = true;

  constructor(
    private readonly runc: Runtime,
    // Resolves once the DPU half is settled; the network is joined after it.
    private readonly join: () => Promise<void>,
    private readonly separate: () => Promise<void>,
  ) {
    this.name = runc.name;
  }

  prepare(first: FirstTask): Promise<void> {
    return this.runc.prepare(first);
  }

  taskOptions(): Buffer | null {
    return this.runc.taskOptions();
  }

  async call(call: TaskCall, signal?: AbortSignal): Promise<Buffer> {
    if (call.method === 'Delete' && !call.ref.execId) await this.separate();
    if (call.method !== 'Create') return this.runc.call(call, signal);
    const settled = this.join().then(
      () => null,
      (err: unknown) => ({ err }),
    );
    let res: Buffer;
    try {
      res = await this.runc.call(call, signal);
    } catch (err) {
      await this.separate().catch(() => undefined);
      throw err;
    }
    const failed = await settled;
    if (failed) {
      await this.runc.call(taskCall('Delete', encodeIdRequest(call.ref.id))).catch(() => undefined);
      throw failed.err;
    }
    return res;
  }

  async shutdown(): Promise<void> {}
}

type DpuState = { unavailable: string; memoryFreeBytes: number };

/**
 * One pod as the node daemon sees it: where each new task goes (null: to runc's
 * shim, through the pod's proxy), the pod's DPU half and split network, and the
 * placement record.
 */
export class PodRouter {
  private offload: PodOffload = { containers: [], policy: 'prefer' };
  private dpu: DpuAgentRuntime | null = null;
  private dpuProblem = '';
  // heteropod.io/ports, and the sandbox's network namespace (the host half)
  private declaredDpuPorts: number[] = [];
  private netnsPath = '';
  private link: { podIp: string; podPrefixLength: number } | null = null;
  private saving: NodeJS.Immediate | null = null;
  // The record's text as last written (a save that changes nothing writes nothing).
  private written = '';
  // The agent asked for the pod's DPU half (from the sandbox's Create).
  private connecting: Promise<void> | null = null;
  // The split network being joined (from the sandbox's Create): containers wait for it.
  private joining: Promise<void> | null = null;
  private readonly record: PodRecordFile;
  private readonly file: string;

  constructor(
    private readonly config: ShimConfig,
    private readonly namespace: string,
    readonly group: string,
    private readonly runc: Runtime,
    private readonly log: Logger,
    private readonly onDpuEvent: (forward: Buffer, topic: string) => void,
    // The node's one connection to the DPU agent (made on first use).
    private readonly agent: () => DpuAgentClient,
    // What the node daemon keeps in the record besides (node-pod.ts).
    private readonly nodeRecord: () => NodePodRecord,
  ) {
    this.file = podRecordPath(config.stateDir, group);
    this.record = { pod_id: group, name: '', namespace: '', offload: [], policy: 'prefer', dpu_problem: '', containers: [] };
  }

  /** The pod's DPU runtime, while it has a DPU half. */
  get dpuRuntime(): DpuAgentRuntime | null {
    return this.dpu;
  }

  // From the Create's spec as the task service read it: config.json is not read again.
  async runtimeFor(call: CreateCall): Promise<Runtime | null> {
    const req = call.create;
    const spec = call.spec.parsed as SandboxSpec;
    const a = spec.annotations ?? {};
    const type = a['io.kubernetes.cri.container-type'];
    if (type !== 'container') {
      const split = type === 'sandbox' && this.sandbox(a, spec);
      this.note(req.id, a['io.kubernetes.cri.sandbox-name'] ? '(sandbox)' : req.id, { where: 'host', reason: '' });
      if (!split) return null;
      // Only an offloading pod's spec is touched: the hook, for a shim that dies.
      try {
        writeSpec(req.bundle, withCleanupHook(spec));
      } catch (err) {
        throw RpcError.wrap(err, 'add the network clean-up hook');
      }
      return new SandboxRuntime(this.runc, () => this.join(req.id), () => this.closeLink());
    }
    const name = a['io.kubernetes.cri.container-name'] ?? req.id;
    // The DPU's free memory is asked for (dpuState never rejects) while the
    // container waits for the split network: where it may go depends on it
    // (under require, a network that could not be joined fails it; under
    // prefer, it takes the DPU half away, and dpuState, asked again, says so).
    const asked = this.dpuState(name);
    await this.joining;
    const state = this.dpu ? await asked : await this.dpuState(name);
    let placement: Placement;
    try {
      placement = placeContainer(this.offload, name, spec, state);
    } catch (err) {
      if (err instanceof PlacementError) throw failedPrecondition(err.message);
      throw err;
    }
    if (placement.reason) this.log.warn('offload fallback: container runs on the host', { container: name, id: req.id, reason: placement.reason });
    this.note(req.id, name, placement);
    return placement.where === 'dpu' && this.dpu ? this.dpu : null;
  }

  /**
   * Reads the pod's offload from the sandbox's spec. True when the pod is to
   * have a DPU half: the agent is then being asked for it (this.connecting,
   * awaited by the sandbox's Create while runc creates the sandbox).
   */
  private sandbox(a: Annotations, spec: SandboxSpec): boolean {
    try {
      this.offload = parsePodOffload(a);
      if (this.offload.containers.length > 0) this.declaredDpuPorts = declaredPortList(parsePortsAnnotation(a[PORTS_ANNOTATION], this.offload.containers));
    } catch (err) {
      if (err instanceof AnnotationError || err instanceof PortsAnnotationError) throw invalidArgument(err.message);
      throw err;
    }
    this.netnsPath = spec.linux?.namespaces?.find((n) => n.type === 'network')?.path ?? '';
    this.record.name = a['io.kubernetes.cri.sandbox-name'] ?? '';
    this.record.namespace = a['io.kubernetes.cri.sandbox-namespace'] ?? '';
    this.record.offload = this.offload.containers;
    this.record.policy = this.offload.policy;
    if (this.offload.containers.length === 0) return false;
    // hostNetwork: there is no pod namespace to split, and the DPU has no way to the node's.
    const client = this.netnsPath ? this.agentOrProblem() : 'the pod uses the node\'s network namespace (hostNetwork), which cannot be split with the DPU';
    if (typeof client === 'string') {
      this.settle(client);
      return false;
    }
    this.connecting = this.connectDpu(client).then((problem) => this.settle(problem));
    this.connecting.catch(() => undefined); // the sandbox's Create reports it
    return true;
  }

  // Whether the pod has a DPU half: under require, none fails the sandbox.
  private settle(problem: string): void {
    this.dpuProblem = problem;
    this.record.dpu_problem = problem;
    if (problem) {
      if (this.offload.policy === 'require') throw failedPrecondition(`heteropod.io/offload-policy=require: ${problem}`);
      this.log.warn('offload fallback: the pod runs on the host', { offload: this.offload.containers.join(','), reason: problem });
    }
    this.save();
  }

  // The node's connection to the agent, or why there is none (known at once).
  private agentOrProblem(): DpuAgentClient | string {
    if (!this.config.dpu.address) return 'no DPU agent is configured ([dpu] address in the shim config)';
    try {
      return this.agent();
    } catch (err) {
      return (err as Error).message;
    }
  }

  // The DPU half of the pod, or why there is none.
  private async connectDpu(client: DpuAgentClient): Promise<string> {
    const d = this.config.dpu;
    const runtime = this.dpuRuntimeWith(client);
    try {
      const health = await runtime.health();
      if (!health.ok) throw new Error(`DPU agent at ${d.address} is unhealthy: ${health.problem}`);
      // Asked now, while runc creates the sandbox: the first container's
      // placement finds the answer (it stands CAPACITY_FRESH_MS) and does not wait.
      runtime.capacity().catch(() => undefined);
      const info = await runtime.podInfo();
      this.log.info('pod has a DPU half', { agent: d.address, netns: info.netns_path });
    } catch (err) {
      return (err as Error).message; // nothing was made on the DPU
    }
    this.dpu = runtime;
    return '';
  }

  private dpuRuntimeWith(client: DpuAgentClient): DpuAgentRuntime {
    return new DpuAgentRuntime(
      {
        pod: { podId: this.group, namespace: this.namespace, podName: this.record.name, podNamespace: this.record.namespace },
        client,
        layerIndexDir: path.join(this.config.stateDir, 'layers'),
        onEvent: this.onDpuEvent,
        onChange: () => this.save(),
      },
      this.log.with({ runtime: 'dpu' }),
    );
  }

  /**
   * The pod as a node daemon that is gone left it (its record): placement, the
   * DPU half with its events, relays, containers' mounts and split network taken
   * over.
   */
  async restore(record: PodRecordFile): Promise<void> {
    Object.assign(this.record, record);
    this.offload = { containers: record.offload, policy: record.policy === 'require' ? 'require' : 'prefer' };
    this.dpuProblem = record.dpu_problem;
    this.netnsPath = record.netns_path ?? '';
    const node = record.node;
    this.declaredDpuPorts = node?.declared_dpu_ports ?? [];
    if (!node || this.offload.containers.length === 0 || this.dpuProblem || !this.config.dpu.address) return;
    const runtime = this.dpuRuntimeWith(this.agent());
    this.dpu = runtime;
    if (node.pod_ip) this.link = { podIp: node.pod_ip, podPrefixLength: node.pod_prefix_length ?? 0 };
    const link =
      this.netnsPath && node.pod_ip
        ? { netnsPath: this.netnsPath, podIp: node.pod_ip, podPrefixLength: node.pod_prefix_length ?? 0, declaredDpuPorts: this.declaredDpuPorts, hostMode: this.config.xpu.hostMode, restoreSysctls: node.restore_sysctls ?? {} }
        : undefined;
    const containers = node.tasks.filter((t) => t.runtime === 'dpu').map((t) => ({ id: t.id, bundle: t.bundle, live: t.status !== 'stopped' && t.status !== 'deleted' }));
    await runtime.resume({ lastEvent: node.last_event, processes: node.processes, link, containers });
    this.save();
  }

  /** The sandbox task of a restored pod with a DPU half (null without one). */
  sandboxRuntime(sandboxId: string): Runtime | null {
    if (!this.dpu) return null;
    return new SandboxRuntime(this.runc, () => this.join(sandboxId), () => this.closeLink());
  }

  /**
   * The sandbox's Create: the DPU half (the Create waits for it) and, once
   * there is one, the split network (the containers wait for it).
   */
  private join(sandboxId: string): Promise<void> {
    const connected = this.connecting ?? Promise.resolve();
    this.joining = connected.then(() => this.openLink(sandboxId));
    this.joining.catch(() => undefined); // a failed connect is the Create's to report
    return connected;
  }

  // After the sandbox's Create: CNI has set its namespace up. A pod that cannot
  // have its network joined runs on the host (prefer) or fails (require), as
  // when the DPU cannot take it; no container has been placed yet.
  private async openLink(sandboxId: string): Promise<void> {
    const dpu = this.dpu;
    if (!dpu) return;
    try {
      const { ip: podIp, prefixLength: podPrefixLength } = await podAddress(this.netnsPath);
      await dpu.openLink({ netnsPath: this.netnsPath, podIp, podPrefixLength, declaredDpuPorts: this.declaredDpuPorts, hostMode: this.config.xpu.hostMode });
      this.record.netns_path = this.netnsPath;
      this.link = { podIp, podPrefixLength };
      this.save();
      return;
    } catch (err) {
      this.dpuProblem = (err as Error).message;
    }
    this.dpu = null;
    this.record.dpu_problem = this.dpuProblem;
    this.save();
    await dpu.shutdown();
    if (this.offload.policy === 'require') throw failedPrecondition(`heteropod.io/offload-policy=require: ${this.dpuProblem}`);
    this.log.warn('offload fallback: the pod runs on the host', { sandbox: sandboxId, offload: this.offload.containers.join(','), reason: this.dpuProblem });
  }

  private async closeLink(): Promise<void> {
    await this.joining?.catch(() => undefined); // a join still under way is finished first
    try {
      await this.dpu?.closeLink();
    } catch (err) {
      // The poststop hook, run by this very Delete, removes what is left of the host half.
      this.log.error('close the pod\'s split network', { error: (err as Error).message });
    }
  }

  private async dpuState(name: string): Promise<DpuState> {
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

  /**
   * Writes the record once this turn of the event loop is done: a pod's start
   * changes it many times, most of them in bursts. A reply goes out in the
   * same turn; it reaches containerd later than the record reaches the disk.
   */
  save(): void {
    this.saving ??= setImmediate(() => {
      this.saving = null;
      this.write();
    });
  }

  /** A pending write, now (the daemon stops). */
  flush(): void {
    if (!this.saving) return;
    clearImmediate(this.saving);
    this.saving = null;
    this.write();
  }

  private write(): void {
    const node = this.nodeRecord();
    const dpu = this.dpu;
    if (this.link) {
      node.pod_ip = this.link.podIp;
      node.pod_prefix_length = this.link.podPrefixLength;
    }
    node.declared_dpu_ports = this.declaredDpuPorts;
    node.restore_sysctls = dpu?.linkSysctls() ?? this.record.node?.restore_sysctls;
    node.last_event = dpu?.lastEventSequence ?? 0;
    node.processes = dpu?.relayedProcesses() ?? [];
    this.record.node = node;
    const text = JSON.stringify(this.record, null, 2);
    if (text === this.written) return; // many changes leave what is kept as it was
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o711 });
      fs.writeFileSync(`${this.file}.tmp`, text);
      fs.renameSync(`${this.file}.tmp`, this.file);
      this.written = text;
    } catch (err) {
      this.log.warn('write pod state', { file: this.file, error: (err as Error).message });
    }
  }

  remove(): void {
    if (this.saving) clearImmediate(this.saving);
    this.saving = null;
    fs.rmSync(this.file, { force: true });
    try {
      fs.rmdirSync(path.dirname(this.file));
    } catch {
      // other pods' files are there
    }
  }
}
