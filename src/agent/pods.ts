// The DPU halves of pods, and the task calls for their containers.
//
// A pod's half is: a network namespace (a plain one until the split-netns link
// joins it to the host half), a directory holding its containers' bundles and
// stdio fifos, a cgroup under the DPU's own, and one containerd-shim-runc-v2 that
// runs its containers, started by the agent the way containerd starts it on the
// host. Task calls reach that shim over ttrpc carrying the host's request as it
// was encoded, except Create and Exec, whose paths (bundle, rootfs, stdio) are the
// host's and are replaced here by the DPU's own.
//
// What survives an agent restart: everything but the agent. Each pod's record
// (pod.json) names its containers, the copies of their mounts, their stdio
// fifos and the pod's fifo keeper; a restarted agent reads the records,
// reattaches to the runc shims (whose address files are in their working
// directories) and to the keepers, and reopens the fifos. The keeper
// (fifo-keeper.ts) holds every output fifo the agent reads, so the output of a
// process that exited meanwhile is still there. A runc shim that is gone (a
// DPU reboot, a killed shim) takes its processes with it: each is reported
// exited (shimLost).
//
// A container's bind mounts are copies the host sent (mounted-files.ts): kept
// up to date by the host (UpdateFiles), and its termination-message file read
// back when it exits, into the exit's Wait answer and /tasks/exit event.
//
// The pod's split network (src/netns): once the host half is open, the shim asks
// for the DPU half (OpenLink), which this process holds: its end of the pod's XPU
// link is pumped here, so it ends with the agent; the shim asks again when its
// port stream breaks, and a restarted agent opens the half anew (the half removes
// the chains its predecessor left). Its listening ports go to the shim
// (WatchPorts) and the host half's come back (SetPeerPorts).
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { NetnsHalf, OWN_NETNS, inNetns, networkOf, hasOwnDevice, openDpuHalf, removeUplink } from '../netns';
import { decode, encode } from '../proto';
import { Code, RpcError } from '../ttrpc';
import { encodeDeleteResponse, encodeIdRequest, encodeKillRequest, encodeStoppedState, encodeTaskExitForward, encodeWaitResponse, forwardedEvent, taskExit, taskRef } from '../taskapi/messages';
import { Logger } from '../common/log';
import { socketAnswers } from '../common/sockets';
import { RuncShimRuntime } from '../runcshim/runc-runtime';
import { readFields, bool, Timestamp } from '../proto/wire';
import { AgentError } from './errors';
import { EventHub, PodEvent, eventContainerId } from './events';
import { FifoKeeper, fifoKeeperSocket, KeeperRecord } from './fifo-keeper';
import { readTerminationMessage, updateCopy, writeCopy } from './mounted-files';
import { OciSpec, specForDpu, SpecError } from './spec';
import { makeFifo, ProcessInput, ProcessOutput } from './stdio';
import type { CreateReply, CreateRequest, PodInfo, CreatePodRequest, LinkInfo, OpenLinkRequest, TaskReply, UpdateFilesRequest } from '../agentapi/proto';

export interface AgentPaths {
  // pods/ (one directory per pod) and layers/ live here
  stateDir: string;
  // the events socket and the runc shims' notional containerd address
  runDir: string;
  // where `ip netns` keeps named namespaces
  netnsDir: string;
  cgroupRoot: string;
  // pods' cgroups go under this (relative to each controller's root)
  cgroupParent: string;
  runcShim: string;
  // the program that holds each pod's output fifos (fifo-keeper.c)
  fifoKeeper: string;
  /**
   * The DPU's port to the network (BlueField: p0), in the agent's own network
   * namespace. When it exists, each pod's DPU half gets a wire of its own to it
   * (src/netns/uplink.ts); '' or absent: the DPU half reaches everything through
   * the host half.
   */
  uplinkDev?: string;
}

export interface LayerPaths {
  path(digest: string): string;
  /** The subset of `digests` not in the cache. */
  missing(digests: string[]): string[] | Promise<string[]>;
}

interface ProcessRecord {
  stdin: string;
  stdout: string;
  stderr: string;
  // runc's shim has not opened the fifos yet (init: until Create returns, an
  // exec: until Start does): a restarted agent holds placeholders, as the first
  // did, or the fifos would end before their writer came
  unopened?: boolean;
}

interface ContainerRecord {
  name: string;
  bundle: string;
  // the copy of each bind mount, by destination (absent in a record of an
  // earlier agent: the bundle's spec says the same)
  copies?: Record<string, string>;
  // the copy that is its termination-message file, if it has one
  termination_log?: string;
}

/** A process whose runc shim died with it (a DPU reboot, a killed shim): how it is reported. */
interface LostRecord {
  exit_status: number;
  exited_at_ms: number;
  why: string;
}

/** Where containerd-shim-runc-v2 has runc keep its state (per namespace) when no root is set. */
const RUNC_SHIM_ROOT = '/run/containerd/runc';

/** The exit status containerd gives a task whose shim died (as under runc). */
const LOST_EXIT_STATUS = 255;

interface PodRecord {
  id: string;
  namespace: string;
  pod_name: string;
  pod_namespace: string;
  netns: string;
  cgroup: string;
  // the pod IP, once its DPU half was wired to the DPU's uplink: the DPU's
  // steering rules are found by it, also after a restart of the agent
  uplink_pod_ip?: string;
  // the process holding the pod's output fifos across agent restarts, once started
  keeper?: KeeperRecord;
  containers: Record<string, ContainerRecord>;
  // by processKey(container, exec)
  processes: Record<string, ProcessRecord>;
  // by processKey: processes lost with their runc shim, until deleted
  lost?: Record<string, LostRecord>;
}

