// Offloaded containers: the Runtime that runs a pod's containers on the DPU
// through the DPU agent (ttrpc, mutual TLS, over the management link).
//
// What crosses for each call:
//   Create  - the spec, copies of the bind-mounted files, the rootfs layers by
//             digest, and the request; layers the agent lacks are named in its
//             answer, shipped (once, by digest: layers.ts) and Create sent again;
//             then this container's stdio is joined to containerd's fifos
//             (stdio-relay.ts), and the sources of its copied mounts are watched
//             until its Delete, their changes sent as they come (mount-watch.ts)
//   Connect - answered here from the pid Create returned, once there is one
//   Exec    - the request, then the exec's stdio likewise
//   Wait    - held open for the life of the process; if the agent restarts, it is
//             asked again, and answers from the runc shim, which kept the exit
//   others  - the request as containerd encoded it, and the answer as is
// The DPU's task events come back on one stream per pod and are forwarded to
// containerd with the host's (ordered) forwarder.
//
// A container's exit reaches containerd by its Wait's answer or its /tasks/exit
// event, whichever comes first, and the kubelet then reads the termination
// message from the host file it mounted at terminationMessagePath. The agent
// sends what the container wrote to its copy of that file with both; it is
// written to the host file before either is passed on.
//
// The pod's split network (SplitLink below): the host half in this process, the
// DPU half in the agent, and their listening ports exchanged both ways.
import { AgentReadStream, DpuAgentClient, DpuAgentError } from '../agentapi/client';
import type { CapacityResponse, CreateReply, HealthResponse, LinkInfo, ListeningPorts, MountedFile, PodInfo, TaskEventMessage, TaskReply } from '../agentapi/proto';
import { NetnsHalf, openHostHalf } from '../netns';
import { MessageWriter, readFields, replaceField, str, bool, uint } from '../proto/wire';
import type { OciMount } from '../oci/mounts';
import { Code, RpcError, unimplemented } from '../ttrpc';
import { CreateCall, TaskCall, createTaskPid, encodeConnectResponse, encodeIdRequest, forwardedEvent, isCreateCall, taskExit, withCreateOptions } from '../taskapi/messages';
import { readSpec } from './bundle';
import { ShipResult, agentLayerStore, layerDigest, overlayLowerdirs, shipLayers } from './layers';
import { mountedFiles, terminationLogSource, writeTerminationMessage } from './mounted-files';
import { MountWatch, MountWatchOptions } from './mount-watch';
import type { HostMode } from './config';
import type { Logger } from '../common/log';
import type { FirstTask, Runtime } from '../runcshim/runtime';
import { HostStdio } from './stdio-relay';

export interface DpuPodIdentity {
  podId: string;
  namespace: string;
  podName: string;
  podNamespace: string;
}

export interface DpuRuntimeOptions {
  pod: DpuPodIdentity;
  // the node's connection to the agent: shared by the pods, not closed here
  client: DpuAgentClient;
  // where the host remembers layer digests (shared by all pods of the node)
  layerIndexDir: string;
  // forwards a DPU task event (ForwardRequest, encoded) to containerd
  onEvent: (forward: Buffer, topic: string) => void;
  // told when what a restarted node daemon would need changed (relayedProcesses, lastEventSequence)
  onChange?: () => void;
  // how the containers' mounts are watched (tests shorten the periods)
  mountWatch?: Pick<MountWatchOptions, 'recheckMs' | 'settleMs' | 'retryMs'>;
}

const RETRY_MS = 500;
// How long output of a deleted process may still take to reach containerd.
const OUTPUT_GRACE_MS = 60_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// A DpuAgentError is already the status containerd should see (its code kept).
const asRpcError = (err: unknown, context: string): Error => RpcError.wrap(err, context);

const key = (id: string, execId: string) => `${id}/${execId}`;

// StateResponse's stdin, stdout and stderr (containerd's task API).
const STATE_STDIO_FIELDS: readonly [number, 'stdin' | 'stdout' | 'stderr'][] = [[5, 'stdin'], [6, 'stdout'], [7, 'stderr']];

