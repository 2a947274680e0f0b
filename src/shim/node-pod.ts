// One pod as the node daemon serves it: what the pod's proxy told at Attach,
// the tasks the daemon holds for it (task-service.ts), where each new task goes
// and the pod's DPU half (pod-router.ts). runc's shim, which the proxy started,
// is called only for the sandbox of a pod with a DPU half (its split network is
// joined around the sandbox's Create and Delete).
import * as path from 'node:path';
import type { DpuAgentClient } from '../agentapi/client';
import { pidAlive } from '../common/processes';
import { MessageWriter, bool, readFields, str, uint } from '../proto/wire';
import type { Handler } from '../ttrpc';
import { NAMESPACE_KEY } from '../ttrpc/messages';
import type { ShimConfig } from './config';
import type { EventForwarder } from './events';
import { FifoSink, LogSink, Logger, TeeSink } from '../common/log';
import { forwardedEvent, taskExit } from '../taskapi/messages';
import { PodRouter } from './pod-router';
import { RuncShimRuntime } from '../runcshim/runc-runtime';
import { Placed, TaskMethod, TaskService } from './task-service';
import { Task } from './tasks';
import type { NodePodRecord, PodRecordFile } from './pod-record';

/** heteropod.node.v1.AttachRequest: who the proxy on a connection serves. */
export interface PodAttach {
  namespace: string;
  group: string; // the pod: its sandbox id
  containerdAddress: string;
  ttrpcAddress: string; // containerd's ttrpc socket, for events
  runcAddress: string; // runc's shim for the pod, as the proxy started it
  publishBinary: string;
  bundle: string; // the sandbox's bundle (its `log` fifo is the pod's shim log)
  configPath: string;
  proxyPid: number;
  debug: boolean;
}

export function decodeAttach(payload: Uint8Array): PodAttach {
  const f = readFields(payload);
  const a: PodAttach = {
    namespace: str(f, 1),
    group: str(f, 2),
    containerdAddress: str(f, 3),
    ttrpcAddress: str(f, 4),
    runcAddress: str(f, 5),
    publishBinary: str(f, 6),
    bundle: str(f, 7),
    configPath: str(f, 8),
    proxyPid: uint(f, 9),
    debug: bool(f, 10),
  };
  if (!a.namespace || !a.group || !a.runcAddress) throw new Error('Attach needs namespace, group and runc_address');
  return a;
}

export function encodeAttach(a: PodAttach): Buffer {
  return new MessageWriter()
    .bytes(1, a.namespace)
    .bytes(2, a.group)
    .bytes(3, a.containerdAddress)
    .bytes(4, a.ttrpcAddress)
    .bytes(5, a.runcAddress)
    .bytes(6, a.publishBinary)
    .bytes(7, a.bundle)
    .bytes(8, a.configPath)
    .varint(9, a.proxyPid)
    .varint(10, a.debug)
    .finish();
}

export const podKey = (a: Pick<PodAttach, 'containerdAddress' | 'namespace' | 'group'>): string => `${a.containerdAddress}\0${a.namespace}\0${a.group}`;

// Response field 15 (`placed`), appended after status and payload: 1 = the
// daemon holds the task, 2 = the proxy gives the Create to runc's shim, 3 = the
// daemon made the task and keeps its Delete, the proxy sends it the rest to
// runc's shim (Runtime.createAndDeleteOnly).
const PLACED_FIELD = 15;
const PLACED_CODE = { daemon: 1, proxy: 2, sandbox: 3 } as const;
export const placedTrailer = (p: Placed): Buffer => new MessageWriter().varint(PLACED_FIELD, PLACED_CODE[p.placed]).finish();

export class NodePod {
  readonly service: TaskService;
  // The task service's handlers, made once (the daemon calls them for every request).
  readonly handlers: Record<TaskMethod, Handler>;
  readonly router: PodRouter;
  readonly log: Logger;
  private readonly runc: RuncShimRuntime;
  private connections = 0;
  private disposed = false;