const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const processKey = (container: string, exec: string): string => `${container}/${exec}`;
const splitKey = (key: string): [string, string] => {
  const slash = key.indexOf('/');
  return [key.slice(0, slash), key.slice(slash + 1)];
};
/** The processes whose working directory is `dir`. */
function processesIn(dir: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (fs.readlinkSync(`/proc/${name}/cwd`).replace(/ \(deleted\)$/, '') === dir) out.push(Number(name));
    } catch {
      // gone, or not ours to look at
    }
  }
  return out;
}

const timestampOf = (ms: number): Timestamp => ({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });

function checkId(what: string, id: string): void {
  if (!SAFE_ID.test(id)) throw new AgentError(Code.INVALID_ARGUMENT, `${what} ${JSON.stringify(id)} is not a valid id`);
}

function asAgentError(err: unknown, context: string): AgentError {
  if (err instanceof AgentError) return new AgentError(err.code, `${context}: ${err.message}`);
  if (err instanceof RpcError) return new AgentError(err.code, `${context}: ${err.message}`);
  if (err instanceof SpecError) return new AgentError(Code.INVALID_ARGUMENT, `${context}: ${err.message}`);
  return new AgentError(Code.INTERNAL, `${context}: ${(err as Error).message}`);
}

/** A watcher of the DPU half's listening ports: each set, then null when the half closes. */
export type PortsListener = (ports: number[] | null) => void;

function checkPorts(what: string, ports: readonly number[]): number[] {
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new AgentError(Code.INVALID_ARGUMENT, `${what}: ${p} is not a port number`);
  }
  return [...ports];
}

class DpuPod {
  readonly outputs = new Map<string, ProcessOutput>();
  readonly inputs = new Map<string, ProcessInput>();
  private logFifo: net.Socket | null = null;
  // The DPU half of the pod's split network, opening or open; null when closed.
  link: Promise<NetnsHalf> | null = null;
  // This agent made the pod's network namespace and has opened no half in it since.
  freshNetns = false;
  // Its listening ports as last reported (null: not yet), and who wants them.
  linkPorts: number[] | null = null;
  readonly portListeners = new Set<PortsListener>();

  // Replaced by a fresh one when its shim is lost: the next task starts another.
  runc!: RuncShimRuntime;
  keeper!: FifoKeeper;

  constructor(readonly record: PodRecord, readonly dir: string) {}

  get shimDir(): string {
    return path.join(this.dir, 'shim');
  }

  netnsPath(netnsDir: string): string {
    return path.join(netnsDir, this.record.netns);
  }

  save(): void {
    const file = path.join(this.dir, 'pod.json');
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(this.record, null, 2));
    fs.renameSync(`${file}.tmp`, file);
  }

  // runc's shim writes its own log to the `log` fifo of the directory it starts
  // in; the agent is the reader and passes the lines to its own log.
  openShimLog(log: Logger): void {
    const fifo = path.join(this.shimDir, 'log');
    if (!fs.existsSync(fifo)) makeFifo(fifo);
    const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    const socket = new net.Socket({ fd, readable: true, writable: false });
    let rest = '';
    socket.on('data', (d: Buffer) => {
      const lines = (rest + d.toString()).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) if (line) log.info('runc shim', { line });
    });
    socket.on('error', () => undefined);
    this.logFifo = socket;
  }

  /**
   * The process's output, read here and held by the keeper from now until
   * closeOutput; resolved once the keeper has its fifos (a keeper that cannot
   * take them is logged: the output is then lost if the process exits while the
   * agent is down, as before there were keepers).
   */
  async openOutput(key: string, out: ProcessOutput, log: Logger): Promise<void> {
    this.outputs.set(key, out);
    await this.keeper.hold(out.fifoPaths).catch((err: Error) => log.warn('output fifos not held for a restart of the agent', { process: key, error: err.message }));
  }

  /** Done with the process's output: read to the end and delivered, or the process is gone. */
  closeOutput(key: string, out: ProcessOutput): void {
    const current = this.outputs.get(key);
    if (current === out) this.outputs.delete(key);
    out.close();
    // A newer process of the same name reads fifos at the same paths: they stay held.
    if (!current || current === out) this.keeper.drop(out.fifoPaths);
  }

  // The pod's keeper ends separately (keeper.stop), with the pod.
  closeIo(): void {
    for (const o of this.outputs.values()) o.close();
    for (const i of this.inputs.values()) i.close();
    this.outputs.clear();
    this.inputs.clear();
    this.logFifo?.destroy();
    this.logFifo = null;
  }
}

export class DpuPods {
  private readonly pods = new Map<string, DpuPod>();
  private readonly making = new Map<string, Promise<PodInfo>>();
  private readonly containerPod = new Map<string, string>();
  private readonly removals = new Map<string, Promise<void>>();

  constructor(
    private readonly paths: AgentPaths,
    private readonly layers: LayerPaths,
    readonly events: EventHub,
    private readonly log: Logger,
  ) {}

  get eventsSocket(): string {
    return path.join(this.paths.runDir, 'events.sock');
  }

  private get podsDir(): string {
    return path.join(this.paths.stateDir, 'pods');
  }

  runningCount(): number {
    let n = 0;
    for (const p of this.pods.values()) n += Object.keys(p.record.containers).length;
    return n;
  }