/** Where the pod's host half is and what the pod declares (shim side of OpenLink). */
export interface SplitLinkOptions {
  /** The sandbox's network namespace (CNI's), the host half. */
  netnsPath: string;
  /** The pod IP in it, and its network's prefix length (the node's pod network). */
  podIp: string;
  podPrefixLength: number;
  /** heteropod.io/ports, as declaredPortList gives it. */
  declaredDpuPorts: number[];
  /** How the host end's pump threads wait ([xpu] host_mode). */
  hostMode: HostMode;
}

/**
 * The pod's split network namespace as the shim holds it. The host half is opened
 * here first (it makes the pod's XPU window), then the agent is asked for the DPU
 * half (OpenLink). Ports cross both ways: the DPU half's on a WatchPorts stream
 * into the host half's setPeerListeningPorts, the host half's (the last set only)
 * by SetPeerPorts. When the stream breaks (the agent restarted: its end of the
 * link died with it) the DPU half is asked for again, like the Events stream,
 * and the host half's ports are sent again.
 */
class SplitLink {
  private host: NetnsHalf | null = null;
  // The host half's ports as last seen, and as the DPU half last acknowledged them.
  private hostPorts: number[] | null = null;
  private sentPorts: string | null = null;
  private sending = false;
  private dpuOpen = false;
  // The DPU half's listening ports, as its open reported them.
  private dpuPorts: number[] = [];
  private watch: AgentReadStream<ListeningPorts> | null = null;
  private outage = false;
  private closed = false;

  constructor(private readonly client: DpuAgentClient, private readonly podId: string, private readonly opts: SplitLinkOptions, private readonly log: Logger) {}

  /**
   * Both halves open and ports flowing; on failure, whatever was opened is closed
   * again. `resume`: the host half a dead node daemon held is taken over (its
   * window kept); the agent's DPU half, still open, is asked for again.
   */
  async open(resume?: { restoreSysctls: Record<string, string> }): Promise<void> {
    const { netnsPath, podIp, declaredDpuPorts, hostMode } = this.opts;
    try {
      // openHostHalf makes (or takes over) the pod's window before it first
      // waits; the agent's DPU half attaches to it while the host half's
      // addresses, sysctls and rules are set up, so the two halves open at once.
      const host = openHostHalf({
        podId: this.podId,
        netnsPath,
        podIp,
        declaredDpuPorts,
        resume,
        mode: hostMode,
        onListeningPorts: (ports) => {
          this.hostPorts = ports;
          this.sendPorts();
        },
        log: (level, msg) => this.log[level](msg),
      }).then((h) => {
        this.host = h;
      });
      const [hostDone, dpuDone] = await Promise.allSettled([host, this.openDpuHalf()]);
      if (hostDone.status === 'rejected') throw hostDone.reason;
      if (dpuDone.status === 'rejected') throw dpuDone.reason;
      await this.host!.setPeerListeningPorts(this.dpuPorts); // unchanged: no work
      this.follow();
    } catch (err) {
      await this.close().catch((e: Error) => this.log.error('close the split network after a failed open', { error: e.message }));
      throw new Error(`open the split network of pod ${this.podId}: ${(err as Error).message}`);
    }
    this.log.info(resume ? 'split network open again' : 'split network open', { netns: netnsPath, pod_ip: podIp, declared: declaredDpuPorts.join(','), window: this.host!.windowPath });
  }

  /** What the host half's namespace had before it (to put back at close). */
  sysctlsToRestore(): Record<string, string> {
    return this.host?.sysctlsToRestore() ?? {};
  }

