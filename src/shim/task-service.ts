// containerd.task.v2.Task as served to containerd: checks the task exists, routes
// the call to the runtime holding it, and keeps the task table in step. Requests
// are decoded only as far as routing needs; the runtime gets the bytes as sent,
// except Create, whose runtime options are ours and are stripped.
import { decode, encode } from '../proto';
import { Code, Handler, RpcError, invalidArgument } from '../ttrpc';
import type { Logger } from './log';
import type { Runtime } from './runtime';
import { Task, TaskTable } from './tasks';

interface IdRequest {
  id: string;
  exec_id?: string;
}

interface CreateRequest extends IdRequest {
  bundle: string;
  options: unknown;
  [field: string]: unknown;
}

const T = 'containerd.task.v2.';

export interface TaskServiceHooks {
  // Called after a Shutdown that leaves no task: the daemon exits.
  onShutdown: () => void;
}

export class TaskService {
  readonly tasks = new TaskTable();

  constructor(
    // Chooses the runtime for a new task. Today every task runs on the host.
    private readonly runtimeFor: (request: CreateRequest) => Runtime,
    private readonly log: Logger,
    private readonly hooks: TaskServiceHooks,
  ) {}

  handlers(): Record<string, Handler> {
    const relay = (method: string, onSuccess?: (task: Task, req: IdRequest, res: Buffer) => void): Handler => async (payload, call) => {
      const req = parse<IdRequest>(`${method === 'Exec' ? 'ExecProcess' : method === 'Checkpoint' ? 'CheckpointTask' : method === 'Update' ? 'UpdateTask' : method}Request`, payload);
      const task = this.tasks.get(req.id);
      const res = await task.runtime.call(method, payload, call.signal);
      onSuccess?.(task, req, res);
      return res;
    };
    return {
      Create: (payload) => this.create(payload),
      Start: relay('Start', (task, req) => {
        if (!req.exec_id) task.observe('running');
      }),
      State: relay('State'),
      Delete: async (payload, call) => {
        const req = parse<IdRequest>('DeleteRequest', payload);
        const task = this.tasks.get(req.id);
        try {
          const res = await task.runtime.call('Delete', payload, call.signal);
          if (!req.exec_id) this.tasks.remove(req.id);
          return res;
        } catch (err) {
          // The runtime no longer knows the task: it is gone either way.
          if (!req.exec_id && err instanceof RpcError && err.code === Code.NOT_FOUND) this.tasks.remove(req.id);
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
      Wait: relay('Wait', (task, req) => {
        if (!req.exec_id) task.observe('stopped');
      }),
      Stats: relay('Stats'),
      Connect: (payload, call) => this.connect(payload, call.signal),
      Shutdown: async (payload) => {
        const req = parse<{ id: string; now: boolean }>('ShutdownRequest', payload);
        if (this.tasks.size > 0 && !req.now) return Buffer.alloc(0);
        this.log.info('shutting down', { remaining: this.tasks.size, now: req.now });
        setImmediate(this.hooks.onShutdown);
        return Buffer.alloc(0);
      },
    };
  }

  // Observes the exit events the runtimes publish (tasks.ts ignores late ones).
  observeExit(containerId: string, execId: string): void {
    if (execId === '' || execId === containerId) this.tasks.find(containerId)?.observe('stopped');
  }

  private async create(payload: Buffer): Promise<Buffer> {
    const req = parse<CreateRequest>('CreateTaskRequest', payload);
    if (!req.id) throw invalidArgument('create task: id is required');
    const runtime = this.runtimeFor(req);
    const task = new Task(req.id, req.bundle, runtime);
    this.tasks.add(task);
    try {
      await runtime.prepare({ id: req.id, bundle: req.bundle });
      const options = runtime.taskOptions();
      const forwarded = req.options || options ? encode(`${T}CreateTaskRequest`, { ...req, options }) : payload;
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
    const req = parse<IdRequest>('ConnectRequest', payload);
    let taskPid = 0;
    const task = this.tasks.find(req.id);
    if (task) {
      const res = decode<{ task_pid: number }>(`${T}ConnectResponse`, await task.runtime.call('Connect', payload, signal));
      taskPid = res.task_pid;
    }
    // containerd knows this process as the shim, whatever runs behind it.
    return encode(`${T}ConnectResponse`, { shim_pid: process.pid, task_pid: taskPid, version: '' });
  }
}

function parse<R>(type: string, payload: Buffer): R {
  try {
    return decode<R>(`${T}${type}`, payload);
  } catch (err) {
    throw invalidArgument(`malformed ${type}: ${(err as Error).message}`);
  }
}
