// containerd.task.v2.Task for the tasks of one pod that the node daemon holds
// (its DPU containers, and the sandbox of a pod with a DPU half): checks the task
// exists, routes the call to the runtime holding it, and keeps the task table in
// step. The pod's C proxy sends every Create here first; a task the daemon does
// not hold (a host container) is answered `proxy`, and the proxy gives it to
// runc's shim, which then serves it directly. Shutdown never comes here: it is
// runc's shim's, whose exit ends the pod's proxy.
//
// Each request is parsed here, once, into a TaskCall (messages.ts): its bytes as
// sent and the ids they name, which the runtimes use as given. A Create is
// decoded whole and its bundle's config.json read into a CreateCall, which both
// the router (to place the task) and the runtime (to create it) use: neither
// reads the request or the file again. The runtime gets the bytes as sent,
// except Create's, whose runtime options are ours and are replaced by the
// runtime's own.
import { Code, Handler, RpcError, invalidArgument } from '../ttrpc';
import type { Logger } from '../common/log';
import type { Runtime } from '../runcshim/runtime';
import { Task, TaskTable } from './tasks';
import { readSpecFile } from './bundle';
import { BundleSpecFile, CreateCall, TaskCall, connectTaskPid, createCall, createTask, encodeConnectResponse, taskCall, withCreateOptions } from '../taskapi/messages';

// The Task methods served from the task table, each by the handler of its name.
// Create is the node daemon's to register (it may answer `proxy`); Shutdown is
// runc's shim's.
export const TASK_METHODS = ['Start', 'State', 'Delete', 'Pids', 'Pause', 'Resume', 'Checkpoint', 'Kill', 'Exec', 'ResizePty', 'CloseIO', 'Update', 'Wait', 'Stats', 'Connect'] as const;
export type TaskMethod = (typeof TASK_METHODS)[number];

export interface TaskServiceHooks {
  // The pid containerd knows as the pod's shim (the pod's proxy), for Connect.
  shimPid: () => number;
  // The task table changed (a task created, started, stopped or deleted).
  onChange?: () => void;
}

// Where a new task went: `daemon` holds it (response is Create's answer), or the
// proxy is to give it to runc's shim.
export type Placed = { placed: 'daemon' | 'sandbox'; response: Buffer } | { placed: 'proxy' };

export class TaskService {
  readonly tasks = new TaskTable();

  constructor(
    // Chooses the runtime for a new task (pod-router.ts), null for one the proxy
    // gives to runc's shim; may refuse the task.
    private readonly runtimeFor: (create: CreateCall) => Runtime | null | Promise<Runtime | null>,
    private readonly log: Logger,
    private readonly hooks: TaskServiceHooks,
  ) {}

  handlers(): Record<TaskMethod, Handler> {
    const relay = (method: TaskMethod, onSuccess?: (task: Task, call: TaskCall) => void): Handler => async (payload, rpc) => {
      const call = parse(method, () => taskCall(method, payload));
      const task = this.tasks.get(call.ref.id);
      const res = await task.runtime.call(call, rpc.signal);
      onSuccess?.(task, call);
      return res;
    };
    return {
      Start: relay('Start', (task, { ref }) => {
        if (!ref.execId) {
          task.observe('running');
          this.hooks.onChange?.();
        }
      }),
      State: relay('State'),
      Delete: async (payload, rpc) => {
        const call = parse('Delete', () => taskCall('Delete', payload));
        const { ref } = call;
        const task = this.tasks.get(ref.id);
        try {
          const res = await task.runtime.call(call, rpc.signal);
          if (!ref.execId) {
            this.tasks.remove(ref.id);
            this.hooks.onChange?.();
          }
          return res;
        } catch (err) {
          // The runtime no longer knows the task: it is gone either way.
          if (!ref.execId && err instanceof RpcError && err.code === Code.NOT_FOUND) this.tasks.remove(ref.id);
          throw err;
        }
      },
      Pids: relay('Pids'),
      Pause: relay('Pause'),
      Resume: relay('Resume'),
      Checkpoint: relay('Checkpoint'),
      Kill: relay('Kill'),
      Exec: relay('Exec'),
      ResizePty: relay('ResizePty'),
      CloseIO: relay('CloseIO'),
      Update: relay('Update'),
      Wait: relay('Wait', (task, { ref }) => {
        if (!ref.execId) task.observe('stopped');
      }),
      Stats: relay('Stats'),
      Connect: (payload, rpc) => this.connect(payload, rpc.signal),
    };
  }

  // Observes the exit events the runtimes publish (tasks.ts ignores late ones).
  observeExit(containerId: string, execId: string): void {
    if (execId === '' || execId === containerId) this.tasks.find(containerId)?.observe('stopped');
  }

  async create(payload: Buffer): Promise<Placed> {
    const req = parse('Create', () => createTask(payload));
    if (!req.id) throw invalidArgument('create task: id is required');
    let runtime: Runtime | null;
    let call: CreateCall;
    try {
      call = createCall(payload, req, bundleSpec(req.bundle));
      runtime = await this.runtimeFor(call);
    } catch (err) {
      throw RpcError.wrap(err, `create task ${req.id}`);
    }
    if (!runtime) return { placed: 'proxy' };
    const task = new Task(req.id, req.bundle, runtime);
    this.tasks.add(task);
    try {
      await runtime.prepare({ id: req.id, bundle: req.bundle });
      const options = runtime.taskOptions();
      const res = await runtime.call(req.hasOptions || options ? withCreateOptions(call, options) : call);
      task.transition('created');
      this.hooks.onChange?.();
      this.log.info('task created', { id: req.id, runtime: runtime.name });
      return { placed: runtime.createAndDeleteOnly ? 'sandbox' : 'daemon', response: res };
    } catch (err) {
      this.tasks.remove(req.id);
      throw RpcError.wrap(err, `create task ${req.id}`);
    }
  }

  private async connect(payload: Buffer, signal: AbortSignal): Promise<Buffer> {
    const call = parse('Connect', () => taskCall('Connect', payload));
    const task = this.tasks.find(call.ref.id);
    const taskPid = task ? connectTaskPid(await task.runtime.call(call, signal)) : 0;
    // containerd knows this process as the shim, whatever runs behind it.
    return encodeConnectResponse(this.hooks.shimPid(), taskPid);
  }
}

// A config.json that is missing or not JSON is the request's fault.
function bundleSpec(bundle: string): BundleSpecFile {
  try {
    return readSpecFile(bundle);
  } catch (err) {
    throw invalidArgument((err as Error).message);
  }
}

function parse<R>(method: string, read: () => R): R {
  try {
    return read();
  } catch (err) {
    throw invalidArgument(`malformed ${method} request: ${(err as Error).message}`);
  }
}