  private async openDpuHalf(): Promise<void> {
    const { podIp, podPrefixLength, declaredDpuPorts } = this.opts;
    let info: LinkInfo;
    try {
      info = await this.client.call<LinkInfo>(
        'OpenLink',
        { pod_id: this.podId, pod_ip: podIp, pod_prefix_length: podPrefixLength, declared_dpu_ports: declaredDpuPorts },
        { timeoutMs: 30_000 },
      );
    } catch (err) {
      throw new Error(`the DPU half: ${(err as Error).message}`);
    }
    if (this.closed) return;
    this.dpuOpen = true;
    this.sentPorts = null; // a new half knows nothing of the host's ports
    this.dpuPorts = info.listening_ports;
    // At open the host half may still be opening: open() gives them then.
    await this.host?.setPeerListeningPorts(info.listening_ports);
    this.sendPorts();
  }

  // The latest host ports to the DPU half, one call at a time.
  private sendPorts(): void {
    if (!this.dpuOpen || this.sending || this.closed || this.hostPorts === null) return;
    const ports = this.hostPorts;
    if (ports.join(',') === this.sentPorts) return;
    this.sending = true;
    this.client.call('SetPeerPorts', { pod_id: this.podId, ports }).then(
      () => {
        this.sending = false;
        this.sentPorts = ports.join(',');
        this.sendPorts(); // changed meanwhile
      },
      (err: Error) => {
        this.sending = false;
        if (this.closed) return;
        this.log.warn('send the host half\'s listening ports to the DPU half; retrying', { ports: ports.join(','), error: err.message });
        setTimeout(() => this.sendPorts(), RETRY_MS).unref();
      },
    );
  }

  private follow(): void {
    if (this.closed) return;
    const stream = this.client.serverStream<ListeningPorts>('WatchPorts', { pod_id: this.podId });
    this.watch = stream;
    stream.on('data', (m: ListeningPorts) => {
      this.host?.setPeerListeningPorts(m.ports).catch((err: Error) => this.log.warn('update the host half\'s rules for the DPU half\'s ports', { ports: m.ports.join(','), error: err.message }));
    });
    const again = () => {
      if (this.watch !== stream || this.closed) return;
      this.watch = null;
      this.dpuOpen = false;
      setTimeout(() => this.reopen(), RETRY_MS).unref();
    };
    stream.on('error', again);
    stream.on('status', again);
  }

  private reopen(): void {
    if (this.closed) return;
    this.openDpuHalf().then(
      () => {
        if (this.outage) this.log.info('split network: the DPU half is open again');
        this.outage = false;
        this.follow();
      },
      (err: Error) => {
        if (!this.outage) this.log.warn('split network: the DPU half is gone; asking the agent again until it answers', { error: err.message });
        this.outage = true;
        setTimeout(() => this.reopen(), RETRY_MS).unref();
      },
    );
  }

  /** The DPU half (asked of the agent), then the host half and the window. Every step is tried. */
  async close(): Promise<void> {
    this.closed = true;
    this.watch?.cancel();
    this.watch = null;
    const failed: string[] = [];
    try {
      await this.client.call('CloseLink', { pod_id: this.podId }, { timeoutMs: 10_000 });
    } catch (err) {
      failed.push(`the DPU half: ${(err as Error).message}`);
    }
    this.dpuOpen = false;
    const host = this.host;
    this.host = null;
    try {
      await host?.close();
    } catch (err) {
      failed.push((err as Error).message);
    }
    if (failed.length) throw new Error(`close the split network of pod ${this.podId}: ${failed.join('; ')}`);
    this.log.info('split network closed');
  }
}

/** A process whose stdio the host relays: what a node daemon that restarts needs to relay it again. */
export interface RelayedProcess {
  id: string;
  execId: string;
  paths: { stdin: string; stdout: string; stderr: string };
}

/** A container the DPU runs, as the node daemon's record has it. */
export interface DpuContainer {
  id: string;
  bundle: string;
  // not known to have exited: its mounts are watched again
  live: boolean;
}

/** What a DPU runtime picks up from a node daemon that ran before this one. */
export interface DpuResume {
  lastEvent: number;
  processes: RelayedProcess[];
  link?: SplitLinkOptions & { restoreSysctls: Record<string, string> };
  containers?: DpuContainer[];
}