  /** Reads the records a previous agent left and takes its pods over. */
  async recover(): Promise<void> {
    if (!fs.existsSync(this.podsDir)) return;
    for (const id of fs.readdirSync(this.podsDir)) {
      const file = path.join(this.podsDir, id, 'pod.json');
      try {
        const record = JSON.parse(fs.readFileSync(file, 'utf8')) as PodRecord;
        const pod = this.newPod(record);
        const podLog = this.log.with({ pod: id });
        pod.openShimLog(podLog);
        for (const [key, p] of Object.entries(record.processes)) {
          // The keeper held them while no agent did; told again in case it was lost meanwhile.
          if (p.stdout || p.stderr) void pod.openOutput(key, new ProcessOutput({ stdout: p.stdout, stderr: p.stderr }, Boolean(p.unopened)), podLog);
          if (p.stdin) pod.inputs.set(key, new ProcessInput(p.stdin));
        }
        this.pods.set(id, pod);
        for (const c of Object.keys(record.containers)) this.containerPod.set(c, id);
        this.log.info('pod recovered', { pod: id, containers: Object.keys(record.containers).length });
        if (this.hasLiveProcesses(pod) && !(await this.shimAnswers(pod))) this.shimLost(pod, 'the DPU restarted: the pod\'s runc shim and its processes are gone');
      } catch (err) {
        this.log.error('recover pod', { pod: id, error: (err as Error).message });
      }
    }
  }

  private newPod(record: PodRecord): DpuPod {
    const pod = new DpuPod(record, path.join(this.podsDir, record.id));
    pod.runc = this.newRunc(pod);
    pod.keeper = new FifoKeeper(
      {
        binary: this.paths.fifoKeeper,
        socket: record.keeper?.socket ?? fifoKeeperSocket(this.paths.runDir, record.id),
        podId: record.id,
        log: this.log.with({ pod: record.id }),
        onStarted: (started) => {
          record.keeper = started;
          pod.save();
        },
      },
      record.keeper,
    );
    return pod;
  }

  private newRunc(pod: DpuPod): RuncShimRuntime {
    const podLog = this.log.with({ pod: pod.record.id });
    const runc: RuncShimRuntime = new RuncShimRuntime(
      {
        binary: this.paths.runcShim,
        namespace: pod.record.namespace,
        containerdAddress: path.join(this.paths.runDir, 'containerd.sock'),
        publishBinary: '/bin/false',
        eventsAddress: this.eventsSocket,
        workDir: path.join(pod.dir, 'runc-shim'),
        debug: podLog.debugEnabled,
        runc: { root: '', binaryName: '', systemdCgroup: false },
      },
      podLog,
      (why) => {
        if (pod.runc === runc && this.pods.get(pod.record.id) === pod) this.shimLost(pod, `the pod's runc shim died (${why})`);
      },
    );
    return runc;
  }

  private hasLiveProcesses(pod: DpuPod): boolean {
    const lost = pod.record.lost ?? {};
    return Object.keys(pod.record.containers).some((c) => !lost[processKey(c, '')]);
  }

  /** Whether the pod's runc shim (the address it wrote at start) still answers. */
  private async shimAnswers(pod: DpuPod): Promise<boolean> {
    try {
      return await socketAnswers(fs.readFileSync(path.join(pod.dir, 'runc-shim', 'address'), 'utf8').trim());
    } catch {
      return false; // never started, or its directory is gone
    }
  }

  /**
   * The pod's runc shim is gone, and every process it ran with it: each is
   * reported exited (LOST_EXIT_STATUS, as containerd reports the tasks of a dead
   * shim under runc) through the pod's events, and answers as exited from now on;
   * the pod gets a fresh runtime, so that its next container (the kubelet's
   * restart) starts a new runc shim (and has the pod's network namespace made
   * again if the reboot took it: ensureNetns).
   */
  private shimLost(pod: DpuPod, why: string): void {
    const now = Date.now();
    const lost = (pod.record.lost ??= {});
    const keys = new Set([...Object.keys(pod.record.processes), ...Object.keys(pod.record.containers).map((c) => processKey(c, ''))]);
    const reported: string[] = [];
    for (const key of keys) {
      if (lost[key]) continue;
      const [container, execId] = splitKey(key);
      if (!pod.record.containers[container]) continue;
      lost[key] = { exit_status: LOST_EXIT_STATUS, exited_at_ms: now, why };
      const exitedAt = timestampOf(now);
      const exit = encodeTaskExitForward(pod.record.namespace, { containerId: container, id: execId || container, pid: 0, exitStatus: LOST_EXIT_STATUS, exitedAt });
      this.events.publish(pod.record.id, exit, execId ? undefined : this.terminationMessage(pod.record.id, container));
      reported.push(key);
    }
    pod.runc.detach().catch(() => undefined);
    pod.runc = this.newRunc(pod);
    fs.rmSync(path.join(pod.dir, 'runc-shim', 'address'), { force: true });
    pod.save();
    this.log.error('processes lost with the pod\'s runc shim: reported exited', { pod: pod.record.id, why, processes: reported.join(' '), exit_status: LOST_EXIT_STATUS });
  }

  /** The answer to a task call for a lost process: what runc's shim says of one that has exited. */
  private answerLost(method: string, pod: DpuPod, container: string, execId: string, gone: LostRecord): Buffer {
    const exitedAt = timestampOf(gone.exited_at_ms);
    const what = `${container}${execId ? ` exec ${execId}` : ''}`;
    switch (method) {
      case 'State':
        return encodeStoppedState({ id: container, execId, bundle: pod.record.containers[container]?.bundle ?? '', exitStatus: gone.exit_status, exitedAt });
      case 'Wait':
        return encodeWaitResponse(gone.exit_status, exitedAt);
      case 'Delete':
        this.afterLostDelete(pod, container, execId);
        return encodeDeleteResponse(0, gone.exit_status, exitedAt);
      case 'Pids':
        return Buffer.alloc(0);
      case 'Kill':
        throw new AgentError(Code.NOT_FOUND, `${what}: process already finished (${gone.why})`);
      default:
        throw new AgentError(Code.FAILED_PRECONDITION, `${method} ${what}: not running: ${gone.why}`);
    }
  }

