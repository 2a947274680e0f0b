// containerd.task.v2.Task as served to containerd: checks the task exists, routes
// the call to the runtime holding it, and keeps the task table in step. Requests
// are decoded only as far as routing needs (messages.ts); the runtime gets the
// bytes as sent, except Create, whose runtime options are ours and are replaced
// by the runtime's own.
import { Code, Handler, RpcError, invalidArgument } from '../ttrpc';
import type { Logger } from './log';
import type { Runtime } from './runtime';
import { Task, TaskTable } from './tasks';
import { TaskRef, connectTaskPid, createRequest, encodeConnectResponse, shutdownRequest, taskRef, withCreateOptions } from './messages';

export interface CreateInfo {
  id: string;
  bundle: string;
}

export interface TaskServiceHooks {
  // Called after a Shutdown that leaves no task: the daemon exits.
  onShutdown: () => void;
}

const EMPTY = Buffer.alloc(0);

export class TaskService {
  readonly tasks = new TaskTable();

  constructor(
    // Chooses the runtime for a new task (pod-router.ts); may refuse the task.
    private readonly runtimeFor: (request: CreateInfo) => Runtime | Promise<Runtime>,
    private readonly log: Logger,
    private readonly hooks: TaskServiceHooks,
  ) {}

  handlers(): Record<string, Handler> {
    const relay = (method: string, onSuccess?: (task: Task, ref: TaskRef) => void): Handler => async (payload, call) => {
      const ref = parse(method, () => taskRef(method, payload));
      const task = this.tasks.get(ref.id);
      const res = await task.runtime.call(method, payload, call.signal);
      onSuccess?.(task, ref);
      return res;
    };
    return {
      Create: (payload) => this.create(payload),
      Start: relay('Start', (task, ref) => {
        if (!ref.execId) task.observe('running');
      }),
      State: relay('State'),
      Delete: async (payload, call) => {
        const ref = parse('Delete', () => taskRef('Delete', payload));
        const task = this.tasks.get(ref.id);
        try {
          const res = await task.runtime.call('Delete', payload, call.signal);
          if (!ref.execId) this.tasks.remove(ref.id);
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
      Wait: relay('Wait', (task, ref) => {
        if (!ref.execId) task.observe('stopped');
      }),
      Stats: relay('Stats'),
      Connect: (payload, call) => this.connect(payload, call.signal),
      Shutdown: async (payload) => {
        const req = parse('Shutdown', () => shutdownRequest(payload));
        if (this.tasks.size > 0 && !req.now) return EMPTY;
        this.log.info('shutting down', { remaining: this.tasks.size, now: req.now });
        setImmediate(this.hooks.onShutdown);
        return EMPTY;
      },
    };
  }

  // Observes the exit events the runtimes publish (tasks.ts ignores late ones).
  observeExit(containerId: string, execId: string): void {
    if (execId === '' || execId === containerId) this.tasks.find(containerId)?.observe('stopped');
  }

  private async create(payload: Buffer): Promise<Buffer> {
    const req = parse('Create', () => createRequest(payload));
    if (!req.id) throw invalidArgument('create task: id is required');
    let runtime: Runtime;
    try {
      runtime = await this.runtimeFor(req);
    } catch (err) {
      throw RpcError.wrap(err, `create task ${req.id}`);
    }
    const task = new Task(req.id, req.bundle, runtime);
    this.tasks.add(task);
    try {
      await runtime.prepare({ id: req.id, bundle: req.bundle });
      const options = runtime.taskOptions();
      const forwarded = req.hasOptions || options ? withCreateOptions(payload, options) : payload;
      const res = await runtime.call('Create', forwarded);
      task.transition('created');
      this.log.info('task created', { id: req.id, runtime: runtime.name });
      return res;
    } catch (err) {
      this.tasks.remove(req.id);
      throw RpcError.wrap(err, `create task ${req.id}`);
    }
  }

  private async connect(payload: Buffer, signal: AbortSignal): Promise<Buffer> {
    const ref = parse('Connect', () => taskRef('Connect', payload));
    const task = this.tasks.find(ref.id);
    const taskPid = task ? connectTaskPid(await task.runtime.call('Connect', payload, signal)) : 0;
    // containerd knows this process as the shim, whatever runs behind it.
    return encodeConnectResponse(process.pid, taskPid);
  }
}

function parse<R>(method: string, read: () => R): R {
  try {
    return read();
  } catch (err) {
    throw invalidArgument(`malformed ${method} request: ${(err as Error).message}`);
  }
}