export class DpuAgentRuntime implements Runtime {
  readonly name = 'dpu';
  private pod: Promise<PodInfo> | null = null;
  private readonly stdio = new Map<string, HostStdio>();
  private readonly relayed = new Map<string, RelayedProcess>();
  // Each container's init pid, from the agent's answer to Create: it stays the
  // same until the task is deleted, so Connect (which containerd calls after
  // Create and again at Start) needs no round trip to the DPU.
  private readonly initPids = new Map<string, number>();
  // Each container's mounts, watched from Create to Delete, and the host file
  // its termination message goes to (the spec's termination-log mount's source).
  private readonly mountWatches = new Map<string, MountWatch>();
  private readonly terminationLogs = new Map<string, string>();
  private events: AgentReadStream<TaskEventMessage> | null = null;
  private lastEvent = 0;
  private stopped = false;
  private link: SplitLink | null = null;

  constructor(private readonly opts: DpuRuntimeOptions, private readonly log: Logger) {}

  get client(): DpuAgentClient {
    return this.opts.client;
  }

  health(): Promise<HealthResponse> {
    return this.client.health();
  }

  capacity(): Promise<CapacityResponse> {
    return this.client.capacity();
  }

  /** The pod's DPU half, made on first use. */
  podInfo(): Promise<PodInfo> {
    if (!this.pod) {
      const { podId, namespace, podName, podNamespace } = this.opts.pod;
      this.pod = this.client.call<PodInfo>('CreatePod', { pod_id: podId, namespace, pod_name: podName, pod_namespace: podNamespace }).then((info) => {
        this.followEvents();
        return info;
      });
      this.pod.catch(() => (this.pod = null));
    }
    return this.pod;
  }

  /** Joins the pod's host half to its DPU half (the pod's DPU half is made first if need be). */
  async openLink(opts: SplitLinkOptions, resume?: { restoreSysctls: Record<string, string> }): Promise<void> {
    if (this.link) throw new Error(`open the split network of pod ${this.opts.pod.podId}: already open`);
    await this.podInfo();
    const link = new SplitLink(this.client, this.opts.pod.podId, opts, this.log.with({ part: 'split-network' }));
    await link.open(resume);
    this.link = link;
  }

  /** The host half's namespace settings before the link, while it is open. */
  linkSysctls(): Record<string, string> | null {
    return this.link ? this.link.sysctlsToRestore() : null;
  }

  /** The last DPU event forwarded: a restarted node daemon asks for those after it. */
  get lastEventSequence(): number {
    return this.lastEvent;
  }

  /** Processes whose stdio is relayed (their output may still come). */
  relayedProcesses(): RelayedProcess[] {
    return [...this.relayed.values()];
  }

  /**
   * Takes the pod over from a node daemon that is gone: events from after the
   * last one it forwarded, the stdio of every process it relayed (the agent held
   * their output meanwhile), the containers' mounts (each live one's sent again
   * at once: changes may have come while no one watched) and termination-log
   * files, and the split network.
   */
  async resume(r: DpuResume): Promise<void> {
    this.lastEvent = r.lastEvent;
    for (const c of r.containers ?? []) {
      let mounts: OciMount[];
      try {
        mounts = readSpec(c.bundle).mounts ?? [];
      } catch (err) {
        this.log.warn('read the spec of a DPU container: its mounts are not kept up to date', { id: c.id, bundle: c.bundle, error: (err as Error).message });
        continue;
      }
      this.follow(c.id, mounts, c.live ? this.newMountWatch(c.id, mounts) : null, true);
    }
    await this.podInfo();
    for (const p of r.processes) this.attach(p.id, p.execId, p.paths);
    if (r.link) {
      const { restoreSysctls, ...opts } = r.link;
      await this.openLink(opts, { restoreSysctls });
    }
  }

  /** Closes both halves of the pod's split network, if open. */
  async closeLink(): Promise<void> {
    const link = this.link;
    this.link = null;
    await link?.close();
  }