  private afterLostDelete(pod: DpuPod, container: string, execId: string): void {
    const lost = pod.record.lost ?? {};
    if (execId) delete lost[processKey(container, execId)];
    else for (const key of Object.keys(lost)) if (key.startsWith(`${container}/`)) delete lost[key];
    // runc's own state of the container, where runc's shim keeps it (its root
    // for the namespace): the shim would have deleted it.
    if (!execId) execFile('runc', ['--root', path.join(RUNC_SHIM_ROOT, pod.record.namespace), 'delete', '--force', container], () => undefined);
    this.afterDelete(pod, container, execId);
  }

  async createPod(req: CreatePodRequest): Promise<PodInfo> {
    checkId('pod id', req.pod_id);
    const existing = this.pods.get(req.pod_id);
    if (existing) return this.info(existing);
    // The same pod asked for again while it is being made: one making, one answer.
    let making = this.making.get(req.pod_id);
    if (!making) {
      making = this.makePod(req).finally(() => this.making.delete(req.pod_id));
      this.making.set(req.pod_id, making);
    }
    return making;
  }

  private async makePod(req: CreatePodRequest): Promise<PodInfo> {
    const short = req.pod_id.slice(0, 12);
    const record: PodRecord = {
      id: req.pod_id,
      namespace: req.namespace || 'k8s.io',
      pod_name: req.pod_name,
      pod_namespace: req.pod_namespace,
      netns: `hp-pod-${short}`,
      cgroup: `${this.paths.cgroupParent.replace(/\/$/, '')}/hp-${short}`,
      containers: {},
      processes: {},
    };
    const pod = this.newPod(record);
    const undo: Array<() => void> = [];
    try {
      fs.mkdirSync(pod.shimDir, { recursive: true, mode: 0o711 });
      undo.push(() => fs.rmSync(pod.dir, { recursive: true, force: true }));
      await this.makeNetns(pod);
      undo.push(() => void this.deleteNetns(record.netns).catch(() => undefined));
      pod.openShimLog(this.log.with({ pod: record.id }));
      // runc's shim reads the pod's grouping annotation from here at start; the
      // first container's spec replaces it later for the record.
      fs.writeFileSync(path.join(pod.shimDir, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', annotations: { 'io.kubernetes.cri.sandbox-id': record.id } }));
      pod.save();
    } catch (err) {
      pod.closeIo();
      for (const u of undo.reverse()) u();
      throw asAgentError(err, `create pod ${req.pod_id}`);
    }
    this.pods.set(record.id, pod);
    this.log.info('pod created', { pod: record.id, name: `${req.pod_namespace}/${req.pod_name}`, netns: record.netns });
    // The pod's runc shim starts now, while the host starts the sandbox, rather
    // than in the first container's Create (which awaits the same start): once
    // this reply has gone, so their set-up (the shim's directory, the keeper's
    // start) does not hold it up.
    setImmediate(() => {
      pod.runc.prepare({ id: record.id, bundle: pod.shimDir }).catch((err: Error) => this.log.warn('start the pod\'s runc shim early', { pod: record.id, error: err.message }));
      pod.keeper.ready().catch((err: Error) => this.log.warn('start the pod\'s fifo keeper', { pod: record.id, error: err.message }));
    });
    return this.info(pod);
  }

  listPods(): PodInfo[] {
    return [...this.pods.values()].map((p) => this.info(p));
  }

  private info(pod: DpuPod): PodInfo {
    const netnsPath = pod.netnsPath(this.paths.netnsDir);
    let inode = 0;
    try {
      inode = fs.statSync(netnsPath).ino;
    } catch {
      // reported as 0: the namespace is gone
    }
    return { pod_id: pod.record.id, netns_path: netnsPath, netns_inode: inode, cgroup_parent: pod.record.cgroup, containers: Object.keys(pod.record.containers) };
  }

  private pod(id: string): DpuPod {
    const pod = this.pods.get(id);
    if (!pod) throw new AgentError(Code.NOT_FOUND, `pod ${id} has no DPU half`);
    return pod;
  }

  /** Opens the pod's DPU half in its network namespace (the host half made the window); one already open is returned. */
  async openLink(req: OpenLinkRequest): Promise<LinkInfo> {
    const what = `open the DPU half of pod ${req.pod_id}'s network`;
    if (!net.isIPv4(req.pod_ip)) throw new AgentError(Code.INVALID_ARGUMENT, `${what}: pod IP ${JSON.stringify(req.pod_ip)} is not an IPv4 address`);
    const declared = checkPorts(`${what}: declared port`, req.declared_dpu_ports);
    const pod = this.pod(req.pod_id);
    if (!pod.link) {
      const netnsPath = pod.netnsPath(this.paths.netnsDir);
      const podLog = this.log.with({ pod: req.pod_id });
      const uplink = req.pod_prefix_length > 0 && this.hasUplink() ? { rootNetns: OWN_NETNS, nodeCidr: networkOf(req.pod_ip, req.pod_prefix_length) } : undefined;
      const opening: Promise<NetnsHalf> = openDpuHalf({
        podId: req.pod_id,
        netnsPath,
        podIp: req.pod_ip,
        uplink,
        declaredDpuPorts: declared,
        freshNetns: pod.freshNetns,
        onListeningPorts: (ports) => {
          // The first report comes while opening: pod.link is already this half.
          if (pod.link !== opening) return;
          pod.linkPorts = ports;
          for (const l of pod.portListeners) l(ports);
        },
        log: (level, msg) => podLog[level](msg),
      });
      pod.link = opening;
      pod.linkPorts = null;
      pod.freshNetns = false; // an open, even one that fails, may leave rules behind
      if (uplink) {
        pod.record.uplink_pod_ip = req.pod_ip;
        pod.save();
      }
      opening.then(
        () => this.log.info('split network: DPU half open', { pod: req.pod_id, netns: netnsPath, pod_ip: req.pod_ip, declared: declared.join(','), uplink: uplink ? this.paths.uplinkDev : 'none' }),
        () => {
          if (pod.link === opening) pod.link = null;
        },
      );
    }
    let half: NetnsHalf;
    try {
      half = await pod.link;
    } catch (err) {
      throw asAgentError(err, what);
    }
    return { pod_id: req.pod_id, window: half.windowPath, netns_path: half.netnsPath, link_up: half.linkUp(), listening_ports: half.listeningPorts(), on_uplink: half.uplink !== null };
  }

  /** The DPU's uplink device is there (looked up each time: a DPU's ports may come and go). */
  private hasUplink(): boolean {
    const dev = this.paths.uplinkDev;
    return !!dev && hasOwnDevice(dev);
  }

  /** Closes the pod's DPU half; a pod without one (or unknown) has nothing to close. Its port watchers' streams end. */
  async closeLink(podId: string): Promise<void> {
    const pod = this.pods.get(podId);
    const opening = pod?.link;
    if (!pod || !opening) return;
    pod.link = null;
    pod.linkPorts = null;
    for (const l of [...pod.portListeners]) l(null);
    pod.portListeners.clear();
    const half = await opening.catch(() => null); // a failed open undid itself
    if (!half) return;
    try {
      await half.close();
    } catch (err) {
      throw asAgentError(err, `close the DPU half of pod ${podId}'s network`);
    }
    this.log.info('split network: DPU half closed', { pod: podId });
  }

  /** Follows the DPU half's listening ports (the last known set at once); returns the unsubscribe. */
  watchPorts(podId: string, listener: PortsListener): () => void {
    const pod = this.pod(podId);
    if (!pod.link) throw new AgentError(Code.FAILED_PRECONDITION, `pod ${podId}: the DPU half of its network is not open (OpenLink first)`);
    pod.portListeners.add(listener);
    if (pod.linkPorts) listener(pod.linkPorts);
    return () => pod.portListeners.delete(listener);
  }

  /** The host half's listening ports, for the DPU half's rules. */
  async setPeerPorts(podId: string, ports: readonly number[]): Promise<void> {
    const checked = checkPorts(`pod ${podId}: host half's listening port`, ports);
    const pod = this.pod(podId);
    if (!pod.link) throw new AgentError(Code.FAILED_PRECONDITION, `pod ${podId}: the DPU half of its network is not open (OpenLink first)`);
    try {
      await (await pod.link).setPeerListeningPorts(checked);
    } catch (err) {
      throw asAgentError(err, `pod ${podId}: set the host half's ports`);
    }
  }

  /**
   * Removes the pod's half and everything in it. Concurrent calls (containerd
   * runs `delete` for each task of a pod whose shim died, and each asks) share
   * one removal.
   */
  removePod(id: string): Promise<void> {
    let removal = this.removals.get(id);
    if (!removal) {
      removal = this.doRemovePod(id).finally(() => this.removals.delete(id));
      this.removals.set(id, removal);
    }
    return removal;
  }

  private async doRemovePod(id: string): Promise<void> {
    const pod = this.pods.get(id);
    if (!pod) return;
    const problems: string[] = [];
    // The link first: its rules and device are in the namespace removed below.
    await this.closeLink(id).catch((err: Error) => problems.push(err.message));
    // A half that was not open (the agent restarted since) left its wire to the
    // uplink; its rules live on in the DPU's own namespace.
    if (pod.record.uplink_pod_ip) {
      await removeUplink(OWN_NETNS, id, pod.record.uplink_pod_ip).catch((err: Error) => problems.push(`the wire to the uplink: ${err.message}`));
    }
    for (const container of Object.keys(pod.record.containers)) {
      try {
        await this.forceDelete(pod, container);
      } catch (err) {
        problems.push(`container ${container}: ${(err as Error).message}`);
      }
    }
    await pod.runc.shutdown().catch((err: Error) => problems.push(`runc shim: ${err.message}`));
    // A runc shim that still holds a container (a Delete racing this removal)
    // does not exit when asked; the pod is going, so it and anything left in the
    // pod's cgroups are killed.
    this.killLeftovers(pod);
    pod.closeIo();
    await pod.keeper.stop().catch((err: Error) => problems.push(`fifo keeper: ${err.message}`));
    this.events.forget(id);
    for (const [c, p] of this.containerPod) if (p === id) this.containerPod.delete(c);
    for (const bundle of Object.values(pod.record.containers).map((c) => c.bundle)) this.unmountRootfs(bundle);
    await this.deleteNetns(pod.record.netns);
    fs.rmSync(pod.dir, { recursive: true, force: true });
    this.removeCgroups(pod.record.cgroup);
    this.pods.delete(id);
    this.log.info('pod removed', { pod: id });
    if (problems.length) throw new AgentError(Code.INTERNAL, `remove pod ${id}: ${problems.join('; ')}`);
  }

  // A container the host no longer wants: killed, waited for (briefly) and deleted.
  private async forceDelete(pod: DpuPod, container: string): Promise<void> {
    if (pod.record.lost?.[processKey(container, '')]) return this.afterLostDelete(pod, container, '');
    await pod.runc.request('Kill', encodeKillRequest(container, 9, true)).catch(() => undefined);
    const wait = pod.runc.request('Wait', encodeIdRequest(container)).catch(() => undefined);
    await Promise.race([wait, new Promise((r) => setTimeout(r, 5000).unref())]);
    await pod.runc.request('Delete', encodeIdRequest(container)).catch((err: RpcError) => {
      if (err.code !== Code.NOT_FOUND) throw err;
    });
  }

  /** Creates the container; when layers are missing from the cache, only names them. */
  async create(req: CreateRequest): Promise<CreateReply> {
    const pod = this.pod(req.pod_id);
    let host: { id: string; terminal: boolean; stdin: string; stdout: string; stderr: string };
    let hostSpec: OciSpec;
    try {
      host = decode('containerd.task.v2.CreateTaskRequest', req.request);
      hostSpec = JSON.parse(req.spec.toString('utf8')) as OciSpec;
    } catch (err) {
      throw new AgentError(Code.INVALID_ARGUMENT, `create: malformed request or spec: ${(err as Error).message}`);
    }
    checkId('container id', host.id);
    if (pod.record.containers[host.id]) throw new AgentError(Code.ALREADY_EXISTS, `container ${host.id}: already exists`);
    if (req.layers.length === 0) throw new AgentError(Code.INVALID_ARGUMENT, `create container ${host.id}: no rootfs layers`);
    let missing: string[];
    try {
      missing = await this.layers.missing(req.layers);
    } catch (err) {
      throw asAgentError(err, `create container ${host.id}: look up its layers`);
    }
    if (missing.length) return { response: Buffer.alloc(0), missing_layers: missing };
    await this.ensureNetns(pod);
    const bundle = path.join(pod.dir, 'containers', host.id);
    const key = processKey(host.id, '');
    const undo: Array<() => void> = [];
    try {
      fs.mkdirSync(path.join(bundle, 'files'), { recursive: true, mode: 0o711 });
      undo.push(() => fs.rmSync(bundle, { recursive: true, force: true }));
      const copies = new Map<string, string>();
      let hostname: string | undefined;
      let terminationLog: { destination: string; copy: string } | undefined;
      req.files.forEach((f, i) => {
        const target = path.join(bundle, 'files', String(i));
        writeCopy(target, f);
        copies.set(f.destination, target);
        if (f.destination === '/etc/hostname') hostname = f.content.toString('utf8').trim();
        if (f.termination_log) terminationLog = { destination: f.destination, copy: target };
      });
      const spec = specForDpu(hostSpec, {
        containerId: host.id,
        netnsPath: pod.netnsPath(this.paths.netnsDir),
        cgroupParent: pod.record.cgroup,
        copies,
        hostname,
        terminationLog: terminationLog?.destination,
      });
      const specText = JSON.stringify(spec);
      fs.writeFileSync(path.join(bundle, 'config.json'), specText);

      const lowers = req.layers.map((d) => this.layers.path(d));
      for (const d of ['upper', 'work', 'rootfs']) fs.mkdirSync(path.join(bundle, d), { mode: 0o755 });
      const rootfs = { type: 'overlay', source: 'overlay', target: '', options: ['index=off', `lowerdir=${lowers.join(':')}`, `upperdir=${path.join(bundle, 'upper')}`, `workdir=${path.join(bundle, 'work')}`] };

      const io = await this.makeIo(pod, bundle, 'init', key, host);
      undo.push(() => this.dropIo(pod, key));
      pod.record.containers[host.id] = { name: req.container_name, bundle, copies: Object.fromEntries(copies), termination_log: terminationLog?.copy };
      this.containerPod.set(host.id, pod.record.id);
      undo.push(() => {
        delete pod.record.containers[host.id];
        this.containerPod.delete(host.id);
      });
      await pod.runc.prepare({ id: host.id, bundle: pod.shimDir });
      const res = await pod.runc.request(
        'Create',
        encode('containerd.task.v2.CreateTaskRequest', { id: host.id, bundle, rootfs: [rootfs], terminal: host.terminal, stdin: io.stdin, stdout: io.stdout, stderr: io.stderr }),
      );
      this.opened(pod, key);
      this.log.info('container created', { pod: pod.record.id, container: host.id, name: req.container_name, layers: lowers.length });
      return { response: res, missing_layers: [] };
    } catch (err) {
      for (const u of undo.reverse()) u();
      throw asAgentError(err, `create container ${host.id}`);
    }
  }

  // The fifos are made, read here and held by the pod's keeper before runc's shim gets their paths.
  private async makeIo(pod: DpuPod, bundle: string, name: string, key: string, host: { stdin: string; stdout: string; stderr: string; terminal: boolean }): Promise<ProcessRecord> {
    const dir = path.join(bundle, 'io');
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const io: ProcessRecord = { stdin: '', stdout: '', stderr: '', unopened: true };
    for (const stream of ['stdin', 'stdout', 'stderr'] as const) {
      // With a terminal there is one output stream; the host sends no stderr.
      if (!host[stream]) continue;
      io[stream] = path.join(dir, `${name}-${stream}`);
      makeFifo(io[stream]);
    }
    if (io.stdin) pod.inputs.set(key, new ProcessInput(io.stdin));
    pod.record.processes[key] = io;
    if (io.stdout || io.stderr) await pod.openOutput(key, new ProcessOutput({ stdout: io.stdout, stderr: io.stderr }, true), this.log.with({ pod: pod.record.id }));
    return io;
  }

  // runc's shim has its write ends of the process's fifos: end-of-file is up to it.
  private opened(pod: DpuPod, key: string): void {
    pod.outputs.get(key)?.releasePlaceholders();
    const io = pod.record.processes[key];
    if (io) delete io.unopened;
    pod.save();
  }

  private dropIo(pod: DpuPod, key: string, graceMs = 0): void {
    const out = pod.outputs.get(key);
    const close = () => {
      if (out) pod.closeOutput(key, out);
    };
    if (out && graceMs > 0 && !out.finished) setTimeout(close, graceMs).unref();
    else close();
    pod.inputs.get(key)?.close();
    pod.inputs.delete(key);
    delete pod.record.processes[key];
  }

  async exec(podId: string, request: Buffer): Promise<Buffer> {
    const pod = this.pod(podId);
    let host: { id: string; exec_id: string; terminal: boolean; stdin: string; stdout: string; stderr: string; spec: unknown };
    try {
      host = decode('containerd.task.v2.ExecProcessRequest', request);
    } catch (err) {
      throw new AgentError(Code.INVALID_ARGUMENT, `exec: malformed request: ${(err as Error).message}`);
    }
    checkId('exec id', host.exec_id);
    const container = pod.record.containers[host.id];
    if (!container) throw new AgentError(Code.NOT_FOUND, `container ${host.id}: not found`);
    const gone = pod.record.lost?.[processKey(host.id, '')];
    if (gone) throw new AgentError(Code.FAILED_PRECONDITION, `exec in ${host.id}: container not running: ${gone.why}`);
    const key = processKey(host.id, host.exec_id);
    if (pod.record.processes[key]) throw new AgentError(Code.ALREADY_EXISTS, `exec ${host.exec_id}: already exists`);
    try {
      const io = await this.makeIo(pod, container.bundle, `exec-${host.exec_id}`, key, host);
      // runc's shim opens an exec's fifos at Start, not here: the placeholders
      // stay until then (relay).
      const res = await pod.runc.request('Exec', encode('containerd.task.v2.ExecProcessRequest', { ...host, stdin: io.stdin, stdout: io.stdout, stderr: io.stderr }));
      pod.save();
      return res;
    } catch (err) {
      this.dropIo(pod, key);
      throw asAgentError(err, `exec ${host.exec_id} in ${host.id}`);
    }
  }

  /** A task call that needs nothing from the agent but the pod's runc shim. */
  async relay(method: string, podId: string, request: Buffer): Promise<Buffer> {
    const pod = this.pod(podId);
    const { id, execId } = taskRef(method, request);
    if (!pod.record.containers[id]) throw new AgentError(Code.NOT_FOUND, `container ${id}: not found`);
    const key = processKey(id, execId);
    const gone = pod.record.lost?.[key];
    if (gone) return this.answerLost(method, pod, id, execId, gone);
    try {
      // CloseIORequest { stdin = 3 }
      if (method === 'CloseIO' && bool(readFields(request), 3)) await pod.inputs.get(key)?.end();
      const res = await pod.runc.request(method, request);
      if (method === 'Start' && execId) this.opened(pod, key);
      if (method === 'Delete') this.afterDelete(pod, id, execId);
      return res;
    } catch (err) {
      if (method === 'Delete' && err instanceof RpcError && err.code === Code.NOT_FOUND) this.afterDelete(pod, id, execId);
      throw asAgentError(err, `${method} ${id}${execId ? ` exec ${execId}` : ''}`);
    }
  }

  /** Wait, relayed; an init process's answer carries its container's termination message. */
  async wait(podId: string, request: Buffer): Promise<TaskReply> {
    const response = await this.relay('Wait', podId, request);
    const { id, execId } = taskRef('Wait', request);
    return { response, termination_message: execId ? Buffer.alloc(0) : this.terminationMessage(podId, id) };
  }

  /**
   * Files a task event of a runc shim under its container's pod; the exit of a
   * container's init carries its termination message, read now: the process
   * has exited, so the file is as it left it. Null: the container is of no pod.
   */
  publishEvent(forward: Buffer): PodEvent | null {
    const container = eventContainerId(forward);
    const podId = this.containerPod.get(container);
    if (!podId) return null;
    const e = forwardedEvent(forward);
    let terminationMessage: Buffer | undefined;
    if (e.topic === '/tasks/exit') {
      const exit = taskExit(e.value);
      if (exit.id === '' || exit.id === exit.containerId) terminationMessage = this.terminationMessage(podId, container);
    }
    return this.events.publish(podId, forward, terminationMessage);
  }

  // Empty when the container has no such file (or is gone); a file that cannot
  // be read costs the message, not the exit.
  private terminationMessage(podId: string, container: string): Buffer {
    const file = this.pods.get(podId)?.record.containers[container]?.termination_log;
    if (!file) return Buffer.alloc(0);
    try {
      return readTerminationMessage(file);
    } catch (err) {
      this.log.warn('read the termination message of a container', { pod: podId, container, file, error: (err as Error).message });
      return Buffer.alloc(0);
    }
  }

  /**
   * Replaces copies of the container's mounts with the host's new content. Every
   * file is checked before any is written: an unknown destination is NOT_FOUND,
   * the termination-message file (the container's to write) INVALID_ARGUMENT.
   */
  updateFiles(req: UpdateFilesRequest): void {
    const pod = this.pod(req.pod_id);
    const container = pod.record.containers[req.container_id];
    if (!container) throw new AgentError(Code.NOT_FOUND, `container ${req.container_id}: not found`);
    const copies = this.copiesOf(container);
    const targets = req.files.map((f) => {
      const target = copies[f.destination];
      if (!target) throw new AgentError(Code.NOT_FOUND, `container ${req.container_id}: no copy of a mount at ${f.destination}`);
      if (f.termination_log || target === container.termination_log) throw new AgentError(Code.INVALID_ARGUMENT, `container ${req.container_id}: ${f.destination} is its termination-message file, which only the container writes`);
      let directory: boolean;
      try {
        directory = fs.lstatSync(target).isDirectory();
      } catch (err) {
        throw asAgentError(err, `container ${req.container_id}: the copy of ${f.destination}`);
      }
      if (directory !== f.directory) throw new AgentError(Code.INVALID_ARGUMENT, `container ${req.container_id}: ${f.destination} is a ${directory ? 'directory' : 'file'}, not a ${f.directory ? 'directory' : 'file'}`);
      return target;
    });
    req.files.forEach((f, i) => {
      try {
        updateCopy(targets[i], f);
      } catch (err) {
        throw asAgentError(err, `update ${f.destination} of container ${req.container_id}`);
      }
    });
    if (req.files.length) this.log.info('mounted files updated', { pod: req.pod_id, container: req.container_id, mounts: req.files.map((f) => f.destination).join(',') });
  }

  // The record's, or (a record of an earlier agent) the bind mounts of the spec
  // the container runs with whose source is a copy in its bundle.
  private copiesOf(container: ContainerRecord): Record<string, string> {
    if (container.copies) return container.copies;
    const files = path.join(container.bundle, 'files') + path.sep;
    try {
      const spec = JSON.parse(fs.readFileSync(path.join(container.bundle, 'config.json'), 'utf8')) as OciSpec;
      return Object.fromEntries((spec.mounts ?? []).filter((m) => m.source?.startsWith(files)).map((m) => [m.destination, m.source as string]));
    } catch {
      return {};
    }
  }

  private afterDelete(pod: DpuPod, container: string, execId: string): void {
    // Output still on its way to the host gets time to arrive (the host's relay allows as long).
    this.dropIo(pod, processKey(container, execId), 60_000);
    if (!execId) {
      for (const key of Object.keys(pod.record.processes)) if (key.startsWith(`${container}/`)) this.dropIo(pod, key, 60_000);
      const bundle = pod.record.containers[container]?.bundle;
      // The container's id stays known until the pod goes: runc's shim publishes
      // its TaskDelete after answering Delete, and that event must still find the pod.
      delete pod.record.containers[container];
      if (bundle) {
        this.unmountRootfs(bundle);
        fs.rmSync(bundle, { recursive: true, force: true });
      }
    }
    pod.save();
  }

  output(podId: string, container: string, execId: string): ProcessOutput {
    const out = this.pod(podId).outputs.get(processKey(container, execId));
    if (!out) throw new AgentError(Code.NOT_FOUND, `output of ${container}${execId ? ` exec ${execId}` : ''}: not found`);
    return out;
  }

  outputIfAny(podId: string, container: string, execId: string): ProcessOutput | undefined {
    return this.pods.get(podId)?.outputs.get(processKey(container, execId));
  }

  forgetOutput(podId: string, container: string, execId: string, out: ProcessOutput): void {
    const pod = this.pods.get(podId);
    if (pod) pod.closeOutput(processKey(container, execId), out);
    else out.close();
  }

  input(podId: string, container: string, execId: string): ProcessInput {
    const input = this.pod(podId).inputs.get(processKey(container, execId));
    if (!input) throw new AgentError(Code.NOT_FOUND, `stdin of ${container}${execId ? ` exec ${execId}` : ''}: not found`);
    return input;
  }

  private killLeftovers(pod: DpuPod): void {
    // runc's shim writes no pid file; it runs in the working directory it was
    // started in, which is the pod's own.
    const pids = new Set<number>(processesIn(path.join(pod.dir, 'runc-shim')));
    const walk = (dir: string) => {
      try {
        for (const line of fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n')) if (line.trim()) pids.add(Number(line));
        for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) walk(path.join(dir, e.name));
      } catch {
        // gone
      }
    };
    walk(path.join(this.paths.cgroupRoot, 'memory', pod.record.cgroup));
    for (const pid of pids) {
      if (!(pid > 0)) continue;
      try {
        process.kill(pid, 'SIGKILL');
        this.log.warn('killed a leftover process of the pod', { pod: pod.record.id, pid });
      } catch {
        // already gone
      }
    }
  }

  private unmountRootfs(bundle: string): void {
    const rootfs = path.join(bundle, 'rootfs');
    const mounted = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === rootfs);
    if (mounted) execFileSync('umount', ['-l', rootfs], { stdio: 'pipe' });
  }

  /** The pod's network namespace, made again if a reboot of the DPU took it. */
  private async ensureNetns(pod: DpuPod): Promise<void> {
    if (fs.existsSync(pod.netnsPath(this.paths.netnsDir))) return;
    try {
      await this.makeNetns(pod);
      this.log.warn('network namespace of the pod made again', { pod: pod.record.id, netns: pod.record.netns });
    } catch (err) {
      throw asAgentError(err, `pod ${pod.record.id}: make its network namespace again`);
    }
  }

  // The pod's network namespace, its loopback up; none is left if that fails.
  // (ip, started by libxpu without forking the agent: inNetns.)
  private async makeNetns(pod: DpuPod): Promise<void> {
    const name = pod.record.netns;
    await inNetns(OWN_NETNS, ['ip', 'netns', 'add', name]);
    try {
      await inNetns(path.join(this.paths.netnsDir, name), ['ip', 'link', 'set', 'lo', 'up']);
    } catch (err) {
      await this.deleteNetns(name).catch(() => undefined);
      throw err;
    }
    pod.freshNetns = true;
  }

  private async deleteNetns(name: string): Promise<void> {
    if (fs.existsSync(path.join(this.paths.netnsDir, name))) await inNetns(OWN_NETNS, ['ip', 'netns', 'del', name]);
  }

  private removeCgroups(relative: string): void {
    let controllers: string[];
    try {
      controllers = fs.readdirSync(this.paths.cgroupRoot);
    } catch {
      return;
    }
    for (const c of controllers) {
      const dir = path.join(this.paths.cgroupRoot, c, relative);
      try {
        // Leaves first: runc removes its containers' cgroups; anything left is empty.
        for (const child of fs.readdirSync(dir, { withFileTypes: true })) if (child.isDirectory()) fs.rmdirSync(path.join(dir, child.name));
        fs.rmdirSync(dir);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ENOTDIR') this.log.warn('remove pod cgroup', { dir, error: (err as Error).message });
      }
    }
  }
}