  constructor(
    config: ShimConfig,
    readonly attach: PodAttach,
    nodeLog: Logger,
    agent: () => DpuAgentClient,
    events: EventForwarder,
    nodeSink: LogSink,
  ) {
    const debug = config.debug || attach.debug;
    const fifo = new FifoSink(path.join(attach.bundle, 'log'));
    this.log = new Logger(new TeeSink([fifo, nodeSink]), debug || nodeLog.debugEnabled, { runtime: 'io.containerd.heteropod.v2', namespace: attach.namespace, pod: attach.group });
    this.runc = new RuncShimRuntime(
      {
        address: attach.runcAddress,
        binary: config.runcShim,
        namespace: attach.namespace,
        containerdAddress: attach.containerdAddress,
        publishBinary: attach.publishBinary,
        eventsAddress: attach.ttrpcAddress,
        workDir: '',
        debug,
        runc: config.runc,
      },
      this.log,
    );
    // Events of the DPU's containers, in order with the others of the node.
    const onDpuEvent = (forward: Buffer, topic: string): void => {
      this.observe(forward);
      events.enqueue(forward, [{ key: NAMESPACE_KEY, value: attach.namespace }], topic);
    };
    this.router = new PodRouter(config, attach.namespace, attach.group, this.runc, this.log, onDpuEvent, agent, () => this.nodeRecord());
    this.service = new TaskService((req) => this.router.runtimeFor(req), this.log, { shimPid: () => this.attach.proxyPid, onChange: () => this.router.save() });
    this.handlers = this.service.handlers();
  }

  private nodeRecord(): NodePodRecord {
    return {
      attach: this.attach,
      tasks: this.service.tasks.all().map((t) => ({ id: t.id, bundle: t.bundle, status: t.status, runtime: t.runtime.name === 'dpu' ? 'dpu' : 'sandbox' })),
      last_event: 0,
      processes: [],
    };
  }

  /**
   * Takes the pod over from a node daemon that is gone, from its record: the
   * router's state and DPU half, then the tasks it held.
   */
  async restore(record: PodRecordFile): Promise<void> {
    await this.router.restore(record);
    for (const t of record.node?.tasks ?? []) {
      const runtime = t.runtime === 'dpu' ? this.router.dpuRuntime : this.router.sandboxRuntime(t.id);
      if (!runtime) {
        this.log.warn('a task of the pod cannot be taken over: the pod has no DPU half', { id: t.id });
        continue;
      }
      this.service.tasks.add(new Task(t.id, t.bundle, runtime, t.status));
    }
    this.router.save();
    this.log.info('pod taken over from an earlier node daemon', { tasks: this.service.tasks.size });
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Counts a proxy connection until it closes; `idle` is told when none is left. */
  connected(closed: AbortSignal, idle: () => void): void {
    this.connections++;
    closed.addEventListener('abort', () => {
      this.connections--;
      if (this.connections === 0) idle();
    });
  }

  get connectionCount(): number {
    return this.connections;
  }

  /** Whether the pod's proxy still runs: once it has exited, the pod is gone for containerd. */
  proxyAlive(): boolean {
    return pidAlive(this.attach.proxyPid);
  }

  create(payload: Buffer): Promise<Placed> {
    return this.service.create(payload);
  }

  // Notes exits for the task table.
  private observe(payload: Buffer): void {
    try {
      const event = forwardedEvent(payload);
      if (event.topic === '/tasks/exit') {
        const exit = taskExit(event.value);
        this.service.observeExit(exit.containerId, exit.id);
      }
    } catch (err) {
      this.log.warn('undecodable event forwarded as is', { error: (err as Error).message });
    }
  }

  /** The record as it is now, on disk (the daemon stops). */
  flushRecord(): void {
    if (!this.disposed) this.router.flush();
  }

  /** The pod is gone: its DPU half and split network, and its record. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const dpu = this.router.dpuRuntime;
    if (dpu) await dpu.shutdown().catch((err: Error) => this.log.error('remove the pod\'s DPU half', { error: err.message }));
    await this.runc.detach();
    this.router.remove();
    this.log.info('pod gone');
  }
}