  async prepare(_first: FirstTask): Promise<void> {
    await this.podInfo();
  }

  taskOptions(): Buffer | null {
    return null;
  }

  async call(call: TaskCall, signal?: AbortSignal): Promise<Buffer> {
    switch (call.method) {
      case 'Create':
        // The task service reads the request and the spec; a Create without them is ours to fix.
        if (!isCreateCall(call)) throw new RpcError(Code.INTERNAL, 'Create on the DPU: the call carries no decoded request and spec');
        return this.create(call);
      case 'Exec':
        return this.exec(call);
      case 'Wait':
        return this.wait(call, signal);
      case 'Connect':
        return this.connect(call);
      case 'State':
        return this.state(call, signal);
      case 'Checkpoint':
        throw unimplemented('Checkpoint of a container on the DPU');
      case 'CloseIO':
        return this.closeIo(call);
      case 'Delete':
        return this.delete(call);
      default:
        return this.relay(call.method, call.payload, signal);
    }
  }

  private async relay(method: string, request: Buffer, signal?: AbortSignal): Promise<Buffer> {
    try {
      const res = await this.client.call<{ response: Buffer }>(method, { pod_id: this.opts.pod.podId, request }, { signal });
      return res.response;
    } catch (err) {
      throw asRpcError(err, `${method} on the DPU`);
    }
  }

  // From the Create and the spec as the task service read them (neither is read again).
  private async create(call: CreateCall): Promise<Buffer> {
    const req = call.create;
    await this.podInfo();
    const spec = call.spec.parsed;
    const dirs = overlayLowerdirs(req.rootfs);
    // The layers' digests come from the host's index; the agent's Create names
    // any its cache lacks (creating nothing), which are then shipped and Create
    // asked again. A warm cache so costs no round trip of its own.
    const digests: string[] = [];
    for (const dir of dirs) digests.push((await layerDigest(dir, this.opts.layerIndexDir)).digest);
    const mounts = spec.mounts ?? [];
    // Its sources' fingerprints before their content is read: a change in between is sent after Create.
    const watch = this.newMountWatch(req.id, mounts);
    const files = mountedFiles(mounts);
    const name = spec.annotations?.['io.kubernetes.cri.container-name'] ?? req.id;
    const createOnDpu = async (layers: string[]): Promise<CreateReply> => {
      try {
        return await this.client.call<CreateReply>('Create', {
          pod_id: this.opts.pod.podId,
          request: withCreateOptions(call, null).payload,
          spec: call.spec.raw,
          layers,
          files,
          container_name: name,
        }, { timeoutMs: 60_000 });
      } catch (err) {
        throw asRpcError(err, `create ${req.id} on the DPU`);
      }
    };
    let shipped: ShipResult = { digests, bytesSent: 0, layersSent: 0 };
    let reply = await createOnDpu(digests);
    if (reply.missing_layers.length) {
      shipped = await shipLayers(dirs, agentLayerStore(this.client), this.opts.layerIndexDir);
      reply = await createOnDpu(shipped.digests);
      if (reply.missing_layers.length) {
        throw new RpcError(Code.UNAVAILABLE, `create ${req.id} on the DPU: its cache lost layers just sent (${reply.missing_layers.join(', ')})`);
      }
    }
    const res = reply.response;
    this.initPids.set(req.id, createTaskPid(res));
    this.log.info('container created on the DPU', { id: req.id, name, layers: shipped.digests.length, layers_sent: shipped.layersSent, bytes_sent: shipped.bytesSent });
    this.attach(req.id, '', req);
    this.follow(req.id, mounts, watch);
    return res;
  }

  private newMountWatch(id: string, mounts: OciMount[]): MountWatch {
    return new MountWatch({
      ...this.opts.mountWatch,
      containerId: id,
      mounts,
      log: this.log,
      send: async (files: MountedFile[]) => {
        await this.client.call('UpdateFiles', { pod_id: this.opts.pod.podId, container_id: id, files }, { timeoutMs: 30_000 });
      },
    });
  }

  // Keeps the container's mounts up to date (`watch`, null once it has exited)
  // and knows where its termination message goes. `resend`: see MountWatch.start.
  private follow(id: string, mounts: OciMount[], watch: MountWatch | null, resend = false): void {
    this.unfollow(id);
    const terminationLog = terminationLogSource(mounts);
    if (terminationLog) this.terminationLogs.set(id, terminationLog);
    if (!watch || this.stopped) return;
    this.mountWatches.set(id, watch);
    watch.start(resend);
  }

  private unfollow(id: string): void {
    this.mountWatches.get(id)?.close();
    this.mountWatches.delete(id);
    this.terminationLogs.delete(id);
  }

  /** The containers whose mounts are watched now, and which of each (diagnostics, tests). */
  watchedMounts(): Record<string, string[]> {
    return Object.fromEntries([...this.mountWatches].map(([id, w]) => [id, w.destinations]));
  }

  // Before an init's exit goes on to containerd (the kubelet reads the file then).
  // An empty message writes nothing: the kubelet's file starts empty, and an
  // answer without one (an earlier agent's) must not erase one written before.
  private writeTerminationMessage(id: string, message: Buffer | undefined): void {
    const file = this.terminationLogs.get(id);
    if (!file || !message?.length) return;
    try {
      if (!writeTerminationMessage(file, message)) this.log.debug('the termination-log file is gone; message not written', { id, file });
    } catch (err) {
      this.log.warn('write the termination message of a DPU container', { id, file, error: (err as Error).message });
    }
  }

  private async exec(call: TaskCall): Promise<Buffer> {
    const res = await this.relay('Exec', call.payload);
    // ExecProcessRequest { stdin = 4; stdout = 5; stderr = 6; }
    const f = readFields(call.payload);
    this.attach(call.ref.id, call.ref.execId, { stdin: str(f, 4), stdout: str(f, 5), stderr: str(f, 6) });
    return res;
  }

  private attach(id: string, execId: string, paths: { stdin: string; stdout: string; stderr: string }): void {
    const relay = new HostStdio(() => this.client, { pod_id: this.opts.pod.podId, container_id: id, exec_id: execId }, paths, this.log);
    relay.start();
    this.stdio.set(key(id, execId), relay);
    this.relayed.set(key(id, execId), { id, execId, paths: { stdin: paths.stdin, stdout: paths.stdout, stderr: paths.stderr } });
    this.opts.onChange?.();
  }

  private async wait(call: TaskCall, signal?: AbortSignal): Promise<Buffer> {
    for (;;) {
      // Cancelled while the agent was away: not asked again (an aborted signal
      // would not cancel a call that starts now).
      if (signal?.aborted) throw new RpcError(Code.CANCELLED, 'Wait cancelled');
      try {
        const res = await this.client.call<TaskReply>('Wait', { pod_id: this.opts.pod.podId, request: call.payload }, { timeoutMs: null, signal });
        if (!call.ref.execId) this.writeTerminationMessage(call.ref.id, res.termination_message);
        return res.response;
      } catch (err) {
        if (signal?.aborted) throw new RpcError(Code.CANCELLED, 'Wait cancelled');
        if (err instanceof DpuAgentError && err.kind !== 'call') {
          this.log.warn('Wait on the DPU interrupted; asking again', { error: err.message });
          await sleep(RETRY_MS);
          continue;
        }
        throw asRpcError(err, 'Wait on the DPU');
      }
    }
  }

  /**
   * The DPU's State, with the process's stdio as containerd made it: the agent
   * answers with its own fifos on the DPU, and a containerd that restarts opens
   * whatever State names to take the process's output up again.
   */
  private async state(call: TaskCall, signal?: AbortSignal): Promise<Buffer> {
    const res = await this.relay('State', call.payload, signal);
    const relayed = this.relayed.get(key(call.ref.id, call.ref.execId));
    if (!relayed) return res;
    return STATE_STDIO_FIELDS.reduce((out, [num, stream]) => {
      const p = relayed.paths[stream];
      return replaceField(out, num, p ? new MessageWriter().bytes(num, p).finish() : null);
    }, res);
  }

  private async connect(call: TaskCall): Promise<Buffer> {
    const { id } = call.ref;
    const pid = this.initPids.get(id);
    if (pid) return encodeConnectResponse(process.pid, pid);
    const state = await this.relay('State', encodeIdRequest(id));
    // StateResponse { pid = 3 }
    return encodeConnectResponse(process.pid, uint(readFields(state), 3));
  }

  private async closeIo(call: TaskCall): Promise<Buffer> {
    // CloseIORequest { stdin = 3 }
    if (bool(readFields(call.payload), 3)) await this.stdio.get(key(call.ref.id, call.ref.execId))?.closeStdin();
    return this.relay('CloseIO', call.payload);
  }

  private async delete(call: TaskCall): Promise<Buffer> {
    const { id, execId } = call.ref;
    // Output still on its way is written before the process is gone for containerd.
    const relay = this.stdio.get(key(id, execId));
    if (relay) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([relay.done, new Promise((r) => (timer = setTimeout(r, 5000)))]);
      clearTimeout(timer);
    }
    // Forgotten whatever the answer: without it Connect asks the DPU, which is
    // only slower; the mounts are not the host's to keep up to date any more.
    if (!execId) {
      this.initPids.delete(id);
      this.unfollow(id);
    }
    const res = await this.relay('Delete', call.payload);
    // A relay still writing (containerd reading slowly, a loaded machine) finishes
    // in the background: closing it now would cut the output short.
    for (const [k, r] of this.stdio) {
      if (k === key(id, execId) || (!execId && k.startsWith(`${id}/`))) {
        this.stdio.delete(k);
        this.relayed.delete(k);
        const timer = setTimeout(() => r.close(), OUTPUT_GRACE_MS);
        timer.unref();
        void r.done.then(() => {
          clearTimeout(timer);
          r.close();
        });
      }
    }
    this.opts.onChange?.();
    return res;
  }

  private followEvents(): void {
    if (this.stopped) return;
    const stream = this.client.serverStream<TaskEventMessage>('Events', { pod_id: this.opts.pod.podId, after: this.lastEvent });
    this.events = stream;
    stream.on('data', (e: TaskEventMessage) => {
      this.lastEvent = Math.max(this.lastEvent, Number(e.sequence));
      if (e.topic === '/tasks/exit') this.onExitEvent(e);
      this.opts.onEvent(e.forward, e.topic);
      this.opts.onChange?.();
    });
    const again = () => {
      if (this.events !== stream || this.stopped) return;
      this.events = null;
      setTimeout(() => this.followEvents(), RETRY_MS).unref();
    };
    stream.on('error', again);
    stream.on('status', again);
  }

  private onExitEvent(e: TaskEventMessage): void {
    let exit: { containerId: string; id: string };
    try {
      exit = taskExit(forwardedEvent(e.forward).value);
    } catch {
      return; // forwarded as is; containerd decides
    }
    if (exit.id === '' || exit.id === exit.containerId) this.writeTerminationMessage(exit.containerId, e.termination_message);
  }

  async shutdown(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.events?.cancel();
    this.events = null;
    for (const id of [...this.mountWatches.keys()]) this.unfollow(id);
    for (const r of this.stdio.values()) r.close();
    this.stdio.clear();
    // The link before the pod: RemovePod would close the DPU half anyway, but the
    // host half (and the window) are this process's to close.
    await this.closeLink().catch((err: Error) => this.log.error('close the pod\'s split network', { error: err.message }));
    if (this.pod) {
      try {
        await this.client.call('RemovePod', { pod_id: this.opts.pod.podId }, { timeoutMs: 30_000 });
      } catch (err) {
        this.log.error('remove the pod\'s DPU half', { error: (err as Error).message });
      }
    }
  }
}
